"""The predict CLI end to end, in this process (a folder with a bad file; a manifest,
JSON lines and a workdir instead of a SavedModel; user errors) and its input listing."""

import json
import os
import shutil

import pytest

from ctc_trainer import export, predict
from ctc_trainer.errors import DataError
from tests.helpers import run_main


def predict_cli(*args):
  return run_main(predict.main, *args, prog="ctc_trainer.predict")


@pytest.fixture(scope="module")
def folder(tiny_run, tmp_path_factory):
  """Four eval images, one file that is not an image, and a text file to ignore."""
  folder = tmp_path_factory.mktemp("predict")
  for path, _ in tiny_run.eval_images()[:4]:
    shutil.copy(path, folder)
  (folder / "broken.png").write_bytes(b"this is not a png")
  (folder / "notes.txt").write_text("not listed: not an image extension")
  return folder


@pytest.fixture(scope="module")
def predicted(exported, folder):
  """predict --saved_model (the older spelling of --model_path) on the folder, two
  images per batch."""
  return predict_cli(f"--saved_model={exported}", folder, "--predict_batch_size=2")


def good_names(folder):
  return sorted(n for n in os.listdir(folder) if n[0].isdigit())


def test_folder_with_a_bad_file_reports_it_and_transcribes_the_rest(folder, predicted):
  assert predicted.code == 1, predicted.err[-2000:]
  rows = [line.split("\t") for line in predicted.out.splitlines()]
  assert [r[0] for r in rows] == [str(folder / n) for n in good_names(folder)]
  assert all(len(r) == 3 and 0.0 <= float(r[2]) <= 1.0 for r in rows)
  assert (f"error: {folder / 'broken.png'}: cannot decode: Unknown image file format"
          in predicted.err)
  assert "transcribed 4 of 5 images" in predicted.err


def test_manifest_json_and_workdir_give_the_saved_models_texts(tiny_run, folder,
                                                              predicted):
  manifest = folder / "list.tsv"
  manifest.write_text("".join(f"{n}\tlabel ignored\n" for n in good_names(folder)))
  ran = predict_cli(f"--workdir={tiny_run.workdir}", f"--manifest={manifest}", "--json")
  assert ran.code == 0, ran.err[-2000:]
  lines = [json.loads(line) for line in ran.out.splitlines()]
  assert [d["path"] for d in lines] == [str(folder / n) for n in good_names(folder)]
  assert [d["text"] for d in lines] == [
      line.split("\t")[1] for line in predicted.out.splitlines()]
  assert all(len(d["top_k"]) == 4 and d["top_k"][0]["text"] == d["text"]
             for d in lines)
  # Each character with its confidence and span, in pixels of the original image.
  assert all(d["unit"] == "px" and "".join(c["char"] for c in d["chars"]) == d["text"]
             and all(set(c) == {"char", "confidence", "start", "end"} and
                     0 <= c["start"] < c["end"] for c in d["chars"]) for d in lines)


def test_missing_export_fails_with_one_line(tmp_path):
  (tmp_path / "line.png").write_bytes(b"")
  ran = predict_cli(f"--model_path={tmp_path}", tmp_path / "line.png")
  assert ran.code == 2
  assert f"{tmp_path} holds no export (saved_model.pb, or a model with its " \
      "export.json)" in ran.err


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
