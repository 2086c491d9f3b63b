"""How big is a training checkpoint's input state, with and without --cache_decoded?

  python tools/bench_checkpoint.py [--size=3000] [--steps=200] [--data_dir=/tmp/...]

Generates (once) a synthetic text-line set like the demo's, builds the training input
pipeline as train.py does (batch 32, automatic length buckets), reads --steps batches,
and writes the iterator's checkpoint, the part of a training checkpoint that holds
the input position. Prints its size with --cache_decoded off and on (the log gives
the decoded set's size, for scale) and the time to the first batch (the in-memory
set is decoded before it). docs/benchmarks.md records a run.
"""

import dataclasses
import os
import shutil
import tempfile
import time

from absl import app, flags

import tensorflow as tf

from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig
from ctc_trainer.data import pipeline, sources

flags.DEFINE_integer("size", 3000, "Training lines to generate.", lower_bound=64)
flags.DEFINE_integer("steps", 200, "Batches read before the checkpoint.", lower_bound=1)
flags.DEFINE_string("data_dir", os.path.join(tempfile.gettempdir(),
                                             "ctc_bench_checkpoint"),
                    "Where the synthetic set is generated (kept for later runs).")
FLAGS = flags.FLAGS


def measure(cfg: DataConfig, charset: Charset, steps: int) -> dict:
  start = time.time()
  iterator = iter(pipeline.make_dataset(cfg, charset, "train"))
  batch = next(iterator)
  first = time.time() - start
  for _ in range(steps - 1):
    batch = next(iterator)
  folder = tempfile.mkdtemp(prefix="ckpt-")
  try:
    tf.train.Checkpoint(iterator=iterator).write(os.path.join(folder, "ckpt"))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
  finally:
    shutil.rmtree(folder)
  return {"checkpoint_mb": size / 2**20, "first_batch_s": first,
          "batch_shape": tuple(batch["inputs"].shape)}


def main(argv):
  del argv
  cfg = DataConfig(train_data=os.path.join(FLAGS.data_dir, "train"),
                   eval_data=os.path.join(FLAGS.data_dir, "eval"),
                   data_format="synthetic", synthetic_train_size=FLAGS.size,
                   synthetic_eval_size=64)
  samples = sources.load_samples(cfg, "train")
  charset = Charset.from_texts(samples.label_texts())
  for cached in (False, True):
    # With the cache on, memory.load logs the decoded set's size, for scale.
    result = measure(dataclasses.replace(cfg, cache_decoded=cached), charset,
                     FLAGS.steps)
    print(f"cache_decoded={str(cached).lower():5}  iterator checkpoint "
          f"{result['checkpoint_mb']:7.2f} MB  first batch after "
          f"{result['first_batch_s']:5.1f} s  (after {FLAGS.steps} batches of "
          f"{result['batch_shape']})", flush=True)


if __name__ == "__main__":
  app.run(main)
