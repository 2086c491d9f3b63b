"""Tests for ctc_trainer.data.image: decoding every supported kind, resizing, inversion."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ctc_trainer.data import image as image_lib

GRAY = (np.arange(12 * 30).reshape(12, 30) * 7 % 256).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  img.save(buf, fmt, **kwargs)
  return buf.getvalue()


def gray01(encoded: bytes) -> np.ndarray:
  return image_lib.decode_image(tf.constant(encoded), channels=1).numpy()[..., 0]


@pytest.mark.parametrize("fmt,mode", [
    ("PNG", "L"), ("PNG", "RGB"), ("PNG", "P"), ("PNG", "LA"), ("PNG", "RGBA"),
    ("BMP", "L"), ("BMP", "RGB"), ("BMP", "P"), ("BMP", "RGBA"),
    ("GIF", "L"), ("GIF", "RGB"), ("GIF", "P")])
def test_lossless_formats_decode_to_gray_values(fmt, mode):
  img = Image.fromarray(GRAY).convert(mode)
  # GIF palettes are built by quantizing; gray levels survive within a step or two.
  np.testing.assert_allclose(gray01(encode(img, fmt)), GRAY / 255.0, atol=3 / 255)


def test_jpeg_decodes_close_to_source():
  smooth = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (16, 1))
  got = gray01(encode(Image.fromarray(smooth), "JPEG", quality=95))
  np.testing.assert_allclose(got, smooth / 255.0, atol=0.03)


def test_sixteen_bit_png_keeps_precision():
  values = np.array([[0, 1000, 40000, 65535]], np.uint16)
  got = gray01(encode(Image.fromarray(values), "PNG"))
  np.testing.assert_allclose(got, values / 65535.0, atol=1e-6)


def test_transparency_is_composited_on_white():
  rgba = np.zeros((4, 4, 4), np.uint8)      # black, fully transparent...
  rgba[0, 0] = (0, 0, 0, 255)               # ...except one opaque black pixel
  got = gray01(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
  assert got[0, 0] == 0.0 and got[1, 1] == pytest.approx(1.0)


def test_palette_png_with_transparency():
  img = Image.fromarray(GRAY).convert("P")
  got = gray01(encode(img, "PNG", transparency=int(img.getpixel((0, 0)))))
  assert got[0, 0] == pytest.approx(1.0)


def test_rgb_output_keeps_colour_and_gray_input_is_replicated():
  rgb = np.zeros((2, 2, 3), np.uint8)
  rgb[..., 0] = 255
  got = image_lib.decode_image(encode(Image.fromarray(rgb), "PNG"), channels=3).numpy()
  np.testing.assert_allclose(got[0, 0], [1.0, 0.0, 0.0])
  gray = image_lib.decode_image(encode(Image.fromarray(GRAY), "PNG"), 3).numpy()
  np.testing.assert_allclose(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("size,expected_width", [
    ((60, 30), 64),       # (w, h): twice as wide as high
    ((25, 10), 80),       # 2.5 * 32
    ((3, 1000), 1),       # never below one column
    ((5000, 10), 100),    # capped at max_width
])
def test_resize_keeps_aspect_and_caps_width(size, expected_width):
  encoded = encode(Image.new("L", size, 255), "PNG")
  image, width = image_lib.decode_and_resize(encoded, 32, 1, max_width=100)
  assert image.shape == (32, expected_width, 1) and image.dtype == tf.float32
  assert int(width) == expected_width


def test_inverted_white_background_is_zero_and_ink_is_one():
  pixels = np.full((20, 40), 255, np.uint8)
  pixels[:, 10:30] = 0
  image, _ = image_lib.decode_and_resize(encode(Image.fromarray(pixels), "PNG"),
                                         20, 1, 1000)
  assert float(tf.reduce_max(image[:, :5])) == 0.0
  assert float(tf.reduce_min(image[:, 12:28])) == pytest.approx(1.0)


def test_eager_tf_function_and_dataset_map_agree():
  blobs = [encode(Image.fromarray(GRAY), "PNG"),
           encode(Image.fromarray(GRAY).convert("RGBA"), "PNG"),
           encode(Image.fromarray(GRAY), "JPEG")]
  fn = lambda b: image_lib.decode_and_resize(b, 24, 1, 500)
  eager = [fn(tf.constant(b)) for b in blobs]
  traced = tf.function(fn, input_signature=[tf.TensorSpec([], tf.string)])
  mapped = list(tf.data.Dataset.from_tensor_slices(blobs).map(fn))
  for (e_img, e_w), (t_img, t_w), (m_img, m_w) in zip(
      eager, [traced(b) for b in blobs], mapped):
    assert int(e_w) == int(t_w) == int(m_w) == 60
    np.testing.assert_allclose(e_img, t_img, atol=1e-6)
    np.testing.assert_allclose(e_img, m_img, atol=1e-6)


@pytest.mark.parametrize("blob", [b"", b"not an image at all",
                                  encode(Image.fromarray(GRAY), "PNG")[:40]])
def test_undecodable_bytes_raise(blob):
  with pytest.raises(tf.errors.InvalidArgumentError):
    image_lib.decode_and_resize(tf.constant(blob), 32, 1, 100)


def test_thin_strokes_survive_a_large_shrink():
  # One-pixel ink columns every 4 px, shrunk 4x: antialiasing keeps their share of
  # ink (0.25) in every output column; plain bilinear sampling would miss them.
  pixels = np.full((128, 256), 255, np.uint8)
  pixels[:, ::4] = 0
  image, width = image_lib.decode_and_resize(encode(Image.fromarray(pixels), "PNG"),
                                             32, 1, 1000)
  assert int(width) == 64
  np.testing.assert_allclose(image[4:-4, 4:-4, 0], 0.25, atol=0.03)


def test_small_shrink_matches_antialiased_resize():
  # Under 2x, the cheaper plain bilinear resize is used; it stays close to the
  # antialiased one.
  encoded = encode(Image.fromarray(GRAY), "PNG")
  image, width = image_lib.decode_and_resize(encoded, 8, 1, 1000)
  reference = tf.image.resize(GRAY[..., None] / 255.0, [8, int(width)], antialias=True)
  assert float(tf.reduce_mean(tf.abs((1.0 - image) - reference))) < 0.05
