"""The modality registry: --modality name -> Modality (modality.py has the interface).

Adding a modality: one new module with a modality.Modality subclass, its entry in
_MODALITIES below, and its name in config.MODALITIES. Models declare the modality they
read where they register. Nothing else branches on which modality is in use.
"""

from typing import Dict, List, Type

from ctc_trainer.config import DataConfig
from ctc_trainer.data import audio, image
from ctc_trainer.data.modality import Modality

_MODALITIES: Dict[str, Type[Modality]] = {
    m.name: m for m in (image.ImageModality, audio.AudioModality)}


def names() -> List[str]:
  return sorted(_MODALITIES)


def get(cfg: DataConfig) -> Modality:
  """The Modality of cfg.modality, built for cfg."""
  if cfg.modality not in _MODALITIES:
    raise ValueError(f"unknown modality {cfg.modality!r}; known: {', '.join(names())}")
  return _MODALITIES[cfg.modality](cfg)
