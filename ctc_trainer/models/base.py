"""What the CTC models share: the frame stride, the recurrent stack and the classifier."""

import dataclasses
from typing import Tuple

import keras
import tensorflow as tf

from ctc_trainer.options import option

RNN_CELLS = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}


def batch_norm() -> keras.layers.BatchNormalization:
  """The conv stacks' batch norm. Synchronized: under several replicas the statistics
  are of the global batch, so training matches one device (a no-op on one replica).

  Momentum 0.9, not Keras's 0.99: the moving variance starts at 1, while a conv
  output on [0, 1] text images has a variance near 0.01. At 0.99 the start value
  still dominated after a few hundred steps (0.99**232 ~ 0.1, ten times the batch
  variance), so in inference, as in every evaluation, activations came out about 3x
  too small and the eval CER stayed near 1 while training was already learning
  (gt4histcomment, step 232: eval-mode loss 255 against 102 in training mode on the
  same batch). At 0.9 it is gone after about 100 steps (tests/test_models.py).
  """
  return keras.layers.BatchNormalization(momentum=0.9, synchronized=True)


def conv_and_norm(filters: int, norm: str, **conv_kwargs) -> list:
  """A Conv2D and, with norm "batch", its batch norm (the conv then needs no bias)."""
  conv = keras.layers.Conv2D(filters, use_bias=norm == "none", **conv_kwargs)
  return [conv, batch_norm()] if norm == "batch" else [conv]


@dataclasses.dataclass(frozen=True)
class ConvRNNConfig:
  """The options of a conv stack followed by bidirectional RNNs; both built-in models
  extend it, so the flags are shared."""
  conv_filters: Tuple[int, ...] = option(
      (32, 64, 128), "Filters of each conv block.",
      check=(lambda v: bool(v) and all(s.isdigit() and int(s) > 0 for s in v),
             "--conv_filters must be a comma-separated list of positive integers"))
  conv_norm: str = option(
      "batch", "After each conv: batch (batch norm, steadier at high learning rates) "
      "or none (a conv bias only: on a CPU the conv stack runs about a third faster, "
      "as in Calamari's network). Padding is zeroed after each block either way.",
      choices=("batch", "none"))
  rnn_units: int = option(128, "Units per direction of each bidirectional RNN layer.",
                          minimum=1)
  rnn_layers: int = option(2, "Bidirectional RNN layers.", minimum=1)
  rnn_cell: str = option("lstm", "The recurrent cell of the bidirectional layers "
                         "(a GRU has 3 gates to an LSTM's 4).", choices=tuple(RNN_CELLS))
  dropout: float = option(0.1, "Dropout before the output layer.", minimum=0, below=1)


class SequenceModel(keras.Model):
  """A feature extractor (the subclass's) followed by bidirectional RNNs, dropout and
  a float32 classifier. `stride` input steps make one output frame.

  Its layers fall in groups that a warm start can freeze (warmstart.FREEZABLE): conv
  (the subclass's feature extractor, `feature_layers`) and rnn. `call` takes
  frozen=(group names): those groups run as in inference (batch norm statistics are
  used, not updated), and steps.make_step_fns leaves their weights alone.
  """

  def __init__(self, stride: int, rnn_layers: int, rnn_units: int, dropout: float,
               num_classes: int, cell: str = "lstm", **kwargs):
    super().__init__(**kwargs)
    self.stride = stride
    self.rnns = [keras.layers.Bidirectional(RNN_CELLS[cell](rnn_units,
                                                            return_sequences=True))
                 for _ in range(rnn_layers)]
    self.dropout = keras.layers.Dropout(dropout)
    # Logits in float32 under any mixed precision policy: CTC needs the range.
    self.classifier = keras.layers.Dense(num_classes, dtype="float32")

  def feature_layers(self) -> list:
    """The layers before the RNNs (the conv group)."""
    raise NotImplementedError

  def layer_groups(self) -> dict:
    """{group name: its layers} for --freeze."""
    return {"conv": self.feature_layers(), "rnn": list(self.rnns)}

  def output_length(self, input_length):
    """Valid output frames for valid input steps: int32 [B] -> int32 [B]."""
    return (input_length + self.stride - 1) // self.stride

  def sequence_head(self, frames, length, training, frozen=()):
    """frames [B, T', D] (T' = ceil(T / stride)), length: valid frames int32 [B] or
    None -> logits float32 [B, T', num_classes]. The RNNs skip padding frames, so an
    example's logits do not depend on what it was batched with."""
    mask = None if length is None else tf.sequence_mask(length, tf.shape(frames)[1])
    x = frames
    for rnn in self.rnns:
      x = rnn(x, mask=mask, training=training and "rnn" not in frozen)
    return self.classifier(self.dropout(x, training=training))
