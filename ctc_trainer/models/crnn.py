"""CRNN: conv stack -> BiLSTM -> per-frame logits over charset + blank.

Image width is time. The first two conv blocks halve height and width, later ones
halve height only, so one output frame covers 4 input columns.
"""

import dataclasses

import keras
import tensorflow as tf

from ctc_trainer.models.registry import register
from ctc_trainer.models.base import ConvRNNConfig, SequenceModel

_WIDTH_POOLS = 2  # conv blocks that also pool the width


@dataclasses.dataclass(frozen=True)
class CRNNConfig(ConvRNNConfig):
  """crnn's options: those of every conv + RNN model (LSTM cells)."""


class CRNN(SequenceModel):

  def __init__(self, cfg: CRNNConfig, num_classes: int, **kwargs):
    super().__init__(2 ** min(_WIDTH_POOLS, len(cfg.conv_filters)), cfg.rnn_layers,
                     cfg.rnn_units, cfg.dropout, num_classes, **kwargs)
    self.blocks = []
    for i, filters in enumerate(cfg.conv_filters):
      pool = (2, 2) if i < _WIDTH_POOLS else (2, 1)
      self.blocks.append([
          keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
          # Synchronized: under several replicas the statistics are of the global
          # batch, so training matches one device (a no-op on one replica).
          keras.layers.BatchNormalization(synchronized=True),
          keras.layers.ReLU(),
          keras.layers.MaxPooling2D(pool, strides=pool, padding="same"),
      ])

  def feature_layers(self):
    return [layer for layers in self.blocks for layer in layers]

  def call(self, inputs, input_length=None, training=False, frozen=()):
    """inputs: float [B, H, W, C] -> logits [B, ceil(W / stride), num_classes].

    With input_length, padding columns are zeroed after every block and skipped by
    the LSTMs, so an example's logits do not depend on what it was batched with.
    frozen: layer groups run as in inference (SequenceModel).
    """
    x = inputs
    stride = 1
    for layers in self.blocks:
      for layer in layers:
        x = layer(x, training=training and "conv" not in frozen)
      if input_length is not None:
        # Zero the padding columns again: batch norm shifts them off zero, and the
        # next conv would carry that into the valid columns next to the padding.
        stride *= layers[-1].pool_size[1]
        valid = tf.sequence_mask((input_length + stride - 1) // stride, tf.shape(x)[2])
        x = x * tf.cast(valid, x.dtype)[:, None, :, None]
    shape = tf.shape(x)
    # [B, H', T, C] -> [B, T, H' * C]: each column becomes one frame.
    x = tf.transpose(x, [0, 2, 1, 3])
    x = tf.reshape(x, [shape[0], shape[2], x.shape[2] * x.shape[3]])
    length = None if input_length is None else self.output_length(input_length)
    return self.sequence_head(x, length, training, frozen)


@register("crnn", config=CRNNConfig, modality="image")
def build(cfg: CRNNConfig, num_classes: int, input_shape):
  """input_shape: (height, None, channels), the per-image inputs [H, W, C]."""
  if len(input_shape) != 3:
    raise ValueError(f"crnn reads images [H, W, C], got inputs shaped "
                     f"{tuple(input_shape)}: set --modality=image")
  model = CRNN(cfg, num_classes, name="crnn")
  model(tf.zeros((1,) + tuple(d or 4 * model.stride for d in input_shape)))
  return model
