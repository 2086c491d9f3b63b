"""The image Modality: preprocessing shared by training, eval and export, and the
rest of what depends on inputs being images (see modality.py).

An encoded PNG/JPEG/BMP/GIF becomes a float32 image of fixed height, its width scaled
to keep the aspect ratio, with values in [0, 1] inverted so that ink is bright and the
paper is 0. Zero padding to the right of a line then looks like more paper. Batches
are [B, H, W, C]: width is time.
"""

import sys
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from ctc_trainer.data import augment as augment_lib
from ctc_trainer.data.modality import Modality

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
  image, width, _ = _decode_and_resize(encoded, height, channels, max_width)
  return image, width


def _decode_and_resize(encoded: tf.Tensor, height: int, channels: int,
                       max_width: int) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """decode_and_resize, and the original width (int32 scalar)."""
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
  return image, width, shape[1]


class ImageModality(Modality):
  """Text-line images [H, W, C], W along time; augmented for training with
  --augment (augment.py)."""
  name = "image"
  expected = "(empty, truncated or not PNG, JPEG, GIF or BMP)"

  @property
  def example_shape(self) -> Tuple[Optional[int], ...]:
    return (self.cfg.image_height, None, self.cfg.image_channels)

  @property
  def max_length(self) -> int:
    return self.cfg.max_image_width

  @property
  def _skips_wide(self) -> bool:
    return self.cfg.too_wide_policy == "skip"

  def decode(self, encoded):
    # To skip too-wide images, measure their true resized width (no cap); `screen`
    # drops them.
    max_width = 2 ** 30 if self._skips_wide else self.cfg.max_image_width
    return decode_and_resize(encoded, self.cfg.image_height, self.cfg.image_channels,
                             max_width)

  def screen(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    if not self._skips_wide:
      return ds
    max_width = self.cfg.max_image_width

    def fits(example):
      ok = example["input_length"] <= max_width

      def warn():
        tf.print("WARNING ctc_trainer: skipping", example["key"], "- its width",
                 example["input_length"], "at this height exceeds --max_image_width",
                 max_width, "(--too_wide_policy=skip)", output_stream=sys.stderr)
        return ok
      return tf.cond(ok, lambda: ok, warn)

    return ds.filter(fits)

  def augment(self, ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    return augment_lib.augment_dataset(ds, self.cfg, seed)

  position_unit = "px"

  @property
  def step_size(self) -> float:
    return 1.0   # a column of the resized line

  def serve(self, encoded: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    return self.serve_scaled(encoded)[:2]

  def serve_scaled(self, encoded: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    height, channels = self.cfg.image_height, self.cfg.image_channels

    def one_image(blob):
      image, width, original = _decode_and_resize(blob, height, channels,
                                                  self.cfg.max_image_width)
      # The resize maps the whole original width onto the resized one (aspect kept,
      # or squeezed at max_image_width): a resized column is this many original px.
      scale = tf.cast(original, tf.float32) / tf.cast(width, tf.float32)
      # Columns first, flattened: map_fn stacks images of different widths only as
      # ragged rows, and flat rows keep the shape exact even for an empty batch.
      return tf.reshape(tf.transpose(image, [1, 0, 2]), [-1]), scale

    flat, scale = tf.map_fn(
        one_image, encoded,
        fn_output_signature=(tf.RaggedTensorSpec([None], tf.float32),
                             tf.TensorSpec([], tf.float32)))
    input_length = tf.cast(flat.row_lengths() // (height * channels), tf.int32)
    columns = tf.RaggedTensor.from_row_lengths(
        tf.reshape(flat.flat_values, [-1, height, channels]), input_length)
    # Zero padding on the right, as padded_batch pads the training batches.
    return (tf.transpose(columns.to_tensor(0.0), [0, 2, 1, 3]), input_length, scale)

  def preview(self, inputs: tf.Tensor) -> tf.Tensor:
    # Inputs are ink-bright on zero; flip back to dark ink on light paper.
    return 1.0 - inputs

  def _resized(self, height, width):
    scaled = np.round(width * self.cfg.image_height / max(height, 1))
    return int(np.clip(scaled, 1, self.cfg.max_image_width))

  def file_length(self, sample) -> Optional[int]:
    from PIL import Image  # late: only scans of listed files need it
    try:
      with Image.open(sample.path) as im:   # reads the header only
        return self._resized(im.height, im.width)
    except (OSError, ValueError):
      return None

  def record_length(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
    def decoded():
      return tf.cast(tf.shape(decode_image(features["encoded"], 1))[:2], tf.int64)

    # The writer's height/width features, or the decoded image for other writers.
    size = tf.cond(features["width"] > 0,
                   lambda: tf.stack([features["height"], features["width"]]), decoded)
    return tf.cast(resized_width(tf.maximum(size[0], 1), size[1], self.cfg.image_height,
                                 self.cfg.max_image_width), tf.int64)

  def validate(self, encoded):
    # The decode op that decode_image runs, without its colour conversion: that
    # cannot fail once the decode succeeded, and costs more than the decode.
    shape = tf.shape(tf.io.decode_image(encoded, expand_animations=False))
    length = resized_width(shape[0], shape[1], self.cfg.image_height,
                           self.cfg.max_image_width)
    return length, {"height": tf.cast(shape[0], tf.int64),
                    "width": tf.cast(shape[1], tf.int64)}

  def failure_text(self, path: Optional[str]) -> str:
    return f"cannot read or decode image{f' {path}' if path else ''} {self.expected}"

  def host_settings(self) -> Dict[str, float]:
    return {"height": self.cfg.image_height, "channels": self.cfg.image_channels,
            "max_width": self.cfg.max_image_width}
