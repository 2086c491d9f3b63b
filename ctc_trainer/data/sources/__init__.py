"""The Source seam: where a split's samples come from, one module per --data_format.

Formats (DataConfig.data_format, docs/data_formats.md):
  manifest   tsv: 'path<TAB>label' lines; csv: columns picked by csv_path_column /
             csv_label_column; relative paths resolve against the manifest's folder
  jsonl      {"path": ..., "text": ...} per line (NeMo's "audio_filepath" and
             "duration" too)
  filenames  a folder of images named by their labels
  sidecar    OCRopus/Calamari: NAME.png (or NAME.bin.png, NAME.nrm.png) + NAME.gt.txt
  synthetic  generated once by data/synthetic.py, then read as tsv
  tfrecord   a file pattern of TFRecord shards (data/tfrecord.py); nothing is listed
             up front, the shards are the list
base.py has the Source interface. Adding a format: one new module with a loader
(cfg, split, location, charset) -> Source, and its line in config.SOURCES (which
also gives --data_format its choices).
"""

import importlib
from typing import Callable, List, Optional

from ctc_trainer.charset import Charset
from ctc_trainer.config import SOURCES, DataConfig
from ctc_trainer.data.sources.base import (IMAGE_EXTENSIONS, ListedSource,  # noqa: F401
                                           Sample, Source)
from ctc_trainer.errors import DataError


def names() -> List[str]:
  return sorted(SOURCES)


def loader(data_format: str) -> Callable[..., Source]:
  """The registered loader(cfg, split, location, charset) -> Source of a format."""
  if data_format not in SOURCES:
    raise DataError(f"unknown data_format {data_format!r}; known: {', '.join(names())}")
  module, function = SOURCES[data_format].split(":")
  return getattr(importlib.import_module(f"{__name__}.{module}"), function)


def load_samples(cfg: DataConfig, split: str, charset: Optional[Charset] = None) -> Source:
  """The Source of split 'train' or 'eval' (cfg.train_data / cfg.eval_data).

  Listed samples: missing files are handled by cfg.bad_sample_policy and, when a
  charset is given, labels with unknown characters by cfg.unknown_char_policy:
  'error' raises DataError naming file, line and characters; 'skip' drops and counts
  the sample.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  location = cfg.train_data if split == "train" else cfg.eval_data
  if not location:
    raise DataError(f"no {split} data given (--{split}_data is empty)")
  return loader(cfg.data_format)(cfg, split, location, charset)
