"""Greedy (best path) decoding: argmax per frame, merge repeats, drop blanks.

One path per sequence; its log probability is that of the best alignment alone (the
sum of each frame's best log probability), a lower bound on its labeling's.
"""

from typing import List, Tuple

import tensorflow as tf

from ctc_trainer import ctc
from ctc_trainer.decoders.registry import DecoderConfig, register


def best_path(logits: tf.Tensor,
              logit_length: tf.Tensor) -> Tuple[tf.RaggedTensor, tf.Tensor]:
  """logits: [B, T, C] (blank 0); logit_length: int32 [B] -> (ids int32 ragged
  [B, (L)], the best alignment's log probability float32 [B])."""
  log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
  valid = tf.sequence_mask(logit_length, tf.shape(log_probs)[1])
  score = tf.reduce_sum(tf.where(valid, tf.reduce_max(log_probs, axis=2), 0.0), axis=1)
  return ctc.greedy_decode(log_probs, logit_length), score


@register("greedy", single_path=True)
def decode(logits: tf.Tensor, logit_length: tf.Tensor,
           config: DecoderConfig) -> Tuple[List[tf.RaggedTensor], tf.Tensor]:
  """See ctc_trainer.decoders; config is not needed: one path, no beam."""
  del config
  ids, score = best_path(logits, logit_length)
  return [ids], score[:, None]
