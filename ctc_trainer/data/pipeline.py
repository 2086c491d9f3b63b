"""tf.data input pipelines: a Source's samples -> streamed, decoded batch dicts.

Batch dict (the contract in docs/architecture.md):
  inputs        float32 [B, H, W, C] images (ink bright, background and padding 0), or
                [B, T, F] audio features; the Modality says which
  input_length  int32   [B]           width or frames of each example before padding
  labels        int32   [B, L]        charset ids, padded with 0 (the blank)
  label_length  int32   [B]
  text          string  [B]
  key           string  [B]           the file's path, or the record's key
  encoded       string  [B]           only when asked for: the bytes decoded

make_dataset composes the seams:
  Source (sources/)      raw examples, [sharded], [shuffled and repeated]
  failures.decode        decoded by the Modality (image.py, audio.py), a sample that
                         fails named: an error, or skipped with a warning
  [in memory]            cache_decoded, training: decoded once, drawn by shuffled index
  [augment]              the Modality's training augmentation
  buckets                padded to a length bucket (or the batch's longest) and batched
  labels                 encoded, checked against the charset; prefetched
Shuffling happens on paths or encoded records, before decoding, so no buffer holds
decoded examples; memory does not grow with the set. With cache_decoded (sets that
fit in RAM) the training set is decoded once into memory (memory.py) and shuffled by
index, so checkpoints still hold positions, not images.
"""

from typing import Dict, Optional, Tuple

import tensorflow as tf

from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig
from ctc_trainer.data import buckets, failures, memory, modalities, service, sources

AUTOTUNE = tf.data.AUTOTUNE


def input_shape(cfg: DataConfig) -> Tuple[Optional[int], ...]:
  """One example's `inputs` shape, None along time: (image_height, None,
  image_channels) for images, (None, num_mel_bins) for audio features [T, F]."""
  return modalities.get(cfg).example_shape


def batch_signature(channels: int, height: int,
                    shape: Optional[Tuple[Optional[int], ...]] = None,
                    ) -> Dict[str, tf.TensorSpec]:
  """The batch dict's TensorSpecs, with None batch, width and label length dims.

  shape: one example's inputs shape (input_shape(cfg)); default the image shape
  (height, None, channels).
  """
  shape = shape or (height, None, channels)
  return {
      "inputs": tf.TensorSpec([None, *shape], tf.float32),
      "input_length": tf.TensorSpec([None], tf.int32),
      "labels": tf.TensorSpec([None, None], tf.int32),
      "label_length": tf.TensorSpec([None], tf.int32),
      "text": tf.TensorSpec([None], tf.string),
      "key": tf.TensorSpec([None], tf.string),
  }


def make_dataset(cfg: DataConfig, charset: Charset, split: str,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 samples: Optional[sources.Source] = None, limit: int = 0,
                 keep_encoded: bool = False,
                 start_position: Optional[int] = None) -> tf.data.Dataset:
  """Batches of the 'train' or 'eval' split, as the module docstring describes.

  train: sharded (with input_context), shuffled each epoch with cfg.seed, repeated
  forever, cfg.batch_size split across replicas, partial batches dropped.
  eval: one pass in file order, cfg.eval_batch_size (split across replicas), the last
  partial batch kept (one per bucket). With length buckets (cfg.bucket_boundaries,
  see buckets.bucket_widths) every batch is padded to one of a few fixed lengths,
  which reorders examples within the shuffle/file order. `samples` defaults to
  sources.load_samples(cfg, split, charset). limit > 0: only the first `limit`
  examples that decode. keep_encoded: batches carry `encoded` too.
  start_position (train, listed samples): read the stream of epochs by position
  from there (sources.base.ListedSource.positioned_examples: each epoch a seeded
  permutation of the whole set, --shuffle_buffer unused) and give each batch a
  `position` int64 [B]: what a run saves to resume without a checkpointable
  iterator (under a distribution strategy, through the data service).
  With cfg.data_service the training batches come from the tf.data service
  (service.py); eval is always read here.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  if samples is None:
    samples = sources.load_samples(cfg, split, charset)
  modality = modalities.get(cfg)
  training = split == "train"
  batch_size = cfg.batch_size if training else cfg.eval_batch_size
  if input_context is not None:
    batch_size = input_context.get_per_replica_batch_size(batch_size)
  # Build the lookup tables eagerly: created inside a tf.data function they would be
  # rebuilt in every function graph instead of being shared.
  charset.encode(tf.constant([""]))

  # Shuffle and repeat cheap items (paths, encoded records) before decoding; or,
  # with cache_decoded, decode the set once into memory and shuffle indices into it.
  in_memory = training and cfg.cache_decoded
  if start_position is not None and (not training or in_memory or not hasattr(
      samples, "positioned_examples")):
    raise ValueError("start_position needs the training split of listed samples, "
                     "without cache_decoded")
  ds = failures.decode(samples, modality, cfg, charset, training and not in_memory,
                       None if in_memory else input_context, keep_encoded=keep_encoded,
                       start=start_position)
  if limit > 0:
    ds = ds.take(limit)
  if in_memory:
    ds = memory.dataset(_load(ds.with_options(dataset_options(cfg)), samples, modality,
                              cfg), shuffle_seed=cfg.seed, input_context=input_context)
  if training:
    # After the in-memory set, so that every epoch draws anew; never on eval data.
    ds = modality.augment(ds, cfg.seed)
  widths = buckets.bucket_widths(cfg, samples, modality, batch_size, split)
  ds = buckets.batch(ds, batch_size, widths, drop_remainder=training)
  ds = ds.map(tf.autograph.experimental.do_not_convert(
      lambda batch: _add_labels(batch, charset)), num_parallel_calls=AUTOTUNE)
  ds = ds.prefetch(AUTOTUNE).with_options(dataset_options(cfg))
  if training and cfg.data_service:
    ds = service.distribute(ds, cfg)
  if training and (start_position is not None or cfg.data_service):
    # The stream by position (and what the service sends) never ends, but neither
    # has a static infinite cardinality; said here, so that a multi-worker
    # distributed iterator does not all-reduce "is there a next batch?" every step.
    ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
  return ds


def _load(examples: tf.data.Dataset, samples: sources.Source, modality,
          cfg: DataConfig) -> memory.InMemory:
  """The decoded examples in memory, a failure named as in training."""
  try:
    return memory.load(examples, time_axis=modality.time_axis - 1,
                       what=f"{modality.name} examples")
  except failures.PIPELINE_ERRORS as e:
    raise failures.explain(e, samples, cfg) from None


def dataset_options(cfg: DataConfig) -> tf.data.Options:
  """The tf.data Options of every input pipeline: set here and nowhere else."""
  options = tf.data.Options()
  options.deterministic = cfg.deterministic_input
  return options


def _add_labels(batch: Dict[str, tf.Tensor], charset: Charset) -> Dict[str, tf.Tensor]:
  """Encodes the batch's texts: labels int32 [B, L] padded with 0, label_length [B].

  A character outside the charset (possible only in TFRecords; listed samples were
  checked when listed) is an error naming the first such example's key and label.
  """
  ids = charset.encode(batch["text"])
  unknown = tf.reduce_any(ids < 0, axis=1)
  first = tf.argmax(tf.cast(unknown, tf.int32))
  tf.debugging.Assert(tf.logical_not(tf.reduce_any(unknown)), [
      failures.BAD_LABEL, batch["key"][first], batch["text"][first],
      "(--unknown_char_policy=skip drops such samples)"])
  batch["labels"] = ids.to_tensor(0)
  batch["label_length"] = tf.cast(ids.row_lengths(), tf.int32)
  return batch
