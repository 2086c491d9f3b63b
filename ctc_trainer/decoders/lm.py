"""The "lm" decoder: prefix beam search with an n-gram language model (KenLM).

A prefix's score is its CTC log probability plus, per token the model scores,
lm_alpha * ln P(token | the tokens before) + lm_beta, and lm_alpha * ln P(</s> | ...)
at the end. --lm_path is an ARPA file (tools/make_lm.py writes one from training
labels) or a KenLM binary; the `kenlm` package (`pip install -e '.[lm]'`) reads it.

Characters or words: a language model is of characters when its vocabulary holds
the space token SPACE_TOKEN ("<sp>", which tools/make_lm.py --unit=char always
writes) or, for an ARPA file, when every token is a single character. Its tokens
are then the output's characters, a space spelled "<sp>", each scored as it is
emitted: what OCR and captcha models need, where "words" may be codes or cut-off
line ends. Otherwise its tokens are words, scored when a space or the end closes
them (any run of non-spaces is a word); while a word is being spelled, a prefix
that no word of an ARPA model's vocabulary begins with is charged OOV_PREFIX (nats)
until the word closes, so that the beam is not filled with words the model
does not know. KenLM gives an unknown word the probability of <unk>.

Why not pyctcdecode: its latest release (0.5.0) requires numpy < 2, which
TensorFlow 2.21 does not run with (pip would downgrade NumPy), and its search
scores words only. The search here is the one the lexicon and pattern decoders
share (search.py), KenLM does the scoring.
"""

import math
import os
from typing import Dict, Optional, Set, Tuple

from absl import logging

from ctc_trainer.decoders import search
from ctc_trainer.decoders.registry import DecoderConfig, register_host
from ctc_trainer.errors import ConfigError

SPACE_TOKEN = "<sp>"
SPECIAL_TOKENS = ("<s>", "</s>", "<unk>")
LN10 = math.log(10.0)
OOV_PREFIX = -10.0
INSTALL = "pip install -e '.[lm]' (or: pip install kenlm)"
_MODELS: Dict[str, Tuple[object, Optional[Set[str]]]] = {}


def import_kenlm():
  try:
    import kenlm  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError(f"--decoder=lm needs the kenlm package, which the optional "
                      f"'lm' extra installs: {INSTALL}") from None
  return kenlm


def arpa_unigrams(path: str) -> Optional[Set[str]]:
  """The vocabulary of an ARPA file; None when `path` is not a text ARPA file
  (a KenLM binary)."""
  with open(path, "rb") as f:
    head = f.read(4096)
  if b"\\data\\" not in head:
    return None
  words, inside = set(), False
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      line = line.strip()
      if line == "\\1-grams:":
        inside = True
      elif inside and (line.startswith("\\") or not line):
        if line.startswith("\\"):
          break
      elif inside:
        parts = line.split()
        if len(parts) >= 2:
          words.add(parts[1])
  return words


def load(path: str):
  """-> (kenlm.Model, its vocabulary or None), loaded once per path."""
  if path not in _MODELS:
    kenlm = import_kenlm()
    try:
      model = kenlm.Model(path)
    except (OSError, RuntimeError, IOError) as e:
      raise ConfigError(f"--lm_path={path}: KenLM cannot load it: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                        ) from None
    _MODELS[path] = (model, arpa_unigrams(path))
  return _MODELS[path]


def is_char_model(model, vocabulary: Optional[Set[str]]) -> bool:
  if SPACE_TOKEN in model:
    return True
  if vocabulary is None:
    return False
  return all(len(w) == 1 for w in vocabulary - set(SPECIAL_TOKENS))


class CharScorer:
  """search.Scorer of a character language model. State: a kenlm.State."""

  def __init__(self, model, kenlm, symbols, alpha: float, beta: float):
    self.model, self.kenlm, self.alpha, self.beta = model, kenlm, alpha, beta
    self.tokens = [SPACE_TOKEN if s == " " else s for s in symbols]

  def initial(self):
    state = self.kenlm.State()
    self.model.BeginSentenceWrite(state)
    return state

  def extend(self, state, symbol: int):
    out = self.kenlm.State()
    log10 = self.model.BaseScore(state, self.tokens[symbol - 1], out)
    return out, self.alpha * LN10 * log10 + self.beta

  def final(self, state):
    return self.alpha * LN10 * self.model.BaseScore(state, "</s>", self.kenlm.State())

  def needed(self, state) -> int:
    return 0


class WordScorer:
  """search.Scorer of a word language model. State: (kenlm.State before the word
  being spelled, that word so far, the OOV_PREFIX charge it carries)."""

  def __init__(self, model, kenlm, symbols, alpha: float, beta: float,
               vocabulary: Optional[Set[str]]):
    self.model, self.kenlm, self.alpha, self.beta = model, kenlm, alpha, beta
    self.symbols = symbols
    self.prefixes = None
    if vocabulary is not None:
      self.prefixes = {w[:i] for w in vocabulary - set(SPECIAL_TOKENS)
                       for i in range(1, len(w) + 1)}

  def initial(self):
    state = self.kenlm.State()
    self.model.BeginSentenceWrite(state)
    return state, "", 0.0

  def _close(self, state, word: str, charge: float):
    """The score of closing `word` after `state`, less the charge it carried."""
    out = self.kenlm.State()
    log10 = self.model.BaseScore(state, word, out)
    return out, self.alpha * LN10 * log10 + self.beta - charge

  def extend(self, state, symbol: int):
    lm_state, word, charge = state
    ch = self.symbols[symbol - 1]
    if ch == " ":
      if not word:   # a leading or second space closes nothing
        return state, 0.0
      out, score = self._close(lm_state, word, charge)
      return (out, "", 0.0), score
    word += ch
    if self.prefixes is not None and charge == 0.0 and word not in self.prefixes:
      return (lm_state, word, OOV_PREFIX), OOV_PREFIX
    return (lm_state, word, charge), 0.0

  def final(self, state):
    lm_state, word, charge = state
    score = 0.0
    if word:
      lm_state, score = self._close(lm_state, word, charge)
    return score + self.alpha * LN10 * self.model.BaseScore(
        lm_state, "</s>", self.kenlm.State())

  def needed(self, state) -> int:
    return 0


def make_scorer(charset, config: DecoderConfig):
  model, vocabulary = load(config.lm_path)
  kenlm = import_kenlm()
  if is_char_model(model, vocabulary):
    logging.info("--lm_path=%s: a character model of order %d", config.lm_path,
                 model.order)
    return CharScorer(model, kenlm, charset.symbols, config.lm_alpha, config.lm_beta)
  logging.info("--lm_path=%s: a word model of order %d", config.lm_path, model.order)
  return WordScorer(model, kenlm, charset.symbols, config.lm_alpha, config.lm_beta,
                    vocabulary)


def check(config: DecoderConfig) -> None:
  if not config.lm_path:
    raise ConfigError("--decoder=lm needs --lm_path (an ARPA or KenLM binary file; "
                      "tools/make_lm.py writes one from the training labels)")
  if not os.path.isfile(config.lm_path):
    raise ConfigError(f"--lm_path={config.lm_path} is not a file")
  import_kenlm()


@register_host("lm", check=check)
def build(charset, config: DecoderConfig) -> search.HostSearch:
  return search.HostSearch(make_scorer(charset, config), charset.num_classes,
                           config.beam_width, config.top_paths, config.blank_penalty)
