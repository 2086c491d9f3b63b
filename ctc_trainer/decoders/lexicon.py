"""The "lexicon" decoder: prefix beam search whose words come from a word list, in
the manner of word beam search (Scheidl et al., 2018).

--lexicon=FILE (UTF-8, one word per line; each whitespace-separated token of a line
counts as a word) and --lexicon_mode:
  words            the output is lexicon words separated by single spaces;
  words_and_chars  word characters are those that occur in the lexicon's words; every
                   maximal run of them in the output is a lexicon word, and the other
                   characters of the charset (spaces, punctuation, digits, ...) may
                   stand between words.
The words sit in a trie; a prefix may only grow along it, so no beam ever holds a
word that no lexicon word begins with. Scores are the CTC log probabilities alone.
"""

import os
from typing import Dict, List, Optional, Tuple

from absl import logging

from ctc_trainer.decoders import search
from ctc_trainer.decoders.registry import DecoderConfig, register_host
from ctc_trainer.errors import ConfigError

_NO_END = 1 << 30


def read_words(path: str) -> List[str]:
  """--lexicon's words, in file order, without duplicates; ConfigError when the
  file is missing, unreadable or holds no word."""
  if not path:
    raise ConfigError("--decoder=lexicon needs --lexicon=FILE (one word per line)")
  try:
    with open(path, encoding="utf-8") as f:
      words = [w for line in f for w in line.split()]
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"--lexicon={path} cannot be read: "
                      f"{getattr(e, 'strerror', None) or e}") from None
  if not words:
    raise ConfigError(f"--lexicon={path} holds no word")
  return list(dict.fromkeys(words))


class Trie:
  """Words over charset ids: children[node] {id: node}, terminal[node], and
  to_end[node], the fewest ids from node to the end of a word."""

  def __init__(self, words: List[List[int]]):
    self.children: List[Dict[int, int]] = [{}]
    self.terminal = [False]
    for word in words:
      node = 0
      for symbol in word:
        nxt = self.children[node].get(symbol)
        if nxt is None:
          nxt = len(self.children)
          self.children[node][symbol] = nxt
          self.children.append({})
          self.terminal.append(False)
        node = nxt
      self.terminal[node] = True
    self.to_end = [_NO_END] * len(self.children)
    for node in reversed(range(len(self.children))):   # children after parents
      if self.terminal[node]:
        self.to_end[node] = 0
      for child in self.children[node].values():
        self.to_end[node] = min(self.to_end[node], self.to_end[child] + 1)


class LexiconScorer:
  """search.Scorer of a lexicon. State: (trie node, whether a space just closed a
  word) in words mode; the trie node (0: between words) in words_and_chars mode."""

  def __init__(self, trie: Trie, mode: str, space_id: Optional[int],
               word_ids: frozenset):
    self.trie, self.mode, self.space_id, self.word_ids = trie, mode, space_id, word_ids

  def initial(self):
    return (0, False) if self.mode == "words" else 0

  def extend(self, state, symbol: int) -> Optional[Tuple[object, float]]:
    trie = self.trie
    if self.mode == "words":
      node, after_space = state
      if symbol == self.space_id:
        return ((0, True), 0.0) if trie.terminal[node] and node != 0 else None
      child = trie.children[node].get(symbol)
      return None if child is None else ((child, False), 0.0)
    if symbol in self.word_ids:
      child = trie.children[state].get(symbol)
      return None if child is None else (child, 0.0)
    return (0, 0.0) if state == 0 or trie.terminal[state] else None

  def final(self, state) -> Optional[float]:
    if self.mode == "words":
      node, after_space = state
      # A whole word, or nothing at all (not a trailing space).
      done = self.trie.terminal[node] if node else not after_space
    else:
      done = state == 0 or self.trie.terminal[state]
    return 0.0 if done else None

  def needed(self, state) -> int:
    if self.mode == "words":
      node, after_space = state
      return self.trie.to_end[node] if node or after_space else 0
    return self.trie.to_end[state] if state else 0


def make_scorer(charset, config: DecoderConfig) -> LexiconScorer:
  """The lexicon's scorer over `charset`; words with characters the charset lacks
  are left out (and counted in the log)."""
  words = read_words(config.lexicon)
  usable = [w for w in words if not charset.unknown_chars(w)]
  if len(usable) < len(words):
    logging.warning("--lexicon=%s: %d of %d words have characters outside the "
                    "charset and are left out", config.lexicon,
                    len(words) - len(usable), len(words))
  if not usable:
    raise ConfigError(f"--lexicon={config.lexicon}: no word is spelled in the "
                      "model's charset")
  ids = [charset.encode_py(w) for w in usable]
  space_id = charset.encode_py(" ")[0] if " " in charset.symbols else None
  return LexiconScorer(Trie(ids), config.lexicon_mode, space_id,
                       frozenset(i for w in ids for i in w))


def check(config: DecoderConfig) -> None:
  if config.lexicon and not os.path.isfile(config.lexicon):
    raise ConfigError(f"--lexicon={config.lexicon} is not a file")
  read_words(config.lexicon)


@register_host("lexicon", check=check)
def build(charset, config: DecoderConfig) -> search.HostSearch:
  return search.HostSearch(make_scorer(charset, config), charset.num_classes,
                           config.beam_width, config.top_paths, config.blank_penalty)
