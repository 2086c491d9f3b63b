"""DS2: a DeepSpeech2-like speech model: conv subsampling -> bidirectional RNNs -> logits.

Inputs are log-mel features [B, T, F] (data/audio.py). Every conv block halves the
frequency axis; the first two also halve time, so with two or more blocks one output
frame covers 4 input frames (40 ms at a 10 ms hop): fewer RNN steps, and still several
frames per spoken character.
"""

import dataclasses

import keras
import tensorflow as tf

from ctc_trainer.models.registry import register
from ctc_trainer.models.base import ConvRNNConfig, SequenceModel, conv_and_norm

_TIME_STRIDES = 2         # conv blocks that also stride over time
_KERNEL = (5, 5)          # (time, frequency); odd, so padding can be symmetric


@dataclasses.dataclass(frozen=True)
class DS2Config(ConvRNNConfig):
  """ds2's options: those of every conv + RNN model."""


class DS2(SequenceModel):

  def __init__(self, cfg: DS2Config, num_classes: int, **kwargs):
    super().__init__(2 ** min(_TIME_STRIDES, len(cfg.conv_filters)), cfg.rnn_layers,
                     cfg.rnn_units, cfg.dropout, num_classes, cell=cfg.rnn_cell,
                     **kwargs)
    self.blocks = []
    for i, filters in enumerate(cfg.conv_filters):
      time_stride = 2 if i < _TIME_STRIDES else 1
      self.blocks.append((time_stride, [
          *conv_and_norm(filters, cfg.conv_norm, kernel_size=_KERNEL,
                         strides=(time_stride, 2), padding="valid"),
          keras.layers.ReLU(),
      ]))

  def feature_layers(self):
    return [layer for _, layers in self.blocks for layer in layers]

  def call(self, inputs, input_length=None, training=False, frozen=()):
    """inputs: float [B, T, F] -> logits [B, ceil(T / stride), num_classes].

    With input_length, padding frames are zeroed after every conv block and skipped
    by the RNNs, so an utterance's logits do not depend on what it is batched with.
    frozen: layer groups run as in inference (SequenceModel).
    """
    x = inputs[..., None]   # [B, T, F, 1]: time and frequency as an image
    length = input_length
    pad = [[0, 0], [_KERNEL[0] // 2] * 2, [_KERNEL[1] // 2] * 2, [0, 0]]
    for time_stride, layers in self.blocks:
      # Fixed padding rather than 'same': with a stride, 'same' pads by an amount
      # that depends on the padded length, which would shift the frames of an
      # utterance with its batch. This way frame t is centred on input t * stride.
      x = tf.pad(x, pad)
      for layer in layers:
        x = layer(x, training=training and "conv" not in frozen)
      if length is not None:
        # Batch norm or a conv bias moves the padding off zero; the next block
        # would carry that into the valid frames next to it.
        length = (length + time_stride - 1) // time_stride
        valid = tf.sequence_mask(length, tf.shape(x)[1])
        x = x * tf.cast(valid, x.dtype)[:, :, None, None]
    shape = tf.shape(x)
    # [B, T', F', C] -> [B, T', F' * C]: each frame's features and channels together.
    x = tf.reshape(x, [shape[0], shape[1], x.shape[2] * x.shape[3]])
    return self.sequence_head(x, length, training, frozen)


@register("ds2", config=DS2Config, modality="audio")
def build(cfg: DS2Config, num_classes: int, input_shape):
  """input_shape: (None, F), the per-utterance features [T, F] of data/audio.py."""
  if len(input_shape) != 2 or input_shape[1] is None:
    raise ValueError(f"ds2 reads audio features [T, F], got inputs shaped "
                     f"{tuple(input_shape)}: set --modality=audio")
  model = DS2(cfg, num_classes, name="ds2")
  model(tf.zeros((1, 4 * model.stride, input_shape[1])))
  return model
