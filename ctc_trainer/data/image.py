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
  return _convert_colour(_decode_on_white(encoded), channels)


def _decode_on_white(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded bytes -> float32 [h, w, 1 or 3] (gray or RGB), transparency composited
  onto white. Images without alpha (most) take no extra work: small tf.conds, not a
  tf.switch_case, whose per-call cost in tf.data was as much as decoding a captcha."""
  image = tf.io.decode_image(encoded, dtype=tf.float32, expand_animations=False)
  bands = tf.shape(image)[-1]

  def on_white():
    alpha = image[..., -1:]
    return image[..., :-1] * alpha + (1.0 - alpha)

  # 2: gray + alpha, 4: RGBA.
  return tf.cond(bands % 2 == 0, on_white, lambda: image)


def _convert_colour(image: tf.Tensor, channels: int) -> tf.Tensor:
  """float32 [h, w, 1 or 3] -> [h, w, channels]: RGB to gray by luma, or gray
  replicated to RGB."""
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  is_rgb = tf.shape(image)[-1] == 3
  if channels == 1:
    luma = lambda: tf.clip_by_value(
        tf.tensordot(tf.ensure_shape(image, [None, None, 3]), _LUMA, axes=1)[..., None],
        0.0, 1.0)
    image = tf.cond(is_rgb, luma, lambda: image)
  else:
    image = tf.cond(is_rgb, lambda: image, lambda: tf.tile(image, [1, 1, 3]))
  return tf.ensure_shape(image, [None, None, channels])


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
  image = _decode_on_white(encoded)
  shape = tf.shape(image)
  width = resized_width(shape[0], shape[1], height, max_width)
  size = tf.stack([height, width])
  # Shrinking to under half size needs antialiasing, or thin strokes alias away. Down
  # to half size, bilinear sampling at half-pixel centres already weighs every source
  # pixel, at half the cost of the antialiased kernel on a text line.
  shrinks_much = tf.logical_or(shape[0] > 2 * height, shape[1] > 2 * width)
  image = tf.cond(shrinks_much,
                  lambda: tf.image.resize(image, size, antialias=True),
                  lambda: tf.image.resize(image, size))
  # Colour conversion after resizing: both are linear, so the order does not change
  # the result, and the resized image is the smaller one.
  image = _convert_colour(image, channels)
  image = 1.0 - tf.clip_by_value(image, 0.0, 1.0)
  image = tf.ensure_shape(image, [height, None, channels])
  return image, width
