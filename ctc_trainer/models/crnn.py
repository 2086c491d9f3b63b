"""CRNN: conv stack -> BiLSTM -> per-frame logits over charset + blank.

Image width is time. The first two conv blocks halve height and width, later ones
halve height only, so one output frame covers 4 input columns.
"""

import keras
import tensorflow as tf

from ctc_trainer.config import ModelConfig
from ctc_trainer.models import register

_WIDTH_POOLS = 2  # conv blocks that also pool the width


class CRNN(keras.Model):

  def __init__(self, cfg: ModelConfig, num_classes: int, input_shape, **kwargs):
    super().__init__(**kwargs)
    height, _, _ = input_shape
    self.stride = 2 ** min(_WIDTH_POOLS, len(cfg.conv_filters))
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
    self.rnns = [
        keras.layers.Bidirectional(keras.layers.LSTM(cfg.rnn_units, return_sequences=True))
        for _ in range(cfg.rnn_layers)
    ]
    self.dropout = keras.layers.Dropout(cfg.dropout)
    # Logits in float32 under any mixed precision policy: CTC needs the range.
    self.classifier = keras.layers.Dense(num_classes, dtype="float32")

  def output_length(self, input_length):
    """Valid output frames for valid input widths: int32 [B] -> int32 [B]."""
    return (input_length + self.stride - 1) // self.stride

  def call(self, inputs, input_length=None, training=False):
    """inputs: float [B, H, W, C] -> logits [B, ceil(W / stride), num_classes].

    With input_length, the LSTMs skip padding frames, so an example's logits do not
    depend on what it was batched with.
    """
    x = inputs
    stride = 1
    for layers in self.blocks:
      for layer in layers:
        x = layer(x, training=training)
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
    mask = None
    if input_length is not None:
      mask = tf.sequence_mask(self.output_length(input_length), shape[2])
    for rnn in self.rnns:
      x = rnn(x, mask=mask, training=training)
    x = self.dropout(x, training=training)
    return self.classifier(x)


@register("crnn")
def build(cfg: ModelConfig, num_classes: int, input_shape):
  model = CRNN(cfg, num_classes, input_shape, name="crnn")
  model(tf.zeros((1,) + tuple(d or 4 * model.stride for d in input_shape)))
  return model
