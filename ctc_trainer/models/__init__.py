"""Model registry: name -> builder. Every model maps `inputs` to logits [B, T, C] and
has `output_length(input_length)` giving the valid frames of each example."""

from typing import Callable, Dict, List

from ctc_trainer.config import ModelConfig

_BUILDERS: Dict[str, Callable] = {}


def register(name: str, modality: str = "image"):
  """Registers a builder under `name`; `modality` names the inputs it reads
  (data/modalities.py)."""
  def wrap(builder):
    builder.modality = modality
    _BUILDERS[name] = builder
    return builder
  return wrap


def names() -> List[str]:
  return sorted(_BUILDERS)


def modality_of(name: str) -> str:
  """The modality whose inputs model `name` reads."""
  return _BUILDERS[name].modality


def build(cfg: ModelConfig, num_classes: int, input_shape):
  """input_shape: per-example shape with None width, e.g. (32, None, 1)."""
  if cfg.name not in _BUILDERS:
    raise ValueError(f"unknown model {cfg.name!r}; known: {', '.join(names())}")
  return _BUILDERS[cfg.name](cfg, num_classes, input_shape)


from ctc_trainer.models import crnn  # noqa: E402,F401  (registers itself)
from ctc_trainer.models import speech  # noqa: E402,F401  (registers itself)
