"""CRNN: conv stack -> BiLSTM -> per-frame logits over charset + blank.

Image width is time. The first --width_pools conv blocks (2 by default) halve height
and width, later ones halve height only, so one output frame covers 2**width_pools
input columns (4 by default).
"""

import dataclasses

import keras
import tensorflow as tf

from ctc_trainer.models.registry import register
from ctc_trainer.models.base import ConvRNNConfig, SequenceModel, conv_and_norm
from ctc_trainer.options import option


@dataclasses.dataclass(frozen=True)
class CRNNConfig(ConvRNNConfig):
  """crnn's options: those of every conv + RNN model, and its width pooling."""
  width_pools: int = option(
      2, "crnn: the first N conv blocks also halve the width (at most all of them), "
      "so one output frame covers 2**N input columns. A larger N means fewer, cheaper "
      "RNN steps, but each label needs at least as many frames as characters.",
      minimum=0)


class CRNN(SequenceModel):

  def __init__(self, cfg: CRNNConfig, num_classes: int, **kwargs):
    super().__init__(2 ** min(cfg.width_pools, len(cfg.conv_filters)), cfg.rnn_layers,
                     cfg.rnn_units, cfg.dropout, num_classes, cell=cfg.rnn_cell, **kwargs)
    self.blocks = []
    for i, filters in enumerate(cfg.conv_filters):
      pool = (2, 2) if i < cfg.width_pools else (2, 1)
      self.blocks.append([
          *conv_and_norm(filters, cfg.conv_norm, kernel_size=3, padding="same"),
          keras.layers.ReLU(),
          keras.layers.MaxPooling2D(pool, strides=pool, padding="same"),
      ])

  def feature_layers(self):
    return [layer for layers in self.blocks for layer in layers]

  def call(self, inputs, input_length=None, training=False, frozen=()):
    """inputs: float [B, H, W, C] -> logits [B, ceil(W / stride), num_classes].

    With input_length, padding columns are zeroed after every block and skipped by
    the RNNs, so an example's logits do not depend on what it was batched with.
    frozen: layer groups run as in inference (SequenceModel).
    """
    frames = self.features(inputs, input_length, training and "conv" not in frozen)
    length = None if input_length is None else self.output_length(input_length)
    return self.sequence_head(frames, length, training, frozen)

  def features(self, inputs, input_length=None, training=False):
    """The conv stack: inputs float [B, H, W, C] -> frames [B, ceil(W / stride), D]."""
    x = inputs
    stride = 1
    for layers in self.blocks:
      *transforms, pool = layers
      for layer in transforms:
        x = layer(x, training=training)
      if input_length is not None:
        # Zero the padding columns before pooling: batch norm or a conv bias shifts
        # them off zero, and a pool window that straddles the end of an odd valid
        # width, or the next conv, would carry that into valid columns. After the
        # ReLU values are >= 0, so such a window then takes its valid column, as
        # alone.
        valid = tf.sequence_mask((input_length + stride - 1) // stride, tf.shape(x)[2])
        x = x * tf.cast(valid, x.dtype)[:, None, :, None]
      x = pool(x, training=training)
      stride *= pool.pool_size[1]
    shape = tf.shape(x)
    # [B, H', T, C] -> [B, T, H' * C]: each column becomes one frame.
    x = tf.transpose(x, [0, 2, 1, 3])
    return tf.reshape(x, [shape[0], shape[2], x.shape[2] * x.shape[3]])


@register("crnn", config=CRNNConfig, modality="image")
def build(cfg: CRNNConfig, num_classes: int, input_shape):
  """input_shape: (height, None, channels), the per-image inputs [H, W, C]."""
  if len(input_shape) != 3:
    raise ValueError(f"crnn reads images [H, W, C], got inputs shaped "
                     f"{tuple(input_shape)}: set --modality=image")
  model = CRNN(cfg, num_classes, name="crnn")
  model(tf.zeros((1,) + tuple(d or 4 * model.stride for d in input_shape)))
  return model
