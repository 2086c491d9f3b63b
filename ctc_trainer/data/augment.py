"""Image augmentation for training: graph ops per example, seeded and resumable.

augment_dataset(ds, cfg, seed) maps decoded training examples {inputs [H, W, C],
input_length, key, ...} (ink bright on 0) to augmented ones. With probability
cfg.augment_probability an example gets, in this order:
  geometry     one bilinear resampling of the original for all of: width jitter
               (width x U(1 - j, 1 + j)), random padding left and right (0 .. pad x H
               each), rotation, horizontal shear and scale about the centre, and a
               smooth warp (a coarse random displacement field, a node every half
               height, upsampled). One resampling blurs thin strokes once, not once
               per transform. The height stays; the width (input_length) becomes the
               jittered width plus the padding, never above --max_image_width.
  morphology   a blend toward a 3x3 dilation (thicker strokes) or erosion (thinner)
  blur         Gaussian, sigma U(0, blur) pixels
  contrast and brightness, then Gaussian noise of std U(0, noise); clipped to [0, 1].
Every draw comes from stateless ops seeded by the element's position in the
(repeated) stream and its key: one --seed reproduces every epoch, and the position
is part of the checkpointed iterator, so a resumed run draws what it would have.
"""

import dataclasses
import math

import tensorflow as tf

from ctc_trainer.config import DataConfig
from ctc_trainer.data import failures, modalities

AUTOTUNE = tf.data.AUTOTUNE
# Rotation is also limited so that a long line's ends move at most this fraction of
# the height: a degree turns a 2,000 px line's ends out of a 32 px image.
_MAX_END_SHIFT = 0.1
_WARP_NODES_PER_HEIGHT = 2


def augment_dataset(ds: tf.data.Dataset, cfg: DataConfig, seed: int) -> tf.data.Dataset:
  """Training examples -> augmented (module docstring); `ds` itself when
  cfg.augment is off."""
  if not cfg.augment:
    return ds

  @tf.autograph.experimental.do_not_convert   # graph code: see failures.decode
  def augment(index, x):
    key_hash = tf.strings.to_hash_bucket_fast(x["key"], 2 ** 31 - 1)
    element_seed = tf.stack([index, key_hash + seed])
    inputs, length = augment_image(x["inputs"], x["input_length"], cfg, element_seed)
    return dict(x, inputs=inputs, input_length=length)

  return ds.enumerate().map(augment, num_parallel_calls=AUTOTUNE)


# The scalar draws of one example, in one stateless_uniform call (each op in a
# tf.data map costs more than the arithmetic of a small image).
_DRAWS = ("chosen", "jitter", "pad_left", "pad_right", "angle", "shear", "scale",
          "morph", "blur", "contrast", "brightness", "noise")


def augment_image(image: tf.Tensor, length: tf.Tensor, cfg: DataConfig,
                  seed: tf.Tensor):
  """float32 [H, W, C] in [0, 1] (W == length), int32 length, int64 seed [2] ->
  (augmented [H, W', C] in [0, 1], W' int32); unchanged with probability
  1 - cfg.augment_probability."""
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
  uniform = tf.random.stateless_uniform([len(_DRAWS)], seeds[0])
  draw = dict(zip(_DRAWS, tf.unstack(uniform)))

  def changed():
    out, width = _geometry(image, length, cfg, draw, seeds[1])
    return _appearance(out, cfg, draw, seeds[2]), width

  out, width = tf.cond(draw["chosen"] < cfg.augment_probability, changed,
                       lambda: (image, length))
  return tf.ensure_shape(out, [image.shape[0], None, image.shape[2]]), width


def _symmetric(u, bound: float):
  """A U(0, 1) draw -> U(-bound, bound)."""
  return (2.0 * u - 1.0) * bound


def _geometry(image, length, cfg: DataConfig, draw, seed):
  """Width jitter, padding, affine and smooth warp, in one resampling."""
  height = image.shape[0]
  max_width = cfg.max_image_width
  width = tf.cast(length, tf.float32)
  factor = 1.0 + _symmetric(draw["jitter"], cfg.augment_width_jitter)
  jittered = tf.clip_by_value(tf.cast(tf.round(width * factor), tf.int32), 1, max_width)
  factor = tf.cast(jittered, tf.float32) / width
  room = max_width - jittered
  most = float(int(cfg.augment_pad * height) + 1)
  left = tf.minimum(tf.cast(draw["pad_left"] * most, tf.int32), room)
  right = tf.minimum(tf.cast(draw["pad_right"] * most, tf.int32), room - left)
  out_width = left + jittered + right

  # Output pixel centres -> source coordinates (pixel centres at integers).
  rows = tf.range(height, dtype=tf.float32)[:, None]
  u = (tf.range(out_width, dtype=tf.float32)[None, :] - tf.cast(left, tf.float32)
       + 0.5) / factor - 0.5
  centre_u, centre_v = (width - 1.0) / 2.0, (height - 1.0) / 2.0
  du, dv = u - centre_u, rows - centre_v
  limit = tf.minimum(math.radians(cfg.augment_rotate_deg),
                     tf.atan(2.0 * _MAX_END_SHIFT * height / width))
  angle = _symmetric(draw["angle"], 1.0) * limit
  sheared = du + _symmetric(draw["shear"], cfg.augment_shear) * dv
  scale = 1.0 + _symmetric(draw["scale"], cfg.augment_scale)
  cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
  src_u = cos * sheared - sin * dv + centre_u
  src_v = sin * sheared + cos * dv + centre_v
  if cfg.augment_warp > 0:
    shift = _smooth_field(height, out_width, cfg.augment_warp * height, seed)
    src_u += shift[..., 0]
    src_v += shift[..., 1]
  return _bilinear(image, src_v, src_u), out_width


def _smooth_field(height: int, width: tf.Tensor, amplitude: float, seed) -> tf.Tensor:
  """float32 [height, width, 2]: displacements U(-amplitude, amplitude) at a coarse
  grid of nodes (3 rows, one column per half height), bilinearly upsampled."""
  columns = width * _WARP_NODES_PER_HEIGHT // height + 2
  nodes = tf.random.stateless_uniform(tf.stack([3, columns, 2]), seed,
                                      minval=-amplitude, maxval=amplitude)
  return tf.image.resize(nodes, tf.stack([height, width]))


def _bilinear(image, rows, cols):
  """image [h, w, C]; rows, cols float32 [H, W] source coordinates -> [H, W, C],
  bilinear, 0 (the background) outside the image."""
  shape = tf.shape(image)
  # A border of zeros: a coordinate outside clamps onto it and reads background.
  padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
  top, left = tf.floor(rows), tf.floor(cols)
  down, right = (rows - top)[..., None], (cols - left)[..., None]
  top = tf.clip_by_value(tf.cast(top, tf.int32) + 1, 0, shape[0] + 1)
  left = tf.clip_by_value(tf.cast(left, tf.int32) + 1, 0, shape[1] + 1)
  bottom = tf.minimum(top + 1, shape[0] + 1)
  next_col = tf.minimum(left + 1, shape[1] + 1)
  at = lambda r, c: tf.gather_nd(padded, tf.stack([r, c], axis=-1))
  upper = at(top, left) * (1.0 - right) + at(top, next_col) * right
  lower = at(bottom, left) * (1.0 - right) + at(bottom, next_col) * right
  return upper * (1.0 - down) + lower * down


def _appearance(image, cfg: DataConfig, draw, seed):
  """Morphology, blur, contrast, brightness and noise -> [H, W, C] in [0, 1]."""
  if cfg.augment_morph > 0:
    image = _morph(image, _symmetric(draw["morph"], cfg.augment_morph))
  if cfg.augment_blur > 0:
    image = _blur(image, draw["blur"] * cfg.augment_blur, cfg.augment_blur)
  if cfg.augment_contrast > 0 or cfg.augment_brightness > 0:
    mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
    contrast = 1.0 + _symmetric(draw["contrast"], cfg.augment_contrast)
    image = (image - mean) * contrast + mean + _symmetric(draw["brightness"],
                                                          cfg.augment_brightness)
  if cfg.augment_noise > 0:
    sigma = draw["noise"] * cfg.augment_noise
    image += sigma * tf.random.stateless_normal(tf.shape(image), seed)
  return tf.clip_by_value(image, 0.0, 1.0)


def _morph(image, amount):
  """amount > 0: that fraction of the way to a 3x3 dilation; < 0: to an erosion
  (the dilation of the negative)."""
  sign = tf.where(amount < 0, -1.0, 1.0)
  pooled = sign * tf.nn.max_pool2d(sign * image[None], 3, 1, "SAME")[0]
  return image + tf.abs(amount) * (pooled - image)


def _blur(image, sigma, max_sigma: float):
  """Gaussian blur of `sigma` pixels, one depthwise convolution (a kernel wide
  enough for max_sigma; sigma near 0 leaves the image as it is)."""
  radius = max(1, math.ceil(2 * max_sigma))
  taps = tf.range(-radius, radius + 1, dtype=tf.float32)
  line = tf.exp(-taps ** 2 / (2.0 * tf.maximum(sigma, 1e-3) ** 2))
  line /= tf.reduce_sum(line)
  kernel = line[:, None, None, None] * line[None, :, None, None]   # [k, k, 1, 1]
  kernel = tf.tile(kernel, [1, 1, image.shape[-1], 1])
  return tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "SAME")[0]


def write_preview(cfg: DataConfig, charset, samples, writer, step: int,
                  count: int = 4) -> None:
  """Writes train/augmented_inputs: the first `count` training samples (file
  order), each followed by the Modality's augmentation of it (every one augmented).
  Nothing when cfg.augment is off."""
  if not cfg.augment or not count:
    return
  always = dataclasses.replace(cfg, augment_probability=1.0)
  modality = modalities.get(always)
  examples = failures.decode(samples, modality, always, charset, False, None).take(count)
  pairs = tf.data.Dataset.zip(examples, modality.augment(examples, cfg.seed))
  try:
    inputs = [x["inputs"] for pair in pairs for x in pair]
  except failures.PIPELINE_ERRORS as e:
    raise failures.explain(e, samples, cfg) from None
  if not inputs:
    return
  axis = modality.time_axis - 1
  longest = max(x.shape[axis] for x in inputs)
  pad = lambda x: tf.pad(x, [[0, longest - x.shape[axis] if a == axis else 0]
                             for a in range(x.shape.rank)])
  with writer.as_default(step=step):
    tf.summary.image("train/augmented_inputs",
                     modality.preview(tf.stack([pad(x) for x in inputs])),
                     max_outputs=2 * count,
                     description="training samples, each followed by an "
                     "augmentation of it")
