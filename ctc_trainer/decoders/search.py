"""CTC prefix beam search on the host, in NumPy, steered by a Scorer: what the host
decoders (lm, lexicon, pattern) share.

A Scorer says which symbol may follow a prefix and what it adds to the prefix's
score (a language model's weighted log probability, or 0 under a constraint):

    initial() -> state                  the empty prefix
    extend(state, id) -> (state, score) | None   appending charset id `id`; None
                                        forbids it
    final(state) -> score | None        ending here; None: not a complete output
    needed(state) -> int                fewest more symbols before final() accepts

The search keeps, per prefix, the CTC probabilities of its alignments ending in a
blank and in its last symbol (the prefix beam search of Hannun et al., 2014), ranks
prefixes by their acoustic log probability plus the scorer's sum, and keeps the
beam_width best at each frame. A prefix that needs more symbols than frames are left
is dropped; a prefix the scorer does not accept at the end is never returned.

Before the search each row goes through beam_pruned.prune (in TensorFlow, one traced
function): frames where the blank is sure are dropped (a run of them between two
frames that could emit the same symbol is kept as one frame) and classes below its
class threshold on every kept frame are left out. So the Python loop runs over the
few frames where something happens; the returned log probabilities get back the
constant that pruning took out.
"""

import math
from typing import List, NamedTuple, Optional, Protocol, Tuple

import numpy as np
import tensorflow as tf

from ctc_trainer.charset import BLANK_ID
from ctc_trainer.decoders import beam_pruned, registry

NEG_INF = -math.inf
# A symbol is tried at a frame only where its log probability reaches this.
CANDIDATE_MIN_LOG_PROB = math.log(1e-3)
# Prefixes this far (nats) below the best one at a frame are dropped.
BEAM_PRUNE = 12.0


class Scorer(Protocol):
  def initial(self): ...
  def extend(self, state, symbol: int) -> Optional[Tuple[object, float]]: ...
  def final(self, state) -> Optional[float]: ...
  def needed(self, state) -> int: ...


class Reduced(NamedTuple):
  """A batch after pruning (NumPy): log_probs [B, T', C'] per row's kept frames and
  classes, length [B], num_classes [B], class_ids [B, C'] (original ids),
  offset [B] (what pruning took out of every path's log probability)."""
  log_probs: np.ndarray
  length: np.ndarray
  num_classes: np.ndarray
  class_ids: np.ndarray
  offset: np.ndarray


class HostSearch:
  """A HostDecodeFn (decoders.registry): logits [B, T, C] and logit_length [B] in
  NumPy -> (top_paths lists of B id lists, log_probs float32 [B, top_paths]).

  Paths are ranked by acoustic log probability plus the scorer's score; the
  returned log_probs are the acoustic part (comparable with the in-graph decoders'
  scores): -inf, with an empty path, where the scorer accepted nothing.
  """

  def __init__(self, scorer: Scorer, num_classes: int, beam_width: int,
               top_paths: int = 1, blank_penalty: float = 0.0):
    """blank_penalty: DecoderConfig.blank_penalty, taken off the blank's logit
    before anything else."""
    self.scorer, self.beam_width, self.top_paths = scorer, beam_width, top_paths

    @tf.function(input_signature=[tf.TensorSpec([None, None, num_classes], tf.float32),
                                  tf.TensorSpec([None], tf.int32)], autograph=False)
    def prune(logits, logit_length):
      return beam_pruned.prune(registry.penalize_blank(logits, blank_penalty),
                               logit_length, min_classes=top_paths)
    self._prune = prune

  def reduce(self, logits: np.ndarray, logit_length: np.ndarray) -> Reduced:
    """The pruned problem of a batch (tools/tune_lm.py decodes one many times)."""
    p = self._prune(tf.constant(logits, tf.float32), tf.constant(logit_length, tf.int32))
    return Reduced(*(np.asarray(v) for v in p))

  def __call__(self, logits: np.ndarray, logit_length: np.ndarray
               ) -> Tuple[List[List[List[int]]], np.ndarray]:
    return self.decode_reduced(self.reduce(logits, logit_length))

  def decode_reduced(self, r: Reduced) -> Tuple[List[List[List[int]]], np.ndarray]:
    batch = r.length.shape[0]
    paths = [[[] for _ in range(batch)] for _ in range(self.top_paths)]
    scores = np.full([batch, self.top_paths], NEG_INF, np.float32)
    for b in range(batch):
      c = int(r.num_classes[b])
      found = self.search_row(r.log_probs[b, :int(r.length[b]), :c],
                              r.class_ids[b, :c])
      for k, (ids, score) in enumerate(found[:self.top_paths]):
        paths[k][b] = list(ids)
        scores[b, k] = score + float(r.offset[b])
    return paths, scores

  def search_row(self, log_probs: np.ndarray, class_ids: np.ndarray
                 ) -> List[Tuple[Tuple[int, ...], float]]:
    """One sequence: log_probs [T, C] (column 0 the blank) over the classes
    class_ids [C] -> [(ids, acoustic log prob)], best first by the total score.

    The CTC sums run on probabilities, not logs (a multiply-add per extension
    instead of a log-add), rescaled after each frame so that the best prefix has
    probability 1; `scale` keeps the log of what was divided out."""
    scorer, width = self.scorer, self.beam_width
    frames = log_probs.shape[0]
    probs = np.exp(log_probs.astype(np.float64))
    column = {int(orig): j for j, orig in enumerate(class_ids) if orig != BLANK_ID}
    # prefix -> (scorer state, scorer's sum) or None when forbidden; kept across
    # frames, as a prefix's state depends on the prefix only.
    info = {(): (scorer.initial(), 0.0)}
    beams = {(): (1.0, 0.0)}   # prefix -> (P ending in a blank, in its last symbol)
    scale = 0.0
    keep = log_probs[:, 1:] >= CANDIDATE_MIN_LOG_PROB
    for t in range(frames):
      row = probs[t]
      blank = float(row[BLANK_ID])
      tried = [(int(class_ids[j]), float(row[j])) for j in np.flatnonzero(keep[t]) + 1]
      following = {}
      for prefix, (pb, pnb) in beams.items():
        total = pb + pnb
        last = prefix[-1] if prefix else None
        repeat = pnb * float(row[column[last]]) if last in column else 0.0
        old = following.get(prefix)
        following[prefix] = ((total * blank, repeat) if old is None else
                             (old[0] + total * blank, old[1] + repeat))
        state, extra = info[prefix]
        for symbol, p in tried:
          new = prefix + (symbol,)
          known = info.get(new, False)
          if known is False:
            step = scorer.extend(state, symbol)
            known = info[new] = None if step is None else (step[0], extra + step[1])
          if known is None:
            continue
          # A repeat of the last symbol is a new one only after a blank.
          gain = (pb if symbol == last else total) * p
          old = following.get(new)
          following[new] = (0.0, gain) if old is None else (old[0], old[1] + gain)
      left = frames - t - 1
      ranked = []
      for prefix, (pb, pnb) in following.items():
        total = pb + pnb
        if total <= 0.0:
          continue
        state, extra = info[prefix]
        if scorer.needed(state) > left:
          continue
        ranked.append((math.log(total) + extra, prefix))
      if not ranked:
        return []
      ranked.sort(key=lambda x: x[0], reverse=True)
      best = ranked[0][0]
      kept = [prefix for score, prefix in ranked[:width] if score >= best - BEAM_PRUNE]
      top = max(sum(following[prefix]) for prefix in kept)
      scale += math.log(top)
      beams = {prefix: (following[prefix][0] / top, following[prefix][1] / top)
               for prefix in kept}
    ended = []
    for prefix, (pb, pnb) in beams.items():
      state, extra = info[prefix]
      closing = scorer.final(state)
      if closing is None:
        continue
      acoustic = math.log(pb + pnb) + scale
      ended.append((acoustic + extra + closing, prefix, acoustic))
    ended.sort(key=lambda x: x[0], reverse=True)
    return [(prefix, acoustic) for _, prefix, acoustic in ended]


def texts(charset, paths: List[List[int]]) -> List[str]:
  """One rank of a host decoder's paths -> their strings."""
  return [charset.decode_py(ids) for ids in paths]
