"""The Modality interface: what the data files hold, and everything that depends on it.

A Modality (image.ImageModality, audio.AudioModality) owns, for one DataConfig:
  example_shape   one example's `inputs` shape, None along time
  time_axis       the time axis of a batch's `inputs` ([B, H, W, C]: 2; [B, T, F]: 1)
  max_length      the longest input along time
  decode          encoded bytes -> (inputs, length): the pipeline's decode
  screen          decoded examples -> those the run keeps (images: too_wide_policy)
  augment         training examples -> augmented ones (audio: SpecAugment)
  serve           encoded bytes [B] -> padded (inputs, input_length): the SavedModel's
  serve_scaled    serve, plus each input's step size in position_unit (positions.py)
  position_unit, step_size   what a character position is measured in (px, ms), and
                  how many of those one step along time of decoded inputs is
  preview         a batch's inputs -> images for TensorBoard
  file_length, record_length   an example's length along time, from a listed file's
                  header (host) or a TFRecord's features (graph), for length buckets
  validate        encoded bytes -> length and the size features a TFRecord stores
  failure_text    what a file that does not decode is, for error messages
  host_settings   what ctc_trainer.host needs to preprocess as `decode` does (NumPy)
modalities.py maps --modality names to them.
"""

from typing import Dict, Optional, Tuple

import tensorflow as tf

from ctc_trainer.config import DataConfig


class Modality:
  """The base: a modality is built from the run's DataConfig."""
  name = ""
  # Every decode failure is named as it happens, even under policy 'error' (see
  # failures.decode): for decoders whose errors cannot be explained afterwards.
  names_every_failure = False

  def __init__(self, cfg: DataConfig):
    self.cfg = cfg

  @property
  def example_shape(self) -> Tuple[Optional[int], ...]:
    raise NotImplementedError

  @property
  def time_axis(self) -> int:
    """The batch's time axis: 1 + the example's None axis."""
    return 1 + list(self.example_shape).index(None)

  @property
  def max_length(self) -> int:
    raise NotImplementedError

  @property
  def expected(self) -> str:
    """What a decodable file is, for error messages and warnings."""
    raise NotImplementedError

  def decode(self, encoded: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Encoded bytes (string scalar) -> (inputs of example_shape, length int32)."""
    raise NotImplementedError

  def screen(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Decoded examples -> those the run keeps."""
    return ds

  def augment(self, ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Decoded training examples -> augmented; the identity unless overridden."""
    return ds

  def serve(self, encoded: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """string [B] -> (inputs float32 [B, *example_shape] padded with zeros along time,
    as the pipeline pads its batches; input_length int32 [B])."""
    raise NotImplementedError

  # The unit of character positions (ctc_trainer.positions): "px", "ms".
  position_unit = ""

  @property
  def step_size(self) -> float:
    """position_unit per step along time of `decode`'s inputs."""
    raise NotImplementedError

  def serve_scaled(self, encoded: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """serve, and float32 [B]: each input's position_unit per step along time of
    the served inputs, in the coordinates of the encoded file (images: its original
    width over the resized one). The default: step_size for all."""
    inputs, input_length = self.serve(encoded)
    return inputs, input_length, tf.fill(tf.shape(input_length), self.step_size)

  def preview(self, inputs: tf.Tensor) -> tf.Tensor:
    """A batch's inputs -> images [n, h, w, c] in [0, 1] for tf.summary.image."""
    raise NotImplementedError

  def file_length(self, sample) -> Optional[int]:
    """A listed sample's length along time from its file's header (or the listing);
    None when it cannot be read."""
    raise NotImplementedError

  def record_length(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
    """int64 scalar: a parsed TFRecord example's (tfrecord.FEATURES) length along time."""
    raise NotImplementedError

  def validate(self, encoded: tf.Tensor) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """Encoded bytes -> (length along time int32, the size features a TFRecord
    stores for it: int64 scalars named as in tfrecord.FEATURES). Fails (an op
    error) on bytes that would fail to decode in training; tools/make_tfrecords
    validates with it."""
    raise NotImplementedError

  def failure_text(self, path: Optional[str]) -> str:
    """What went wrong with a file that does not decode: `path` for a listed file (it
    can be inspected), None for a record."""
    raise NotImplementedError

  def host_settings(self) -> Dict[str, float]:
    """The settings ctc_trainer.host's preprocessing for this modality reads (a
    TFLite/ONNX export's sidecar stores them under the modality's name)."""
    raise NotImplementedError
