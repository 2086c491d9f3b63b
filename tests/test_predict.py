"""The predict CLI end to end (a folder with a bad file; a manifest, JSON lines and a
workdir instead of a SavedModel; user errors) and its input listing."""

import json
import os
import shutil

import pytest

from ctc_trainer import export
from ctc_trainer.errors import DataError
from tests.test_export import exported, run  # noqa: F401  (exported is a fixture)


@pytest.fixture(scope="module")
def folder(exported, tmp_path_factory):
  """Four eval images, one file that is not an image, and a text file to ignore."""
  folder = tmp_path_factory.mktemp("predict")
  for path, _ in exported.eval_images()[:4]:
    shutil.copy(path, folder)
  (folder / "broken.png").write_bytes(b"this is not a png")
  (folder / "notes.txt").write_text("not listed: not an image extension")
  return folder


@pytest.fixture(scope="module")
def predicted(exported, folder):
  """predict --saved_model on the folder, two images per batch."""
  return run("-m", "ctc_trainer.predict", f"--saved_model={exported.export_dir}",
             str(folder), "--predict_batch_size=2", check=False)


def good_names(folder):
  return sorted(n for n in os.listdir(folder) if n[0].isdigit())


def test_folder_with_a_bad_file_reports_it_and_transcribes_the_rest(folder, predicted):
  assert predicted.returncode == 1, predicted.stderr[-2000:]
  rows = [line.split("\t") for line in predicted.stdout.splitlines()]
  assert [r[0] for r in rows] == [str(folder / n) for n in good_names(folder)]
  assert all(len(r) == 3 and 0.0 <= float(r[2]) <= 1.0 for r in rows)
  assert (f"error: {folder / 'broken.png'}: cannot decode: Unknown image file format"
          in predicted.stderr)
  assert "transcribed 4 of 5 images" in predicted.stderr
  assert "Traceback" not in predicted.stderr


def test_manifest_json_and_workdir_give_the_saved_models_texts(exported, folder,
                                                              predicted):
  manifest = folder / "list.tsv"
  manifest.write_text("".join(f"{n}\tlabel ignored\n" for n in good_names(folder)))
  proc = run("-m", "ctc_trainer.predict", f"--workdir={exported.workdir}",
             f"--manifest={manifest}", "--json")
  lines = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [d["path"] for d in lines] == [str(folder / n) for n in good_names(folder)]
  assert [d["text"] for d in lines] == [
      line.split("\t")[1] for line in predicted.stdout.splitlines()]
  assert all(len(d["top_k"]) == 4 and d["top_k"][0]["text"] == d["text"]
             for d in lines)


def test_missing_saved_model_fails_with_one_line(tmp_path):
  (tmp_path / "line.png").write_bytes(b"")
  proc = run("-m", "ctc_trainer.predict", f"--saved_model={tmp_path}",
             str(tmp_path / "line.png"), check=False)
  assert proc.returncode == 2
  assert "holds no SavedModel" in proc.stderr and "Traceback" not in proc.stderr


def test_image_paths_from_files_folders_and_manifest(tmp_path):
  for name in ("b.png", "a.JPG", "c.txt"):
    (tmp_path / name).write_bytes(b"x")
  (tmp_path / "sub").mkdir()
  manifest = tmp_path / "sub" / "m.tsv"
  manifest.write_text("../b.png\tlabel\n\n/abs/x.png\n")
  paths = export.image_paths([str(tmp_path), str(tmp_path / "c.txt")], str(manifest))
  assert paths == [str(tmp_path / "a.JPG"), str(tmp_path / "b.png"),
                   str(tmp_path / "c.txt"), str(tmp_path / "b.png"), "/abs/x.png"]
  with pytest.raises(DataError, match="/no/such.png does not exist"):
    export.image_paths(["/no/such.png"])
  with pytest.raises(DataError, match="--manifest=/no/m.tsv is not a file"):
    export.image_paths([], "/no/m.tsv")
