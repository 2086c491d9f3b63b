"""The decoder registry behind ctc_trainer.decoders (see its docstring)."""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from ctc_trainer.charset import BLANK_ID
from ctc_trainer.errors import ConfigError
from ctc_trainer.options import option

DecodeFn = Callable[..., Tuple[List[tf.RaggedTensor], tf.Tensor]]
# A host decoder, built once: (logits float32 [B, T, C] (blank 0), logit_length int32
# [B], NumPy) -> (paths: top_paths lists of B id lists, best first; log_probs float32
# [B, top_paths], NumPy).
HostDecodeFn = Callable[[np.ndarray, np.ndarray],
                        Tuple[List[List[List[int]]], np.ndarray]]
LEXICON_MODES = ("words", "words_and_chars")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """What every decoder is asked for: its beam width (ignored by single-path
  decoders) and how many paths to return; and the settings of the host decoders
  (lm, lexicon, pattern), which the others ignore. The option fields are flags."""
  beam_width: int = option(10, "Beam width of the eval decoders.", minimum=1)
  top_paths: int = 1
  blank_penalty: float = option(
      0.0, "Subtracted from the blank's logit before any decoder runs (greedy, beam, "
      "lm, ...): > 0 makes the decoder write its best guess where the model is "
      "unsure between a symbol and nothing, as on a typeface or voice it has not "
      "seen (deletions become substitutions, some of them right); < 0 the other "
      "way. Pick it on held-out lines (tools/tune_lm.py --blank_penalties, or "
      "evaluate with a few values); eval loss is not affected.")
  lm_path: str = option(
      "", "--decoder=lm: an ARPA (or KenLM binary) language model, of characters or "
      "words (tools/make_lm.py writes one from training labels).", path=True)
  lm_alpha: float = option(0.5, "--decoder=lm: weight of the language model's log "
                           "probability (tools/tune_lm.py finds it).", minimum=0)
  lm_beta: float = option(1.0, "--decoder=lm: bonus per token the language model "
                          "scores (character or word), against its bias to short "
                          "outputs.")
  lexicon: str = option(
      "", "--decoder=lexicon: a word list, UTF-8, one word per line.", path=True)
  lexicon_mode: str = option(
      "words", "--decoder=lexicon: words = the output is lexicon words separated by "
      "single spaces; words_and_chars = every word (run of characters that occur in "
      "the lexicon) is a lexicon word, other characters may stand between words.",
      choices=LEXICON_MODES)
  pattern: str = option(
      "", "--decoder=pattern: a regular expression every output matches in full, "
      "e.g. '[A-Z]{3}[0-9]{3,4}' (literals, escapes, ., [classes] with ranges, "
      "groups, |, and ? * + {m} {m,n} {m,}).")


@dataclasses.dataclass(frozen=True)
class Decoder:
  """An in-graph decoder: a graph-pure function run inside eval_step and served by
  the SavedModel."""
  name: str
  decode: DecodeFn
  single_path: bool   # gives only its best path, whatever the beam width
  host = False

  def max_paths(self, config: DecoderConfig) -> int:
    """The most paths this decoder can return under `config`."""
    return 1 if self.single_path else config.beam_width

  def __call__(self, logits: tf.Tensor, logit_length: tf.Tensor,
               config: DecoderConfig) -> Tuple[List[tf.RaggedTensor], tf.Tensor]:
    if not 1 <= config.top_paths <= self.max_paths(config):
      raise ValueError(f"decoder {self.name!r} gives 1 to {self.max_paths(config)} "
                       f"paths, not {config.top_paths}")
    return self.decode(penalize_blank(logits, config.blank_penalty), logit_length,
                       config)


@dataclasses.dataclass(frozen=True)
class HostDecoder:
  """A host decoder: runs on the host with NumPy on logits that a graph computed
  (eval_step, the SavedModel's `logits` signature). build(charset, config) loads
  what it needs (a language model, a lexicon) once and returns a HostDecodeFn;
  check(config) raises ConfigError for settings it cannot use, before any work."""
  name: str
  build: Callable[..., HostDecodeFn]
  check: Callable[[DecoderConfig], None]
  host = True

  def max_paths(self, config: DecoderConfig) -> int:
    return config.beam_width


def penalize_blank(logits: tf.Tensor, penalty: float) -> tf.Tensor:
  """logits [..., C] with `penalty` subtracted from the blank's (class BLANK_ID);
  the same tensor when penalty is 0. Graph-pure; dtype kept."""
  if not penalty:
    return logits
  shift = tf.one_hot(BLANK_ID, tf.shape(logits)[-1], on_value=penalty, dtype=tf.float32)
  return logits - tf.cast(shift, logits.dtype)


_DECODERS: Dict[str, object] = {}


def register(name: str, single_path: bool = False):
  """Registers the decorated decode function under `name`. single_path: it gives
  one path only (e.g. greedy), so top_paths > 1 cannot be asked of it."""
  def wrap(decode: DecodeFn) -> DecodeFn:
    if name in _DECODERS:
      raise ValueError(f"decoder {name!r} is already registered")
    _DECODERS[name] = Decoder(name, decode, single_path)
    return decode
  return wrap


def register_host(name: str, check: Optional[Callable[[DecoderConfig], None]] = None):
  """Registers the decorated builder `(charset, config) -> HostDecodeFn` as host
  decoder `name`; check(config) validates its settings (ConfigError)."""
  def wrap(build):
    if name in _DECODERS:
      raise ValueError(f"decoder {name!r} is already registered")
    _DECODERS[name] = HostDecoder(name, build, check or (lambda config: None))
    return build
  return wrap


def names() -> List[str]:
  return sorted(_DECODERS)


def graph_names() -> List[str]:
  """The in-graph decoders: those eval_step runs and a SavedModel can serve."""
  return [n for n in names() if not _DECODERS[n].host]


def get(name: str):
  """The Decoder (in-graph) or HostDecoder registered as `name`."""
  if name not in _DECODERS:
    raise ConfigError(f"unknown decoder {name!r}; known decoders: {', '.join(names())}")
  return _DECODERS[name]


def served(decoder_names: Sequence[str]) -> str:
  """The decoder a SavedModel serves for --decoder=decoder_names: the first in-graph
  one (a host decoder runs on the exported logits instead)."""
  for name in decoder_names:
    if not get(name).host:
      return name
  raise ConfigError(
      f"--decoder={','.join(decoder_names)} names only host decoders; an export "
      f"serves an in-graph one ({', '.join(graph_names())}): add one, e.g. "
      f"--decoder={','.join(decoder_names)},beam")
