"""Decoder registry: name -> a CTC decoder that eval_step and the SavedModel call.

A decoder is a graph-pure function, called inside a tf.function with None batch and
time dims (no Python side effects, no .numpy()):

  decode(logits [B, T, C] (any float dtype, blank 0), logit_length int32 [B],
         config: DecoderConfig)
    -> (paths: a list of config.top_paths ragged int32 [B, (L)] id paths, best first;
        log_probs float32 [B, config.top_paths], each path's log probability)

Adding one is a new file in this package whose function is decorated with
@register("name"), and its import at the bottom of this file; --decoder then accepts
the name, eval reports its metrics and the SavedModel can serve it.

A host decoder (lm, lexicon, pattern) runs on the host, in NumPy, on logits that a
graph computed: @register_host("name", check=...) on a builder
`(charset, config) -> HostDecodeFn` (registry.py); eval runs it after eval_step on
the logits eval_step returns, predict on the SavedModel's `logits` signature.
"""

from ctc_trainer.decoders.registry import (Decoder, DecoderConfig, HostDecoder,  # noqa: F401
                                           get, graph_names, names, penalize_blank,
                                           register,
                                           register_host, served)

from ctc_trainer.decoders import greedy  # noqa: E402,F401  (registers itself)
from ctc_trainer.decoders import beam  # noqa: E402,F401  (registers itself)
from ctc_trainer.decoders import beam_pruned  # noqa: E402,F401  (registers itself)
from ctc_trainer.decoders import lm  # noqa: E402,F401  (registers itself)
from ctc_trainer.decoders import lexicon  # noqa: E402,F401  (registers itself)
from ctc_trainer.decoders import pattern  # noqa: E402,F401  (registers itself)
