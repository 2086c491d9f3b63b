"""Decoded examples held in memory and drawn by index (--cache_decoded).

tf.data's `cache()` keeps its contents in the iterator's state, so every training
checkpoint would hold the whole decoded set, and a shuffle buffer of decoded images
after it. Here the set is decoded once into one time-major array per field, and the
training stream shuffles indices: a checkpoint holds the index buffer (8 bytes an
example) and the position, never the images, and a resumed run continues exactly.
"""

import dataclasses
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

_PROGRESS_EVERY_S = 30.0


@dataclasses.dataclass(frozen=True)
class InMemory:
  """Examples {inputs, input_length, text, key} of one split, decoded.

  values: the examples' inputs concatenated along time, time first ([sum T, H, C]
  for images [H, T, C], [sum T, F] for audio [T, F]); starts, lengths: int64 [n],
  each example's slice of values; input_length int32 [n]; text, key: bytes [n].
  """
  values: np.ndarray
  starts: np.ndarray
  lengths: np.ndarray
  input_length: np.ndarray
  text: np.ndarray
  key: np.ndarray
  time_axis: int

  def __len__(self) -> int:
    return len(self.starts)

  @property
  def nbytes(self) -> int:
    return self.values.nbytes


def load(examples: tf.data.Dataset, time_axis: int, what: str = "examples") -> InMemory:
  """One pass over a finite dataset of examples -> InMemory. Logs progress every
  30 s, and the size at the end. time_axis: the time axis of one example's inputs."""
  parts, input_length, text, key = [], [], [], []
  start = last = time.time()
  for x in examples.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    parts.append(np.moveaxis(x["inputs"], time_axis, 0))
    input_length.append(x["input_length"])
    text.append(x["text"])
    key.append(x["key"])
    if time.time() - last >= _PROGRESS_EVERY_S:
      last = time.time()
      logging.info("--cache_decoded: %d %s decoded (%.0f/s)", len(parts), what,
                   len(parts) / (last - start))
  if not parts:
    raise ValueError(f"no {what} to hold in memory")
  lengths = np.array([len(p) for p in parts], np.int64)
  store = InMemory(values=np.concatenate(parts), starts=np.cumsum(lengths) - lengths,
                   lengths=lengths, input_length=np.array(input_length, np.int32),
                   text=np.array(text, object), key=np.array(key, object),
                   time_axis=time_axis)
  logging.info("--cache_decoded: %d %s in memory, %.1f MB, decoded in %.0f s",
               len(store), what, store.nbytes / 2**20, time.time() - start)
  return store


def dataset(store: InMemory, shuffle_seed: Optional[int] = None,
            input_context: Optional[tf.distribute.InputContext] = None
            ) -> tf.data.Dataset:
  """The stored examples as a dataset of {inputs, input_length, text, key}.

  shuffle_seed None: one pass in stored order. Otherwise shuffled (the whole set,
  by index, reshuffled every epoch from the seed) and repeated forever. With an
  input context, each input pipeline draws its own share of the indices.
  """
  # Eager tensors, captured by the map function as inputs: the dataset graph and
  # the iterator's checkpoint refer to them without holding a copy.
  values = tf.constant(store.values)
  starts, lengths = tf.constant(store.starts), tf.constant(store.lengths)
  input_length = tf.constant(store.input_length)
  text, key = tf.constant(store.text, tf.string), tf.constant(store.key, tf.string)
  rank = store.values.ndim
  # The inverse of moving time to the front: axis 0 goes back to time_axis.
  back = list(range(1, store.time_axis + 1)) + [0] + list(range(store.time_axis + 1, rank))

  @tf.autograph.experimental.do_not_convert   # graph code: see failures.decode
  def fetch(index):
    inputs = values[starts[index]:starts[index] + lengths[index]]
    return {"inputs": tf.transpose(inputs, back), "input_length": input_length[index],
            "text": text[index], "key": key[index]}

  indices = tf.data.Dataset.range(len(store))
  if input_context is not None and input_context.num_input_pipelines > 1:
    indices = indices.shard(input_context.num_input_pipelines,
                            input_context.input_pipeline_id)
  if shuffle_seed is not None:
    indices = indices.shuffle(len(store), seed=shuffle_seed,
                              reshuffle_each_iteration=True).repeat()
  return indices.map(fetch, num_parallel_calls=tf.data.AUTOTUNE)
