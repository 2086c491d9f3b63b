"""TFRecord shards: the one tf.train.Example schema, its writer, its reader and scans.

Schema (one Example per sample; docs/data_formats.md shows it with an example):
  encoded  bytes  required  the image (PNG, JPEG, BMP, GIF) or audio (WAV) file, the
                            bytes exactly as they were on disk (never re-encoded)
  text     bytes  required  the label, UTF-8
  key      bytes  required  the sample's id, its source path: named in errors, warnings
                            and eval samples
  height   int64  optional  the image's height in pixels before resizing (0: unknown)
  width    int64  optional  its width in pixels (0: unknown); bucketing reads these
                            instead of decoding images
  frames   int64  optional  audio: samples in the file (0: unknown)

Shards are named SPLIT-00003-of-00016.tfrecord (.tfrecord.gz when GZIP-compressed).
ShardWriter writes them (for tools/make_tfrecords.py through `write_split`, and for
tools/make_digit_sequences.py); `read_examples` reads them for the tfrecord Source,
with the same FEATURES, so writer and reader cannot disagree about the schema.

Reading: shards -> [shard] -> [shuffle, repeat] -> chunks of records, interleaved
across shards, each size-checked and parsed at once -> [shuffle records]. A
truncated or corrupt shard and a record that is not an Example are named (see
failures.py): an error, or under policy 'skip' a warning, keeping the rest.
"""

import dataclasses
import math
import os
import re
import sys
import time
from typing import (TYPE_CHECKING, Callable, Dict, Iterator, List, Optional,
                    Sequence, Tuple)

import numpy as np
import tensorflow as tf

from ctc_trainer.config import DataConfig
from ctc_trainer.data import failures, modalities
from ctc_trainer.errors import DataError

if TYPE_CHECKING:   # sources imports this module
  from ctc_trainer.data.sources.base import ListedSource

FEATURES = {
    "encoded": tf.io.FixedLenFeature([], tf.string),
    "text": tf.io.FixedLenFeature([], tf.string),
    "key": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "frames": tf.io.FixedLenFeature([], tf.int64, default_value=0),
}
SUFFIX = ".tfrecord"
GZIP_SUFFIX = ".gz"
# Bytes a record takes in an uncompressed file besides its payload: length (8), CRC of
# the length (4), CRC of the data (4). The reader checks shards' sizes with it.
RECORD_OVERHEAD = 16
_VALIDATE_CHUNK = 256   # samples validated and checked per host round trip
_READ_CHUNK = 64   # records per chunk read, size-checked and parsed at once
_SHARD_CYCLE = 16   # shards read concurrently
_SCAN_CYCLE = 64   # shards a length scan takes records from in turn
AUTOTUNE = tf.data.AUTOTUNE


def make_example(encoded: bytes, text: str, key: str, height: int = 0, width: int = 0,
                 frames: int = 0) -> bytes:
  """One serialized tf.train.Example in the schema above."""
  def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

  feature = {"encoded": _bytes(encoded), "text": _bytes(text.encode("utf-8")),
             "key": _bytes(key.encode("utf-8"))}
  # Unknown sizes are left out rather than written as 0: the parser's default is 0.
  for name, value in (("height", height), ("width", width), ("frames", frames)):
    if value:
      feature[name] = _int(int(value))
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor) -> dict:
  """A serialized Example (string scalar) -> {encoded, text, key: string scalars,
  height, width, frames: int64 scalars}. Raises InvalidArgumentError when the record
  is not an Example or lacks a required feature."""
  return tf.io.parse_single_example(serialized, FEATURES)


def shard_name(split: str, index: int, num_shards: int, compression: str = "") -> str:
  """'train-00003-of-00016.tfrecord' (+ '.gz' with compression 'GZIP')."""
  suffix = SUFFIX + (GZIP_SUFFIX if compression == "GZIP" else "")
  return f"{split}-{index:05d}-of-{num_shards:05d}{suffix}"


def list_shards(pattern: str) -> List[str]:
  """The files matching a glob pattern (local or any tf.io.gfile file system), sorted."""
  shards = sorted(tf.io.gfile.glob(pattern))
  if not shards:
    raise DataError(f"{pattern}: no TFRecord shard matches this pattern")
  return shards


def compression_of(shards: Sequence[str], setting: str) -> str:
  """The TFRecordDataset compression_type: "" or "GZIP". setting: auto, none, gzip;
  auto means GZIP when the names end in .gz (all of them or none may)."""
  if setting == "gzip":
    return "GZIP"
  if setting == "none":
    return ""
  gz = [s.endswith(GZIP_SUFFIX) for s in shards]
  if any(gz) and not all(gz):
    raise DataError(f"some shards end in {GZIP_SUFFIX} and some do not (e.g. "
                    f"{shards[gz.index(True)]} and {shards[gz.index(False)]}); give "
                    f"one kind or set --tfrecord_compression")
  return "GZIP" if all(gz) else ""


def records_size(path: str, compression: str) -> int:
  """Bytes of a shard's records as stored uncompressed: the file's size, or for
  GZIP the uncompressed size modulo 2**32 from the gzip trailer (the reader checks
  that the records it reads add up to it)."""
  if not compression:
    return tf.io.gfile.stat(path).length
  with tf.io.gfile.GFile(path, "rb") as f:
    f.seek(max(0, tf.io.gfile.stat(path).length - 4))
    return int.from_bytes(f.read(4).ljust(4, b"\0"), "little")


def read_texts(shards: Sequence[str], compression: str) -> Iterator[str]:
  """Every label in the shards, in file order (reads the whole shards once)."""
  text_only = {"text": FEATURES["text"]}
  ds = tf.data.TFRecordDataset(list(shards), compression_type=compression,
                               num_parallel_reads=tf.data.AUTOTUNE)
  ds = ds.map(lambda r: tf.io.parse_single_example(r, text_only)["text"],
              num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  for texts in ds.as_numpy_iterator():
    yield from (t.decode("utf-8") for t in texts)


def scan_lengths(shards: Sequence[str], compression: str, limit: int,
                 length_fn: Callable[[Dict[str, tf.Tensor]], tf.Tensor]) -> np.ndarray:
  """length_fn(parsed example) of up to `limit` records taken across the shards ->
  int64 [n]: one record from each shard in turn, a spread over the set rather than
  its first shard. Records that fail to parse or measure are left out: this only
  feeds the estimate behind length buckets."""
  files = tf.data.Dataset.from_tensor_slices(list(shards))
  ds = files.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
                        cycle_length=min(len(shards), _SCAN_CYCLE), block_length=1)
  ds = ds.take(limit).map(lambda r: length_fn(parse_example(r)),
                          num_parallel_calls=AUTOTUNE).ignore_errors()
  return np.array(list(ds.as_numpy_iterator()), np.int64)


# --- reading ---------------------------------------------------------------------

def read_examples(shards: Sequence[str], compression: str, cfg: DataConfig,
                  shuffle_and_repeat: bool, input_context) -> tf.data.Dataset:
  """Shards -> examples {data: the encoded bytes, text, key, name: "KEY (SHARD record
  I)"}, read as the module docstring says; records are shuffled with cfg.seed.

  With several input pipelines (workers), each reads its own shards when there are at
  least as many shards as pipelines, else every pipeline reads all shards and keeps
  its share of the records.
  """
  sizes = [records_size(s, compression) for s in shards]
  files = tf.data.Dataset.from_tensor_slices((list(shards), np.array(sizes, np.int64)))
  pipelines = input_context.num_input_pipelines if input_context is not None else 1
  by_file = pipelines > 1 and len(shards) >= pipelines
  if by_file:
    files = files.shard(pipelines, input_context.input_pipeline_id)
  if shuffle_and_repeat:
    files = files.shuffle(len(shards), seed=cfg.seed, reshuffle_each_iteration=True)
    files = files.repeat()
  skip = cfg.bad_sample_policy == "skip"
  # Chunks of up to _READ_CHUNK records of one shard each; whole chunks are
  # interleaved across shards and parsed with one vectorized parse each.
  chunks = files.interleave(
      lambda path, size: _read_shard(path, size, compression, skip),
      cycle_length=min(_SHARD_CYCLE, len(shards)), block_length=1,
      num_parallel_calls=AUTOTUNE)
  parsed = chunks.interleave(_parse_chunk, cycle_length=AUTOTUNE,
                             num_parallel_calls=AUTOTUNE)
  examples = parsed.scan(failures.no_skips(), _unparsed_reporter(skip)).unbatch()
  if pipelines > 1 and not by_file:
    examples = examples.shard(pipelines, input_context.input_pipeline_id)
  if shuffle_and_repeat:
    examples = examples.shuffle(cfg.shuffle_buffer, seed=cfg.seed,
                                reshuffle_each_iteration=True)
  return examples


def _read_shard(path: tf.Tensor, size: tf.Tensor, compression: str,
                skip: bool) -> tf.data.Dataset:
  """One shard -> chunks (records [n], where [n]) of up to _READ_CHUNK records;
  `where` names each record as "SHARD record INDEX".

  tf.data's read errors do not name the file, and a truncated GZIP shard reads
  without any error, so shards are checked by size instead: a read error ends the
  shard (ignore_errors), and if the records read do not add up to `size` (the
  file's size, or a GZIP file's uncompressed size from its trailer), the shard is
  reported by name: an error (policy 'error') or a warning, keeping the records
  before the damage (policy 'skip'). The accounting runs once per chunk.
  """
  records = tf.data.TFRecordDataset(path, compression_type=compression)
  chunks = records.ignore_errors().batch(_READ_CHUNK).map(lambda chunk: (chunk, False))
  end = tf.data.Dataset.from_tensors((tf.constant([], tf.string), True))

  def account(state, item):
    index, consumed = state
    chunk, last = item
    if last:
      complete = tf.equal(consumed, size)
      if not skip:
        tf.debugging.Assert(complete, [
            failures.BAD_SHARD, path, "after record", index, ": expected", size,
            "bytes of records, read", consumed, ". Rewrite it, or set "
            "--bad_sample_policy=skip."])
      elif not complete:
        tf.print("WARNING ctc_trainer: truncated or corrupt TFRecord shard", path,
                 "- using its first", index, "records", output_stream=sys.stderr)
    count = tf.size(chunk, tf.int64)
    consumed += (tf.reduce_sum(tf.cast(tf.strings.length(chunk), tf.int64)) +
                 count * RECORD_OVERHEAD)
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
      lambda r: (*fields(tf.io.parse_example(r, FEATURES)), tf.ones_like(r, tf.bool)))
  count = tf.size(records, tf.int64)

  def one_by_one():
    singles = tf.data.Dataset.from_tensor_slices(
        (records, tf.range(count))).map(
            lambda r, i: (*fields(parse_example(r)), i)).ignore_errors()

    def scatter(encoded, text, key, index):
      put = lambda values, fill: tf.tensor_scatter_nd_update(
          tf.fill([count], fill), index[:, None], values)
      return (put(encoded, ""), put(text, ""), put(key, ""),
              put(tf.ones_like(index, tf.bool), False))

    return singles.batch(_READ_CHUNK).concatenate(tf.data.Dataset.from_tensors(
        (tf.constant([], tf.string),) * 3 + (tf.constant([], tf.int64),))).take(
            1).map(scatter)

  # The second dataset is only read when the first yields nothing (its parse failed).
  return whole.ignore_errors().concatenate(one_by_one()).take(1).map(
      lambda encoded, text, key, parsed: (encoded, text, key, where, parsed))


def _unparsed_reporter(skip: bool):
  """A scan function over parsed chunks -> examples dicts of vectors: an error naming
  the first record that is not an Example (skip False), or such records dropped,
  each named once."""
  hint = "(not a tf.train.Example of the schema in ctc_trainer/data/tfrecord.py)."

  def report(seen, chunk):
    encoded, text, key, where, parsed = chunk
    bad = tf.boolean_mask(where, tf.logical_not(parsed))
    if not skip:
      first = tf.concat([bad, [""]], 0)[0]
      tf.debugging.Assert(tf.equal(tf.size(bad), 0), [failures.BAD_RECORD, first, hint])
    else:
      seen = failures.note_skips(seen, bad, "skipping an unparsable record")
    keep = lambda values: tf.boolean_mask(values, parsed)
    return seen, {"data": keep(encoded), "text": keep(text), "key": keep(key),
                  "name": tf.strings.join([keep(key), " (", keep(where), ")"])}

  return report


# --- writing ---------------------------------------------------------------------

@dataclasses.dataclass
class WriteResult:
  shards: List[str]                  # written, in index order
  written: int                       # examples in them
  rejected: List[Tuple[str, str]]    # (key, reason) of each sample left out
  report: str                        # the report file listing `rejected`
  seconds: float


def needed_frames(text: str) -> int:
  """Fewest CTC frames a label needs: its length plus one blank per repeated pair
  (the host twin of ctc.required_frames)."""
  return len(text) + sum(a == b for a, b in zip(text, text[1:]))


class ShardWriter:
  """Writes serialized examples round-robin to OUTPUT_DIR/SPLIT-0000k-of-0000n shards
  (the k-th to shard k % n, so every shard spans the whole set), under temporary
  names until the `with` block ends without an error; then they are renamed into
  place, and SPLIT's shards of an earlier run with another count are removed."""

  def __init__(self, output_dir: str, split: str, num_shards: int,
               compression: str = ""):
    os.makedirs(output_dir, exist_ok=True)
    self.output_dir, self.split = output_dir, split
    self.paths = [os.path.join(output_dir, shard_name(split, i, num_shards, compression))
                  for i in range(num_shards)]
    options = tf.io.TFRecordOptions(compression_type=compression)
    self._writers = [tf.io.TFRecordWriter(p + ".tmp", options) for p in self.paths]
    self.written = 0

  def write(self, serialized: bytes) -> None:
    self._writers[self.written % len(self._writers)].write(serialized)
    self.written += 1

  def __enter__(self) -> "ShardWriter":
    return self

  def __exit__(self, error_type, *_) -> None:
    for w in self._writers:
      w.close()
    if error_type is None:
      _replace_shards(self.output_dir, self.split, self.paths)


def write_split(samples: "ListedSource", cfg: DataConfig, output_dir: str, split: str,
                num_shards: int = 0, shard_bytes: int = 200 << 20, compression: str = "",
                workers: int = 0,
                frames_fn: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                on_progress: Optional[Callable[[int, int], None]] = None) -> WriteResult:
  """Validates the listed files and writes the good ones to TFRecord shards.

  Every file is read and decoded by cfg's Modality (Modality.validate: the decode of
  training); `frames_fn`, when given, maps lengths along time int [n] (resized
  widths, feature frames) to the model's output frames int [n], and a label that
  needs more frames is rejected. Bad samples never stop the run: they are listed
  with the reason in OUTPUT_DIR/report-SPLIT.tsv (with those `samples.rejected` at
  listing time). num_shards=0 picks ceil(total file bytes / shard_bytes); see
  ShardWriter for how samples are spread over shards.

  Deterministic: the same inputs give byte-identical shards (listing order, no
  timestamps, encoded bytes stored as read). `workers` threads read and decode (0:
  one per CPU). on_progress(done, total) is called after each chunk of samples.
  """
  start = time.time()
  candidates = samples.samples
  if not num_shards:
    total_bytes = sum(os.path.getsize(s.path) for s in candidates)
    num_shards = max(1, math.ceil(total_bytes / shard_bytes))
  num_shards = min(num_shards, max(1, len(candidates)))
  rejected = [(path, f"{reason}: {message}") for path, reason, message in samples.rejected]
  modality = modalities.get(cfg)
  unreadable = lambda failed: [
      (s.path, modality.failure_text(None) + (f" ({s.origin})" if s.origin != s.path
                                              else "")) for s in failed]
  expected = 0
  with ShardWriter(output_dir, split, num_shards, compression) as shards:
    for index, encoded, length, sizes in _validated(candidates, modality, workers):
      # ignore_errors dropped the samples that fail to read or decode: the gaps in
      # the index sequence are those samples.
      for i in range(len(index)):
        rejected.extend(unreadable(candidates[expected:index[i]]))
        expected = index[i] + 1
      frames = None if frames_fn is None else np.asarray(frames_fn(length))
      for i, sample_index in enumerate(index):
        sample = candidates[sample_index]
        if frames is not None and needed_frames(sample.text) > frames[i]:
          rejected.append((sample.path, (
              f"label needs {needed_frames(sample.text)} frames, the model gives "
              f"{int(frames[i])} for this {modality.name} (length {length[i]} after "
              f"preprocessing)")))
          continue
        shards.write(make_example(encoded[i], sample.text, sample.path,
                                  **{k: v[i] for k, v in sizes.items()}))
      if on_progress:
        on_progress(expected, len(candidates))
    rejected.extend(unreadable(candidates[expected:]))
    if on_progress and expected < len(candidates):
      on_progress(len(candidates), len(candidates))
  report = os.path.join(output_dir, f"report-{split}.tsv")
  with open(report, "w", encoding="utf-8", newline="\n") as f:
    f.write("key\treason\n")
    f.writelines(f"{key}\t{_one_line(reason)}\n" for key, reason in rejected)
  return WriteResult(shards.paths, shards.written, rejected, report, time.time() - start)


def _validated(candidates, modality, workers: int):
  """Yields chunks (index, encoded bytes, length, {size feature: values}), arrays
  [n], of the samples that read and decode, in listing order; the others are left
  out."""
  def check(index, path):
    encoded = tf.io.read_file(path)
    return (index, encoded, *modality.validate(encoded))

  workers = workers or os.cpu_count() or 1
  ds = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(candidates), dtype=np.int64), [s.path for s in candidates]))
  ds = ds.map(check, num_parallel_calls=workers, deterministic=True).ignore_errors()
  options = tf.data.Options()
  options.threading.private_threadpool_size = workers
  # Chunks: one host round trip and one model call (frames) per _VALIDATE_CHUNK samples.
  ds = ds.with_options(options).batch(_VALIDATE_CHUNK).prefetch(2)
  yield from ds.as_numpy_iterator()


_SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}" + re.escape(SUFFIX) + r"(\.gz)?")


def _replace_shards(output_dir: str, split: str, paths: List[str]) -> None:
  """Moves the new shards into place; removes SPLIT's shards from an earlier run that
  the new set does not overwrite (so SPLIT-*.tfrecord matches only the new set)."""
  keep = {os.path.basename(p) for p in paths}
  for name in os.listdir(output_dir):
    if (name.startswith(split + "-") and _SHARD_NAME.fullmatch(name[len(split):])
        and name not in keep):
      os.remove(os.path.join(output_dir, name))
  for p in paths:
    os.replace(p + ".tmp", p)


def _one_line(text: str) -> str:
  return " ".join(text.split())
