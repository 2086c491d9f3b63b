"""Tests for ctc_trainer.data.synthetic: determinism, reuse, safe replacement."""

import filecmp
import os

import numpy as np
import pytest
from PIL import Image

from ctc_trainer.data import synthetic
from ctc_trainer.errors import DataError

ARGS = dict(size=12, seed=3, alphabet="abc123", min_length=2, max_length=5)


def read_manifest(path):
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n").split("\t") for line in f]


def test_same_seed_gives_byte_identical_files(tmp_path):
  first = synthetic.ensure_dataset(str(tmp_path / "a"), **ARGS)
  second = synthetic.ensure_dataset(str(tmp_path / "b"), **ARGS)
  names = sorted(os.listdir(tmp_path / "a"))
  assert names == sorted(os.listdir(tmp_path / "b"))
  _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names,
                                         shallow=False)
  assert not mismatch and not errors
  assert read_manifest(first) == read_manifest(second)
  other = synthetic.ensure_dataset(str(tmp_path / "c"), **dict(ARGS, seed=4))
  assert read_manifest(other) != read_manifest(first)


def test_images_and_labels_are_within_the_parameters(tmp_path):
  manifest = synthetic.ensure_dataset(str(tmp_path / "s"), **ARGS)
  rows = read_manifest(manifest)
  assert [name for name, _ in rows] == [f"{i:05d}.png" for i in range(12)]
  for name, text in rows:
    assert 2 <= len(text) <= 5 and set(text) <= set("abc123")
    with Image.open(tmp_path / "s" / name) as img:
      assert img.mode == "L" and 32 <= img.height <= 40 and img.width > 10
      pixels = np.asarray(img)
    assert pixels.min() < 120 < np.median(pixels)   # dark ink on light paper
  assert [n for n in os.listdir(tmp_path) if n != "s"] == []   # no temp folders


def test_existing_set_is_reused(tmp_path):
  manifest = synthetic.ensure_dataset(str(tmp_path / "s"), **ARGS)
  stamp = os.stat(tmp_path / "s" / "00000.png").st_mtime_ns
  assert synthetic.ensure_dataset(str(tmp_path / "s"), **ARGS) == manifest
  assert os.stat(tmp_path / "s" / "00000.png").st_mtime_ns == stamp


def test_other_parameters_or_foreign_folder_are_refused(tmp_path):
  synthetic.ensure_dataset(str(tmp_path / "s"), **ARGS)
  with pytest.raises(DataError, match="other parameters.*size.*delete the folder"):
    synthetic.ensure_dataset(str(tmp_path / "s"), **dict(ARGS, size=13))
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "photo.png").write_bytes(b"x")
  with pytest.raises(DataError, match="not a synthetic data set"):
    synthetic.ensure_dataset(str(tmp_path / "mine"), **ARGS)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
  def fail(*unused):
    raise KeyboardInterrupt
  monkeypatch.setattr(synthetic, "render_line", fail)
  with pytest.raises(KeyboardInterrupt):
    synthetic.ensure_dataset(str(tmp_path / "s"), **ARGS)
  assert os.listdir(tmp_path) == []
