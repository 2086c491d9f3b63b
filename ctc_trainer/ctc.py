"""CTC loss and decoders. Blank is id 0 here as everywhere in ctc_trainer.

tf.nn.ctc_beam_search_decoder is the one TensorFlow op that insists on the blank being
the last class; `beam_search_decode` moves it there and back, and nothing else in the
framework knows about that.
"""

from typing import List, Tuple

import tensorflow as tf

from ctc_trainer.charset import BLANK_ID


def required_frames(labels: tf.Tensor, label_length: tf.Tensor) -> tf.Tensor:
  """Fewest frames CTC needs per label: its length plus one blank per repeated pair.

  labels: int32 [B, L] padded; label_length: int32 [B] -> int32 [B].
  """
  valid = tf.sequence_mask(label_length - 1, tf.shape(labels)[1] - 1)
  repeats = tf.logical_and(tf.equal(labels[:, 1:], labels[:, :-1]), valid)
  return label_length + tf.reduce_sum(tf.cast(repeats, tf.int32), axis=1)


def ctc_loss(labels: tf.Tensor, label_length: tf.Tensor, logits: tf.Tensor,
             logit_length: tf.Tensor, sparse_labels: bool = False
             ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Per-example CTC negative log-likelihood, with impossible labels masked out.

  labels: int32 [B, L]; label_length: int32 [B]; logits: [B, T, C] (any float dtype,
  computed in float32); logit_length: int32 [B].
  Returns (loss float32 [B], feasible bool [B]). An infeasible example (label needs
  more frames than the model produced) gets loss 0 and no gradient instead of inf:
  it is fed to the op as an empty label so that no inf or NaN enters the gradient.
  sparse_labels: hand the labels to TensorFlow as a SparseTensor, which runs its
  CTC kernel (CPU only, no XLA; many times faster there than the dense-label loss,
  see docs/benchmarks.md); the result is the same.
  """
  feasible = required_frames(labels, label_length) <= logit_length
  safe_length = tf.where(feasible, label_length, tf.zeros_like(label_length))
  if sparse_labels:
    # That kernel rejects empty labels: an infeasible row gets the one-symbol label
    # [1] instead (fits any frames; its loss is zeroed below). Characters are ids
    # >= 1 and padding is 0, so from_dense keeps exactly the labels.
    stand_in = tf.one_hot(tf.zeros_like(label_length), tf.shape(labels)[1],
                          dtype=labels.dtype)
    op_labels = tf.sparse.from_dense(tf.where(feasible[:, None], labels, stand_in))
    op_length = None
  else:
    op_labels, op_length = labels, safe_length
  loss = tf.nn.ctc_loss(
      labels=op_labels, logits=tf.cast(logits, tf.float32), label_length=op_length,
      logit_length=logit_length, logits_time_major=False, blank_index=BLANK_ID)
  return tf.where(feasible, loss, tf.zeros_like(loss)), feasible


def frame_entropy(logits: tf.Tensor, logit_length: tf.Tensor) -> tf.Tensor:
  """Entropy (nats) of each frame's output distribution, summed over a sequence's
  first logit_length frames: logits [B, T, C] (computed in float32), logit_length
  int32 [B] -> float32 [B]."""
  logits = tf.cast(logits, tf.float32)
  log_probs = tf.nn.log_softmax(logits)
  entropy = -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1)
  mask = tf.sequence_mask(logit_length, tf.shape(logits)[1], dtype=tf.float32)
  return tf.reduce_sum(entropy * mask, axis=1)


def greedy_decode(logits: tf.Tensor, logit_length: tf.Tensor) -> tf.RaggedTensor:
  """Best path: argmax per frame, merge repeats, drop blanks.

  logits: [B, T, C]; logit_length: int32 [B] -> ids int32 ragged [B, (L)].
  """
  decoded, _ = tf.nn.ctc_greedy_decoder(
      tf.transpose(tf.cast(logits, tf.float32), [1, 0, 2]), logit_length,
      merge_repeated=True, blank_index=BLANK_ID)
  return _to_ragged(decoded[0], tf.shape(logits)[0])


def beam_search_decode(logits: tf.Tensor, logit_length: tf.Tensor, beam_width: int,
                       top_paths: int = 1) -> Tuple[List[tf.RaggedTensor], tf.Tensor]:
  """Beam search over the CTC prefix tree.

  logits: [B, T, C] with blank 0; logit_length: int32 [B].
  Returns (top_paths ragged int32 [B, (L)] ids, best first; log_probs float32
  [B, top_paths]).
  """
  log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
  # The op's blank is the last class: rotate class 0 to the end, shift ids back after.
  rotated = tf.concat([log_probs[..., 1:], log_probs[..., :1]], axis=-1)
  decoded, scores = tf.nn.ctc_beam_search_decoder(
      tf.transpose(rotated, [1, 0, 2]), logit_length, beam_width=beam_width,
      top_paths=top_paths)
  batch = tf.shape(logits)[0]
  return [_to_ragged(d, batch, shift=1) for d in decoded], scores


def _to_ragged(sparse: tf.SparseTensor, batch: tf.Tensor, shift: int = 0
               ) -> tf.RaggedTensor:
  """A decoder's [B, L] paths (row-major, as the tf.nn decoders give them; their
  dense_shape covers only rows up to the last non-empty one) -> ragged [B, (L)] of
  the ids plus `shift`. From the row ids, without from_sparse's checks: they hold by
  construction and would be ops in every decoding trace."""
  return tf.RaggedTensor.from_value_rowids(
      tf.cast(sparse.values, tf.int32) + shift, sparse.indices[:, 0],
      nrows=tf.cast(batch, tf.int64), validate=False)
