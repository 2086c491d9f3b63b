"""The "beam_pruned" decoder: prune frames and classes, then run the beam search.

Same top-1 as the "beam" decoder on trained models, and much faster at wide beams
(docs/benchmarks.md).

tf.nn.ctc_beam_search_decoder costs about frames x beam x classes per sequence (it
expands every beam by every class at every frame), whatever the probabilities are. A
trained recognizer is sure of most of that work: most frames are blank with
probability ~1 and most classes have probability ~0 everywhere in a sequence.
`pruned_beam_search_decode` removes both before the search and maps the result back:

Frames. A valid frame whose blank probability is >= blank_threshold is "droppable".
Dropping all of them would change what CTC collapses: "a, blank, a" spells "aa" but
"a, a" spells "a". So a run of droppable frames between two kept frames L and R is
shortened to its first frame, not removed, when L and R could emit the same
character: some class other than the blank reaches class_threshold on both. Otherwise
no repeat can form across the run (except through classes the class pruning below
neglects anyway) and the run is dropped whole, as are the runs before the first and
after the last kept frame, which separate nothing. With every dropped frame blank, the
reduced problem then has the original's labelings and alignments; what is lost are
alignments that put a non-blank (probability < 1 - blank_threshold) on a dropped
frame, or one class below class_threshold on both sides of a dropped run. Kept frames
are compacted to the left of each row.

Classes. Per sequence (not per batch: a batch of 64 lines uses nearly every
character, so a batch-wide union would hardly shrink anything), a class is kept when
its probability reaches class_threshold on some kept frame; the blank always is.
Kept classes are re-normalized over the kept set (no "other" bucket: such a class
would be a decodable label that means nothing). Re-normalizing scales every path
through a frame by the same factor, so it changes no ranking among labelings of kept
classes; the beam search normalizes each frame itself anyway.

Each row's reduced problem goes through ctc.beam_search_decode (the one place that
knows where the TF op wants the blank) on its own, and the ids are mapped back to the
original classes. The returned log probabilities get back what pruning took out (the
dropped classes' mass, the dropped frames' blank), so they stay comparable with the
plain decoder's.
"""

import math
from typing import List, NamedTuple, Tuple

import tensorflow as tf

from ctc_trainer import ctc
from ctc_trainer.charset import BLANK_ID
from ctc_trainer.decoders import greedy
from ctc_trainer.decoders.registry import DecoderConfig, register

# A row whose best path is more probable than this is decoded greedily (see
# pruned_beam_search_decode): 0.5, the bound that makes that exact, plus a margin.
SURE_PATH_PROB = 0.55


class Pruned(NamedTuple):
  """A CTC decoding problem reduced by `prune`.

  log_probs: float32 [B, T', C'], each row's kept frames and classes compacted to
    the left, class 0 the blank, padding classes -inf; length: int32 [B] kept frames;
    num_classes: int32 [B] kept classes; class_ids: int32 [B, C'] the original class
    of each reduced class (entries past num_classes are meaningless);
    log_prob_offset: float32 [B], what to add to a reduced path's log probability to
    approximate the original's (the kept classes' mass on kept frames, and the blank
    on dropped frames).
  """
  log_probs: tf.Tensor
  length: tf.Tensor
  num_classes: tf.Tensor
  class_ids: tf.Tensor
  log_prob_offset: tf.Tensor


def prune(logits: tf.Tensor, logit_length: tf.Tensor, blank_threshold: float = 0.999,
          class_threshold: float = 1e-4, min_classes: int = 1) -> Pruned:
  """Reduces a batch of CTC outputs as the module docstring describes.

  logits: [B, T, C] (any float dtype; blank 0); logit_length: int32 [B].
  blank_threshold > 1 keeps every frame; class_threshold 0 keeps every class.
  Each row keeps at least its min_classes most probable classes (the blank counted
  if it is among them), so that a beam search asked for that many paths finds them.
  """
  if blank_threshold <= 0 or class_threshold < 0:
    raise ValueError(f"need blank_threshold > 0 and class_threshold >= 0, got "
                     f"{blank_threshold} and {class_threshold}")
  log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
  logit_length = tf.cast(logit_length, tf.int32)
  valid = tf.sequence_mask(logit_length, tf.shape(log_probs)[1])

  keep = _kept_frames(log_probs, valid, blank_threshold, class_threshold)
  frame_ids, length = _compact(keep)
  log_probs_kept = tf.gather(log_probs, frame_ids, batch_dims=1)     # [B, T', C]
  kept_valid = tf.sequence_mask(length, tf.shape(frame_ids)[1])      # [B, T']

  # Classes that reach the threshold on some kept frame of the row, and the blank.
  peak = tf.reduce_max(
      tf.where(kept_valid[..., None], log_probs_kept, -math.inf), axis=1)
  is_blank = tf.equal(tf.range(tf.shape(log_probs)[2]), BLANK_ID)
  runner_up = tf.math.top_k(peak, tf.minimum(min_classes, tf.shape(peak)[1])).values
  present = ((peak >= _log(class_threshold)) | is_blank[None, :] |
             ((peak >= runner_up[:, -1:]) & (peak > -math.inf)))      # [B, C]
  class_ids, num_classes = _compact(present)
  class_valid = tf.sequence_mask(num_classes, tf.shape(class_ids)[1])  # [B, C']
  reduced = tf.gather(log_probs_kept, class_ids, axis=2, batch_dims=1)  # [B, T', C']
  reduced = tf.where(class_valid[:, None, :], reduced, -math.inf)

  mass = tf.reduce_logsumexp(reduced, axis=2)                        # [B, T']
  dropped = valid & ~keep
  offset = (tf.reduce_sum(tf.where(kept_valid, mass, 0.0), axis=1) +
            tf.reduce_sum(tf.where(dropped, log_probs[..., BLANK_ID], 0.0), axis=1))
  return Pruned(reduced, length, num_classes, class_ids, offset)


def pruned_beam_search_decode(logits: tf.Tensor, logit_length: tf.Tensor,
                              beam_width: int, top_paths: int = 1,
                              blank_threshold: float = 0.999,
                              class_threshold: float = 1e-4,
                              greedy_if_sure: bool = True,
                              ) -> Tuple[List[tf.RaggedTensor], tf.Tensor]:
  """ctc.beam_search_decode on the pruned problem, with ids mapped back.

  logits: [B, T, C] with blank 0; logit_length: int32 [B].
  Returns (top_paths ragged int32 [B, (L)] ids of the original classes, best first;
  log_probs float32 [B, top_paths], approximating the unpruned decoder's). Graph-pure:
  runs inside a tf.function with None batch, time and class dims, traced once.

  Rows are decoded one by one (tf.map_fn), each with its own classes: the op pays
  for -inf padding classes almost as much as for real ones (it creates every beam's
  children up front), so in one batched call the row with the most plausible
  classes would set the cost of all.

  With top_paths=1 and greedy_if_sure, a row whose best path alone has probability
  > SURE_PATH_PROB is not searched at all: a labeling with more than half the
  probability is the most probable one, and the beam search, which keeps its
  prefixes at every frame (each has at least that probability), ranks it first; so
  the top-1 is the greedy labeling, and its score the exact log probability (from
  the CTC loss). The margin over 0.5 covers rounding in the op's sums. Trained
  models are this sure of most lines.
  """
  pruned = prune(logits, logit_length, blank_threshold, class_threshold,
                 min_classes=top_paths)
  rows = (pruned.log_probs, pruned.length, pruned.num_classes, pruned.class_ids)
  shortcut = top_paths == 1 and greedy_if_sure
  if shortcut:
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    valid = tf.sequence_mask(logit_length, tf.shape(log_probs)[1])
    greedy_ids, best_path = greedy.best_path(logits, logit_length)
    sure = best_path > math.log(SURE_PATH_PROB)
    rows += (sure, greedy_ids)

  def decode_row(row):
    log_probs, length, num_classes, class_ids = row[:4]

    def search():
      # At least one frame: the op rejects empty inputs, even of length 0.
      problem = log_probs[None, :tf.maximum(length, 1), :num_classes]
      decoded, scores = ctc.beam_search_decode(problem, length[None], beam_width,
                                               top_paths)
      return tuple(tf.gather(class_ids, ids[0]) for ids in decoded), scores[0]

    if not shortcut:
      return search()
    row_sure, row_greedy = row[4:]
    return tf.cond(row_sure, lambda: ((row_greedy,), tf.zeros([1])), search)

  path_spec = tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0)
  paths, scores = tf.map_fn(
      decode_row, rows, fn_output_signature=((path_spec,) * top_paths,
                                             tf.TensorSpec([top_paths], tf.float32)))
  scores += pruned.log_prob_offset[:, None]
  if shortcut:
    scores = tf.where(sure[:, None],
                      _label_log_prob(log_probs, valid, greedy_ids)[:, None], scores)
  return list(paths), scores


@register("beam_pruned")
def decode(logits: tf.Tensor, logit_length: tf.Tensor,
           config: DecoderConfig) -> Tuple[List[tf.RaggedTensor], tf.Tensor]:
  """See ctc_trainer.decoders: pruned_beam_search_decode at its default thresholds."""
  return pruned_beam_search_decode(logits, logit_length, config.beam_width,
                                   config.top_paths)


def _label_log_prob(log_probs: tf.Tensor, valid: tf.Tensor,
                    labels: tf.RaggedTensor) -> tf.Tensor:
  """log P(labels | log_probs) per row, exactly (CTC forward): float32 [B].

  log_probs: float32 [B, T, C]; valid: bool [B, T]; labels: int32 ragged [B, (L)].
  """
  # The sparse-label CTC kernel is ~10x faster on CPU than the dense-label path, but
  # rejects empty labels: those rows get a stand-in label, and their probability is
  # that of the all-blank path, the only one that spells nothing.
  lengths = labels.row_lengths()
  empty = tf.cast(tf.equal(lengths, 0), tf.int64)
  stand_in = tf.RaggedTensor.from_row_lengths(
      tf.ones([tf.reduce_sum(empty)], tf.int32), empty)
  loss = tf.nn.ctc_loss(
      labels=tf.concat([labels, stand_in], axis=1).to_sparse(), logits=log_probs,
      label_length=None, logit_length=tf.maximum(
          tf.reduce_sum(tf.cast(valid, tf.int32), axis=1), 1),
      logits_time_major=False, blank_index=BLANK_ID)
  all_blank = tf.reduce_sum(tf.where(valid, log_probs[..., BLANK_ID], 0.0), axis=1)
  return tf.where(lengths > 0, -loss, all_blank)


def _kept_frames(log_probs: tf.Tensor, valid: tf.Tensor, blank_threshold: float,
                 class_threshold: float) -> tf.Tensor:
  """bool [B, T]: the non-droppable frames, plus the first frame of each droppable
  run between two of them that could emit the same class; at least one frame of a
  row with any valid frame.

  log_probs: float32 [B, T, C]; valid: bool [B, T].
  """
  droppable = log_probs[..., BLANK_ID] >= _log(blank_threshold)
  solid = valid & ~droppable
  solid_i = tf.cast(solid, tf.int32)
  solid_after = tf.cumsum(solid_i, axis=1, exclusive=True, reverse=True) > 0
  # Inside a row's valid part, a droppable frame after a solid one starts a run.
  previous_solid = tf.pad(solid[:, :-1], [[0, 0], [1, 0]])
  run_start = valid & droppable & previous_solid & solid_after
  # The run's left neighbour is the frame before it; its right neighbour is the
  # next solid frame, i.e. the k-th solid frame of the row, k = solid frames so far.
  solid_frames = tf.argsort(1 - solid_i, axis=1, stable=True)
  solid_so_far = tf.minimum(tf.cumsum(solid_i, axis=1, exclusive=True),
                            tf.shape(solid_i)[1] - 1)
  next_solid = tf.gather(solid_frames, solid_so_far, batch_dims=1)       # [B, T]
  emits = tf.concat([tf.zeros_like(log_probs[..., :1], tf.bool),
                     log_probs[..., 1:] >= _log(class_threshold)], axis=2)  # [B, T, C]
  left = tf.pad(emits[:, :-1], [[0, 0], [1, 0], [0, 0]])
  right = tf.gather(emits, next_solid, batch_dims=1)
  could_repeat = tf.reduce_any(left & right, axis=2)
  keep = solid | (run_start & could_repeat)
  # A row whose every frame is droppable decodes to nothing; keep its first frame so
  # that it still has labelings to rank (with no frame there is only the empty one,
  # too few for top_paths > 1).
  empty_row = ~tf.reduce_any(keep, axis=1, keepdims=True)
  first = tf.equal(tf.range(tf.shape(valid)[1]), 0)[None, :]
  return keep | (empty_row & first & valid)


def _compact(mask: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Indices of each row's True entries, in order, moved left.

  mask: bool [B, N] -> (indices int32 [B, N'] where N' = max(1, most Trues in a row),
  entries past a row's count are meaningless; counts int32 [B]).
  """
  counts = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
  width = tf.reduce_max(tf.concat([counts, [1]], axis=0))
  order = tf.argsort(tf.cast(~mask, tf.int32), axis=1, stable=True)
  return tf.cast(order[:, :width], tf.int32), counts


def _log(p: float) -> float:
  # log(0) is -inf, so that a class threshold of 0 admits every class.
  return math.log(p) if p > 0 else -math.inf
