"""The decoder registry behind ctc_trainer.decoders (see its docstring)."""

import dataclasses
from typing import Callable, Dict, List, Tuple

import tensorflow as tf

from ctc_trainer.errors import ConfigError

DecodeFn = Callable[..., Tuple[List[tf.RaggedTensor], tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """What every decoder is asked for: its beam width (ignored by single-path
  decoders) and how many paths to return."""
  beam_width: int = 10
  top_paths: int = 1


@dataclasses.dataclass(frozen=True)
class Decoder:
  name: str
  decode: DecodeFn
  single_path: bool   # gives only its best path, whatever the beam width

  def max_paths(self, config: DecoderConfig) -> int:
    """The most paths this decoder can return under `config`."""
    return 1 if self.single_path else config.beam_width

  def __call__(self, logits: tf.Tensor, logit_length: tf.Tensor,
               config: DecoderConfig) -> Tuple[List[tf.RaggedTensor], tf.Tensor]:
    if not 1 <= config.top_paths <= self.max_paths(config):
      raise ValueError(f"decoder {self.name!r} gives 1 to {self.max_paths(config)} "
                       f"paths, not {config.top_paths}")
    return self.decode(logits, logit_length, config)


_DECODERS: Dict[str, Decoder] = {}


def register(name: str, single_path: bool = False):
  """Registers the decorated decode function under `name`. single_path: it gives
  one path only (e.g. greedy), so top_paths > 1 cannot be asked of it."""
  def wrap(decode: DecodeFn) -> DecodeFn:
    if name in _DECODERS:
      raise ValueError(f"decoder {name!r} is already registered")
    _DECODERS[name] = Decoder(name, decode, single_path)
    return decode
  return wrap


def names() -> List[str]:
  return sorted(_DECODERS)


def get(name: str) -> Decoder:
  if name not in _DECODERS:
    raise ConfigError(f"unknown decoder {name!r}; known decoders: {', '.join(names())}")
  return _DECODERS[name]
