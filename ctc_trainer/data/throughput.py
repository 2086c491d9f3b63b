"""Is training input-bound? Input-only throughput and padding efficiency.

`run_input_only` iterates the training pipeline without a model (train.py
--input_only): compare its examples/sec with training's train/examples_per_sec, and
look at train/input_wait_fraction. Padding efficiency (valid columns / padded
columns, along the modality's time axis: image width or audio frames) says how much
of each batch is real input rather than padding; length buckets
(--bucket_boundaries) raise it.
"""

import dataclasses
import time
from typing import Dict, Optional

import tensorflow as tf
from absl import logging

from ctc_trainer import summaries
from ctc_trainer.charset import Charset
from ctc_trainer.config import Config
from ctc_trainer.data import failures, modalities, pipeline, sources


@dataclasses.dataclass
class InputStats:
  batches: int
  examples: int
  seconds: float               # from the first batch's arrival to the last's
  first_batch_seconds: float   # pipeline start-up: listing, buffers, first decodes
  valid_columns: int           # sum of input_length
  padded_columns: int          # sum of batch size x padded width

  @property
  def examples_per_sec(self) -> float:
    return self.examples / max(self.seconds, 1e-9)

  @property
  def padding_efficiency(self) -> float:
    return self.valid_columns / max(self.padded_columns, 1)

  def describe(self) -> str:
    return (f"{self.examples_per_sec:,.1f} examples/s ({self.batches} batches, "
            f"{self.examples} examples in {self.seconds:.1f}s after a first batch in "
            f"{self.first_batch_seconds:.1f}s); padding efficiency "
            f"{100 * self.padding_efficiency:.1f}%")


def padding_sums(batch: Dict[str, tf.Tensor], time_axis: int,
                 strategy: Optional[tf.distribute.Strategy] = None) -> Dict[str, tf.Tensor]:
  """{valid_columns, padded_columns}: float32 scalars of one (distributed) batch.

  valid = sum(input_length); padded = batch size x padded length along time_axis
  (the Modality's: 2 for images [B, H, W, C], 1 for audio [B, T, F]), per replica.
  Add them up over an interval as tensors (metrics.add_sums) and divide once at the
  log.
  """
  local = strategy.experimental_local_results if strategy is not None else (
      lambda value: (value,))
  valid, padded = [], []
  for lengths, inputs in zip(local(batch["input_length"]), local(batch["inputs"])):
    valid.append(tf.reduce_sum(tf.cast(lengths, tf.float32)))
    padded.append(tf.cast(tf.size(lengths) * tf.shape(inputs)[time_axis], tf.float32))
  return {"valid_columns": tf.add_n(valid), "padded_columns": tf.add_n(padded)}


def measure_input(dataset: tf.data.Dataset, num_batches: int, time_axis: int,
                  log_every: int = 0) -> InputStats:
  """Iterates `num_batches` batch dicts (fewer if the dataset ends) and times them;
  padding along `time_axis` of the inputs (Modality.time_axis).

  The clock starts when the first batch arrives, so start-up is reported apart.
  Logs the running rate every `log_every` batches (0: never).
  """
  start = time.time()
  iterator = iter(dataset)
  stats = InputStats(0, 0, 0.0, 0.0, 0, 0)
  clock = start
  for index in range(num_batches):
    try:
      batch = next(iterator)
    except StopIteration:
      break
    lengths = batch["input_length"].numpy()
    if index == 0:
      clock = time.time()
      stats.first_batch_seconds = clock - start
    else:
      # The first batch only marks the start: counting it would credit start-up.
      stats.examples += len(lengths)
    stats.batches += 1
    stats.valid_columns += int(lengths.sum())
    stats.padded_columns += len(lengths) * int(batch["inputs"].shape[time_axis])
    stats.seconds = time.time() - clock
    if log_every and stats.batches % log_every == 0:
      rate = stats.examples / max(stats.seconds, 1e-9)
      logging.info("input only: batch %d/%d  %.0f examples/s  padding efficiency "
                   "%.1f%%  ETA %s", stats.batches, num_batches, rate,
                   100 * stats.padding_efficiency, summaries.format_duration(
                       (num_batches - stats.batches) * stats.seconds /
                       max(stats.batches - 1, 1)))
  return stats


def run_input_only(cfg: Config, charset: Charset) -> InputStats:
  """The training pipeline of `cfg`, iterated for cfg.loop.train_steps batches
  without a model, logging every cfg.loop.log_every (train.py --input_only)."""
  samples = sources.load_samples(cfg.data, "train", charset)
  dataset = pipeline.make_dataset(cfg.data, charset, "train", samples=samples)
  time_axis = modalities.get(cfg.data).time_axis
  try:
    return measure_input(dataset, cfg.loop.train_steps, time_axis, cfg.loop.log_every)
  except failures.PIPELINE_ERRORS as e:
    raise failures.explain(e, samples, cfg.data) from None
