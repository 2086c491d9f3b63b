"""TFRecord shards: the one tf.train.Example schema, its writer and its parsers.

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
tools/make_tfrecords.py writes them with `write_split`; pipeline.make_dataset reads them
with `parse_example`, so writer and reader cannot disagree about the schema.
"""

import dataclasses
import math
import os
import re
import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from ctc_trainer.config import DataConfig
from ctc_trainer.data import image as image_lib
from ctc_trainer.data.sources import SampleList
from ctc_trainer.errors import DataError

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
BAD_IMAGE_REASON = ("cannot read or decode image (empty, truncated or not PNG, JPEG, "
                    "GIF or BMP)")
_CHUNK = 256   # samples validated and checked per host round trip


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


def scan_sizes(shards: Sequence[str], compression: str, limit: int) -> np.ndarray:
  """(height, width) of up to `limit` records taken across the shards -> int [n, 2].

  Uses the height/width features; a record without them (another writer) has its
  image decoded. Records that fail to parse or decode are left out.
  """
  def size(record):
    x = parse_example(record)
    return tf.cond(
        x["width"] > 0, lambda: tf.stack([x["height"], x["width"]]),
        lambda: tf.cast(tf.shape(image_lib.decode_image(x["encoded"], 1))[:2], tf.int64))

  files = tf.data.Dataset.from_tensor_slices(list(shards))
  # One record from each shard in turn: a spread over the set, not its first shard.
  ds = files.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
                        cycle_length=min(len(shards), 64), block_length=1)
  ds = ds.take(limit).map(size, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  sizes = [s for s in ds.as_numpy_iterator()]
  return np.array(sizes, np.int64).reshape(-1, 2)


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


def write_split(samples: SampleList, cfg: DataConfig, output_dir: str, split: str,
                num_shards: int = 0, shard_bytes: int = 200 << 20, compression: str = "",
                workers: int = 0,
                frames_fn: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                on_progress: Optional[Callable[[int, int], None]] = None) -> WriteResult:
  """Validates the listed samples and writes the good ones to TFRecord shards.

  Every image is read and decoded (the same decoder as training); `frames_fn`, when
  given, maps resized widths int [n] to the model's output frames int [n], and a label
  that needs more frames is rejected. Bad samples never stop the run: they are listed
  with the reason in OUTPUT_DIR/report-SPLIT.tsv (with those `samples.rejected` at
  listing time). The k-th good sample goes to shard k % num_shards, so every shard
  spans the whole set; num_shards=0 picks ceil(total file bytes / shard_bytes).

  Deterministic: the same inputs give byte-identical shards (listing order, no
  timestamps, encoded bytes stored as read). Shards are written under temporary names
  and renamed at the end; older shards of SPLIT with another shard count are removed.
  `workers` threads read and decode (0: one per CPU). on_progress(done, total) is
  called after each chunk of samples.
  """
  start = time.time()
  candidates = samples.samples
  if not num_shards:
    total_bytes = sum(os.path.getsize(s.path) for s in candidates)
    num_shards = max(1, math.ceil(total_bytes / shard_bytes))
  num_shards = min(num_shards, max(1, len(candidates)))
  os.makedirs(output_dir, exist_ok=True)
  names = [shard_name(split, i, num_shards, compression) for i in range(num_shards)]
  paths = [os.path.join(output_dir, n) for n in names]
  rejected = [(path, f"{reason}: {message}") for path, reason, message in samples.rejected]
  options = tf.io.TFRecordOptions(compression_type=compression)
  writers = [tf.io.TFRecordWriter(p + ".tmp", options) for p in paths]
  written, expected = 0, 0
  try:
    for index, encoded, height, width, resized in _validated(candidates, cfg, workers):
      # ignore_errors dropped the samples that fail to read or decode: the gaps in
      # the index sequence are those samples.
      for i in range(len(index)):
        rejected.extend(_unreadable(candidates[expected:index[i]]))
        expected = index[i] + 1
      frames = None if frames_fn is None else np.asarray(frames_fn(resized))
      for i, sample_index in enumerate(index):
        sample = candidates[sample_index]
        if frames is not None and needed_frames(sample.text) > frames[i]:
          rejected.append((sample.path, (
              f"label needs {needed_frames(sample.text)} frames, the model gives "
              f"{int(frames[i])} for this image ({resized[i]} px wide after resizing)")))
          continue
        writers[written % num_shards].write(make_example(
            encoded[i], sample.text, sample.path, height=height[i], width=width[i]))
        written += 1
      if on_progress:
        on_progress(expected, len(candidates))
    rejected.extend(_unreadable(candidates[expected:]))
    if on_progress and expected < len(candidates):
      on_progress(len(candidates), len(candidates))
  finally:
    for w in writers:
      w.close()
  _replace_shards(output_dir, split, paths)
  report = os.path.join(output_dir, f"report-{split}.tsv")
  with open(report, "w", encoding="utf-8", newline="\n") as f:
    f.write("key\treason\n")
    f.writelines(f"{key}\t{_one_line(reason)}\n" for key, reason in rejected)
  return WriteResult(paths, written, rejected, report, time.time() - start)


def _validated(candidates, cfg: DataConfig, workers: int):
  """Yields chunks (index, encoded bytes, height, width, resized width), arrays [n],
  of the samples that read and decode, in listing order; the others are left out."""
  def check(index, path):
    encoded = tf.io.read_file(path)
    # The decode op that image_lib.decode_image runs, without its colour conversion:
    # that cannot fail once the decode succeeded, and costs more than the decode.
    shape = tf.shape(tf.io.decode_image(encoded, expand_animations=False))
    resized = image_lib.resized_width(shape[0], shape[1], cfg.image_height,
                                      cfg.max_image_width)
    return index, encoded, shape[0], shape[1], resized

  workers = workers or os.cpu_count() or 1
  ds = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(candidates), dtype=np.int64), [s.path for s in candidates]))
  ds = ds.map(check, num_parallel_calls=workers, deterministic=True).ignore_errors()
  options = tf.data.Options()
  options.threading.private_threadpool_size = workers
  # Chunks: one host round trip and one model call (frames) per _CHUNK samples.
  ds = ds.with_options(options).batch(_CHUNK).prefetch(2)
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


def _unreadable(samples) -> List[Tuple[str, str]]:
  return [(s.path, BAD_IMAGE_REASON + (f" ({s.origin})" if s.origin != s.path else ""))
          for s in samples]


def _one_line(text: str) -> str:
  return " ".join(text.split())
