"""The modality registry: --modality name -> Modality (modality.py has the interface).

Adding a modality: one new module with a modality.Modality subclass, and its line in
config.MODALITIES (which also gives --modality its choices). Models declare the
modality they read where they register. Nothing else branches on which modality is
in use.
"""

import importlib
from typing import List, Type

from ctc_trainer.config import MODALITIES, DataConfig
from ctc_trainer.data.modality import Modality


def names() -> List[str]:
  return sorted(MODALITIES)


def modality_class(name: str) -> Type[Modality]:
  if name not in MODALITIES:
    raise ValueError(f"unknown modality {name!r}; known: {', '.join(names())}")
  module, cls = MODALITIES[name].split(":")
  return getattr(importlib.import_module(f"ctc_trainer.data.{module}"), cls)


def get(cfg: DataConfig) -> Modality:
  """The Modality of cfg.modality, built for cfg."""
  return modality_class(cfg.modality)(cfg)
