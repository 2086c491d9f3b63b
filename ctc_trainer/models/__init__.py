"""Model registry: name -> builder, its own config dataclass, and the modality it reads.

Every model maps `inputs` to logits [B, T, C] and has `output_length(input_length)`
giving the valid frames of each example. A new model is one file that registers
itself, plus one import line at the end of this file:

    @register("mymodel", config=MyConfig, modality="image")
    def build(cfg: MyConfig, num_classes, input_shape): ...

MyConfig's fields become flags (options.option); flags shared with another model
(--conv_filters, --rnn_units, ...) must be declared alike.
"""

from ctc_trainer.models.registry import (build, config_class, modality_of, name_of,  # noqa: F401
                                         names, register)

from ctc_trainer.models import crnn  # noqa: E402,F401  (registers itself)
from ctc_trainer.models import speech  # noqa: E402,F401  (registers itself)
