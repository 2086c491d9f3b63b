"""tf.data input pipelines: samples or TFRecord shards -> streamed, decoded batch dicts.

Batch dict (the contract in DESIGN.md):
  inputs        float32 [B, H, W, C]  ink bright, background and padding 0
  input_length  int32   [B]           width of each image before padding
  labels        int32   [B, L]        charset ids, padded with 0 (the blank)
  label_length  int32   [B]
  text          string  [B]
  key           string  [B]           the image path (the record's key for TFRecords)

Two sources feed one tail, so preprocessing and batching have one implementation:
  files     (path, label) list -> [shard] -> [shuffle, repeat] -> read -> decode
  tfrecord  shards -> [shard] -> [shuffle, repeat] -> chunks of records, interleaved
            across shards, each size-checked and parsed at once -> [shuffle records]
            -> decode -> label check
  tail      [cache] -> length buckets (or pad to the batch's widest) -> batch
            -> encode labels -> prefetch
Shuffling happens on paths or encoded records, before decoding, so no buffer holds
decoded images (unless cache_decoded asks for it); memory does not grow with the set.

A file or record that cannot be read or decoded is dropped with a warning naming it
(policy 'skip'), or stops the pipeline (policy 'error'): with an error that names it,
or, for images, a plain decode error that explain_pipeline_error turns into one
naming it. A truncated or corrupt TFRecord shard is named the same ways.
"""

import dataclasses
import re
import sys
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig
from ctc_trainer.data import audio as audio_lib
from ctc_trainer.data import image as image_lib
from ctc_trainer.data import tfrecord
from ctc_trainer.data.sources import SampleList, load_samples, spread
from ctc_trainer.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
# TFRecord shards read concurrently.
_SHARD_CYCLE = 16
_BAD_IMAGE = "Cannot read or decode image"   # explain_pipeline_error looks for these
_BAD_AUDIO = "Cannot read or decode audio"
_BAD_SHARD = "Truncated or corrupt TFRecord shard"
_BAD_LABEL = "Label has characters not in the charset"
_BAD_RECORD = "Cannot parse record"
_CHUNK = 64   # elements per small dataset in _guarded_map
_CONCURRENT_READS = 8   # files read at once by the fast image path
# Automatic length buckets: widths at quantiles of up to _SCAN_SIZES images' sizes,
# at most _MAX_BUCKETS of them, fewer when the set has too few samples for each bucket
# to fill _BATCHES_PER_BUCKET batches; widths rounded up to a multiple of _ALIGN.
_SCAN_SIZES = 1000
_MAX_BUCKETS = 8
_BATCHES_PER_BUCKET = 4
_ALIGN = 8


def input_shape(cfg: DataConfig) -> Tuple[Optional[int], ...]:
  """One example's `inputs` shape, None along time: (image_height, None,
  image_channels) for images, (None, num_mel_bins) for audio features [T, F]."""
  if cfg.modality == "audio":
    return (None, cfg.audio.num_mel_bins)
  return (cfg.image_height, None, cfg.image_channels)


def max_length(cfg: DataConfig) -> int:
  """The longest input along time: max_image_width, or the frames of
  max_audio_seconds of audio."""
  if cfg.modality == "audio":
    return audio_lib.max_frames(cfg.audio)
  return cfg.max_image_width


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
                 samples: Optional[SampleList] = None) -> tf.data.Dataset:
  """Batches of the 'train' or 'eval' split, as the module docstring describes.

  train: sharded (with input_context), shuffled each epoch with cfg.seed, repeated
  forever, cfg.batch_size split across replicas, partial batches dropped.
  eval: one pass in file order, cfg.eval_batch_size (split across replicas), the last
  partial batch kept (one per bucket). With length buckets (cfg.bucket_boundaries,
  see bucket_widths) every batch is padded to one of a few fixed widths, which
  reorders examples within the shuffle/file order. `samples` defaults to
  load_samples(cfg, split, charset).
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

  # Shuffle and repeat cheap items (paths, encoded records) before decoding. A cache
  # of decoded examples has to come first, and the shuffle after it.
  early = training and not cfg.cache_decoded
  if samples.shards:
    ds = _tfrecord_examples(samples, cfg, charset, early, input_context)
  else:
    ds = _file_examples(samples, cfg, early, input_context)
  if cfg.cache_decoded:
    ds = ds.cache()
    if training:
      ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
      ds = ds.repeat()
  if training and cfg.modality == "audio":
    # After the cache, so that every epoch draws new masks; never on eval data.
    ds = audio_lib.augment_dataset(ds, cfg.audio, cfg.seed)
  widths = bucket_widths(cfg, samples, batch_size, split)
  ds = _examples_to_batches(ds, charset, batch_size, widths, drop_remainder=training)
  options = tf.data.Options()
  options.deterministic = cfg.deterministic_input
  return ds.with_options(options)


def bucket_widths(cfg: DataConfig, samples: SampleList, batch_size: int,
                  split: str = "train") -> Tuple[int, ...]:
  """The padded widths of the length buckets, ascending; () means no bucketing.

  An image goes to the first bucket at least as wide as it and is padded to that
  width, so a batch has one of these widths. The last is always max_image_width, so
  every image has a bucket. cfg.bucket_boundaries: 'none' -> (); '64,128' -> those
  widths; 'auto' -> widths at quantiles of the resized widths of up to 1,000 images
  drawn at random (read from image headers or the TFRecord height/width features,
  once per SampleList), as many as the set can fill with a few batches each (at
  most 8), then doubling from the widest up to max_image_width.
  """
  setting = cfg.bucket_boundaries.strip().lower()
  if setting == "none":
    return ()
  longest = max_length(cfg)
  if setting != "auto":
    given = sorted({int(w) for w in setting.split(",")})
    return tuple(w for w in given if w < longest) + (longest,)
  audio = cfg.modality == "audio"
  first_scan = samples.size_scan is None
  if first_scan:
    # Audio: feature frames from WAV headers; images: (height, width).
    samples.size_scan = (audio_lib.scan_frames(samples, cfg.audio, _SCAN_SIZES)
                         if audio else _scan_sizes(samples))
  sizes = samples.size_scan
  if not len(sizes):
    return ()
  if audio:
    widths = sizes
  else:
    scaled = np.round(sizes[:, 1] * cfg.image_height / np.maximum(sizes[:, 0], 1))
    widths = np.clip(scaled, 1, cfg.max_image_width).astype(np.int64)
  # A TFRecord set is only known to be at least as large as the scan.
  set_size = len(samples) if not samples.shards else (
      len(sizes) if len(sizes) < _SCAN_SIZES else np.inf)
  count = int(min(_MAX_BUCKETS, set_size // (_BATCHES_PER_BUCKET * batch_size)))
  if count < 2:
    return ()
  edges = np.quantile(widths, np.arange(1, count + 1) / count, method="higher")
  # Above the widest scanned width, double up to the longest: an image wider than
  # any scanned is padded to at most twice its width, never straight to the longest
  # (a 2048-wide batch of captchas would cost the model ~20x a normal one).
  ladder = [edges[-1] * 2 ** i for i in range(1, 32) if edges[-1] * 2 ** i < longest]
  aligned = np.minimum(-(-np.concatenate([edges, ladder]) // _ALIGN) * _ALIGN, longest)
  buckets = tuple(sorted({int(w) for w in aligned} | {longest}))
  if first_scan:
    logging.info(
        "Length buckets for %s (padded widths): %s; padding efficiency about %.0f%% "
        "(%.0f%% without buckets), estimated from %d %s files' sizes", split,
        list(buckets), 100 * _bucketed_efficiency(widths, buckets),
        100 * _unbucketed_efficiency(widths, batch_size), len(widths), cfg.modality)
  return buckets


def explain_pipeline_error(error: Exception, samples: SampleList,
                           cfg: DataConfig) -> DataError:
  """A DataError naming the sample (or shard) that fails to read or decode.

  Errors that name their sample (bad records and shards, labels, and decoding under
  policy 'skip' or in the pass below) are explained from their message. A decode
  error of the fast policy-'error' path names nothing: then one pass over `samples`
  in order, naming each failure as it happens, finds the first bad one. Call this
  only on the failure path.
  """
  message = str(getattr(error, "message", error))
  named = re.search(re.escape(_BAD_IMAGE) + r"\] \[(.*?)\] \[", message)
  if named:
    path = named.group(1)
    origin = next((s.origin for s in samples.samples if s.path == path), None)
    where = f"{origin}: cannot read or decode image {path}" if origin else (
        f"{path}: cannot read or decode image")   # a record: its key and shard
    return DataError(f"{where} (empty, truncated or not PNG, JPEG, GIF or BMP); fix "
                     f"or remove it, or set --bad_sample_policy=skip")
  named = re.search(re.escape(_BAD_AUDIO) + r"\] \[(.*?)\] \[(.*?)\]", message)
  if named:
    path, expected = named.groups()
    origin = next((s.origin for s in samples.samples if s.path == path), None)
    fix = "fix or remove it, or set --bad_sample_policy=skip"
    if origin is None:   # a record: its key and shard
      return DataError(f"{path}: cannot read or decode audio; {expected}; {fix}")
    return DataError(f"{origin}: cannot use audio {path}, "
                     f"{audio_lib.describe_wav(path)}; {expected}; {fix}")
  named = re.search(re.escape(_BAD_RECORD) + r"\] \[(.*?)\] \[", message)
  if named:
    return DataError(f"{named.group(1)}: not a tf.train.Example of the schema in "
                     f"ctc_trainer/data/tfrecord.py; rewrite the shard, or set "
                     f"--bad_sample_policy=skip")
  named = re.search(re.escape(_BAD_SHARD) + r"\] \[(.*?)\] \[", message)
  if named:
    return DataError(f"{named.group(1)}: truncated or corrupt TFRecord shard; "
                     f"rewrite it, or set --bad_sample_policy=skip to use the records "
                     f"before the damage")
  named = re.search(re.escape(_BAD_LABEL) + r"\] \[(.*?)\] \[(.*?)\] \[", message)
  if named:
    return DataError(f"{named.group(1)}: label {named.group(2)!r} has characters not "
                     f"in the charset (--unknown_char_policy=skip drops such samples)")
  found = _find_failure(samples, cfg)
  if found is not None:
    return found
  return DataError(f"input pipeline failed, but every sample reads and decodes: "
                   f"{_first_line(error)}")


def _find_failure(samples: SampleList, cfg: DataConfig) -> Optional[DataError]:
  """One pass over the samples in order with every failure named; the DataError for
  the first one, or None when all read and decode."""
  logging.info("Input pipeline failed; finding the sample: one pass over %s",
               f"{len(samples)} samples" if not samples.shards else
               f"{len(samples.shards)} shards")
  checked = dataclasses.replace(cfg, bad_sample_policy="error",
                                unknown_char_policy="error")
  if samples.shards:
    examples = _tfrecord_examples(samples, checked, None, False, None, named=True)
  else:
    examples = _file_examples(samples, checked, False, None, named=True)
  try:
    for _ in examples.map(lambda x: tf.constant(0)).batch(1024):
      pass
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
          tf.errors.DataLossError) as e:
    message = str(getattr(e, "message", e))
    if any(m in message for m in (_BAD_IMAGE, _BAD_AUDIO, _BAD_RECORD, _BAD_SHARD)):
      return explain_pipeline_error(e, samples, cfg)
    return DataError(f"input pipeline failed: {_first_line(e)}")
  return None


# --- sources ------------------------------------------------------------------------

def _file_examples(samples: SampleList, cfg: DataConfig, shuffle_and_repeat: bool,
                   input_context, named: bool = False) -> tf.data.Dataset:
  """Listed (path, label) samples -> decoded examples (see _decode_each)."""
  ds = tf.data.Dataset.from_tensor_slices((samples.paths, samples.texts))
  if input_context is not None and input_context.num_input_pipelines > 1:
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if shuffle_and_repeat:
    ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.repeat()
  if _names_failures(cfg, named):
    # Read inside the named decode, so that a missing file is named too.
    return _decode_each(ds, cfg, named=named, name_of=lambda path, text: path,
                        load=lambda path, text: (tf.io.read_file(path), text, path))
  # Many reads at once hide the disk's latency when the files are not cached.
  ds = ds.map(lambda path, text: (tf.io.read_file(path), text, path),
              num_parallel_calls=_CONCURRENT_READS)
  return _decode_each(ds, cfg, named=named, name_of=None,
                      load=lambda encoded, text, path: (encoded, text, path))


def _tfrecord_examples(samples: SampleList, cfg: DataConfig, charset: Charset,
                       shuffle_and_repeat: bool, input_context,
                       named: bool = False) -> tf.data.Dataset:
  """TFRecord shards -> decoded examples with labels checked against the charset.

  With several input pipelines (workers), each reads its own shards when there are at
  least as many shards as pipelines, else every pipeline reads all shards and keeps
  its share of the records.
  """
  shards = samples.shards
  sizes = [tfrecord.records_size(s, samples.compression) for s in shards]
  files = tf.data.Dataset.from_tensor_slices((shards, np.array(sizes, np.int64)))
  pipelines = input_context.num_input_pipelines if input_context is not None else 1
  by_file = pipelines > 1 and len(shards) >= pipelines
  if by_file:
    files = files.shard(pipelines, input_context.input_pipeline_id)
  if shuffle_and_repeat:
    files = files.shuffle(len(shards), seed=cfg.seed, reshuffle_each_iteration=True)
    files = files.repeat()
  skip = cfg.bad_sample_policy == "skip"
  # Chunks of up to _CHUNK records of one shard each; whole chunks are interleaved
  # across shards and parsed with one vectorized parse each.
  chunks = files.interleave(
      lambda path, size: _read_shard(path, size, samples.compression, skip),
      cycle_length=min(_SHARD_CYCLE, len(shards)), block_length=1,
      num_parallel_calls=AUTOTUNE)
  parsed = chunks.interleave(_parse_chunk, cycle_length=AUTOTUNE,
                             num_parallel_calls=AUTOTUNE)
  parsed = parsed.scan(tf.constant(0, tf.int64), _unparsed_reporter(skip)).unbatch()
  if pipelines > 1 and not by_file:
    parsed = parsed.shard(pipelines, input_context.input_pipeline_id)
  if shuffle_and_repeat:
    parsed = parsed.shuffle(cfg.shuffle_buffer, seed=cfg.seed,
                            reshuffle_each_iteration=True)
  # Decode, naming an image that fails by its key and where its record is.
  examples = _decode_each(
      parsed, cfg, load=lambda encoded, text, key, where: (encoded, text, key),
      name_of=lambda encoded, text, key, where: tf.strings.join([key, " (", where, ")"]),
      named=named)
  if cfg.unknown_char_policy == "skip":
    return _drop_unknown_labels(examples, charset)
  return examples   # policy 'error': _add_labels checks each batch


def _read_shard(path: tf.Tensor, size: tf.Tensor, compression: str,
                skip: bool) -> tf.data.Dataset:
  """One shard -> chunks (records [n], where [n]) of up to _CHUNK records; `where`
  names each record as "SHARD record INDEX".

  tf.data's read errors do not name the file, and a truncated GZIP shard reads
  without any error, so shards are checked by size instead: a read error ends the
  shard (ignore_errors), and if the records read do not add up to `size` (the
  file's size, or a GZIP file's uncompressed size from its trailer), the shard is
  reported by name: an error (policy 'error') or a warning, keeping the records
  before the damage (policy 'skip'). The accounting runs once per chunk.
  """
  records = tf.data.TFRecordDataset(path, compression_type=compression)
  chunks = records.ignore_errors().batch(_CHUNK).map(lambda chunk: (chunk, False))
  end = tf.data.Dataset.from_tensors((tf.constant([], tf.string), True))

  def account(state, item):
    index, consumed = state
    chunk, last = item
    if last:
      complete = tf.equal(consumed, size)
      if not skip:
        tf.debugging.Assert(complete, [
            _BAD_SHARD, path, "after record", index, ": expected", size, "bytes of "
            "records, read", consumed, ". Rewrite it, or set --bad_sample_policy=skip."])
      elif not complete:
        tf.print("WARNING ctc_trainer: truncated or corrupt TFRecord shard", path,
                 "- using its first", index, "records", output_stream=sys.stderr)
    count = tf.size(chunk, tf.int64)
    consumed += (tf.reduce_sum(tf.cast(tf.strings.length(chunk), tf.int64)) +
                 count * tfrecord.RECORD_OVERHEAD)
    if compression:   # the trailer holds the size modulo 2**32
      consumed = consumed % (1 << 32)
    where = tf.strings.join([path, " record ",
                             tf.strings.as_string(tf.range(index, index + count))])
    return (index + count, consumed), (chunk, where, last)

  zero = tf.constant(0, tf.int64)
  checked = chunks.concatenate(end).scan((zero, zero), account)
  return checked.filter(lambda chunk, where, last: tf.logical_not(last)).map(
      lambda chunk, where, last: (chunk, where))


def _parse_chunk(records: tf.Tensor, where: tf.Tensor) -> tf.data.Dataset:
  """A chunk of records -> one element (encoded, text, key, where, parsed): [n] each,
  parsed False where a record is not an Example of the schema (its other fields
  empty).

  One vectorized parse for the chunk; only when it fails is each record parsed on
  its own, to find the bad ones.
  """
  def fields(x):
    return x["encoded"], x["text"], x["key"]

  whole = tf.data.Dataset.from_tensors(records).map(
      lambda r: (*fields(tf.io.parse_example(r, tfrecord.FEATURES)),
                 tf.ones_like(r, tf.bool)))
  count = tf.size(records, tf.int64)

  def one_by_one():
    singles = tf.data.Dataset.from_tensor_slices(
        (records, tf.range(count))).map(
            lambda r, i: (*fields(tfrecord.parse_example(r)), i)).ignore_errors()

    def scatter(encoded, text, key, index):
      put = lambda values, fill: tf.tensor_scatter_nd_update(
          tf.fill([count], fill), index[:, None], values)
      return (put(encoded, ""), put(text, ""), put(key, ""),
              put(tf.ones_like(index, tf.bool), False))

    return singles.batch(_CHUNK).concatenate(tf.data.Dataset.from_tensors(
        (tf.constant([], tf.string),) * 3 + (tf.constant([], tf.int64),))).take(
            1).map(scatter)

  # The second dataset is only read when the first yields nothing (its parse failed).
  return whole.ignore_errors().concatenate(one_by_one()).take(1).map(
      lambda encoded, text, key, parsed: (encoded, text, key, where, parsed))


def _unparsed_reporter(skip: bool):
  """A scan function over parsed chunks: an error naming the first record that is not
  an Example (skip False), or a counted warning per such record, which is dropped."""
  hint = "(not a tf.train.Example of the schema in ctc_trainer/data/tfrecord.py)."

  def report(skipped, chunk):
    encoded, text, key, where, parsed = chunk
    bad = tf.boolean_mask(where, tf.logical_not(parsed))
    if not skip:
      first = tf.concat([bad, [""]], 0)[0]
      tf.debugging.Assert(tf.equal(tf.size(bad), 0), [_BAD_RECORD, first, hint])
    else:
      for name in bad:
        skipped += 1
        tf.print("WARNING ctc_trainer: skipping an unparsable record", name,
                 "- skipped so far:", skipped, output_stream=sys.stderr)
    keep = lambda values: tf.boolean_mask(values, parsed)
    return skipped, (keep(encoded), keep(text), keep(key), keep(where))

  return report


# --- per-example stages -----------------------------------------------------------------

def _decode_each(ds: tf.data.Dataset, cfg: DataConfig, load, name_of,
                 named: bool = False) -> tf.data.Dataset:
  """Elements -> {inputs, input_length, text, key}, decoded in parallel: images
  [H, W, C] with their width, or audio features [T, F] with their frames.

  load(*element) -> (encoded bytes, text, key) and the decode may fail. Such an
  element is dropped and named by name_of(*element) (unused, and may be None, when
  _names_failures is False) as it happens (see
  _guarded_map): a counted warning (policy 'skip') or an error. Except for images
  under policy 'error' without `named`: there a plain parallel map does the work,
  since naming as it happens costs a good part of the throughput on small images
  and a failure stops the run anyway; explain_pipeline_error names it afterwards
  with one named pass. (Audio keeps the named path: decode_wav's errors quote the
  file's bytes, which TensorFlow cannot turn into a Python message.)
  """
  audio = cfg.modality == "audio"
  # To skip too-wide images, measure their true resized width (no cap), drop below.
  skip_wide = not audio and cfg.too_wide_policy == "skip"
  max_width = 2 ** 30 if skip_wide else cfg.max_image_width

  def decode(*element):
    encoded, text, key = load(*element)
    if audio:
      inputs, length = audio_lib.decode_and_featurize(encoded, cfg.audio)
    else:
      inputs, length = image_lib.decode_and_resize(
          encoded, cfg.image_height, cfg.image_channels, max_width)
    return {"inputs": inputs, "input_length": length, "text": text, "key": key}

  skip = cfg.bad_sample_policy == "skip"
  if audio:   # always named (see above)
    rate = ("any rate, resampled to " if cfg.audio.resample_policy == "resample"
            else "") + f"{cfg.audio.sample_rate} Hz"
    decoded = _guarded_map(ds, decode, name_of, _BAD_AUDIO,
                           f"expected a 16-bit PCM WAV of {rate}, at most "
                           f"{cfg.audio.max_audio_seconds:g} s",
                           "skipping unreadable or undecodable audio", skip)
  elif not _names_failures(cfg, named):
    decoded = ds.map(decode, num_parallel_calls=AUTOTUNE)
  else:
    decoded = _guarded_map(ds, decode, name_of, _BAD_IMAGE,
                           "(empty, truncated or not PNG, JPEG, GIF or BMP). Fix or "
                           "remove it, or set --bad_sample_policy=skip.",
                           "skipping unreadable or undecodable image", skip)
  return decoded.filter(_fits_width(cfg.max_image_width)) if skip_wide else decoded


def _names_failures(cfg: DataConfig, named: bool) -> bool:
  """Whether _decode_each names each failure as it happens (see there)."""
  return named or cfg.modality == "audio" or cfg.bad_sample_policy == "skip"


def _fits_width(max_width: int):
  """A filter keeping examples at most max_width wide, warning about the others."""
  def fits(example):
    ok = example["input_length"] <= max_width
    def warn():
      tf.print("WARNING ctc_trainer: skipping", example["key"], "- its width",
               example["input_length"], "at this height exceeds --max_image_width",
               max_width, "(--too_wide_policy=skip)", output_stream=sys.stderr)
      return ok
    return tf.cond(ok, lambda: ok, warn)
  return fits


def _guarded_map(ds: tf.data.Dataset, fn, name_of, failure: str, hint: str,
                 warning: str, skip: bool) -> tf.data.Dataset:
  """ds.map(fn), in parallel and in order; an element whose fn fails is dropped and
  named: an error "[failure] [name] [hint]" (skip False) or "WARNING ctc_trainer:
  {warning} NAME - skipped so far: N" on stderr.

  tf.data cannot catch one element's error, and ignore_errors drops it without a
  trace. So elements go in chunks of _CHUNK, each numbered and named (name_of is
  applied to a whole chunk at once: it must work elementwise on vectors); fn runs
  with ignore_errors on each chunk as its own small dataset (so that errors from
  stages before this one still stop the pipeline instead of being ignored), chunks
  in parallel, in order. Every element that comes out carries the names of its own
  chunk and the one before, so a gap in the numbers, which is a failure, can be
  named by the next element to arrive. A finite stream gets an end marker, so that
  failures at its very end are found too.
  """
  out_spec = ds.map(fn).element_spec
  finite = int(ds.cardinality()) != tf.data.INFINITE_CARDINALITY
  # (element, is_end) pairs; zip adds no function call per element, as a map would.
  tagged = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensors(False).repeat()))
  if finite:
    zeros = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype),
                                  ds.element_spec)
    tagged = tagged.concatenate(tf.data.Dataset.from_tensors((zeros, True)))

  def number(state, chunk):
    """Per chunk: its first element's number and the names of the previous chunk
    (always a full one) and its own, padded to 2 * _CHUNK."""
    start, previous = state
    x, is_end = chunk
    names = name_of(*(x if isinstance(x, tuple) else (x,)))
    names = tf.concat([names, tf.fill([_CHUNK - tf.size(names)], "")], 0)
    count = tf.size(is_end, tf.int64)
    return (start + count, names), (start, tf.concat([previous, names], 0), x, is_end)

  def run_chunk(start, window, x, is_end):
    count = tf.size(is_end, tf.int64)
    elements = tf.data.Dataset.from_tensor_slices(
        (tf.range(start, start + count), x, is_end))
    shared = tf.data.Dataset.from_tensors((start, window)).repeat()

    def apply(item, context):
      index, x, is_end = item
      x = x if isinstance(x, tuple) else (x,)
      if not finite:   # no end marker to step over
        return index, is_end, context, fn(*x)
      out = tf.cond(is_end, lambda: tf.nest.map_structure(
          lambda spec: tf.zeros([d or 0 for d in spec.shape], spec.dtype), out_spec),
                    lambda: fn(*x))
      return index, is_end, context, out

    return tf.data.Dataset.zip((elements, shared)).map(apply).ignore_errors()

  def check(state, item):
    expected, skipped = state
    index, is_end, (start, window), out = item
    # window[p] names element start - _CHUNK + p; everything in [expected, index) is
    # missing, and the part from window_start on can be named.
    window_start = start - _CHUNK
    named_from = tf.maximum(expected, window_start)
    if not skip:
      first = window[tf.clip_by_value(named_from - window_start, 0, 2 * _CHUNK - 1)]
      tf.debugging.Assert(index <= expected, [failure, first, hint])
    elif index > expected:
      unnamed = named_from - expected
      if unnamed > 0:
        skipped += unnamed
        tf.print("WARNING ctc_trainer:", warning, "-", unnamed, "in a row, too many to "
                 "name - skipped so far:", skipped, output_stream=sys.stderr)
      for name in window[named_from - window_start:index - window_start]:
        skipped += 1
        # stderr, not the C++ log: TF_CPP_MIN_LOG_LEVEL, often set to quiet
        # TensorFlow, would hide the warning.
        tf.print("WARNING ctc_trainer:", warning, name, "- skipped so far:", skipped,
                 output_stream=sys.stderr)
    return (index + 1, skipped), ((is_end, out) if finite else out)

  zero = tf.constant(0, tf.int64)
  numbered = tagged.batch(_CHUNK).scan((zero, tf.fill([_CHUNK], "")), number)
  mapped = numbered.interleave(run_chunk, cycle_length=AUTOTUNE, block_length=_CHUNK,
                               num_parallel_calls=AUTOTUNE, deterministic=True)
  checked = mapped.scan((zero, zero), check)
  if not finite:
    return checked
  return checked.filter(lambda is_end, out: tf.logical_not(is_end)).map(
      lambda is_end, out: out)


def _drop_unknown_labels(ds: tf.data.Dataset, charset: Charset) -> tf.data.Dataset:
  """Drops examples whose label has characters outside the charset, each with a
  counted warning (unknown_char_policy 'skip' for TFRecords; listed samples are
  checked when listed, in sources)."""
  def mark(x):
    ok = tf.reduce_all(charset.encode(x["text"][None]).flat_values >= 0)
    return dict(x, ok=ok)

  ds = _drop_bad(ds.map(mark, num_parallel_calls=AUTOTUNE),
                 "skipping a label with characters not in the charset")
  return ds.map(lambda x: {k: v for k, v in x.items() if k != "ok"})


def _drop_bad(ds: tf.data.Dataset, warning: str) -> tf.data.Dataset:
  """Drops elements whose "ok" is False, logging each with the count since the start."""
  def count(skipped, element):
    if not element["ok"]:
      skipped += 1
      # stderr, not the C++ log: TF_CPP_MIN_LOG_LEVEL, often set to quiet TensorFlow,
      # would hide the warning.
      tf.print("WARNING ctc_trainer:", warning, element["key"], "- skipped so far:",
               skipped, output_stream=sys.stderr)
    return skipped, element

  return ds.scan(tf.constant(0, tf.int64), count).filter(lambda x: x["ok"])


# --- batching ------------------------------------------------------------------------

def _examples_to_batches(ds: tf.data.Dataset, charset: Charset, batch_size: int,
                         widths: Tuple[int, ...], drop_remainder: bool) -> tf.data.Dataset:
  """Examples -> batch dicts: padded to a bucket width (or the batch's widest image),
  labels encoded, prefetched."""
  if widths:
    # Bucket i holds widths in [widths[i-1] + 1, widths[i]] and pads to widths[i]
    # (pad_to_bucket_boundary pads to boundary - 1); the extra last bucket that
    # bucket_by_sequence_length adds stays empty, as no width exceeds widths[-1].
    ds = ds.bucket_by_sequence_length(
        lambda x: x["input_length"], bucket_boundaries=[w + 1 for w in widths],
        bucket_batch_sizes=[batch_size] * (len(widths) + 1),
        pad_to_bucket_boundary=True, drop_remainder=drop_remainder)
  else:
    ds = ds.padded_batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.map(lambda batch: _add_labels(batch, charset), num_parallel_calls=AUTOTUNE)
  return ds.prefetch(AUTOTUNE)


def _add_labels(batch: Dict[str, tf.Tensor], charset: Charset) -> Dict[str, tf.Tensor]:
  """Encodes the batch's texts: labels int32 [B, L] padded with 0, label_length [B].

  A character outside the charset (possible only in TFRecords; listed samples were
  checked when listed) is an error naming the first such example's key and label.
  """
  ids = charset.encode(batch["text"])
  unknown = tf.reduce_any(ids < 0, axis=1)
  first = tf.argmax(tf.cast(unknown, tf.int32))
  tf.debugging.Assert(tf.logical_not(tf.reduce_any(unknown)), [
      _BAD_LABEL, batch["key"][first], batch["text"][first],
      "(--unknown_char_policy=skip drops such samples)"])
  batch["labels"] = ids.to_tensor(0)
  batch["label_length"] = tf.cast(ids.row_lengths(), tf.int32)
  return batch


# --- length statistics --------------------------------------------------------------------

def _scan_sizes(samples: SampleList) -> np.ndarray:
  """Original (height, width) of up to _SCAN_SIZES samples spread over the set -> [n, 2].

  Image headers only (Pillow reads a few hundred bytes per file), or the TFRecord
  height/width features. Unreadable images are left out.
  """
  if samples.shards:
    return tfrecord.scan_sizes(samples.shards, samples.compression, _SCAN_SIZES)
  from PIL import Image  # late: only the file source needs it
  sizes = []
  for sample in spread(samples.samples, _SCAN_SIZES):
    try:
      with Image.open(sample.path) as im:
        sizes.append((im.height, im.width))
    except (OSError, ValueError):
      continue
  return np.array(sizes, np.int64).reshape(-1, 2)


def _bucketed_efficiency(widths: np.ndarray, buckets: Tuple[int, ...]) -> float:
  """Valid / padded columns when every width is padded to its bucket."""
  padded = np.array(buckets)[np.searchsorted(buckets, widths)]
  return float(widths.sum() / padded.sum())


def _unbucketed_efficiency(widths: np.ndarray, batch_size: int) -> float:
  """Valid / padded columns of random batches padded to their widest image."""
  rng = np.random.default_rng(0)
  batches = len(widths) // batch_size
  if not batches:
    return float(widths.sum() / (len(widths) * widths.max()))
  shuffled = rng.permutation(widths)[:batches * batch_size].reshape(batches, batch_size)
  return float(shuffled.sum() / (shuffled.max(axis=1).sum() * batch_size))


def _first_line(error: Exception) -> str:
  return str(getattr(error, "message", error)).strip().splitlines()[0]
