"""Image preprocessing: the one implementation shared by training, eval and export.

An encoded PNG/JPEG/BMP/GIF becomes a float32 image of fixed height, its width scaled
to keep the aspect ratio, with values in [0, 1] inverted so that ink is bright and the
paper is 0. Zero padding to the right of a line then looks like more paper.
"""

from typing import Tuple

import numpy as np
import tensorflow as tf

# ITU-R 601 luma weights, normalised so that white stays exactly white. NumPy, not
# tf.constant: importing this module must not start the TF runtime (multi-worker
# collectives can only be configured before it starts).
_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32) / np.float32(0.9999)


def decode_image(encoded: tf.Tensor, channels: int) -> tf.Tensor:
  """Decodes any supported image to float32 [h, w, channels] in [0, 1], 1 = white.

  Gray, gray+alpha, RGB, RGBA, palette and 16-bit PNGs all work: decoding to float32
  keeps the full 16-bit precision, and transparency is composited onto white paper.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  image = tf.io.decode_image(encoded, dtype=tf.float32, expand_animations=False)

  def output(color, n):
    """color [h, w, n] (n = 1 gray or 3 RGB), on white -> [h, w, channels]."""
    color = tf.ensure_shape(color, [None, None, n])
    if n == channels:
      return color
    if channels == 3:
      return tf.tile(color, [1, 1, 3])
    return tf.clip_by_value(tf.tensordot(color, _LUMA, axes=1)[..., None], 0.0, 1.0)

  def on_white(color, alpha):
    return color * alpha + (1.0 - alpha)

  # One branch per decoded channel count, so a gray image costs no colour work
  # (a gather over the channels of a full-size line image dominated decoding).
  gray = lambda: output(image[..., :1], 1)
  branches = [
      gray,                                                        # never 0
      gray,
      lambda: output(on_white(image[..., :1], image[..., 1:2]), 1),  # gray + alpha
      lambda: output(image[..., :3], 3),                             # RGB
      lambda: output(on_white(image[..., :3], image[..., 3:4]), 3),  # RGBA
  ]
  return tf.switch_case(tf.shape(image)[-1], branches)



def resized_width(height: tf.Tensor, width: tf.Tensor, target_height: int,
                  max_width: int) -> tf.Tensor:
  """int32 scalar: max(1, round(width * target_height / height)), at most max_width."""
  scaled = tf.cast(width, tf.float64) * target_height / tf.cast(height, tf.float64)
  scaled = tf.cast(tf.round(scaled), tf.int32)
  return tf.clip_by_value(scaled, 1, max_width)


def decode_and_resize(encoded: tf.Tensor, height: int, channels: int,
                      max_width: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Encoded image bytes -> (image float32 [height, W, channels], W int32 scalar).

  W is the width after resizing to `height` with the aspect ratio kept (at most
  `max_width`). Values are 1 - intensity: ink bright, background 0. Works eagerly,
  in tf.function and in tf.data.Dataset.map. Raises InvalidArgumentError when the
  bytes are not a decodable image.
  """
  image = decode_image(encoded, channels)
  shape = tf.shape(image)
  width = resized_width(shape[0], shape[1], height, max_width)
  # Antialiasing matters when shrinking: without it thin strokes alias away.
  image = tf.image.resize(image, tf.stack([height, width]), antialias=True)
  image = 1.0 - tf.clip_by_value(image, 0.0, 1.0)
  image = tf.ensure_shape(image, [height, None, channels])
  return image, width
