"""The tfrecord source: a file pattern of TFRecord shards (data/tfrecord.py)."""

from typing import Iterator, List

import tensorflow as tf

from ctc_trainer.data import failures, tfrecord
from ctc_trainer.data.sources.base import Source


def load(cfg, split, location, charset):
  shards = tfrecord.list_shards(location)
  return TFRecordSource(shards, tfrecord.compression_of(shards, cfg.tfrecord_compression))


class TFRecordSource(Source):
  """Shards whose records are only known by reading them."""

  def __init__(self, shards: List[str], compression: str):
    self.shards = shards
    self.compression = compression   # "" or "GZIP"

  def count(self):
    return None

  def examples(self, cfg, charset, shuffle_and_repeat, input_context, read=True):
    ds = tfrecord.read_examples(self.shards, self.compression, cfg, shuffle_and_repeat,
                                input_context)
    if cfg.unknown_char_policy == "skip" and charset is not None:
      return _drop_unknown_labels(ds, charset)
    return ds   # policy 'error': pipeline checks each batch's labels

  def label_texts(self) -> Iterator[str]:
    return tfrecord.read_texts(self.shards, self.compression)

  def scan_lengths(self, modality, limit):
    return tfrecord.scan_lengths(self.shards, self.compression, limit,
                                 modality.record_length)

  def describe(self) -> str:
    return f"{len(self.shards)} shards"


def _drop_unknown_labels(ds: tf.data.Dataset, charset) -> tf.data.Dataset:
  """Drops examples whose label has characters outside the charset (listed samples
  are checked when listed), each named once."""
  def mark(x):
    return dict(x, ok=tf.reduce_all(charset.encode(x["text"][None]).flat_values >= 0))

  return failures.drop_flagged(ds.map(mark, num_parallel_calls=tf.data.AUTOTUNE),
                               "skipping a label with characters not in the charset")
