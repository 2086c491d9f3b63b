"""Length bucketing: fixed batch widths, one trace per bucket, padding efficiency."""

import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ctc_trainer.config import Config, DataConfig, LoopConfig
from ctc_trainer.data import buckets as buckets_lib
from ctc_trainer.data import modalities, pipeline, sources, throughput
from tests.helpers import CHARSET, HEIGHT, build_steps

# Image widths at HEIGHT px: resized widths equal them. A spread like text lines.
WIDTHS = [12 + (37 * i) % 150 for i in range(96)]


def png(width):
  pixels = np.full((HEIGHT, width), 255, np.uint8)
  pixels[4:12, 2:width - 2] = 0
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, "PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  folder = tmp_path_factory.mktemp("widths")
  lines = []
  for i, width in enumerate(WIDTHS):
    (folder / f"{i:03d}.png").write_bytes(png(width))
    lines.append(f"{i:03d}.png\t{'abcdefgh'[i % 8] * (1 + i % 3)}\n")
  (folder / "m.tsv").write_text("".join(lines), encoding="utf-8")
  return str(folder / "m.tsv")


def config(manifest, **kwargs):
  return DataConfig(train_data=manifest, eval_data=manifest, image_height=HEIGHT,
                    **kwargs)


def test_bucket_widths_from_the_flag(manifest):
  cfg = config(manifest, max_image_width=400)
  samples = sources.load_samples(cfg, "train")
  def widths(setting, batch=4):
    changed = dataclasses.replace(cfg, bucket_boundaries=setting)
    return buckets_lib.bucket_widths(changed, samples, modalities.get(changed), batch)
  assert widths("none") == ()
  assert widths("96,32,64,500") == (32, 64, 96, 400)   # sorted, capped, max added
  auto = widths("auto")
  # 96 samples, batch 4: 6 quantile buckets, multiples of 8, the widest holding the
  # widest image (161 -> 168); then doubling it (322 -> 328) up to max_image_width.
  assert len(auto) == 8 and auto[-3:] == (168, 328, 400)
  assert all(w % 8 == 0 for w in auto[:-1])
  assert widths("auto", batch=24) == ()                # too few samples per bucket
  assert widths("auto", batch=12)[1:] == (168, 328, 400)   # 96 // (4 * 12) = 2


@pytest.mark.parametrize("split", ["train", "eval"])
def test_batches_have_only_bucket_widths(manifest, split):
  cfg = config(manifest, bucket_boundaries="40,80,120", batch_size=4,
               eval_batch_size=4, max_image_width=200)
  batches = list(pipeline.make_dataset(cfg, CHARSET, split).take(60))
  widths = {int(b["inputs"].shape[2]) for b in batches}
  assert widths <= {40, 80, 120, 200} and len(widths) >= 3
  for b in batches:
    lengths = b["input_length"].numpy()
    bucket = b["inputs"].shape[2]
    lower = {40: 0, 80: 40, 120: 80, 200: 120}[bucket]
    assert np.all((lengths > lower) & (lengths <= bucket))
    # Padding past each image is zero; the labels came along.
    assert b["labels"].shape[0] == len(lengths)
  if split == "eval":   # one pass: every example once, partial batches kept
    keys = sorted(k for b in batches for k in b["key"].numpy())
    assert len(keys) == len(WIDTHS) == len(set(keys))
  else:
    assert all(b["inputs"].shape[0] == 4 for b in batches)


def test_train_step_traces_once_and_shapes_once_per_bucket(manifest):
  cfg = config(manifest, bucket_boundaries="auto", batch_size=4, max_image_width=400)
  samples = sources.load_samples(cfg, "train", CHARSET)
  buckets = buckets_lib.bucket_widths(cfg, samples, modalities.get(cfg), cfg.batch_size)
  assert len(buckets) >= 5
  _, steps = build_steps(batch_size=4)
  shapes = tf.function(lambda inputs: tf.reduce_sum(inputs))   # no input signature
  seen = set()
  for batch in pipeline.make_dataset(cfg, CHARSET, "train", samples=samples).take(24):
    seen.add(int(batch["inputs"].shape[2]))
    steps.train_step(batch)
    shapes(batch["inputs"])
  assert seen <= set(buckets) and len(seen) >= 3
  assert steps.train_step.experimental_get_tracing_count() == 1
  assert shapes.experimental_get_tracing_count() == len(seen) <= len(buckets)


def test_buckets_raise_padding_efficiency(manifest):
  def efficiency(setting):
    cfg = config(manifest, bucket_boundaries=setting, batch_size=8, max_image_width=400)
    dataset = pipeline.make_dataset(cfg, CHARSET, "train")
    return throughput.measure_input(dataset, num_batches=24,
                                    time_axis=2).padding_efficiency
  bucketed, plain = efficiency("40,80,120,170"), efficiency("none")
  assert 0 < plain < bucketed <= 1
  assert bucketed > 0.75 and plain < 0.7


def test_padding_sums_and_input_stats(manifest):
  cfg = config(manifest, bucket_boundaries="none", eval_batch_size=8)
  batch = next(iter(pipeline.make_dataset(cfg, CHARSET, "eval")))
  sums = throughput.padding_sums(batch, 2, tf.distribute.get_strategy())
  assert float(sums["valid_columns"]) == sum(WIDTHS[:8])
  assert float(sums["padded_columns"]) == 8 * max(WIDTHS[:8])
  stats = throughput.measure_input(pipeline.make_dataset(cfg, CHARSET, "eval"), 100, 2)
  assert stats.batches == len(WIDTHS) // 8 and stats.examples == len(WIDTHS) - 8
  assert "examples/s" in stats.describe() and "padding efficiency" in stats.describe()


def test_input_only_runs_the_training_pipeline(manifest, tmp_path):
  run = Config(workdir=str(tmp_path), data=config(manifest, batch_size=8),
               loop=LoopConfig(train_steps=5, log_every=2))
  stats = throughput.run_input_only(run, CHARSET)
  assert stats.batches == 5 and stats.examples == 32 and stats.examples_per_sec > 0


def test_cached_decoded_examples_are_reshuffled_each_epoch(manifest):
  cfg = config(manifest, cache_decoded=True, batch_size=8, bucket_boundaries="none")
  keys = [k for b in pipeline.make_dataset(cfg, CHARSET, "train").take(24)
          for k in b["key"].numpy()]
  epoch = len(WIDTHS)
  assert len(set(keys[:epoch])) == len(set(keys[epoch:])) == epoch
  assert keys[:epoch] != keys[epoch:]
