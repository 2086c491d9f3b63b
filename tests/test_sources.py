"""Tests for ctc_trainer.data.sources: every manifest format, policies, error messages."""

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from ctc_trainer.charset import Charset
from ctc_trainer import config
from ctc_trainer.config import DataConfig
from ctc_trainer.data import sources
from ctc_trainer.data.sources import load_samples
from ctc_trainer.errors import DataError


def write_image(path, mode="L", fmt=None, size=(40, 16)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) % 256)
  img = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
  if mode == "I;16":
    img = Image.fromarray((pixels * 200).astype(np.uint16))
  img.save(path, fmt)
  return str(path)


def write_text(path, text):
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write(text)
  return str(path)


def texts(result):
  return [s.text for s in result.samples]


# --- tsv ---------------------------------------------------------------------------

def test_tsv_resolves_relative_paths_and_keeps_spaces(tmp_path):
  write_image(tmp_path / "img" / "a.png")
  absolute = write_image(tmp_path / "elsewhere" / "b.jpg", "RGB")
  manifest = write_text(tmp_path / "m.tsv",
                        f"img/a.png\thello world\n\n{absolute}\tb  c\n")
  result = load_samples(DataConfig(train_data=manifest), "train", None)
  assert [s.path for s in result.samples] == [str(tmp_path / "img" / "a.png"), absolute]
  assert texts(result) == ["hello world", "b  c"]
  assert result.samples[1].origin == f"{manifest}:3"
  assert result.skipped == {}


def test_split_picks_train_or_eval_data(tmp_path):
  write_image(tmp_path / "a.png")
  train = write_text(tmp_path / "train.tsv", "a.png\ttrain\n")
  evaluation = write_text(tmp_path / "eval.tsv", "a.png\teval\n")
  cfg = DataConfig(train_data=train, eval_data=evaluation)
  assert texts(load_samples(cfg, "train")) == ["train"]
  assert texts(load_samples(cfg, "eval")) == ["eval"]


def test_tsv_wrong_column_count_names_file_and_line(tmp_path):
  write_image(tmp_path / "a.png")
  manifest = write_text(tmp_path / "m.tsv", "a.png\tok\na.png\tx\ty\n")
  with pytest.raises(DataError, match=f"{manifest}:2: expected 2 tab-separated"):
    load_samples(DataConfig(train_data=manifest), "train")


def test_empty_manifest_names_the_path(tmp_path):
  manifest = write_text(tmp_path / "m.tsv", "\n\n")
  with pytest.raises(DataError, match=f"{manifest}: no samples found"):
    load_samples(DataConfig(train_data=manifest), "train")


def test_missing_manifest_names_the_path(tmp_path):
  with pytest.raises(DataError, match="nope.tsv does not exist"):
    load_samples(DataConfig(train_data=str(tmp_path / "nope.tsv")), "train")


# --- csv ---------------------------------------------------------------------------

def test_csv_with_header_by_column_name(tmp_path):
  write_image(tmp_path / "a.bmp", "RGB", "BMP")
  manifest = write_text(tmp_path / "m.csv",
                        'id,label,file\n1,"x, y",a.bmp\n2,"say ""hi""",a.bmp\n')
  cfg = DataConfig(train_data=manifest, data_format="csv", csv_header=True,
                   csv_path_column="file", csv_label_column="label")
  result = load_samples(cfg, "train")
  assert texts(result) == ["x, y", 'say "hi"']
  assert result.samples[0].path == str(tmp_path / "a.bmp")
  assert result.samples[1].origin == f"{manifest}:3"


def test_csv_with_header_by_index_and_without_header(tmp_path):
  write_image(tmp_path / "a.gif", "P", "GIF")
  with_header = write_text(tmp_path / "h.csv", "label,path\nabc,a.gif\n")
  no_header = write_text(tmp_path / "n.csv", "abc,a.gif\n\ndef,a.gif\n")
  cfg = dict(data_format="csv", csv_path_column="1", csv_label_column="0")
  assert texts(load_samples(DataConfig(train_data=with_header, csv_header=True, **cfg),
                            "train")) == ["abc"]
  assert texts(load_samples(DataConfig(train_data=no_header, **cfg),
                            "train")) == ["abc", "def"]


def test_csv_unknown_column_and_short_row(tmp_path):
  write_image(tmp_path / "a.png")
  manifest = write_text(tmp_path / "m.csv", "path,label\na.png,x\na.png\n")
  cfg = DataConfig(train_data=manifest, data_format="csv", csv_header=True,
                   csv_path_column="path", csv_label_column="text")
  with pytest.raises(DataError, match="column 'text' is neither"):
    load_samples(cfg, "train")
  cfg = DataConfig(train_data=manifest, data_format="csv", csv_header=True,
                   csv_path_column="path", csv_label_column="label")
  with pytest.raises(DataError, match=f"{manifest}:3: expected at least 2 columns"):
    load_samples(cfg, "train")


# --- filenames ------------------------------------------------------------------------

def test_filenames_strip_duplicate_suffix(tmp_path):
  for name, mode in [("ab12c.png", "L"), ("ab12c_3.PNG", "RGBA"), ("x_y.jpeg", "RGB"),
                     ("7_2_10.bmp", "RGB"), ("q.gif", "P")]:
    write_image(tmp_path / name, mode)
  write_text(tmp_path / "notes.txt", "not an image")
  result = load_samples(DataConfig(train_data=str(tmp_path), data_format="filenames"),
                        "train")
  assert texts(result) == ["7_2", "ab12c", "ab12c", "q", "x_y"]


def test_filenames_empty_folder_names_it(tmp_path):
  with pytest.raises(DataError, match=f"{tmp_path}: no samples found"):
    load_samples(DataConfig(train_data=str(tmp_path), data_format="filenames"),
                 "train")


# --- sidecar ----------------------------------------------------------------------

def test_sidecar_pairs_transcripts_and_prefers_binarized(tmp_path):
  write_image(tmp_path / "0001.png", "I;16")
  write_text(tmp_path / "0001.gt.txt", "first line\n")
  write_image(tmp_path / "0002.png")
  write_image(tmp_path / "0002.bin.png")
  write_image(tmp_path / "0002.nrm.png")
  write_text(tmp_path / "0002.gt.txt", "second\r\n")
  write_image(tmp_path / "0003.nrm.jpg", "RGB")
  write_text(tmp_path / "0003.gt.txt", "third")
  write_image(tmp_path / "0004.png")   # no transcript
  cfg = DataConfig(train_data=str(tmp_path), data_format="sidecar")
  result = load_samples(cfg, "train")
  assert texts(result) == ["first line", "second", "third"]
  assert [os.path.basename(s.path) for s in result.samples] == [
      "0001.png", "0002.bin.png", "0003.nrm.jpg"]
  assert result.samples[0].origin == str(tmp_path / "0001.gt.txt")
  assert result.skipped == {"no transcript": 1}


# --- policies -----------------------------------------------------------------------

def test_missing_image_error_names_file_and_line(tmp_path):
  write_image(tmp_path / "a.png")
  manifest = write_text(tmp_path / "m.tsv", "a.png\tx\ngone.png\ty\n")
  with pytest.raises(DataError, match=f"{manifest}:2: image file .*gone.png"):
    load_samples(DataConfig(train_data=manifest), "train")


def test_missing_image_skip_is_counted_and_logged(tmp_path, caplog):
  write_image(tmp_path / "a.png")
  manifest = write_text(tmp_path / "m.tsv", "a.png\tx\ngone.png\ty\nb.png\tz\n")
  cfg = DataConfig(train_data=manifest, bad_sample_policy="skip")
  result = load_samples(cfg, "train")
  assert texts(result) == ["x"] and result.skipped == {"missing file": 2}
  assert "Skipped 2 samples" in caplog.text and "gone.png" in caplog.text


@pytest.mark.parametrize("fmt, text", [
    ("tsv", "a.png\tx\n"), ("csv", "a.png,x\n"),
    ("jsonl", '{"path": "a.png", "text": "x"}\n')])
def test_byte_order_mark_is_not_part_of_the_first_path(tmp_path, fmt, text):
  # Spreadsheet tools save UTF-8 with a byte-order mark.
  write_image(tmp_path / "a.png")
  manifest = tmp_path / f"m.{fmt}"
  manifest.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
  result = load_samples(DataConfig(train_data=str(manifest), data_format=fmt), "train")
  assert [s.path for s in result.samples] == [str(tmp_path / "a.png")]


def test_folder_listed_as_an_image_is_named_as_a_folder(tmp_path):
  write_image(tmp_path / "a.png")
  os.makedirs(tmp_path / "lines")
  manifest = write_text(tmp_path / "m.tsv", "a.png\tx\nlines\ty\n")
  with pytest.raises(DataError, match=f"{manifest}:2: .*lines is a folder, not an "
                                      f"image file"):
    load_samples(DataConfig(train_data=manifest), "train")


def test_unknown_character_error_names_line_and_character(tmp_path):
  write_image(tmp_path / "a.png")
  manifest = write_text(tmp_path / "m.tsv", "a.png\tab\na.png\taé!\n")
  charset = Charset("ab")
  with pytest.raises(DataError, match=f"{manifest}:2: .*'!', 'é'"):
    load_samples(DataConfig(train_data=manifest), "train", charset)


def test_unknown_character_skip_and_no_charset(tmp_path):
  write_image(tmp_path / "a.png")
  manifest = write_text(tmp_path / "m.tsv", "a.png\tab\na.png\tac\n")
  cfg = DataConfig(train_data=manifest, unknown_char_policy="skip")
  result = load_samples(cfg, "train", Charset("ab"))
  assert texts(result) == ["ab"] and result.skipped == {"unknown character": 1}
  assert texts(load_samples(cfg, "train", None)) == ["ab", "ac"]


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_labels_are_nfc_normalized_unless_told_otherwise(tmp_path, fmt):
  """A precomposed and a decomposed spelling of the same Greek letter (alpha with
  psili and oxia) read as one symbol by default, and as written with 'none'."""
  write_image(tmp_path / "a.png")
  composed, decomposed = "\u1f04", "\u03b1\u0313\u0301"
  if fmt == "tsv":
    listing = write_text(tmp_path / "m.tsv", f"a.png\t{composed}x\na.png\t{decomposed}x\n")
  else:
    listing = write_text(tmp_path / "m.jsonl", "".join(
        json.dumps({"path": "a.png", "text": t + "x"}) + "\n"
        for t in (composed, decomposed)))
  cfg = DataConfig(train_data=listing, data_format=fmt)
  assert texts(load_samples(cfg, "train")) == [composed + "x"] * 2
  assert Charset.from_texts(load_samples(cfg, "train").label_texts()).size == 2
  # The charset of the normalized labels accepts the decomposed spelling.
  load_samples(cfg, "train", Charset(composed + "x"))
  raw = dataclasses.replace(cfg, text_normalization="none")
  assert texts(load_samples(raw, "train")) == [composed + "x", decomposed + "x"]


def test_everything_skipped_is_an_error(tmp_path):
  manifest = write_text(tmp_path / "m.tsv", "gone.png\tx\n")
  with pytest.raises(DataError, match="all 1 samples were skipped"):
    load_samples(DataConfig(train_data=manifest, bad_sample_policy="skip"), "train")


def test_synthetic_format_generates_then_reads_manifest(tmp_path):
  cfg = DataConfig(train_data=str(tmp_path / "syn"), data_format="synthetic",
                   synthetic_train_size=5, synthetic_alphabet="ab")
  result = load_samples(cfg, "train", Charset("ab"))
  assert len(result) == 5 and all(set(t) <= set("ab") for t in texts(result))
  assert os.path.isfile(result.samples[0].path)


def test_every_registered_source_loads_and_is_a_data_format_choice():
  assert sorted(config.DATA_FORMATS) == sources.names()
  for name in sources.names():
    assert callable(sources.loader(name)), name
