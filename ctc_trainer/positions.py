"""Per-character detail of a decoded path: each character's frame span, its
confidence, and that span in input coordinates (x pixels of an image, milliseconds
of audio).

Alignment. Whatever decoder produced a labeling (greedy, a beam search, later an LM
or lexicon search), its characters are placed by the labeling's Viterbi alignment
over the logits: the single most probable CTC path (frame-by-frame state sequence
over blank, c1, blank, c2, ..., blank) that collapses to exactly that labeling. A
character's span is the first and last frame its path segment holds it (blanks
around it not counted). For the greedy decoder this is the per-frame argmax path
itself (the argmax path is the most probable of all paths, so it is the best of its
own labeling's; with ties, a path of equal probability), so greedy spans are the
segments of the argmax path; for beam decoders it is the forced alignment of the
beam's best labeling. All of it is graph ops (a tf.scan forward with back pointers
and a reversed tf.scan to backtrack), so it runs inside the eval step and the
SavedModel, traced once, with None batch and time dims.

Confidence. A character's confidence is the highest softmax probability of its
class over the frames of its span: the model's peak belief that this character is
there. It is between 0 and 1 and, for a character the model is sure of, near 1;
unlike a product over frames it does not fall with the span's length. The line
confidence is unchanged (exp of the decoder's log probability of the line).

Coordinates. Output frame t of a model with stride s covers input steps
[t*s, (t+1)*s) (image columns of the resized line, or log-mel frames). A span of
frames [first, last] is the input range [first*s, min((last+1)*s, input_length))
times the input's step size: for an image the original width over the resized one
(so positions are pixels of the ORIGINAL image, before resizing to the model's
height; there is no other padding or cropping), for audio the log-mel hop in ms.
"""

from typing import NamedTuple

import tensorflow as tf

from ctc_trainer.charset import BLANK_ID

_NEG = -1e30   # log(0) that stays finite: sums of it cannot make NaN


class CharSpans(NamedTuple):
  """Per character of each row's labeling, ragged [B, (L)]: first and last frame
  (int32) of its segment in the alignment, and its confidence (float32)."""
  first: tf.RaggedTensor
  last: tf.RaggedTensor
  confidence: tf.RaggedTensor


def viterbi_states(log_probs: tf.Tensor, logit_length: tf.Tensor,
                   labels: tf.Tensor, label_length: tf.Tensor) -> tf.Tensor:
  """The best CTC alignment of each row's labeling: int32 [B, T] states.

  log_probs: float32 [B, T, C] (blank 0); logit_length: int32 [B]; labels: int32
  [B, L] padded; label_length: int32 [B]. State 2k+1 is the labeling's k-th
  character, even states are blanks (2k: the blank before it). Frames past a row's
  length repeat its last state. A labeling that cannot fit its frames gets some
  path; callers decode labelings the logits produced, which always fit.
  """
  batch, frames = tf.shape(log_probs)[0], tf.shape(log_probs)[1]
  max_labels = tf.shape(labels)[1]
  states = 2 * max_labels + 1
  # Extended labeling: blank, c1, blank, c2, ..., blank.
  extended = tf.reshape(tf.stack([tf.zeros_like(labels), labels], axis=2),
                        [batch, 2 * max_labels])
  extended = tf.concat([extended, tf.fill([batch, 1], BLANK_ID)], axis=1)   # [B, S]
  emit = tf.gather(log_probs, extended, axis=2, batch_dims=1)               # [B, T, S]
  index = tf.range(states)
  valid_state = index[None, :] < 2 * label_length[:, None] + 1
  # A character may follow the one before it directly (skipping the blank between)
  # unless it repeats it.
  # Shifts right by k states, cut back to S columns (also right when S is 1: a batch
  # whose labelings are all empty, e.g. blank images).
  shift = lambda x, k, fill: tf.pad(x, [[0, 0], [k, 0]], constant_values=fill)[:, :states]
  before = shift(extended, 2, BLANK_ID)
  can_skip = (extended != BLANK_ID) & (extended != before) & (index[None, :] >= 2)

  alpha0 = tf.where(valid_state & (index[None, :] <= 1), emit[:, 0], _NEG)

  def step(carry, inputs):
    alpha, _ = carry
    emit_t, active = inputs
    from_prev = shift(alpha, 1, _NEG)
    from_skip = tf.where(can_skip, shift(alpha, 2, _NEG), _NEG)
    candidates = tf.stack([alpha, from_prev, from_skip], axis=2)           # [B, S, 3]
    moved = tf.argmax(candidates, axis=2, output_type=tf.int32)
    new = tf.where(valid_state, tf.reduce_max(candidates, axis=2) + emit_t, _NEG)
    return (tf.where(active[:, None], new, alpha),
            tf.where(active[:, None], moved, tf.zeros_like(moved)))

  active = tf.range(frames)[:, None] < logit_length[None, :]                # [T, B]
  emit_tm = tf.transpose(emit, [1, 0, 2])
  alphas, back = tf.scan(step, (emit_tm[1:], active[1:]),
                         initializer=(alpha0, tf.zeros([batch, states], tf.int32)))
  final = tf.concat([alpha0[None], alphas], axis=0)[-1]                     # [B, S]
  # Ends on the last character or the blank after it.
  last_blank = 2 * label_length
  last_char = tf.maximum(last_blank - 1, 0)
  end_score = lambda s: tf.gather(final, s[:, None], batch_dims=1)[:, 0]
  end = tf.where(end_score(last_char) > end_score(last_blank), last_char, last_blank)

  def backtrack(state, moved):
    return state - tf.gather(moved, state[:, None], batch_dims=1)[:, 0]

  # back[i] holds the moves into frame i + 1; scanning it in reverse gives the state
  # at frame i.
  earlier = tf.scan(backtrack, back, initializer=end, reverse=True)         # [T-1, B]
  return tf.transpose(tf.concat([earlier, end[None]], axis=0))              # [B, T]


def char_spans(logits: tf.Tensor, logit_length: tf.Tensor,
               labels: tf.RaggedTensor) -> CharSpans:
  """Each character of each row's labeling: its frame span and confidence (see the
  module docstring).

  logits: [B, T, C] (any float dtype, blank 0); logit_length: int32 [B]; labels:
  int32 ragged [B, (L)], e.g. a decoder's best path.
  """
  log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
  logit_length = tf.cast(logit_length, tf.int32)
  label_length = tf.cast(labels.row_lengths(), tf.int32)
  dense = labels.to_tensor(0)
  states = viterbi_states(log_probs, logit_length, dense, label_length)
  frames = tf.shape(log_probs)[1]
  valid = tf.sequence_mask(logit_length, frames)                            # [B, T]
  char_state = 2 * tf.range(tf.shape(dense)[1]) + 1                        # [L]
  held = (states[:, :, None] == char_state[None, None, :]) & valid[:, :, None]
  time = tf.range(frames)[None, :, None]
  first = tf.reduce_min(tf.where(held, time, frames), axis=1)               # [B, L]
  last = tf.reduce_max(tf.where(held, time, -1), axis=1)
  probs = tf.gather(tf.exp(log_probs), dense, axis=2, batch_dims=1)         # [B, T, L]
  confidence = tf.reduce_max(tf.where(held, probs, 0.0), axis=1)
  ragged = lambda x: tf.RaggedTensor.from_tensor(x, lengths=label_length)
  return CharSpans(ragged(first), ragged(last), ragged(confidence))


def to_input_units(spans: CharSpans, stride: int, input_length: tf.Tensor,
                   step_size: tf.Tensor):
  """Frame spans -> (start, end) float32 ragged [B, (L)] in input units.

  stride: input steps per output frame; input_length: int32 [B] valid input steps;
  step_size: float32 [B] (or scalar) units per input step, e.g. original image
  pixels per resized column, or ms per log-mel hop. A span [first, last] covers
  input steps [first*stride, min((last+1)*stride, input_length)).
  """
  # On the flat values, each with its row's length and step size: ragged-by-dense
  # broadcasting would build a shape-checking graph many times this size.
  rows = spans.first.value_rowids()
  step_size = tf.gather(tf.broadcast_to(tf.cast(step_size, tf.float32),
                                        tf.shape(input_length)), rows)
  length = tf.gather(tf.cast(input_length, tf.int32), rows)
  first, last = spans.first.flat_values, spans.last.flat_values
  start = tf.cast(first * stride, tf.float32) * step_size
  end = tf.cast(tf.minimum((last + 1) * stride, length), tf.float32) * step_size
  return spans.first.with_flat_values(start), spans.last.with_flat_values(end)
