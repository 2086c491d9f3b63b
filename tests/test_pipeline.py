"""Tests for ctc_trainer.data.pipeline: batch dict contract, order, sharding, bad images."""

import io
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig
from ctc_trainer.data import failures, pipeline
from ctc_trainer.data.sources import load_samples
from ctc_trainer.errors import DataError

CHARSET = Charset("abcdefgh")


def png_bytes(width, mode="L"):
  pixels = np.full((16, width), 255, np.uint8)
  pixels[4:12, 2:width - 2] = 0
  buf = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buf, "PNG")
  return buf.getvalue()


def make_set(folder, widths_and_texts, extra_files=None):
  """Writes 16-px-high PNGs (resized to 32: width doubles) and a manifest."""
  os.makedirs(folder, exist_ok=True)
  lines = []
  for i, (width, text) in enumerate(widths_and_texts):
    name = f"{i:03d}.png"
    with open(os.path.join(folder, name), "wb") as f:
      f.write(png_bytes(width))
    lines.append(f"{name}\t{text}\n")
  for name, blob in (extra_files or {}).items():
    with open(os.path.join(folder, name), "wb") as f:
      f.write(blob)
    lines.append(f"{name}\tbad\n")
  manifest = os.path.join(folder, "m.tsv")
  with open(manifest, "w", encoding="utf-8") as f:
    f.writelines(lines)
  return manifest


def config(manifest, **kwargs):
  return DataConfig(train_data=manifest, eval_data=manifest, **kwargs)


def test_eval_batches_follow_the_contract(tmp_path):
  items = [(10, "ab"), (30, "hgfe"), (20, "c"), (15, "dd"), (12, "a")]
  cfg = config(make_set(tmp_path, items), eval_batch_size=2)
  batches = list(pipeline.make_dataset(cfg, CHARSET, "eval"))
  assert [len(b["text"]) for b in batches] == [2, 2, 1]    # partial batch kept
  first = batches[0]
  signature = pipeline.batch_signature(channels=1, height=32)
  for name, spec in signature.items():
    assert spec.is_compatible_with(first[name]), name
  assert first["inputs"].shape == (2, 32, 60, 1)            # padded to the widest
  np.testing.assert_array_equal(first["input_length"], [20, 60])
  assert float(tf.reduce_max(first["inputs"][0, :, 20:])) == 0.0   # zero padding
  assert float(tf.reduce_max(first["inputs"][0, :, :20])) > 0.9    # ink is bright
  np.testing.assert_array_equal(first["labels"], [[1, 2, 0, 0], [8, 7, 6, 5]])
  np.testing.assert_array_equal(first["label_length"], [2, 4])
  texts = [t.decode() for b in batches for t in b["text"].numpy()]
  assert texts == [t for _, t in items]                      # file order, one pass
  assert first["key"][1].numpy().decode() == str(tmp_path / "001.png")


def test_element_spec_matches_batch_signature(tmp_path):
  cfg = config(make_set(tmp_path, [(10, "ab")] * 3), image_channels=3, batch_size=2)
  signature = pipeline.batch_signature(channels=3, height=32)
  for split in ("train", "eval"):
    spec = pipeline.make_dataset(cfg, CHARSET, split).element_spec
    assert set(spec) == set(signature)
    for name in signature:
      assert signature[name].is_compatible_with(spec[name]), (split, name)


def test_train_repeats_shuffles_with_seed_and_drops_partial_batches(tmp_path):
  items = [(10 + i, "abcdefgh"[i]) for i in range(7)]
  cfg = config(make_set(tmp_path, items), batch_size=3, shuffle_buffer=100, seed=1)
  def stream():
    ds = pipeline.make_dataset(cfg, CHARSET, "train").take(7)
    return [t.decode() for b in ds for t in b["text"].numpy()]
  texts = stream()
  assert len(texts) == 21 and stream() == texts               # seeded
  assert sorted(texts[:7]) == sorted("abcdefg")               # an epoch is complete
  assert texts[:7] != list("abcdefg") or texts[7:14] != list("abcdefg")


def test_input_context_shards_and_splits_the_batch(tmp_path):
  items = [(10, "abcdefgh"[i]) for i in range(8)]
  cfg = config(make_set(tmp_path, items), eval_batch_size=4)
  context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                       num_replicas_in_sync=2)
  batches = list(pipeline.make_dataset(cfg, CHARSET, "eval", input_context=context))
  assert [b["text"].numpy().tolist() for b in batches] == [[b"b", b"d"], [b"f", b"h"]]


@pytest.fixture
def bad_set(tmp_path):
  good = png_bytes(12)
  return make_set(tmp_path, [(10, "ab"), (14, "cd"), (10, "ef")], {
      "empty.png": b"", "text.png": b"hello, not an image",
      "truncated.png": good[:len(good) // 2]})


@pytest.mark.parametrize("split", ["train", "eval"])
def test_undecodable_image_error_is_explained_naming_the_file(bad_set, split):
  # Policy 'error' decodes with a plain map; the error is named afterwards.
  cfg = config(bad_set, batch_size=2, eval_batch_size=2)
  samples = load_samples(cfg, split, CHARSET)
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    for _ in pipeline.make_dataset(cfg, CHARSET, split, samples=samples).take(10):
      pass
  error = str(failures.explain(raised.value, samples, cfg))
  assert re.search(r"cannot read or decode image \S*(empty|text|truncated)\.png", error)


def test_undecodable_images_are_skipped_and_logged(bad_set, capfd):
  cfg = config(bad_set, bad_sample_policy="skip", eval_batch_size=4)
  texts = [t for b in pipeline.make_dataset(cfg, CHARSET, "eval")
           for t in b["text"].numpy()]
  assert texts == [b"ab", b"cd", b"ef"]
  log = capfd.readouterr().err
  assert "truncated.png" in log and "skipped so far: 3" in log
  cfg = config(bad_set, bad_sample_policy="skip", batch_size=2)
  train = list(pipeline.make_dataset(cfg, CHARSET, "train").take(6))
  assert all(len(b["text"]) == 2 for b in train)
  assert b"bad" not in [t for b in train for t in b["text"].numpy()]


def test_skip_warns_once_per_distinct_file_over_many_passes(bad_set, capfd):
  # 6 listed, 3 bad: 3 good per pass, so 12 batches of 2 make 8 passes.
  cfg = config(bad_set, bad_sample_policy="skip", batch_size=2, shuffle_buffer=6)
  assert len(list(pipeline.make_dataset(cfg, CHARSET, "train").take(12))) == 12
  log = capfd.readouterr().err
  for name in ("empty.png", "text.png", "truncated.png"):
    assert log.count(name) == 1, log
  counts = [int(n) for n in re.findall(r"skipped so far: (\d+)", log)]
  assert sorted(counts) == [1, 2, 3] and "distinct" in log


def test_skipped_files_stay_known_after_the_iterator_is_restored(bad_set, capfd,
                                                                tmp_path):
  cfg = config(bad_set, bad_sample_policy="skip", batch_size=2, shuffle_buffer=6)
  iterator = iter(pipeline.make_dataset(cfg, CHARSET, "train"))
  for _ in range(4):   # more than a pass: every bad file met and named
    next(iterator)
  assert capfd.readouterr().err.count("skipped so far") == 3
  path = tf.train.Checkpoint(iterator=iterator).save(str(tmp_path / "ckpt" / "it"))
  restored = iter(pipeline.make_dataset(cfg, CHARSET, "train"))
  tf.train.Checkpoint(iterator=restored).restore(path)
  for _ in range(6):
    next(restored)
  assert "skipped so far" not in capfd.readouterr().err


def test_explain_pipeline_error_names_the_file_and_line(bad_set):
  cfg = config(bad_set, eval_batch_size=2)
  samples = load_samples(cfg, "eval", CHARSET)
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    list(pipeline.make_dataset(cfg, CHARSET, "eval", samples=samples))
  error = failures.explain(raised.value, samples, cfg)
  assert isinstance(error, DataError)
  assert str(error).startswith(f"{bad_set}:4: cannot read or decode image ")
  assert "empty.png" in str(error)
  # An error without a path: the samples are decoded until the culprit is found.
  error = failures.explain(RuntimeError("boom"), samples, cfg)
  assert str(error).startswith(f"{bad_set}:4: cannot read or decode image ")


def test_mixed_formats_and_modes_in_rgb(tmp_path):
  pixels = np.full((20, 40), 255, np.uint8)
  pixels[5:15, 5:35] = 0
  lines = []
  for i, (mode, fmt) in enumerate([("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                                   ("RGB", "JPEG"), ("RGB", "BMP"), ("P", "GIF")]):
    name = f"{i}.{fmt.lower()}"
    Image.fromarray(pixels).convert(mode).save(tmp_path / name, fmt)
    lines.append(f"{name}\tab\n")
  Image.fromarray((pixels.astype(np.uint16) * 257)).save(tmp_path / "16.png")
  lines.append("16.png\tab\n")
  manifest = tmp_path / "m.tsv"
  manifest.write_text("".join(lines), encoding="utf-8")
  cfg = config(str(manifest), image_channels=3, image_height=20, eval_batch_size=8)
  (batch,) = list(pipeline.make_dataset(cfg, CHARSET, "eval"))
  assert batch["inputs"].shape == (7, 20, 40, 3)
  centre = batch["inputs"][:, 10, 20, :].numpy()
  corner = batch["inputs"][:, 1, 1, :].numpy()
  np.testing.assert_allclose(centre, 1.0, atol=0.05)   # black ink -> 1
  np.testing.assert_allclose(corner, 0.0, atol=0.05)   # white paper -> 0


def _checkpoint_size(iterator, folder) -> int:
  tf.train.Checkpoint(it=iterator).write(str(folder / "ckpt"))
  return sum(os.path.getsize(folder / f) for f in os.listdir(folder))


def test_cache_decoded_checkpoints_stay_small_and_resume_exactly(tmp_path):
  """--cache_decoded used tf.data's cache(), whose contents (the whole decoded set)
  and a shuffle buffer of decoded images went into every iterator checkpoint."""
  items = [(150 + i % 50, "abcdefgh"[i % 8] * 3) for i in range(200)]
  manifest = make_set(tmp_path / "set", items)
  sizes = {}
  for cached in (False, True):
    cfg = config(manifest, batch_size=8, shuffle_buffer=64, seed=2,
                 bucket_boundaries="none", cache_decoded=cached)
    iterator = iter(pipeline.make_dataset(cfg, CHARSET, "train"))
    for _ in range(30):   # past the first epoch of 25 batches
      next(iterator)
    folder = tmp_path / f"ckpt_{cached}"
    folder.mkdir()
    sizes[cached] = _checkpoint_size(iterator, folder)
    expected = [next(iterator)["key"].numpy().tolist() for _ in range(3)]
    resumed = iter(pipeline.make_dataset(cfg, CHARSET, "train"))
    tf.train.Checkpoint(it=resumed).read(str(folder / "ckpt"))
    assert [next(resumed)["key"].numpy().tolist() for _ in range(3)] == expected
  decoded_set = 200 * 32 * 350 * 4   # images 32 px high, about 350 px wide, float32
  assert sizes[True] < decoded_set / 10, sizes
  assert sizes[True] < 2 * sizes[False], sizes


def test_cache_decoded_trains_on_every_example_each_epoch(tmp_path):
  items = [(10 + i, "abcdefgh"[i]) for i in range(8)]
  cfg = config(make_set(tmp_path, items), batch_size=4, seed=1, cache_decoded=True,
               bucket_boundaries="none")
  texts = [t.decode() for b in pipeline.make_dataset(cfg, CHARSET, "train").take(6)
           for t in b["text"].numpy()]
  epochs = [texts[i:i + 8] for i in (0, 8, 16)]
  assert all(sorted(e) == list("abcdefgh") for e in epochs)
  assert epochs[0] != epochs[1]
