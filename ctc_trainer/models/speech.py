"""DS2: a DeepSpeech2-like speech model: conv subsampling -> bidirectional RNNs -> logits.

Inputs are log-mel features [B, T, F] (data/audio.py). Every conv block halves the
frequency axis; the first two also halve time, so with two or more blocks one output
frame covers 4 input frames (40 ms at a 10 ms hop): fewer RNN steps, and still several
frames per spoken character.
"""

import keras
import tensorflow as tf

from ctc_trainer.config import ModelConfig
from ctc_trainer.models import register

AUDIO_MODELS = ("ds2",)   # the registry's models that read audio features
_TIME_STRIDES = 2         # conv blocks that also stride over time
_KERNEL = (5, 5)          # (time, frequency); odd, so padding can be symmetric


class DS2(keras.Model):

  def __init__(self, cfg: ModelConfig, num_classes: int, **kwargs):
    super().__init__(**kwargs)
    self.stride = 2 ** min(_TIME_STRIDES, len(cfg.conv_filters))
    self.blocks = []
    for i, filters in enumerate(cfg.conv_filters):
      time_stride = 2 if i < _TIME_STRIDES else 1
      self.blocks.append((time_stride, [
          keras.layers.Conv2D(filters, _KERNEL, strides=(time_stride, 2),
                              padding="valid", use_bias=False),
          keras.layers.BatchNormalization(),
          keras.layers.ReLU(),
      ]))
    cell = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}[cfg.rnn_cell]
    self.rnns = [keras.layers.Bidirectional(cell(cfg.rnn_units, return_sequences=True))
                 for _ in range(cfg.rnn_layers)]
    self.dropout = keras.layers.Dropout(cfg.dropout)
    self.classifier = keras.layers.Dense(num_classes)

  def output_length(self, input_length):
    """Valid output frames for valid input frames: int32 [B] -> int32 [B]."""
    return (input_length + self.stride - 1) // self.stride

  def call(self, inputs, input_length=None, training=False):
    """inputs: float [B, T, F] -> logits [B, ceil(T / stride), num_classes].

    With input_length, padding frames are zeroed after every conv block and skipped
    by the RNNs, so an utterance's logits do not depend on what it is batched with.
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
        x = layer(x, training=training)
      if length is not None:
        # Batch norm moves the padding off zero; the next block would carry that
        # into the valid frames next to it.
        length = (length + time_stride - 1) // time_stride
        valid = tf.sequence_mask(length, tf.shape(x)[1])
        x = x * tf.cast(valid, x.dtype)[:, :, None, None]
    shape = tf.shape(x)
    # [B, T', F', C] -> [B, T', F' * C]: each frame's features and channels together.
    x = tf.reshape(x, [shape[0], shape[1], x.shape[2] * x.shape[3]])
    mask = None if length is None else tf.sequence_mask(length, shape[1])
    for rnn in self.rnns:
      x = rnn(x, mask=mask, training=training)
    x = self.dropout(x, training=training)
    return self.classifier(x)


@register("ds2", modality="audio")
def build(cfg: ModelConfig, num_classes: int, input_shape):
  """input_shape: (None, F), the per-utterance features [T, F] of data/audio.py."""
  if len(input_shape) != 2 or input_shape[1] is None:
    raise ValueError(f"ds2 reads audio features [T, F], got inputs shaped "
                     f"{tuple(input_shape)}: set --modality=audio")
  model = DS2(cfg, num_classes, name="ds2")
  model(tf.zeros((1, 4 * model.stride, input_shape[1])))
  return model
