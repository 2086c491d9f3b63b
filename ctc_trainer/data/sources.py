"""Lists samples (image path + label) from disk. Images are not read here.

Formats (DataConfig.data_format; docs/data_formats.md has examples):
  tsv        'path<TAB>label' lines; relative paths resolve against the manifest's folder.
  csv        columns picked by csv_path_column / csv_label_column (name or index).
  filenames  a folder of images named by their labels; a trailing '_<digits>' is
             stripped so duplicates can be written 'ab12c_3.png'.
  sidecar    OCRopus/Calamari: NAME.png (or NAME.bin.png, NAME.nrm.png) + NAME.gt.txt.
  synthetic  generated once by synthetic.ensure_dataset, then read as tsv.
  tfrecord   a file pattern of TFRecord shards (data/tfrecord.py); nothing is listed
             up front, the shards are the list.
"""

import collections
import contextlib
import csv
import dataclasses
import os
import re
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from absl import logging

from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig
from ctc_trainer.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Sidecar image variants, in order of preference when several share a name.
SIDECAR_VARIANTS = (".bin", ".nrm", "")
_DUPLICATE_SUFFIX = re.compile(r"_\d+$")
_EXAMPLES_LOGGED = 5


SYNTHETIC_SEEDS = {"train": 1, "eval": 2}


@dataclasses.dataclass(frozen=True)
class Sample:
  path: str     # image file
  text: str     # label
  origin: str   # where the sample was listed, for messages: "manifest.tsv:12" or a path


@dataclasses.dataclass
class SampleList:
  """The samples of a split, or for data_format=tfrecord its shards (samples empty)."""
  samples: List[Sample]
  skipped: Dict[str, int]   # reason -> count
  # Each dropped sample: (path, reason, message), for tools/make_tfrecords' report.
  rejected: List[Tuple[str, str, str]] = dataclasses.field(default_factory=list)
  shards: List[str] = dataclasses.field(default_factory=list)   # tfrecord files
  compression: str = ""     # tfrecord: "" or "GZIP"
  # Original (height, width) of a spread of samples, read once for length bucketing.
  size_scan: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)

  def __len__(self) -> int:
    return len(self.samples)

  def label_texts(self) -> Iterator[str]:
    """Every label: from the list, or read from the shards (one pass over the data)."""
    if self.shards:
      from ctc_trainer.data import tfrecord  # late: imports TensorFlow
      return tfrecord.read_texts(self.shards, self.compression)
    return (s.text for s in self.samples)

  @property
  def paths(self) -> List[str]:
    return [s.path for s in self.samples]

  @property
  def texts(self) -> List[str]:
    return [s.text for s in self.samples]


def load_samples(cfg: DataConfig, split: str,
                 charset: Optional[Charset] = None) -> SampleList:
  """Lists the samples of split 'train' or 'eval' (cfg.train_data / cfg.eval_data).

  Missing image files are handled by cfg.bad_sample_policy and, when a charset is
  given, labels with unknown characters by cfg.unknown_char_policy: 'error' raises
  DataError naming file, line and characters; 'skip' drops and counts the sample.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  location = cfg.train_data if split == "train" else cfg.eval_data
  if not location:
    raise DataError(f"no {split} data given (--{split}_data is empty)")
  if cfg.data_format == "tfrecord":
    from ctc_trainer.data import tfrecord  # late: imports TensorFlow
    shards = tfrecord.list_shards(location)
    return SampleList([], {}, shards=shards,
                      compression=tfrecord.compression_of(shards, cfg.tfrecord_compression))
  candidates, pre_skipped = _list_candidates(cfg, split, location)
  candidates = list(candidates)
  if not candidates and not pre_skipped:
    raise DataError(f"{location}: no samples found (format {cfg.data_format})")
  result = _filter(candidates, cfg, charset, pre_skipped)
  if not result.samples:
    total = len(candidates) + len(pre_skipped)
    raise DataError(f"{location}: all {total} samples were skipped: "
                    f"{dict(result.skipped)}")
  return result


# --- formats -------------------------------------------------------------------

Skips = List[Tuple[str, str, str]]   # (reason, message, path) of each dropped sample


def _list_candidates(cfg: DataConfig, split: str,
                     location: str) -> Tuple[Iterable[Sample], Skips]:
  """-> (samples to check, samples the format itself already dropped)."""
  fmt = cfg.data_format
  if fmt == "tsv":
    return read_tsv(location), []
  if fmt == "csv":
    return read_csv(location, cfg.csv_path_column, cfg.csv_label_column,
                    cfg.csv_header), []
  if fmt == "filenames":
    return list_filenames(location), []
  if fmt == "sidecar":
    samples, no_transcript = list_sidecar(location)
    return samples, [("no transcript", f"{p} has no .gt.txt", p) for p in no_transcript]
  if fmt == "synthetic":
    from ctc_trainer.data import synthetic  # late: synthetic imports Pillow
    size = cfg.synthetic_train_size if split == "train" else cfg.synthetic_eval_size
    # Fixed seeds, apart from --seed (which moves with resume): the sets are data, and
    # train and eval differ so the eval set is not the training set.
    seed = SYNTHETIC_SEEDS[split]
    manifest = synthetic.ensure_dataset(
        location, size=size, seed=seed, alphabet=cfg.synthetic_alphabet,
        min_length=cfg.synthetic_min_length, max_length=cfg.synthetic_max_length)
    return read_tsv(manifest), []
  raise DataError(f"unknown data_format {fmt!r}")


def read_tsv(manifest: str) -> Iterator[Sample]:
  """'path<TAB>label' lines (UTF-8). Empty lines are ignored; labels may hold spaces."""
  base = os.path.dirname(os.path.abspath(manifest))
  for lineno, line in _read_lines(manifest):
    line = line.rstrip("\r\n")
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != 2:
      raise DataError(f"{manifest}:{lineno}: expected 2 tab-separated columns "
                      f"(path, label), found {len(fields)}: {line!r}")
    yield Sample(_resolve(base, fields[0]), fields[1], f"{manifest}:{lineno}")


def read_csv(manifest: str, path_column: str, label_column: str,
             header: bool) -> Iterator[Sample]:
  """A CSV (python csv module); columns are a header name or a 0-based index."""
  base = os.path.dirname(os.path.abspath(manifest))
  with _open_text(manifest) as f, _utf8_errors(manifest):
    rows = csv.reader(f)
    names = next(rows, None) if header else None
    path_i = _column_index(manifest, path_column, names)
    label_i = _column_index(manifest, label_column, names)
    for row in rows:
      if not row or not any(cell.strip() for cell in row):
        continue
      origin = f"{manifest}:{rows.line_num}"
      if max(path_i, label_i) >= len(row):
        raise DataError(f"{origin}: expected at least {max(path_i, label_i) + 1} "
                        f"columns, found {len(row)}: {row!r}")
      yield Sample(_resolve(base, row[path_i]), row[label_i], origin)


def list_filenames(folder: str) -> Iterator[Sample]:
  """Images in `folder` labelled by their names: 'ab12c.png' and 'ab12c_3.png' -> 'ab12c'.

  A trailing '_<digits>' is always stripped, so a label that itself ends in
  '_<digits>' cannot be written this way; use a manifest for such labels.
  """
  for name in _image_names(folder):
    stem = os.path.splitext(name)[0]
    path = os.path.join(folder, name)
    yield Sample(path, _DUPLICATE_SUFFIX.sub("", stem), path)


def list_sidecar(folder: str) -> Tuple[List[Sample], List[str]]:
  """Pairs NAME[.bin|.nrm].<ext> with NAME.gt.txt -> (samples, images without one).

  When several images share NAME, the first of .bin, .nrm, plain (then by extension
  order png, jpg, jpeg, bmp, gif) is used: the binarized line is what OCRopus and
  Calamari train on by default. The transcript is UTF-8 with trailing newlines removed.
  """
  by_name: Dict[str, List[Tuple[int, int, str]]] = collections.defaultdict(list)
  for name in _image_names(folder):
    stem, ext = os.path.splitext(name)
    variant = os.path.splitext(stem)[1].lower()
    if variant in (".bin", ".nrm"):
      stem = stem[:-len(variant)]
    else:
      variant = ""
    rank = (SIDECAR_VARIANTS.index(variant), IMAGE_EXTENSIONS.index(ext.lower()))
    by_name[stem].append(rank + (name,))
  samples, no_transcript = [], []
  for stem in sorted(by_name):
    path = os.path.join(folder, min(by_name[stem])[2])
    gt = os.path.join(folder, stem + ".gt.txt")
    if not os.path.isfile(gt):
      no_transcript.append(path)
      continue
    with _open_text(gt) as f, _utf8_errors(gt):
      text = f.read().rstrip("\r\n")
    samples.append(Sample(path, text, gt))
  return samples, no_transcript


# --- checks and skips -----------------------------------------------------------

def _filter(candidates: Iterable[Sample], cfg: DataConfig, charset: Optional[Charset],
            pre_skipped: Skips) -> SampleList:
  """Applies the missing-file and unknown-character policies; logs one skip summary."""
  kept: List[Sample] = []
  skips = list(pre_skipped)
  for sample in candidates:
    if not os.path.isfile(sample.path):
      message = f"{sample.origin}: image file {sample.path} does not exist"
      if cfg.bad_sample_policy == "error":
        raise DataError(message + " (--bad_sample_policy=skip drops such samples)")
      skips.append(("missing file", message, sample.path))
      continue
    problem = _label_problem(sample, cfg.max_label_length)
    if problem:
      if cfg.bad_sample_policy == "error":
        raise DataError(problem + " (--bad_sample_policy=skip drops such samples)")
      skips.append(("bad label", problem, sample.path))
      continue
    unknown = charset.unknown_chars(sample.text) if charset is not None else None
    if unknown:
      chars = ", ".join(repr(c) for c in sorted(unknown))
      message = (f"{sample.origin}: label {sample.text!r} has characters not in the "
                 f"charset: {chars}")
      if cfg.unknown_char_policy == "error":
        raise DataError(message + " (--unknown_char_policy=skip drops such samples)")
      skips.append(("unknown character", message, sample.path))
      continue
    kept.append(sample)
  skipped = dict(collections.Counter(reason for reason, _, _ in skips))
  if skips:
    examples = "; ".join(m for _, m, _ in skips[:_EXAMPLES_LOGGED])
    logging.warning("Skipped %d samples %s; first: %s", len(skips), skipped, examples)
  return SampleList(kept, skipped, [(p, r, m) for r, m, p in skips])


def _label_problem(sample: Sample, max_length: int) -> Optional[str]:
  """Why a label cannot be trained on, or None. An empty or blank label usually means
  a missing transcript, not an empty line, so it is a bad sample, not a target."""
  if not sample.text.strip():
    return f"{sample.origin}: the label of {sample.path} is empty or only whitespace"
  if max_length and len(sample.text) > max_length:
    return (f"{sample.origin}: the label of {sample.path} has {len(sample.text)} "
            f"characters, more than --max_label_length={max_length}")
  return None


# --- helpers ---------------------------------------------------------------------

def _image_names(folder: str) -> List[str]:
  if not os.path.isdir(folder):
    raise DataError(f"{folder} is not a folder")
  return sorted(n for n in os.listdir(folder)
                if n.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(folder, n)))


def _column_index(manifest: str, column: str, header: Optional[List[str]]) -> int:
  if header is not None and column in header:
    return header.index(column)
  if column.isdigit():
    return int(column)
  known = f"; header columns: {header}" if header is not None else " (no header)"
  raise DataError(f"{manifest}: CSV column {column!r} is neither a 0-based index "
                  f"nor a header name{known}")


def _resolve(base: str, path: str) -> str:
  return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def _open_text(path: str):
  if not os.path.isfile(path):
    raise DataError(f"{path} does not exist or is not a file")
  # newline="" lets the csv module handle quoted newlines; tsv strips endings itself.
  return open(path, encoding="utf-8", newline="")


def _read_lines(path: str) -> Iterator[Tuple[int, str]]:
  with _open_text(path) as f, _utf8_errors(path):
    yield from enumerate(f, 1)


@contextlib.contextmanager
def _utf8_errors(path: str):
  try:
    yield
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 ({e})") from None


def spread(items: list, limit: int) -> list:
  """Up to `limit` of `items` drawn at random (seeded), in their order. Not every
  k-th: a listing with a period (copies, sorted groups) would alias with it."""
  if len(items) <= limit:
    return items
  chosen = np.random.default_rng(0).choice(len(items), size=limit, replace=False)
  return [items[i] for i in np.sort(chosen)]
