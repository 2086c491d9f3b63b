"""The model registry behind ctc_trainer.models (see its docstring)."""

import dataclasses
from typing import Callable, Dict, List, NamedTuple, Union

from ctc_trainer import options


class _Entry(NamedTuple):
  build: Callable
  config: type
  modality: str


_MODELS: Dict[str, _Entry] = {}


def register(name: str, config: type, modality: str):
  """Registers a builder(cfg, num_classes, input_shape) -> keras.Model under `name`;
  defines the flags of its config's fields."""
  def wrap(builder):
    _MODELS[name] = _Entry(builder, config, modality)
    options.define_flags(config)
    return builder
  return wrap


def names() -> List[str]:
  return sorted(_MODELS)


def config_class(name: str) -> type:
  return _entry(name).config


def name_of(cfg) -> str:
  """The registered name of a model config instance."""
  for name, entry in _MODELS.items():
    if type(cfg) is entry.config:   # pylint: disable=unidiomatic-typecheck
      return name
  raise ValueError(f"{type(cfg).__name__} is not a registered model config; known "
                   f"models: {', '.join(names())}")


def modality_of(model: Union[str, object]) -> str:
  """What a model reads ('image' or 'audio'), by name or by config instance."""
  return _entry(model if isinstance(model, str) else name_of(model)).modality


def build(cfg, num_classes: int, input_shape):
  """cfg: a registered model's config; input_shape: per-example shape with None
  along time, e.g. (32, None, 1)."""
  if not dataclasses.is_dataclass(cfg):
    raise TypeError(f"expected a model config dataclass, got {cfg!r}")
  return _entry(name_of(cfg)).build(cfg, num_classes, input_shape)


def _entry(name: str) -> _Entry:
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
  return _MODELS[name]
