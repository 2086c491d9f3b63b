"""Length bucketing: a few padded widths (or frame counts) chosen from a scan of the
data, and the batching that pads every batch to one of them."""

from typing import Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from ctc_trainer.config import DataConfig

# Automatic buckets: lengths at quantiles of up to _SCAN_SIZES samples' lengths, at
# most _MAX_BUCKETS of them, fewer when the set has too few samples for each bucket
# to fill _BATCHES_PER_BUCKET batches; lengths rounded up to a multiple of _ALIGN.
_SCAN_SIZES = 1000
_MAX_BUCKETS = 8
_BATCHES_PER_BUCKET = 4
_ALIGN = 8


def bucket_widths(cfg: DataConfig, source, modality, batch_size: int,
                  split: str = "train") -> Tuple[int, ...]:
  """The padded lengths along time of the buckets, ascending; () means no bucketing.

  An example goes to the first bucket at least as long as it and is padded to that
  length, so a batch has one of these lengths. The last is always the modality's
  max_length, so every example has a bucket. cfg.bucket_boundaries: 'none' -> ();
  '64,128' -> those; 'auto' -> lengths at quantiles of the lengths of up to 1,000
  samples drawn at random (the source's length scan: file headers or TFRecord
  features, once per source), as many as the set can fill with a few batches each
  (at most 8), then doubling from the longest up to max_length.
  """
  setting = cfg.bucket_boundaries.strip().lower()
  if setting == "none":
    return ()
  longest = modality.max_length
  if setting != "auto":
    given = sorted({int(w) for w in setting.split(",")})
    return tuple(w for w in given if w < longest) + (longest,)
  first_scan = source.length_scan is None
  if first_scan:
    source.length_scan = source.scan_lengths(modality, _SCAN_SIZES)
  lengths = source.length_scan
  if not len(lengths):
    return ()
  set_size = source.count()
  if set_size is None:   # only known to be at least as large as the scan
    set_size = len(lengths) if len(lengths) < _SCAN_SIZES else np.inf
  count = int(min(_MAX_BUCKETS, set_size // (_BATCHES_PER_BUCKET * batch_size)))
  if count < 2:
    return ()
  edges = np.quantile(lengths, np.arange(1, count + 1) / count, method="higher")
  # Above the longest scanned length, double up to max_length: an example longer
  # than any scanned is padded to at most twice its length, never straight to the
  # longest (a 2048-wide batch of captchas would cost the model ~20x a normal one).
  ladder = [edges[-1] * 2 ** i for i in range(1, 32) if edges[-1] * 2 ** i < longest]
  aligned = np.minimum(-(-np.concatenate([edges, ladder]) // _ALIGN) * _ALIGN, longest)
  buckets = tuple(sorted({int(w) for w in aligned} | {longest}))
  if first_scan:
    logging.info(
        "Length buckets for %s (padded lengths): %s; padding efficiency about %.0f%% "
        "(%.0f%% without buckets), estimated from %d %s files' sizes", split,
        list(buckets), 100 * _bucketed_efficiency(lengths, buckets),
        100 * _unbucketed_efficiency(lengths, batch_size), len(lengths), modality.name)
  return buckets


def batch(ds: tf.data.Dataset, batch_size: int, widths: Tuple[int, ...],
          drop_remainder: bool) -> tf.data.Dataset:
  """Examples -> batches padded with zeros to a bucket's length (or the batch's
  longest example when `widths` is empty)."""
  if not widths:
    return ds.padded_batch(batch_size, drop_remainder=drop_remainder)
  # Bucket i holds lengths in [widths[i-1] + 1, widths[i]] and pads to widths[i]
  # (pad_to_bucket_boundary pads to boundary - 1); the extra last bucket that
  # bucket_by_sequence_length adds stays empty, as no length exceeds widths[-1].
  return ds.bucket_by_sequence_length(
      lambda x: x["input_length"], bucket_boundaries=[w + 1 for w in widths],
      bucket_batch_sizes=[batch_size] * (len(widths) + 1),
      pad_to_bucket_boundary=True, drop_remainder=drop_remainder)


def _bucketed_efficiency(lengths: np.ndarray, buckets: Tuple[int, ...]) -> float:
  """Valid / padded columns when every length is padded to its bucket."""
  padded = np.array(buckets)[np.searchsorted(buckets, lengths)]
  return float(lengths.sum() / padded.sum())


def _unbucketed_efficiency(lengths: np.ndarray, batch_size: int) -> float:
  """Valid / padded columns of random batches padded to their longest example."""
  rng = np.random.default_rng(0)
  batches = len(lengths) // batch_size
  if not batches:
    return float(lengths.sum() / (len(lengths) * lengths.max()))
  shuffled = rng.permutation(lengths)[:batches * batch_size].reshape(batches, batch_size)
  return float(shuffled.sum() / (shuffled.max(axis=1).sum() * batch_size))
