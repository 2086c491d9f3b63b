"""The audio Modality: WAV bytes -> normalized log-mel features, the one implementation
shared by training, evaluation and export; SpecAugment, for training only; and the
rest of what depends on inputs being audio (see modality.py).

decode_and_featurize(wav bytes) -> (features float32 [T, F], T):
  1. tf.audio.decode_wav (16-bit PCM) to [-1, 1); the channels are averaged (mono).
  2. A sample rate other than cfg.sample_rate is an error naming both rates
     (resample_policy=error) or is resampled (resample_policy=resample, see resample).
  3. STFT with a periodic Hann window of frame_length_ms, hop frame_step_ms, FFT size
     the next power of two; the end is zero-padded so that every sample lies in a
     frame: T = ceil(samples / hop) (num_frames).
  4. Power spectrum -> num_mel_bins triangular filters on the HTK mel scale from
     20 Hz to sample_rate / 2 (tf.signal.linear_to_mel_weight_matrix) -> log(x + 1e-6).
  5. Per-utterance normalization: every mel bin to zero mean and unit variance over
     the utterance's frames. Zero padding in a batch is then the mean of every bin.

The input pipeline pads batches of features to [B, T_max, F] with input_length = T
of each utterance, exactly as it pads images along their width.
"""

import dataclasses
import math
import struct
from typing import Dict, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from ctc_trainer.config import AudioConfig
from ctc_trainer.data.modality import Modality

LOWER_EDGE_HZ = 20.0
LOG_OFFSET = 1e-6      # log(mel + LOG_OFFSET): digital silence stays finite
VARIANCE_FLOOR = 1e-5  # a bin constant over the utterance normalizes to 0, not NaN
# Resampling down: taps on each side of the anti-aliasing filter per unit of
# rate ratio; its cutoff as a fraction of the new Nyquist frequency.
_LOWPASS_TAPS_PER_RATIO = 8
_LOWPASS_CUTOFF = 0.9

IntLike = Union[int, np.ndarray]


# --- sizes ------------------------------------------------------------------------

def frame_length(cfg: AudioConfig) -> int:
  """STFT window in samples."""
  return int(round(cfg.sample_rate * cfg.frame_length_ms / 1000.0))


def frame_step(cfg: AudioConfig) -> int:
  """STFT hop in samples (at least 1)."""
  return max(1, int(round(cfg.sample_rate * cfg.frame_step_ms / 1000.0)))


def fft_length(cfg: AudioConfig) -> int:
  """The smallest power of two holding a window."""
  return 2 ** max(0, math.ceil(math.log2(max(frame_length(cfg), 1))))


def num_frames(num_samples: IntLike, cfg: AudioConfig) -> IntLike:
  """Feature frames of `num_samples` samples at cfg.sample_rate: ceil(n / hop)."""
  step = frame_step(cfg)
  return (num_samples + step - 1) // step


def max_samples(cfg: AudioConfig) -> int:
  return int(round(cfg.max_audio_seconds * cfg.sample_rate))


def max_frames(cfg: AudioConfig) -> int:
  """Frames of the longest audio accepted (cfg.max_audio_seconds)."""
  return int(num_frames(max_samples(cfg), cfg))


# --- decoding and features ----------------------------------------------------------

def decode_wav(encoded: tf.Tensor, cfg: AudioConfig) -> tf.Tensor:
  """WAV bytes (string scalar) -> mono waveform float32 [n] at cfg.sample_rate.

  Raises InvalidArgumentError when the bytes are not a 16-bit PCM WAV, hold no
  samples, are longer than cfg.max_audio_seconds, or (resample_policy=error) have
  another sample rate; the message says which.
  """
  audio, rate = tf.audio.decode_wav(encoded)
  waveform = tf.reduce_mean(audio, axis=1)  # mixing stereo to mono
  checks = [tf.debugging.Assert(tf.size(waveform) > 0, ["WAV holds no samples"])]
  if cfg.resample_policy == "error":
    checks.append(tf.debugging.Assert(tf.equal(rate, cfg.sample_rate), [
        tf.strings.format("WAV sample rate {} Hz is not --sample_rate={} Hz "
                          "(--resample_policy=resample converts it)",
                          [rate, cfg.sample_rate])]))
  with tf.control_dependencies(checks):
    waveform = tf.identity(waveform)
  if cfg.resample_policy == "resample":
    waveform = tf.cond(tf.equal(rate, cfg.sample_rate), lambda: waveform,
                       lambda: resample(waveform, rate, cfg.sample_rate))
  seconds = tf.cast(tf.size(waveform), tf.float32) / cfg.sample_rate
  length_ok = tf.debugging.Assert(tf.size(waveform) <= max_samples(cfg), [
      tf.strings.format("audio of {} s is longer than --max_audio_seconds={}",
                        [seconds, cfg.max_audio_seconds])])
  with tf.control_dependencies([length_ok]):
    return tf.identity(waveform)


def log_mel(waveform: tf.Tensor, cfg: AudioConfig) -> tf.Tensor:
  """float32 [n] at cfg.sample_rate -> log-mel features float32 [ceil(n / hop), F]."""
  stft = tf.signal.stft(waveform, frame_length(cfg), frame_step(cfg), fft_length(cfg),
                        window_fn=tf.signal.hann_window, pad_end=True)
  power = tf.math.square(tf.abs(stft))
  mel_matrix = tf.signal.linear_to_mel_weight_matrix(
      cfg.num_mel_bins, fft_length(cfg) // 2 + 1, cfg.sample_rate, LOWER_EDGE_HZ,
      cfg.sample_rate / 2.0)
  return tf.math.log(tf.matmul(power, mel_matrix) + LOG_OFFSET)


def normalize(features: tf.Tensor) -> tf.Tensor:
  """[T, F] -> [T, F] with every bin at zero mean, unit variance over the T frames."""
  mean, variance = tf.nn.moments(features, axes=[0], keepdims=True)
  return (features - mean) * tf.math.rsqrt(variance + VARIANCE_FLOOR)


def decode_and_featurize(encoded: tf.Tensor, cfg: AudioConfig):
  """WAV bytes (string scalar) -> (features float32 [T, F], T int32 scalar).

  Works eagerly, in tf.function and in tf.data.Dataset.map. Raises
  InvalidArgumentError as decode_wav says.
  """
  features = normalize(log_mel(decode_wav(encoded, cfg), cfg))
  features = tf.ensure_shape(features, [None, cfg.num_mel_bins])
  return features, tf.shape(features)[0]


def featurize_batch(wav_bytes: tf.Tensor, cfg: AudioConfig):
  """WAV bytes string [B] -> (inputs float32 [B, T_max, F], input_length int32 [B]),
  zero-padded at the end as the input pipeline pads its batches (for serving)."""
  bins = cfg.num_mel_bins
  # Flattened rows: map_fn stacks utterances of different lengths only as ragged
  # rows, and flat ones keep the feature axis even in an empty batch.
  flat = tf.map_fn(
      lambda encoded: tf.reshape(decode_and_featurize(encoded, cfg)[0], [-1]),
      wav_bytes, fn_output_signature=tf.RaggedTensorSpec([None], tf.float32))
  input_length = tf.cast(flat.row_lengths() // bins, tf.int32)
  frames = tf.RaggedTensor.from_row_lengths(tf.reshape(flat.flat_values, [-1, bins]),
                                            input_length)
  return frames.to_tensor(0.0), input_length


def resample(waveform: tf.Tensor, rate: tf.Tensor, target: int) -> tf.Tensor:
  """float32 [n] at `rate` Hz (int scalar tensor) -> [max(1, round(n * target / rate))].

  Linear interpolation; when downsampling, first a Hann-windowed sinc low-pass at 0.9
  of the new Nyquist frequency, so that what lies above it does not alias into the
  band. Good enough for recognition features (to 8 kHz: tones up to 2 kHz keep their
  amplitude within 1%, 3.5 kHz loses 4.5 dB, aliases are damped by 55 dB or more;
  docs/speech.md); not meant for listening: upsampling leaves faint images above the
  old Nyquist frequency.
  """
  ratio = tf.cast(rate, tf.float64) / target   # input samples per output sample

  def lowpass():
    cutoff = _LOWPASS_CUTOFF * 0.5 / ratio     # in cycles per input sample
    half = tf.cast(tf.math.ceil(_LOWPASS_TAPS_PER_RATIO * ratio), tf.int32)
    t = tf.cast(tf.range(-half, half + 1), tf.float64)
    x = 2.0 * cutoff * t
    sinc = tf.where(tf.equal(x, 0.0), tf.ones_like(x),
                    tf.sin(np.pi * x) / (np.pi * tf.where(tf.equal(x, 0.0), 1.0, x)))
    window = 0.5 + 0.5 * tf.cos(np.pi * t / tf.cast(half + 1, tf.float64))
    taps = sinc * window
    taps = tf.cast(taps / tf.reduce_sum(taps), tf.float32)
    # An odd kernel at stride 1: SAME pads both ends equally, so nothing shifts.
    return tf.nn.conv1d(waveform[None, :, None], taps[:, None, None], 1, "SAME")[0, :, 0]

  smooth = tf.cond(ratio > 1.0, lowpass, lambda: waveform)
  n = tf.shape(smooth)[0]
  out_length = tf.maximum(1, tf.cast(tf.round(tf.cast(n, tf.float64) / ratio), tf.int32))
  position = tf.cast(tf.range(out_length), tf.float64) * ratio
  left = tf.minimum(tf.cast(tf.floor(position), tf.int32), n - 1)
  right = tf.minimum(left + 1, n - 1)
  fraction = tf.cast(position - tf.cast(left, tf.float64), tf.float32)
  return tf.gather(smooth, left) * (1.0 - fraction) + tf.gather(smooth, right) * fraction


# --- SpecAugment --------------------------------------------------------------------

def augments(cfg: AudioConfig) -> bool:
  """Whether cfg asks for any SpecAugment mask."""
  return bool(cfg.time_masks and cfg.time_mask_frames) or bool(
      cfg.freq_masks and cfg.freq_mask_bins)


def spec_augment(features: tf.Tensor, length: tf.Tensor, cfg: AudioConfig,
                 seed: tf.Tensor) -> tf.Tensor:
  """SpecAugment masks (Park et al. 2019, without time warping) -> [T, F].

  features: float32 [T, F], normalized (a mask sets values to 0, each bin's mean);
  length: int32 scalar, the valid frames (time masks stay inside them); seed: int
  [2] for the stateless random ops, so one seed always gives the same masks.
  cfg.time_masks masks of 0..time_mask_frames frames and cfg.freq_masks masks of
  0..freq_mask_bins bins, each width and position uniform.
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
  frames = tf.shape(features)[0]
  bins = features.shape[-1]
  in_time = _masked(cfg.time_masks, cfg.time_mask_frames, length, frames, seeds[:2])
  in_freq = _masked(cfg.freq_masks, cfg.freq_mask_bins, tf.constant(bins), bins,
                    seeds[2:])
  masked = tf.logical_or(in_time[:, None], in_freq[None, :])
  return tf.where(masked, tf.zeros_like(features), features)


def _masked(count: int, max_width: int, extent: tf.Tensor, size, seeds) -> tf.Tensor:
  """bool [size]: True inside `count` random spans of 0..max_width within [0, extent)."""
  if not (count and max_width):
    return tf.zeros([size], tf.bool)
  widths = tf.random.stateless_uniform([count], seeds[0], minval=0, maxval=max_width + 1,
                                       dtype=tf.int32)
  widths = tf.minimum(widths, extent)
  room = tf.cast(extent - widths + 1, tf.float32)
  starts = tf.cast(tf.random.stateless_uniform([count], seeds[1]) * room, tf.int32)
  position = tf.range(size)[None, :]
  inside = (position >= starts[:, None]) & (position < (starts + widths)[:, None])
  return tf.reduce_any(inside, axis=0)


def augment_dataset(ds: tf.data.Dataset, cfg: AudioConfig, seed: int) -> tf.data.Dataset:
  """Examples {inputs [T, F], input_length, key, ...} -> the same with SpecAugment.

  Each element's seed comes from its position in the (repeated) stream and its key,
  so every epoch draws new masks, and `seed` reproduces them all. Returns `ds` itself
  when cfg asks for no mask.
  """
  if not augments(cfg):
    return ds

  @tf.autograph.experimental.do_not_convert   # graph code: see failures.decode
  def augment(index, x):
    key_hash = tf.strings.to_hash_bucket_fast(x["key"], 2 ** 31 - 1)
    element_seed = tf.stack([index, key_hash + seed])
    return dict(x, inputs=spec_augment(x["inputs"], x["input_length"], cfg,
                                       element_seed))

  return ds.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE)


# --- host-side inspection -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class WavInfo:
  sample_rate: int
  channels: int
  bits: int            # per sample
  format_tag: int      # 1 = PCM
  frames: int          # samples per channel


def read_wav_info(path: str) -> WavInfo:
  """A WAV file's format and length from its RIFF header; no samples are read.

  Raises ValueError saying what is wrong (empty, not RIFF/WAVE, no fmt or data
  chunk) and OSError when the file cannot be read.
  """
  with open(path, "rb") as f:
    head = f.read(12)
    if not head:
      raise ValueError("empty file")
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
      raise ValueError("not a WAV file (no RIFF/WAVE header)")
    fmt = None
    while True:
      chunk = f.read(8)
      if len(chunk) < 8:
        raise ValueError("WAV file without a " + ("data" if fmt else "fmt") + " chunk")
      chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
      if chunk_id == b"fmt ":
        body = f.read(size)
        if len(body) < 16:
          raise ValueError("WAV fmt chunk is truncated")
        fmt = struct.unpack("<HHIIHH", body[:16])
        f.seek(size % 2, 1)   # chunks are padded to even sizes
      elif chunk_id == b"data":
        if fmt is None:
          raise ValueError("WAV file without a fmt chunk before its data")
        tag, channels, rate, _, block_align, bits = fmt
        return WavInfo(rate, channels, bits, tag, size // max(block_align, 1))
      else:
        f.seek(size + size % 2, 1)


def describe_wav(path: str) -> str:
  """What a file is, for error messages: 'a WAV of 44100 Hz, 2 channels, 16-bit
  PCM, 1.25 s' or what is wrong with it."""
  try:
    info = read_wav_info(path)
  except ValueError as e:
    return str(e)
  except OSError as e:
    return f"cannot read it: {e.strerror or e}"
  kind = f"{info.bits}-bit " + ("PCM" if info.format_tag == 1 else
                                f"format {info.format_tag}")
  seconds = info.frames / max(info.sample_rate, 1)
  return (f"a WAV of {info.sample_rate} Hz, {info.channels} channel"
          f"{'s' if info.channels != 1 else ''}, {kind}, {seconds:.2f} s")


def spectrogram_images(features: tf.Tensor) -> tf.Tensor:
  """Audio features [B, T, F] -> images [B, F, T, 1] in [0, 1]: time to the right,
  low frequencies at the bottom, each utterance scaled to its own range."""
  images = tf.reverse(tf.transpose(features, [0, 2, 1]), axis=[1])[..., None]
  low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
  return (images - low) / tf.maximum(high - low, 1e-6)


# --- the Modality ---------------------------------------------------------------------

class AudioModality(Modality):
  """Log-mel features [T, F] of 16-bit PCM WAVs."""
  name = "audio"
  # decode_wav's errors quote the file's bytes, which TensorFlow cannot turn into a
  # Python message: a failure is named as it happens, not explained afterwards.
  names_every_failure = True

  @property
  def example_shape(self) -> Tuple[Optional[int], ...]:
    return (None, self.cfg.audio.num_mel_bins)

  @property
  def max_length(self) -> int:
    return max_frames(self.cfg.audio)

  @property
  def expected(self) -> str:
    a = self.cfg.audio
    rate = ("any rate, resampled to " if a.resample_policy == "resample"
            else "") + f"{a.sample_rate} Hz"
    return f"expected a 16-bit PCM WAV of {rate}, at most {a.max_audio_seconds:g} s"

  def decode(self, encoded):
    return decode_and_featurize(encoded, self.cfg.audio)

  def augment(self, ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    return augment_dataset(ds, self.cfg.audio, seed)

  def serve(self, encoded: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    return featurize_batch(encoded, self.cfg.audio)

  position_unit = "ms"

  @property
  def step_size(self) -> float:
    """The log-mel hop in ms: feature frame f starts at sample f * hop (after any
    resampling to cfg.sample_rate, so in the file's own time)."""
    return frame_step(self.cfg.audio) * 1000.0 / self.cfg.audio.sample_rate

  def preview(self, inputs: tf.Tensor) -> tf.Tensor:
    return spectrogram_images(inputs)

  def _frames(self, num_samples: int) -> int:
    """Samples at cfg.sample_rate -> feature frames, as the pipeline caps them."""
    return int(max(num_frames(min(num_samples, max_samples(self.cfg.audio)),
                              self.cfg.audio), 1))

  def file_length(self, sample) -> Optional[int]:
    """The listing's duration (JSONL manifests) or the WAV header's length, converted
    to cfg.sample_rate."""
    rate = self.cfg.audio.sample_rate
    if sample.duration is not None:
      return self._frames(round(sample.duration * rate))
    try:
      info = read_wav_info(sample.path)
    except (OSError, ValueError):
      return None
    return self._frames(round(info.frames * rate / max(info.sample_rate, 1)))

  def record_length(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The `frames` feature, taken to be at cfg.sample_rate, or the decoded WAV's."""
    samples = tf.cond(
        features["frames"] > 0, lambda: features["frames"],
        lambda: tf.shape(tf.audio.decode_wav(features["encoded"])[0], tf.int64)[0])
    samples = tf.minimum(samples, max_samples(self.cfg.audio))
    return tf.maximum(num_frames(samples, self.cfg.audio), 1)

  def validate(self, encoded):
    # decode_wav is what can fail (format, rate, length); the features cannot.
    samples = tf.size(decode_wav(encoded, self.cfg.audio), tf.int64)
    return (tf.cast(num_frames(samples, self.cfg.audio), tf.int32),
            {"frames": samples})   # at cfg.sample_rate, as record_length reads it

  def host_settings(self) -> Dict[str, float]:
    a = self.cfg.audio
    return {"sample_rate": a.sample_rate, "frame_length": frame_length(a),
            "frame_step": frame_step(a), "fft_length": fft_length(a),
            "num_mel_bins": a.num_mel_bins, "lower_edge_hz": LOWER_EDGE_HZ,
            "log_offset": LOG_OFFSET, "variance_floor": VARIANCE_FLOOR,
            "max_samples": max_samples(a)}

  def failure_text(self, path: Optional[str]) -> str:
    if path is None:
      return f"cannot read or decode audio; {self.expected}"
    return f"cannot use audio {path}, {describe_wav(path)}; {self.expected}"
