"""The "pattern" decoder: prefix beam search whose output matches a regular
expression in full (--pattern), for codes: plates, serials, dates.

The expression is compiled here into an automaton (Thompson's construction; no
dependency): the search keeps, per prefix, the set of automaton states it can be in
and extends a prefix only by symbols that leave that set non-empty, so every prefix
in the beam can still become a match; a prefix that needs more symbols than frames
are left is dropped, and only prefixes in an accepting state are returned. When no
matching string fits, the output is empty with log probability -inf.

Syntax: literal characters; escapes \\d \\w \\s (and \\D \\W \\S) and \\ before any
other character for that character; . (any symbol); [classes] with ranges a-z and
negation [^...]; groups (...) and (?:...); alternation |; quantifiers ? * + {m}
{m,} {m,n}. ^ at the start and $ at the end are accepted and change nothing (the
match is always the whole output).
"""

import string
from typing import Dict, FrozenSet, List, Optional, Tuple

from ctc_trainer.decoders import search
from ctc_trainer.decoders.registry import DecoderConfig, register_host
from ctc_trainer.errors import ConfigError

MAX_STATES = 20000
_CLASSES = {"d": set(string.digits), "w": set(string.ascii_letters + string.digits + "_"),
            "s": set(" \t\n\r\f\v")}


class Matcher:
  """A set of characters: the listed ones and ranges, or all but them (negated);
  any=True matches every character."""

  def __init__(self, chars=(), ranges=(), negated=False, any_char=False):
    self.chars, self.ranges = set(chars), list(ranges)
    self.negated, self.any = negated, any_char

  def __call__(self, ch: str) -> bool:
    if self.any:
      return True
    inside = ch in self.chars or any(lo <= ch <= hi for lo, hi in self.ranges)
    return inside != self.negated


class _Parser:
  """Regular expression -> syntax tree: ("chars", Matcher), ("seq", [nodes]),
  ("alt", [nodes]), ("repeat", node, low, high or None)."""

  def __init__(self, text: str):
    self.text, self.pos = text, 0

  def error(self, what: str) -> ConfigError:
    return ConfigError(f"--pattern={self.text!r}: {what} at position {self.pos}")

  def peek(self) -> Optional[str]:
    return self.text[self.pos] if self.pos < len(self.text) else None

  def take(self) -> str:
    ch = self.peek()
    if ch is None:
      raise self.error("unexpected end")
    self.pos += 1
    return ch

  def parse(self):
    if self.peek() == "^":
      self.pos += 1
    node = self.alternation()
    if self.peek() == "$" and self.pos == len(self.text) - 1:
      self.pos += 1
    if self.pos != len(self.text):
      raise self.error(f"unexpected {self.peek()!r}")
    return node

  def alternation(self):
    options = [self.sequence()]
    while self.peek() == "|":
      self.pos += 1
      options.append(self.sequence())
    return options[0] if len(options) == 1 else ("alt", options)

  def sequence(self):
    items = []
    while self.peek() not in (None, "|", ")") and not (
        self.peek() == "$" and self.pos == len(self.text) - 1):
      items.append(self.quantified(self.atom()))
    return ("seq", items)

  def atom(self):
    ch = self.take()
    if ch == "(":
      if self.text.startswith("?:", self.pos):
        self.pos += 2
      node = self.alternation()
      if self.peek() != ")":
        raise self.error("missing )")
      self.pos += 1
      return node
    if ch == "[":
      return ("chars", self.char_class())
    if ch == ".":
      return ("chars", Matcher(any_char=True))
    if ch == "\\":
      return ("chars", self.escape())
    if ch in "*+?{":
      self.pos -= 1
      raise self.error(f"nothing to repeat before {ch!r}")
    if ch in ")]":
      self.pos -= 1
      raise self.error(f"unbalanced {ch!r}")
    return ("chars", Matcher(ch))

  def escape(self) -> Matcher:
    ch = self.take()
    if ch.lower() in _CLASSES:
      return Matcher(_CLASSES[ch.lower()], negated=ch.isupper())
    return Matcher(ch)

  def char_class(self) -> Matcher:
    negated = self.peek() == "^"
    if negated:
      self.pos += 1
    chars, ranges, first = set(), [], True
    while True:
      ch = self.peek()
      if ch is None:
        raise self.error("missing ]")
      if ch == "]" and not first:
        self.pos += 1
        break
      first = False
      self.pos += 1
      if ch == "\\":
        escaped = self.take()
        if escaped.lower() in _CLASSES and escaped.islower():
          chars |= _CLASSES[escaped]
          continue
        ch = escaped
      if self.peek() == "-" and self.pos + 1 < len(self.text) and \
          self.text[self.pos + 1] != "]":
        self.pos += 1
        hi = self.take()
        if hi == "\\":
          hi = self.take()
        if hi < ch:
          raise self.error(f"bad range {ch}-{hi}")
        ranges.append((ch, hi))
      else:
        chars.add(ch)
    return Matcher(chars, ranges, negated)

  def quantified(self, node):
    while self.peek() in ("?", "*", "+", "{"):
      ch = self.take()
      if ch == "?":
        node = ("repeat", node, 0, 1)
      elif ch == "*":
        node = ("repeat", node, 0, None)
      elif ch == "+":
        node = ("repeat", node, 1, None)
      else:
        close = self.text.find("}", self.pos)
        if close < 0:
          raise self.error("missing }")
        body, self.pos = self.text[self.pos:close], close + 1
        low, sep, high = body.partition(",")
        try:
          low_n = int(low)
          high_n = (None if not high.strip() else int(high)) if sep else low_n
        except ValueError:
          raise self.error(f"bad repeat {{{body}}}") from None
        if high_n is not None and high_n < low_n:
          raise self.error(f"bad repeat {{{body}}}")
        node = ("repeat", node, low_n, high_n)
    return node


class Automaton:
  """A Thompson NFA: edges[s] [(Matcher, target)], eps[s] [targets]; start, accept."""

  def __init__(self, tree):
    self.edges: List[List[Tuple[Matcher, int]]] = []
    self.eps: List[List[int]] = []
    self.start, self.accept = self._build(tree)

  def _state(self) -> int:
    if len(self.edges) >= MAX_STATES:
      raise ConfigError(f"--pattern is too large (more than {MAX_STATES} states)")
    self.edges.append([])
    self.eps.append([])
    return len(self.edges) - 1

  def _build(self, node) -> Tuple[int, int]:
    kind = node[0]
    if kind == "chars":
      a, b = self._state(), self._state()
      self.edges[a].append((node[1], b))
      return a, b
    if kind == "seq":
      a = b = self._state()
      for item in node[1]:
        s, e = self._build(item)
        self.eps[b].append(s)
        b = e
      return a, b
    if kind == "alt":
      a, b = self._state(), self._state()
      for option in node[1]:
        s, e = self._build(option)
        self.eps[a].append(s)
        self.eps[e].append(b)
      return a, b
    _, body, low, high = node
    a = b = self._state()
    for _ in range(low):
      s, e = self._build(body)
      self.eps[b].append(s)
      b = e
    if high is None:   # then any number more
      s, e = self._build(body)
      self.eps[b].append(s)
      self.eps[e].append(s)
      end = self._state()
      self.eps[b].append(end)
      self.eps[e].append(end)
      return a, end
    end = self._state()
    for _ in range(high - low):
      self.eps[b].append(end)
      s, e = self._build(body)
      self.eps[b].append(s)
      b = e
    self.eps[b].append(end)
    return a, end

  def closure(self, states) -> FrozenSet[int]:
    seen, todo = set(states), list(states)
    while todo:
      for t in self.eps[todo.pop()]:
        if t not in seen:
          seen.add(t)
          todo.append(t)
    return frozenset(seen)

  def distances(self) -> List[float]:
    """Fewest characters from each state to the accepting one (inf: never)."""
    back: List[List[Tuple[int, int]]] = [[] for _ in self.edges]
    for s, (edges, eps) in enumerate(zip(self.edges, self.eps)):
      for _, t in edges:
        back[t].append((s, 1))
      for t in eps:
        back[t].append((s, 0))
    dist = [float("inf")] * len(self.edges)
    dist[self.accept] = 0
    queue = [self.accept]   # 0-1 breadth-first search, backwards
    while queue:
      s = queue.pop(0)
      for p, w in back[s]:
        if dist[s] + w < dist[p]:
          dist[p] = dist[s] + w
          if w == 0:
            queue.insert(0, p)
          else:
            queue.append(p)
    return dist


def compile_pattern(text: str) -> Automaton:
  """--pattern -> its automaton; ConfigError naming the problem and its position."""
  if not text:
    raise ConfigError("--decoder=pattern needs --pattern, e.g. '[A-Z]{3}[0-9]{3,4}'")
  return Automaton(_Parser(text).parse())


class PatternScorer:
  """search.Scorer of an automaton over a charset. States are ids of the sets of
  automaton states a prefix can be in, made as the search reaches them."""

  def __init__(self, automaton: Automaton, symbols):
    self.nfa, self.symbols = automaton, symbols
    self._to_end = automaton.distances()
    self._sets: List[FrozenSet[int]] = []
    self._ids: Dict[FrozenSet[int], int] = {}
    self._moves: Dict[Tuple[int, int], Optional[int]] = {}
    self._start = self._intern(automaton.closure([automaton.start]))

  def _intern(self, states: FrozenSet[int]) -> int:
    if states not in self._ids:
      self._ids[states] = len(self._sets)
      self._sets.append(states)
    return self._ids[states]

  def initial(self):
    return self._start

  def extend(self, state, symbol: int):
    key = (state, symbol)
    if key not in self._moves:
      ch = self.symbols[symbol - 1]
      reached = {t for s in self._sets[state] for m, t in self.nfa.edges[s] if m(ch)}
      reached = self.nfa.closure(reached) if reached else frozenset()
      viable = any(self._to_end[s] < float("inf") for s in reached)
      self._moves[key] = self._intern(reached) if viable else None
    target = self._moves[key]
    return None if target is None else (target, 0.0)

  def final(self, state):
    return 0.0 if self.nfa.accept in self._sets[state] else None

  def needed(self, state) -> int:
    return min(self._to_end[s] for s in self._sets[state])


def check(config: DecoderConfig) -> None:
  compile_pattern(config.pattern)


@register_host("pattern", check=check)
def build(charset, config: DecoderConfig) -> search.HostSearch:
  scorer = PatternScorer(compile_pattern(config.pattern), charset.symbols)
  return search.HostSearch(scorer, charset.num_classes, config.beam_width,
                           config.top_paths, config.blank_penalty)
