"""Image augmentation (--augment, data/augment.py): training inputs only, seeded,
resumable, and nothing at all when off."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from ctc_trainer import options, train
from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig
from ctc_trainer.data import augment, pipeline, synthetic
from ctc_trainer.data.sources import load_samples
from tests.helpers import TINY_FLAGS, run_main

ALPHABET = "abcdefgh"
CHARSET = Charset(ALPHABET)
MAX_WIDTH = 120


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  """12 rendered text lines (32 px high after resizing, some near MAX_WIDTH)."""
  folder = tmp_path_factory.mktemp("augment")
  rng = np.random.default_rng(0)
  lines = []
  for i in range(12):
    text = synthetic.random_text(rng, ALPHABET, 2, 6)
    synthetic.render_line(text, rng).save(folder / f"{i:02d}.png")
    lines.append(f"{i:02d}.png\t{text}\n")
  (folder / "m.tsv").write_text("".join(lines), encoding="utf-8")
  return str(folder / "m.tsv")


def config(manifest, **kwargs):
  kwargs.setdefault("augment", True)
  return DataConfig(train_data=manifest, eval_data=manifest, batch_size=4,
                    max_image_width=MAX_WIDTH, bucket_boundaries="none", seed=3,
                    **kwargs)


def batches(cfg, split="train", count=6):
  return [{k: v.numpy() for k, v in b.items()}
          for b in pipeline.make_dataset(cfg, CHARSET, split).take(count)]


def assert_same(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def clean_inputs(manifest):
  """{key: the un-augmented image [H, w, C]} from the eval pipeline."""
  out = {}
  for b in batches(config(manifest, augment=False), "eval", count=100):
    for key, x, n in zip(b["key"], b["inputs"], b["input_length"]):
      out[key] = x[:, :n]
  return out


def test_augmented_images_change_but_keep_height_range_and_length(manifest):
  clean = clean_inputs(manifest)
  assert max(x.shape[1] for x in clean.values()) > MAX_WIDTH * 0.6
  cfg = config(manifest, augment_probability=1.0, augment_pad=2.0)
  changed = widths_changed = capped = 0
  for b in batches(cfg):
    assert b["inputs"].shape[1] == 32
    assert b["inputs"].min() >= 0.0 and b["inputs"].max() <= 1.0
    # No batch is padded past its widest input_length, nothing drawn past any.
    assert b["inputs"].shape[2] == b["input_length"].max() <= MAX_WIDTH
    for key, x, n in zip(b["key"], b["inputs"], b["input_length"]):
      assert not x[:, n:].any()
      original = clean[key]
      widths_changed += n != original.shape[1]
      capped += n == MAX_WIDTH
      changed += n != original.shape[1] or not np.array_equal(x[:, :n], original)
  assert changed == 6 * 4
  assert widths_changed > 6 * 4 // 2
  assert capped   # padding wider than the room left: cut to --max_image_width


def test_same_seed_same_batches(manifest):
  cfg = config(manifest)
  assert_same(batches(cfg), batches(cfg))


def test_eval_batches_are_never_augmented(manifest):
  strong = config(manifest, augment_probability=1.0)
  assert_same(batches(strong, "eval", 100),
              batches(config(manifest, augment=False), "eval", 100))


def test_off_is_exactly_the_pipeline_without_augmentation(manifest):
  before = DataConfig(train_data=manifest, eval_data=manifest, batch_size=4,
                      max_image_width=MAX_WIDTH, bucket_boundaries="none", seed=3)
  expected = batches(before)
  assert_same(batches(config(manifest, augment=False, augment_rotate_deg=10.0,
                             augment_noise=0.5)), expected)
  # Switched on but drawn for no example: the map passes every image through.
  assert_same(batches(config(manifest, augment_probability=0.0)), expected)
  # And on, it does change the training inputs.
  assert not all(np.array_equal(a["inputs"], b["inputs"])
                 for a, b in zip(batches(config(manifest)), expected))


def test_an_augmented_iterator_resumes_bit_exactly(manifest, tmp_path):
  cfg = config(manifest, augment_probability=1.0)
  iterator = iter(pipeline.make_dataset(cfg, CHARSET, "train"))
  for _ in range(4):   # into the second epoch of 3 batches
    next(iterator)
  tf.train.Checkpoint(it=iterator).write(str(tmp_path / "ckpt"))
  expected = [{k: v.numpy() for k, v in next(iterator).items()} for _ in range(3)]
  resumed = iter(pipeline.make_dataset(cfg, CHARSET, "train"))
  tf.train.Checkpoint(it=resumed).read(str(tmp_path / "ckpt"))
  assert_same([{k: v.numpy() for k, v in next(resumed).items()} for _ in range(3)],
              expected)


def test_preview_shows_each_sample_then_its_augmentation(manifest, tmp_path):
  cfg = config(manifest, augment_probability=0.0)   # the preview augments them all
  writer = tf.summary.create_file_writer(str(tmp_path))
  augment.write_preview(cfg, CHARSET, load_samples(cfg, "train", CHARSET), writer,
                        step=0, count=3)
  writer.flush()
  (path,) = glob.glob(os.path.join(tmp_path, "events*"))
  (value,) = [v for e in tf.compat.v1.train.summary_iterator(path)
              for v in e.summary.value]
  assert value.tag == "train/augmented_inputs"
  images = [tf.io.decode_png(png).numpy() for png in value.tensor.string_val[2:]]
  assert len(images) == 6
  clean = clean_inputs(manifest)
  first = 1.0 - clean[min(clean)]   # the preview shows dark ink on light paper
  width = first.shape[1]
  np.testing.assert_allclose(images[0][:, :width] / 255.0, first, atol=1 / 255)
  for original, augmented in zip(images[::2], images[1::2]):
    assert not np.array_equal(original, augmented)


@pytest.mark.parametrize("flagfile, on", [("base_ocr.cfg", True),
                                          ("demo_ocr.cfg", False)])
def test_on_in_the_ocr_preset_off_in_the_demo(flagfile, on, monkeypatch):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  monkeypatch.chdir(root)   # the demo's flagfile names configs/base_ocr.cfg
  options.define_flags(DataConfig)
  with flagsaver.flagsaver():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog", f"--flagfile={os.path.join(root, 'configs', flagfile)}"])
    assert options.from_flags(DataConfig, flags.FLAGS).augment is on


def test_training_with_augment_shows_augmented_inputs_once(tiny_data, tmp_path):
  _, data_flags = tiny_data
  ran = run_main(train.main, f"--workdir={tmp_path}", *TINY_FLAGS, *data_flags,
                 "--augment", "--train_steps=2", "--decoder=greedy")
  assert ran.code == 0, ran.err
  tags = [v.tag for path in glob.glob(str(tmp_path / "train" / "events*"))
          for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value]
  assert tags.count("train/augmented_inputs") == 1
