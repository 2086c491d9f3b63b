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
(cfg, split, location, charset) -> Source, its entry in _LOADERS below, and its name
in config.DATA_FORMATS (the --data_format choices; a test checks they agree).
"""

from typing import Callable, Dict, List, Optional

from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig
from ctc_trainer.data.sources import (filenames, jsonl, manifest, sidecar, synthetic,
                                      tfrecord)
from ctc_trainer.data.sources.base import (IMAGE_EXTENSIONS, ListedSource,  # noqa: F401
                                           Sample, Source)
from ctc_trainer.errors import DataError

# data_format -> loader(cfg, split, location, charset) -> Source
_LOADERS: Dict[str, Callable[..., Source]] = {
    "tsv": manifest.load_tsv,
    "csv": manifest.load_csv,
    "jsonl": jsonl.load,
    "filenames": filenames.load,
    "sidecar": sidecar.load,
    "synthetic": synthetic.load,
    "tfrecord": tfrecord.load,
}


def names() -> List[str]:
  return sorted(_LOADERS)


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
  if cfg.data_format not in _LOADERS:
    raise DataError(f"unknown data_format {cfg.data_format!r}; known: "
                    f"{', '.join(names())}")
  return _LOADERS[cfg.data_format](cfg, split, location, charset)
