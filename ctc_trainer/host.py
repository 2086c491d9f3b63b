"""Run a TFLite or ONNX export without TensorFlow: preprocessing, the model's runtime
and greedy CTC decoding, in NumPy (plus Pillow for images).

This file imports nothing of TensorFlow or of the rest of ctc_trainer, and the export
tool copies it next to every TFLite/ONNX model as `ctc_host.py`, so a deployment
needs only NumPy, the model's runtime (`ai-edge-litert` or `onnxruntime`) and Pillow
(images) beside it:

    import ctc_host                                 # or: from ctc_trainer import host
    model = ctc_host.load("runs/demo/export_tflite")  # the folder, or the model file
    for text, score in model.transcribe([open("line.png", "rb").read()]):
      print(text, score)
    # Per character (char, confidence, start, end), in model.position_unit
    # ("px" of the original image, or "ms"), as the SavedModel's char_* outputs:
    text, score, chars = model.transcribe_detail([open("line.png", "rb").read()])[0]

The exported graph is the model alone: features [1 or B, ...] and input_length [B] ->
logits [B, T', classes] (blank 0) and logit_length [B]. Decoding images or WAVs and
the CTC decoder do not convert to the formats' built-in ops (no image or WAV decoder
in TFLite's or ONNX's op sets; tf2onnx has no CTCGreedyDecoder), so they run here, as
the training pipeline runs them (ctc_trainer/data/image.py, audio.py): the parity gate
checks the whole path against the checkpoint.

The sidecar `export.json` beside the model says what this module needs: the format,
the charset (symbol i is id i + 1), the modality and its preprocessing settings.
"""

import io
import json
import os
import wave
from typing import List, Sequence, Tuple

import numpy as np

INFO_FILE = "export.json"
MODEL_FILES = {"tflite": "model.tflite", "tflite_int8": "model.tflite",
               "onnx": "model.onnx"}
# ITU-R 601 luma weights, normalised so that white stays exactly white (image.py).
_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32) / np.float32(0.9999)


class InputError(ValueError):
  """Bytes that are not an image or WAV this model reads; the message says why."""


# --- greedy CTC decoding ------------------------------------------------------------

def greedy_decode(logits: np.ndarray, logit_length: np.ndarray,
                  symbols: Sequence[str]) -> List[Tuple[str, float]]:
  """logits float [B, T, C] (blank 0), logit_length int [B] -> per sequence (text,
  log probability of its best alignment): argmax per frame, merge repeats, drop
  blanks, as tf.nn.ctc_greedy_decoder does."""
  results = []
  for row, length in zip(logits, logit_length):
    row = row[:int(length)].astype(np.float32)
    if not len(row):
      results.append(("", 0.0))
      continue
    best = row.argmax(axis=1)
    shifted = row - row.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    score = float(log_probs.max(axis=1).sum())
    keep = (best != 0) & np.concatenate([[True], best[1:] != best[:-1]])
    results.append(("".join(symbols[i - 1] for i in best[keep]), score))
  return results


def greedy_chars(logits: np.ndarray) -> List[Tuple[int, float, int, int]]:
  """One sequence's logits [T, C] (valid frames only, blank 0) -> per character of
  its greedy path: (id, confidence, first frame, last frame). The span is the
  character's run in the argmax path; the confidence its highest softmax
  probability over that run (ctc_trainer/positions.py does the same in TensorFlow)."""
  logits = logits.astype(np.float32)
  if not len(logits):
    return []
  best = logits.argmax(axis=1)
  shifted = logits - logits.max(axis=1, keepdims=True)
  probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
  chars = []
  for t, c in enumerate(best):
    if c == 0:
      continue
    if t and best[t - 1] == c:
      cid, confidence, first, _ = chars[-1]
      chars[-1] = (cid, max(confidence, float(probs[t, c])), first, t)
    else:
      chars.append((int(c), float(probs[t, c]), t, t))
  return chars


# --- images --------------------------------------------------------------------------

def _decode_image(encoded: bytes) -> np.ndarray:
  """Image bytes -> float32 [h, w, 1 or 3] in [0, 1], transparency on white, as
  tf.io.decode_image(dtype=float32) and image._decode_on_white give them."""
  from PIL import Image   # late: audio models do not need Pillow
  try:
    with Image.open(io.BytesIO(encoded)) as im:
      im.seek(0)   # GIFs: the first frame
      if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
      elif im.mode in ("1", "CMYK", "YCbCr", "PA"):
        im = im.convert({"1": "L", "PA": "RGBA"}.get(im.mode, "RGB"))
      array = np.asarray(im)
  except Exception as e:   # Pillow raises many kinds for bad bytes
    raise InputError(f"cannot decode image: {e}") from None
  # 8-bit images in 1/255 steps, 16-bit ones (uint16, or int32 from mode "I") in 1/65535.
  depth = 255.0 if array.dtype.itemsize == 1 else 65535.0
  image = array.astype(np.float32) * np.float32(1.0 / depth)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] % 2 == 0:   # gray + alpha, RGBA
    alpha = image[..., -1:]
    image = image[..., :-1] * alpha + (1.0 - alpha)
  return image


def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of tf.image.resize's bilinear sampling (half-pixel centres,
  edges clamped; ResizeBilinear)."""
  scale = np.float32(in_size / out_size)
  position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  low = np.floor(position)
  lerp = position - low
  lower = np.maximum(low.astype(np.int64), 0)
  upper = np.minimum(np.ceil(position).astype(np.int64), in_size - 1)
  weights = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(weights, (rows, lower), 1.0 - lerp)
  np.add.at(weights, (rows, upper), lerp)
  return weights


def _antialias_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of tf.image.resize(antialias=True)'s triangle kernel, widened
  by the shrink factor (ScaleAndTranslate)."""
  inv_scale = in_size / out_size
  kernel_scale = max(inv_scale, 1.0)
  centre = (np.arange(out_size) + 0.5) * inv_scale
  source = np.arange(in_size) + 0.5
  weights = np.maximum(0.0, 1.0 - np.abs(source[None, :] - centre[:, None]) / kernel_scale)
  total = weights.sum(axis=1, keepdims=True)
  return (weights / np.where(total > 0, total, 1.0)).astype(np.float32)


def preprocess_image(encoded: bytes, height: int, channels: int,
                     max_width: int) -> np.ndarray:
  """Image bytes -> float32 [height, W, channels], ink bright on 0: what
  ctc_trainer.data.image.decode_and_resize gives, in NumPy."""
  image = _decode_image(encoded)
  h, w = image.shape[:2]
  width = int(np.clip(np.round(w * height / h), 1, max_width))
  weights = _antialias_weights if (h > 2 * height or w > 2 * width) else _bilinear_weights
  image = np.einsum("yh,hwc->ywc", weights(h, height), image)
  image = np.einsum("xw,ywc->yxc", weights(w, width), image).astype(np.float32)
  if channels == 1 and image.shape[-1] == 3:
    image = np.clip(image @ _LUMA, 0.0, 1.0)[..., None]
  elif channels == 3 and image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return 1.0 - np.clip(image, 0.0, 1.0)


# --- audio --------------------------------------------------------------------------

def decode_wav(encoded: bytes, sample_rate: int, max_samples: int) -> np.ndarray:
  """16-bit PCM WAV bytes -> mono float32 [n] in [-1, 1), as tf.audio.decode_wav and
  audio.decode_wav give it. Other sample rates are refused: resampling is not here."""
  try:
    with wave.open(io.BytesIO(encoded)) as f:
      if f.getsampwidth() != 2:
        raise InputError(f"expected 16-bit PCM, got {8 * f.getsampwidth()}-bit")
      rate, channels = f.getframerate(), f.getnchannels()
      data = f.readframes(f.getnframes())
  except (wave.Error, EOFError) as e:
    raise InputError(f"cannot decode WAV: {e}") from None
  if rate != sample_rate:
    raise InputError(f"WAV of {rate} Hz; this model reads {sample_rate} Hz")
  samples = np.frombuffer(data, "<i2").astype(np.float32) / np.float32(32768.0)
  waveform = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
  if not waveform.size:
    raise InputError("WAV holds no samples")
  if waveform.size > max_samples:
    raise InputError(f"audio of {waveform.size / sample_rate:g} s is longer than the "
                     f"{max_samples / sample_rate:g} s the model was set up for")
  return waveform


def _hertz_to_mel(hertz):
  return 1127.0 * np.log1p(np.asarray(hertz, np.float64) / 700.0)


def mel_matrix(num_mel_bins: int, num_spectrogram_bins: int, sample_rate: int,
               lower_hz: float, upper_hz: float) -> np.ndarray:
  """[num_spectrogram_bins, num_mel_bins]: tf.signal.linear_to_mel_weight_matrix."""
  linear = _hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins)[1:])
  edges = np.linspace(_hertz_to_mel(lower_hz), _hertz_to_mel(upper_hz), num_mel_bins + 2)
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (linear[:, None] - lower) / (centre - lower)
  falling = (upper - linear[:, None]) / (upper - centre)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  return np.pad(weights, [[1, 0], [0, 0]]).astype(np.float32)


def log_mel(waveform: np.ndarray, audio: dict) -> np.ndarray:
  """float32 [n] -> normalized log-mel features float32 [ceil(n / hop), F]: audio.py's
  log_mel and normalize (periodic Hann STFT with the end zero-padded, power, mel
  filters, log(x + offset), every bin to zero mean and unit variance). `audio` is the
  sidecar's "audio" entry."""
  length, step, fft = audio["frame_length"], audio["frame_step"], audio["fft_length"]
  frames = -(-waveform.size // step)
  padded = np.zeros((frames - 1) * step + length, np.float32)
  padded[:waveform.size] = waveform
  index = np.arange(length)[None, :] + step * np.arange(frames)[:, None]
  window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)).astype(np.float32)
  spectrum = np.fft.rfft(padded[index] * window, n=fft)
  power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
  matrix = mel_matrix(audio["num_mel_bins"], fft // 2 + 1, audio["sample_rate"],
                      audio["lower_edge_hz"], audio["sample_rate"] / 2.0)
  features = np.log(power @ matrix + np.float32(audio["log_offset"]))
  mean = features.mean(axis=0, keepdims=True)
  variance = features.var(axis=0, keepdims=True)
  return ((features - mean) / np.sqrt(variance + audio["variance_floor"])).astype(np.float32)


def _image_features(encoded: bytes, image: dict) -> np.ndarray:
  return preprocess_image(encoded, image["height"], image["channels"],
                          image["max_width"])


def _audio_features(encoded: bytes, audio: dict) -> np.ndarray:
  return log_mel(decode_wav(encoded, audio["sample_rate"], audio["max_samples"]), audio)


# The sidecar's modality -> its preprocessing (data/image.py, data/audio.py in NumPy).
_FEATURES = {"image": _image_features, "audio": _audio_features}


def _image_step_size(encoded: bytes, steps: int, image: dict) -> float:
  """Original pixels per column of the resized line (the Modality's serve_scaled)."""
  del image
  from PIL import Image
  with Image.open(io.BytesIO(encoded)) as im:   # reads the header only
    return im.width / max(steps, 1)


def _audio_step_size(encoded: bytes, steps: int, audio: dict) -> float:
  """Milliseconds per log-mel hop."""
  del encoded, steps
  return audio["frame_step"] * 1000.0 / audio["sample_rate"]


# The sidecar's modality -> the unit of character positions, and its size per step.
_POSITION_UNITS = {"image": "px", "audio": "ms"}
_STEP_SIZES = {"image": _image_step_size, "audio": _audio_step_size}


# --- the runtimes -------------------------------------------------------------------

class _TFLiteModel:
  """A TFLite model of batch 1 (its recurrent loops need a static batch to lower to
  built-in ops), run with ai-edge-litert, or TensorFlow's interpreter without it."""

  def __init__(self, path: str):
    try:
      from ai_edge_litert.interpreter import Interpreter
    except ImportError:
      import tensorflow as tf   # the documented fallback
      Interpreter = tf.lite.Interpreter
    self._interpreter = Interpreter(model_path=path)
    inputs = {len(d["shape_signature"]): d["index"]
              for d in self._interpreter.get_input_details()}
    outputs = {len(d["shape_signature"]): d["index"]
               for d in self._interpreter.get_output_details()}
    self._length, self._features = inputs.pop(1), inputs.popitem()[1]
    self._logit_length, self._logits = outputs.pop(1), outputs.popitem()[1]

  def __call__(self, features: List[np.ndarray]) -> List[np.ndarray]:
    it = self._interpreter
    results = []
    for x in features:
      it.resize_tensor_input(self._features, (1,) + x.shape)
      it.allocate_tensors()
      it.set_tensor(self._features, x[None])
      it.set_tensor(self._length, np.array([x.shape[_time_axis(x)]], np.int32))
      it.invoke()
      length = int(it.get_tensor(self._logit_length)[0])
      results.append(it.get_tensor(self._logits)[0, :length])
    return results


class _OnnxModel:
  """An ONNX model run with onnxruntime on CPU; a batch is padded with zeros along
  time, as the training pipeline pads it (the model masks the padding)."""

  def __init__(self, path: str):
    import onnxruntime
    self._session = onnxruntime.InferenceSession(path,
                                                 providers=["CPUExecutionProvider"])

  def __call__(self, features: List[np.ndarray]) -> List[np.ndarray]:
    axis = _time_axis(features[0])
    lengths = np.array([x.shape[axis] for x in features], np.int32)
    batch = np.zeros((len(features),) + _padded_shape(features[0].shape, axis,
                                                      lengths.max()), np.float32)
    for i, x in enumerate(features):
      batch[(i,) + (slice(None),) * axis + (slice(0, x.shape[axis]),)] = x
    logits, logit_length = self._session.run(
        ["logits", "logit_length"], {"inputs": batch, "input_length": lengths})
    return [row[:n] for row, n in zip(logits, logit_length)]


def _time_axis(example: np.ndarray) -> int:
  """Time is the width of an image [H, W, C] and the frames of features [T, F]."""
  return 1 if example.ndim == 3 else 0


def _padded_shape(shape, axis, length):
  return tuple(length if i == axis else d for i, d in enumerate(shape))


# --- a loaded export -----------------------------------------------------------------

class Recognizer:
  """A loaded TFLite or ONNX export: encoded files in, greedy transcriptions out."""

  def __init__(self, path: str):
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    with open(os.path.join(folder, INFO_FILE), encoding="utf-8") as f:
      self.info = json.load(f)
    self.format = self.info["format"]
    if self.format not in MODEL_FILES:
      raise InputError(f"{path}: format {self.format!r} is not run by this module")
    self.symbols = self.info["charset"]
    model_file = os.path.join(folder, MODEL_FILES[self.format])
    self._model = (_OnnxModel if self.format == "onnx" else _TFLiteModel)(model_file)

  def features(self, encoded: bytes) -> np.ndarray:
    """One file's bytes -> the model's inputs for it: [H, W, C] or [T, F]."""
    if not encoded:
      raise InputError("empty input bytes")
    modality = self.info["modality"]
    return _FEATURES[modality](encoded, self.info[modality])

  def logits(self, features: List[np.ndarray]) -> List[np.ndarray]:
    """Inputs of several examples -> their logits [T'_i, classes], padding cut off."""
    return self._model(features)

  def transcribe(self, blobs: Sequence[bytes]) -> List[Tuple[str, float]]:
    """Encoded files -> (text, log probability of its best alignment) each. Raises
    InputError when any of them cannot be decoded."""
    return [(text, score) for text, score, _ in self.transcribe_detail(blobs)]

  @property
  def position_unit(self) -> str:
    """The unit of transcribe_detail's character positions: "px" or "ms"."""
    return _POSITION_UNITS[self.info["modality"]]

  def transcribe_detail(self, blobs: Sequence[bytes]
                        ) -> List[Tuple[str, float, List[Tuple[str, float, float,
                                                               float]]]]:
    """transcribe, and per character of each text: (symbol, confidence, start, end),
    start/end in position_unit: x pixels of the original image, or ms."""
    if not blobs:
      return []
    features = [self.features(b) for b in blobs]
    logits = self.logits(features)
    penalty = float(self.info.get("blank_penalty", 0.0))
    if penalty:   # --blank_penalty of the exported run, as its decoders apply it
      logits = [x - np.eye(1, x.shape[-1], 0, dtype=x.dtype)[0] * penalty
                for x in logits]
    lengths = np.array([len(x) for x in logits])
    padded = np.zeros((len(logits), max(lengths.max(), 1), logits[0].shape[-1]),
                      np.float32)
    for i, x in enumerate(logits):
      padded[i, :len(x)] = x
    stride = int(self.info.get("time_stride", 1))
    results = []
    for blob, x, row, (text, score) in zip(blobs, features, logits,
                                           greedy_decode(padded, lengths, self.symbols)):
      steps = x.shape[_time_axis(x)]
      size = self._step_size(blob, steps)
      chars = [(self.symbols[c - 1], p, first * stride * size,
                min((last + 1) * stride, steps) * size)
               for c, p, first, last in greedy_chars(row)]
      results.append((text, score, chars))
    return results

  def _step_size(self, encoded: bytes, steps: int) -> float:
    """position_unit per step along time of this input's features."""
    modality = self.info["modality"]
    return _STEP_SIZES[modality](encoded, steps, self.info[modality])


def detect_format(path: str) -> str:
  """'saved_model', 'tflite', 'tflite_int8' or 'onnx' for an export folder (or its
  model file); raises FileNotFoundError when path holds none of them."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  if os.path.isfile(os.path.join(folder, "saved_model.pb")):
    return "saved_model"
  info = os.path.join(folder, INFO_FILE)
  if os.path.isfile(info):
    with open(info, encoding="utf-8") as f:
      return json.load(f)["format"]
  raise FileNotFoundError(f"{path} holds no export (saved_model.pb, or a model with "
                          f"its {INFO_FILE}); write one with tools/export_savedmodel.py")


def load(path: str) -> Recognizer:
  """A TFLite or ONNX export folder (or its model file) -> a Recognizer."""
  return Recognizer(path)
