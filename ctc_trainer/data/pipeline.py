"""tf.data input pipelines: sample list -> streamed, decoded, padded batch dicts.

Batch dict (the contract in DESIGN.md):
  inputs        float32 [B, H, W, C]  ink bright, background and padding 0
  input_length  int32   [B]           width of each image before padding
  labels        int32   [B, L]        charset ids, padded with 0 (the blank)
  label_length  int32   [B]
  text          string  [B]
  key           string  [B]           the image path

Images are read from disk as the pipeline runs, never held in memory as a whole.
A file that cannot be read or decoded raises an error naming its path (policy
'error') or is dropped with a warning naming it (policy 'skip').
"""

import re
import sys
from typing import Dict, Optional

import tensorflow as tf

from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig
from ctc_trainer.data import image as image_lib
from ctc_trainer.data.sources import DataError, SampleList, load_samples

AUTOTUNE = tf.data.AUTOTUNE
# Images decoded concurrently; each is its own tiny dataset (see _decode_each).
_DECODE_CYCLE = 16
_BAD_IMAGE = "Cannot read or decode image"   # explain_pipeline_error looks for it


def batch_signature(channels: int, height: int) -> Dict[str, tf.TensorSpec]:
  """The batch dict's TensorSpecs, with None batch, width and label length dims."""
  return {
      "inputs": tf.TensorSpec([None, height, None, channels], tf.float32),
      "input_length": tf.TensorSpec([None], tf.int32),
      "labels": tf.TensorSpec([None, None], tf.int32),
      "label_length": tf.TensorSpec([None], tf.int32),
      "text": tf.TensorSpec([None], tf.string),
      "key": tf.TensorSpec([None], tf.string),
  }


def make_dataset(cfg: DataConfig, charset: Charset, split: str,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 samples: Optional[SampleList] = None) -> tf.data.Dataset:
  """Batches of the 'train' or 'eval' split, as the module docstring describes.

  train: sharded (with input_context), shuffled each epoch with cfg.seed, repeated
  forever, cfg.batch_size split across replicas, partial batches dropped.
  eval: one pass in file order, cfg.eval_batch_size (split across replicas), the last
  partial batch kept. `samples` defaults to load_samples(cfg, split, charset).
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  if samples is None:
    samples = load_samples(cfg, split, charset)
  training = split == "train"
  batch_size = cfg.batch_size if training else cfg.eval_batch_size
  if input_context is not None:
    batch_size = input_context.get_per_replica_batch_size(batch_size)
  # Build the lookup tables eagerly: created inside a tf.data function they would be
  # rebuilt in every function graph instead of being shared.
  charset.encode(tf.constant([""]))

  ds = tf.data.Dataset.from_tensor_slices((samples.paths, samples.texts))
  if input_context is not None and input_context.num_input_pipelines > 1:
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if training:
    ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.repeat()
  ds = _decode_each(ds, cfg)
  ds = ds.padded_batch(batch_size, drop_remainder=training)
  ds = ds.map(lambda batch: _add_labels(batch, charset), num_parallel_calls=AUTOTUNE)
  return ds.prefetch(AUTOTUNE)


def explain_pipeline_error(error: Exception, samples: SampleList) -> DataError:
  """A DataError naming the sample whose image fails to read or decode.

  The pipeline's own errors carry the path (see _decode_each), which is used when
  present. Otherwise the samples are decoded eagerly one by one until one fails, so
  call this only on the failure path.
  """
  message = str(getattr(error, "message", error))
  named = re.search(re.escape(_BAD_IMAGE) + r"\] \[(.*?)\] \[", message)
  if named:
    path = named.group(1)
    origin = next((s.origin for s in samples.samples if s.path == path), path)
    return DataError(f"{origin}: cannot read or decode image {path} (empty, "
                     f"truncated or not PNG, JPEG, GIF or BMP); fix or remove it, or "
                     f"set --bad_sample_policy=skip")
  for sample in samples.samples:
    try:
      image_lib.decode_image(tf.io.read_file(sample.path), channels=3)
    except (tf.errors.OpError, ValueError) as e:
      return DataError(f"{sample.origin}: cannot read or decode image {sample.path}: "
                       f"{_first_line(e)}")
  return DataError(f"input pipeline failed, but every image decodes: "
                   f"{_first_line(error)}")


# --- internals ---------------------------------------------------------------------

def _decode_each(ds: tf.data.Dataset, cfg: DataConfig) -> tf.data.Dataset:
  """(path, text) -> {inputs [H, W, C], input_length, text, key}, decoded in parallel.

  tf.data cannot catch an error of one element and name it, so each image gets its
  own one-element dataset: the decode with its errors ignored, followed by a fallback
  element that is only reached when the decode produced nothing. The fallback fails
  with the path in the message (policy 'error') or is marked bad and filtered out
  with a counted warning (policy 'skip'). interleave runs the little datasets in
  parallel and keeps the input order, so a seed gives the same batches every run.
  """
  skip = cfg.bad_sample_policy == "skip"

  def decode(path, text):
    image, width = image_lib.decode_and_resize(
        tf.io.read_file(path), cfg.image_height, cfg.image_channels,
        cfg.max_image_width)
    return {"inputs": image, "input_length": width, "text": text, "key": path,
            "ok": tf.constant(True)}

  def fallback(path, text):
    if not skip:
      tf.debugging.Assert(False, [
          _BAD_IMAGE, path, "(empty, truncated or not PNG, JPEG, "
          "GIF or BMP). Fix or remove it, or set --bad_sample_policy=skip."])
    empty = tf.zeros([cfg.image_height, 1, cfg.image_channels], tf.float32)
    return {"inputs": empty, "input_length": tf.constant(1), "text": text, "key": path,
            "ok": tf.constant(False)}

  def one_sample(path, text):
    pair = tf.data.Dataset.from_tensors((path, text))
    decoded = pair.map(decode).ignore_errors()
    return decoded.concatenate(pair.map(fallback)).take(1)

  ds = ds.interleave(one_sample, cycle_length=_DECODE_CYCLE, block_length=1,
                     num_parallel_calls=AUTOTUNE, deterministic=True)
  if skip:
    ds = ds.scan(tf.constant(0, tf.int64), _warn_on_skip).filter(lambda x: x["ok"])
  return ds.map(lambda x: {k: v for k, v in x.items() if k != "ok"})


def _warn_on_skip(skipped: tf.Tensor, element: Dict[str, tf.Tensor]):
  """scan fn: counts dropped images and logs each with the count since the start."""
  if not element["ok"]:
    skipped += 1
    # stderr, not the C++ log: TF_CPP_MIN_LOG_LEVEL, often set to quiet TensorFlow,
    # would hide the warning.
    tf.print("WARNING ctc_trainer: skipping unreadable or undecodable image",
             element["key"], "- skipped so far:", skipped, output_stream=sys.stderr)
  return skipped, element


def _add_labels(batch: Dict[str, tf.Tensor], charset: Charset) -> Dict[str, tf.Tensor]:
  """Encodes the batch's texts: labels int32 [B, L] padded with 0, label_length [B]."""
  ids = charset.encode(batch["text"])
  batch["labels"] = ids.to_tensor(0)
  batch["label_length"] = tf.cast(ids.row_lengths(), tf.int32)
  return batch


def _first_line(error: Exception) -> str:
  return str(getattr(error, "message", error)).strip().splitlines()[0]
