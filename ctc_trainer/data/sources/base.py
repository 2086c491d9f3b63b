"""The Source interface, and what the formats that list samples share.

A Source gives the input pipeline four things:
  count()          the number of samples, or None when only reading tells (TFRecord)
  examples(...)    a tf.data dataset of raw examples {data, text, key, name}: `data`
                   is the encoded bytes, or with read=False what `read(data)` turns
                   into them inside the guarded decode (so that a file that cannot be
                   read is named like one that cannot be decoded); `name` names the
                   sample in warnings and errors
  label_texts()    every label, to build a charset
  scan_lengths()   the lengths along time of a spread of samples, for length buckets
and origin(name), where a named sample was listed, for error messages.

Every format but tfrecord lists its samples (path, label) up front: it reads its
listing into Samples and returns `checked(samples, ...)`, a ListedSource, which
normalizes the labels (--text_normalization) and applies the file and label
policies.
"""

import collections
import contextlib
import dataclasses
import os
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from ctc_trainer.charset import Charset, normalize_text
from ctc_trainer.config import DataConfig
from ctc_trainer.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_EXAMPLES_LOGGED = 5
_CONCURRENT_READS = 8   # files read at once: hides the disk's latency when uncached


@tf.autograph.experimental.do_not_convert   # graph code: see failures.decode
def _read_data(x):
  """An example whose `data` is a path -> the same with the file's bytes."""
  return dict(x, data=tf.io.read_file(x["data"]))

Skips = List[Tuple[str, str, str]]   # (reason, message, path) of each dropped sample


@dataclasses.dataclass(frozen=True)
class Sample:
  path: str     # the encoded file (image or audio)
  text: str     # label
  origin: str   # where the sample was listed, for messages: "manifest.tsv:12" or a path
  duration: Optional[float] = None   # seconds of audio, when the listing says


class Source:
  """One split's samples (see the module docstring)."""
  # Lengths along time of a spread of samples, scanned once (buckets.bucket_widths).
  length_scan: Optional[np.ndarray] = None

  def count(self) -> Optional[int]:
    raise NotImplementedError

  def examples(self, cfg: DataConfig, charset: Optional[Charset],
               shuffle_and_repeat: bool, input_context, read: bool = True
               ) -> tf.data.Dataset:
    """Raw examples {data, text, key, name: string scalars}. shuffle_and_repeat:
    shuffled each epoch with cfg.seed, repeated forever. With an input_context,
    this pipeline's share only."""
    raise NotImplementedError

  def read(self, data: tf.Tensor) -> tf.Tensor:
    """An example's `data` (read=False) -> its encoded bytes; may fail."""
    return data

  def label_texts(self) -> Iterator[str]:
    raise NotImplementedError

  def scan_lengths(self, modality, limit: int) -> np.ndarray:
    """modality's lengths along time of up to `limit` samples -> int64 [n];
    unreadable samples are left out."""
    raise NotImplementedError

  def origin(self, name: str) -> Optional[str]:
    """Where the sample named `name` was listed, or None."""
    return None

  def describe(self) -> str:
    raise NotImplementedError


class ListedSource(Source):
  """Samples listed up front: encoded files and their labels."""

  def __init__(self, samples: List[Sample], skipped: Optional[Dict[str, int]] = None,
               rejected: Iterable[Tuple[str, str, str]] = ()):
    self.samples = samples
    self.skipped = dict(skipped or {})   # reason -> count
    # Each dropped sample: (path, reason, message), for tools/make_tfrecords' report.
    self.rejected = list(rejected)
    self._origins: Optional[Dict[str, str]] = None

  def __len__(self) -> int:
    return len(self.samples)

  def count(self) -> int:
    return len(self.samples)

  @property
  def paths(self) -> List[str]:
    return [s.path for s in self.samples]

  @property
  def texts(self) -> List[str]:
    return [s.text for s in self.samples]

  def examples(self, cfg, charset, shuffle_and_repeat, input_context, read=True):
    paths = self.paths
    ds = tf.data.Dataset.from_tensor_slices(
        {"data": paths, "text": self.texts, "key": paths, "name": paths})
    if input_context is not None and input_context.num_input_pipelines > 1:
      ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle_and_repeat:
      # Paths, not decoded examples: the buffer stays small whatever the set's size.
      ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
      ds = ds.repeat()
    if not read:
      return ds
    return ds.map(_read_data, num_parallel_calls=_CONCURRENT_READS)

  def read(self, data):
    return tf.io.read_file(data)

  def positioned_examples(self, cfg, start: int, input_context, read=True):
    """Raw examples as `examples` gives them for training, plus `position` (int64):
    each example's place in the endless stream of epochs, each epoch a seeded
    permutation of the whole set (epoch = position // count). Position p is sample
    index_shuffle(p % count, seed (cfg.seed, epoch)), a function of p alone, so a
    stream that starts at `start` continues another exactly, without replaying it.
    With an input_context, pipeline i of n reads positions start, start + n, ...
    (start is its own next position). The stream is a Dataset.range, which the
    tf.data service can split among its workers (dynamic sharding)."""
    count = len(self.samples)
    paths, texts = tf.constant(self.paths), tf.constant(self.texts)
    step = input_context.num_input_pipelines if input_context is not None else 1
    seed = tf.constant(cfg.seed, tf.int64)

    def example(position):
      epoch, slot = position // count, position % count
      index = tf.random.experimental.index_shuffle(
          slot, tf.stack([seed, epoch]), max_index=count - 1)
      path = tf.gather(paths, index)
      return {"data": path, "text": tf.gather(texts, index), "key": path,
              "name": path, "position": position}

    ds = tf.data.Dataset.range(start, 2**62, step).map(
        tf.autograph.experimental.do_not_convert(example))
    if not read:
      return ds
    return ds.map(_read_data, num_parallel_calls=_CONCURRENT_READS)

  def label_texts(self) -> Iterator[str]:
    return (s.text for s in self.samples)

  def scan_lengths(self, modality, limit):
    lengths = [modality.file_length(s) for s in spread(self.samples, limit)]
    return np.array([n for n in lengths if n is not None], np.int64)

  def origin(self, name):
    if self._origins is None:
      self._origins = {s.path: s.origin for s in self.samples}
    return self._origins.get(name)

  def describe(self) -> str:
    return f"{len(self.samples)} samples"


# --- checks and skips -----------------------------------------------------------

def checked(candidates: Iterable[Sample], cfg: DataConfig, charset: Optional[Charset],
            location: str, pre_skipped: Skips = ()) -> ListedSource:
  """The listed candidates that can be used, their labels normalized by
  cfg.text_normalization, by the missing-file, label and unknown-character
  policies; logs one skip summary. Raises DataError when nothing is listed or
  everything is skipped."""
  candidates = list(candidates)
  candidates = [dataclasses.replace(s, text=normalize_text(s.text, cfg.text_normalization))
                for s in candidates]
  if not candidates and not pre_skipped:
    raise DataError(f"{location}: no samples found (format {cfg.data_format})")
  kept: List[Sample] = []
  skips = list(pre_skipped)
  for sample in candidates:
    bad = [(reason, problem) for reason, problem in (
        ("missing file", _file_problem(sample, cfg.modality)),
        ("bad label", _label_problem(sample, cfg.max_label_length))) if problem]
    if bad:
      reason, problem = bad[0]
      if cfg.bad_sample_policy == "error":
        raise DataError(problem + " (--bad_sample_policy=skip drops such samples)")
      skips.append((reason, problem, sample.path))
      continue
    unknown = charset.unknown_chars(sample.text) if charset is not None else None
    if unknown:
      chars = ", ".join(repr(c) for c in sorted(unknown))
      message = (f"{sample.origin}: label {sample.text!r} has characters not in the "
                 f"charset: {chars}")
      if cfg.unknown_char_policy == "error":
        hint = (f"; labels are read {cfg.text_normalization}-normalized, "
                "--text_normalization=none keeps them as written"
                if cfg.text_normalization != "none" else "")
        raise DataError(message + f" (--unknown_char_policy=skip drops such samples{hint})")
      skips.append(("unknown character", message, sample.path))
      continue
    kept.append(sample)
  skipped = dict(collections.Counter(reason for reason, _, _ in skips))
  if skips:
    examples = "; ".join(m for _, m, _ in skips[:_EXAMPLES_LOGGED])
    logging.warning("Skipped %d samples %s; first: %s", len(skips), skipped, examples)
  if not kept:
    raise DataError(f"{location}: all {len(candidates) + len(pre_skipped)} samples "
                    f"were skipped: {skipped}")
  return ListedSource(kept, skipped, [(p, r, m) for r, m, p in skips])


def _file_problem(sample: Sample, modality: str) -> Optional[str]:
  if os.path.isdir(sample.path):
    return f"{sample.origin}: {sample.path} is a folder, not an {modality} file"
  if not os.path.isfile(sample.path):
    return f"{sample.origin}: {modality} file {sample.path} does not exist"
  return None


def _label_problem(sample: Sample, max_length: int) -> Optional[str]:
  """Why a label cannot be trained on, or None. An empty or blank label usually means
  a missing transcript, not an empty line, so it is a bad sample, not a target."""
  if not sample.text.strip():
    return f"{sample.origin}: the label of {sample.path} is empty or only whitespace"
  if max_length and len(sample.text) > max_length:
    return (f"{sample.origin}: the label of {sample.path} has {len(sample.text)} "
            f"characters, more than --max_label_length={max_length}")
  return None


# --- helpers for the formats ---------------------------------------------------------

def resolve(base: str, path: str) -> str:
  """A listed path, relative ones against the listing's folder `base`."""
  return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def open_text(path: str):
  """A UTF-8 text file for reading; a leading byte-order mark (spreadsheet tools
  write one) is dropped, so it never ends up in the first path."""
  if not os.path.isfile(path):
    raise DataError(f"{path} does not exist or is not a file")
  # newline="" lets the csv module handle quoted newlines; tsv strips endings itself.
  return open(path, encoding="utf-8-sig", newline="")


def read_lines(path: str) -> Iterator[Tuple[int, str]]:
  """(line number from 1, line) of a UTF-8 text file."""
  with open_text(path) as f, utf8_errors(path):
    yield from enumerate(f, 1)


@contextlib.contextmanager
def utf8_errors(path: str):
  try:
    yield
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 ({e})") from None


def image_names(folder: str) -> List[str]:
  """The image files in `folder`, sorted."""
  if not os.path.isdir(folder):
    raise DataError(f"{folder} is not a folder")
  return sorted(n for n in os.listdir(folder)
                if n.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(folder, n)))


def spread(items: list, limit: int) -> list:
  """Up to `limit` of `items` drawn at random (seeded), in their order. Not every
  k-th: a listing with a period (copies, sorted groups) would alias with it."""
  if len(items) <= limit:
    return items
  chosen = np.random.default_rng(0).choice(len(items), size=limit, replace=False)
  return [items[i] for i in np.sort(chosen)]
