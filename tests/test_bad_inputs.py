"""The bad-input matrix (docs/reliability.md): each case ends in a clear message that
names the file (policy 'error') or a counted skip after which the rest goes on."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from ctc_trainer.data import failures, pipeline
from ctc_trainer.data.sources import load_samples
from ctc_trainer.errors import DataError
from tests.test_pipeline import CHARSET, config, make_set, png_bytes


def _jpeg_bytes(width):
  buf = io.BytesIO()
  Image.fromarray(np.full((16, width), 200, np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def _eval_texts(cfg):
  return [t.decode() for b in pipeline.make_dataset(cfg, CHARSET, "eval")
          for t in b["text"].numpy()]


GOOD = [(20, "ab"), (24, "cd")]
BAD_FILES = {
    "zero_byte.png": b"",
    "truncated.png": png_bytes(30)[:40],
    "truncated.jpg": _jpeg_bytes(30)[:60],
    "not_an_image.png": b"just some text, not pixels",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_undecodable_file_error_names_it_and_skip_goes_on(tmp_path, name, capfd):
  manifest = make_set(tmp_path, GOOD, {name: BAD_FILES[name]})
  with pytest.raises(DataError, match=name):
    try:
      _eval_texts(config(manifest))
    except Exception as e:  # the pipeline's own error, explained as the loop does
      raise failures.explain(e, load_samples(config(manifest), "eval"),
                                            config(manifest))
  assert _eval_texts(config(manifest, bad_sample_policy="skip")) == ["ab", "cd"]
  assert name in capfd.readouterr().err


def test_wrong_extension_is_read_by_content(tmp_path):
  manifest = make_set(tmp_path, GOOD, {"really_a_png.jpg": png_bytes(20)})
  assert _eval_texts(config(manifest)) == ["ab", "cd", "bad"]


def test_sixteen_bit_and_palette_pngs_decode(tmp_path):
  manifest = make_set(tmp_path, GOOD)
  Image.fromarray(np.full((16, 24), 40000, np.uint16)).save(tmp_path / "000.png")
  Image.fromarray(np.full((16, 24), 200, np.uint8)).convert("P").save(
      tmp_path / "001.png")
  with Image.open(tmp_path / "000.png") as im16, Image.open(tmp_path / "001.png") as imp:
    assert im16.mode.startswith("I") and imp.mode == "P"
  assert _eval_texts(config(manifest)) == ["ab", "cd"]


def test_too_wide_image_is_resized_or_skipped(tmp_path, capfd):
  manifest = make_set(tmp_path, [(20, "ab"), (400, "cd")])  # 400 -> 800 px at h=32
  squeezed = list(pipeline.make_dataset(config(manifest, max_image_width=100),
                                        CHARSET, "eval"))
  assert squeezed[0]["input_length"].numpy().tolist() == [40, 100]
  cfg = config(manifest, max_image_width=100, too_wide_policy="skip")
  assert _eval_texts(cfg) == ["ab"]
  assert "001.png" in capfd.readouterr().err


@pytest.mark.parametrize("label", ["", "   "])
def test_empty_or_blank_label(tmp_path, label):
  manifest = make_set(tmp_path, GOOD + [(20, label)])
  with pytest.raises(DataError, match=r"m.tsv:3: .*empty or only whitespace"):
    load_samples(config(manifest), "train", CHARSET)
  kept = load_samples(config(manifest, bad_sample_policy="skip"), "train", CHARSET)
  assert kept.texts == ["ab", "cd"] and kept.skipped == {"bad label": 1}


def test_label_longer_than_max(tmp_path):
  manifest = make_set(tmp_path, GOOD + [(20, "abcdefgh")])
  with pytest.raises(DataError, match=r"m.tsv:3: .*8 characters.*max_label_length=5"):
    load_samples(config(manifest, max_label_length=5), "train", CHARSET)
  kept = load_samples(config(manifest, max_label_length=5, bad_sample_policy="skip"),
                      "train", CHARSET)
  assert kept.texts == ["ab", "cd"]


def test_non_utf8_manifest_names_the_file(tmp_path):
  manifest = make_set(tmp_path, GOOD)
  with open(manifest, "ab") as f:
    f.write(b"001.png\tcaf\xe9\n")
  with pytest.raises(DataError, match=r"m.tsv: not UTF-8"):
    load_samples(config(manifest), "train", CHARSET)


def test_wrong_column_count_names_the_line(tmp_path):
  manifest = make_set(tmp_path, GOOD)
  with open(manifest, "a", encoding="utf-8") as f:
    f.write("just_a_path.png\n")
  with pytest.raises(DataError, match=r"m.tsv:3"):
    load_samples(config(manifest), "train", CHARSET)


def test_missing_file_error_or_counted_skip(tmp_path):
  manifest = make_set(tmp_path, GOOD)
  os.remove(tmp_path / "001.png")
  with pytest.raises(DataError, match=r"m.tsv:2: image file .*001.png does not exist"):
    load_samples(config(manifest), "train", CHARSET)
  kept = load_samples(config(manifest, bad_sample_policy="skip"), "train", CHARSET)
  assert kept.texts == ["ab"] and kept.skipped == {"missing file": 1}


def test_folder_that_is_not_a_folder(tmp_path):
  not_a_folder = tmp_path / "file.txt"
  not_a_folder.write_text("x")
  cfg = config(str(not_a_folder), data_format="filenames")
  with pytest.raises(DataError, match="file.txt is not a folder"):
    load_samples(cfg, "train", CHARSET)
