"""Beam search over the CTC prefix tree: tf.nn.ctc_beam_search_decoder, through
ctc.beam_search_decode (the one place that moves the blank where the op wants it)."""

from typing import List, Tuple

import tensorflow as tf

from ctc_trainer import ctc
from ctc_trainer.decoders.registry import DecoderConfig, register


@register("beam")
def decode(logits: tf.Tensor, logit_length: tf.Tensor,
           config: DecoderConfig) -> Tuple[List[tf.RaggedTensor], tf.Tensor]:
  """See ctc_trainer.decoders."""
  return ctc.beam_search_decode(logits, logit_length, config.beam_width,
                                config.top_paths)
