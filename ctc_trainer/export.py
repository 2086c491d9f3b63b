"""The serving tf.Module, its SavedModel, transcription helpers and the parity gate.

A SavedModel written here needs nothing but TensorFlow to run: the preprocessing, the
model, the run's primary decoder (the first of --decoder, from ctc_trainer.decoders)
and the charset (as lookup tables) are all inside it.

Signatures (K = top_k, fixed at export; B = batch):
  serving_default(encoded string [B]: image or WAV file bytes)    -> outputs
  features(inputs float32 [B, H, W, C], input_length int32 [B])  -> outputs
  logits(encoded string [B]) -> logits float32 [B, T, C] (blank 0, before softmax),
                                logit_length int32 [B]: for host decoders (an
                                n-gram LM, a lexicon, a pattern; docs/export.md)
  outputs: text string [B]             the decoder's best path, as text
           confidence float32 [B]      exp(the best path's log probability)
           top_k_texts string [B, K]   the K best paths, best first
           top_k_scores float32 [B, K] their log probabilities
           char_count int32 [B]        N_i: characters of the best path
           chars string [B, N]         each character (charset symbol), "" past N_i
           char_confidence float32 [B, N]  its confidence (positions.py), 0 past N_i
           char_start, char_end float32 [B, N]  its span in the input: x pixels of
                                       the original image, or ms of the audio
                                       (serving_default); features: px of the
                                       resized line, or ms; 0 past N_i
K is at most what the decoder gives: the beam width for beam decoders, 1 for greedy.
N is the batch's longest best path. The unit of char_start/char_end is the module's
`position_unit` ("px" or "ms", a saved string variable) and export.json's.
The decoder is the run's first in-graph one (decoders.served); the module's
`charset_symbols` variable (string [C - 1], class i + 1's symbol at i) lets a host
decoder turn the logits' ids into text.

serving_default preprocesses with the run's Modality (data/modalities.py): the very
decode the training pipeline maps over its files (images resized to the training
height, or WAVs turned into log-mel features), padded with zeros along time to the
batch's longest input as the pipeline pads its batches ([B, H, W_max, C] images or
[B, T_max, F] features). The models mask that padding, so an input's transcription
does not depend on what it is batched with.

The parity gate runs the eval pipeline with the encoded bytes it decoded, and serves
those same bytes: it never reopens a file, so shards whose original files are gone
(or whose keys are not paths) gate as well as listed files.

TFLite (float, int8) and ONNX exports (convert.py) hold the model alone and run with
ctc_trainer.host (NumPy preprocessing and greedy decoding, no TensorFlow); the same
gate compares them with the checkpoint's greedy decoder.
"""

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
from absl import logging

from ctc_trainer import convert, decoders, host, loop, metrics, positions, steps
from ctc_trainer.charset import Charset
from ctc_trainer.config import Config, DataConfig
from ctc_trainer.errors import ConfigError, DataError, ExportError
from ctc_trainer.data import modalities, pipeline, sources

DEFAULT_TOP_K = 5   # or what the decoder gives, if fewer
# The gate's bound on |checkpoint CER - exported CER| for float formats: the two must
# agree exactly, up to float rounding of the sums.
PARITY_TOLERANCE = 1e-6
# The int8 model's default bound: 0.1 percentage point of CER.
INT8_CER_TOLERANCE = 0.001
FORMAT_NAMES = {"saved_model": "SavedModel", "tflite": "TFLite",
                "tflite_int8": "TFLite int8", "onnx": "ONNX"}
INFO_FILE = os.path.join("assets.extra", "export.json")
_PROGRESS_EVERY_S = 10.0

# A serving function: encoded files (a list of bytes) -> the outputs dict above, as
# tensors or NumPy arrays.
ServeFn = Callable[[List[bytes]], Dict[str, object]]
# What a serving function raises for input it cannot decode.
INPUT_ERRORS = (tf.errors.InvalidArgumentError, host.InputError)


class ServingModule(tf.Module):
  """Image bytes (or preprocessed inputs) in, transcriptions by one decoder out.

  `serve_bytes`, `serve_features`, `serve_logits`, `preprocess` and `transcribe`
  (the model and decoder, which the first two call) are tf.functions with input
  signatures, traced once each; `signatures()` names the first three for the
  SavedModel (serving_default, features, logits).
  """

  def __init__(self, model, charset: Charset, data_cfg: DataConfig, beam_width: int,
               top_k: Optional[int] = None, input_scale: float = 1.0,
               decoder: str = "beam", blank_penalty: float = 0.0):
    """model: inputs [B, H, W, C] -> logits [B, T, charset.num_classes], with
    `output_length`. decoder: a registered decoder's name, run at beam_width, on
    the logits less blank_penalty on the blank (DecoderConfig.blank_penalty; the
    `logits` signature gives them as the model computes them).
    top_k: paths returned, None = min(DEFAULT_TOP_K, what the decoder gives).
    `input_scale` multiplies the preprocessed images; only tests set it, to break
    serving/training parity on purpose and see the gate fail."""
    super().__init__(name="ctc_serving")
    self._decoder = decoders.get(decoder)
    max_paths = self._decoder.max_paths(decoders.DecoderConfig(beam_width))
    if top_k is None:
      top_k = min(DEFAULT_TOP_K, max_paths)
    if not 1 <= top_k <= max_paths:
      limit = ("--beam_width=" if max_paths == beam_width else "") + str(max_paths)
      raise ConfigError(f"--top_k={top_k} must be between 1 and {limit}: "
                        f"--decoder={decoder} gives at most {max_paths} paths")
    self.model = model
    # The weights again, in model.weights order: Keras keeps some layers out of the
    # object graph's paths, and a warm start (warmstart.py) reads them by position.
    self.model_weights = list(model.weights)
    self.decoder_name = decoder
    self.beam_width = beam_width
    self.blank_penalty = blank_penalty
    self.top_k = top_k
    self._decoder_config = decoders.DecoderConfig(beam_width, top_paths=top_k)
    self._data = data_cfg
    self._modality = modalities.get(data_cfg)
    self._input_scale = input_scale
    self.position_unit = tf.Variable(self._modality.position_unit, trainable=False,
                                     name="position_unit")
    # A charset of the module's own whose tables, set as attributes, are tracked and
    # saved with it: the charset travels inside the SavedModel.
    self._charset = Charset(charset.symbols)
    self.charset_tables = self._charset.tables()
    self.charset_symbols = tf.Variable(list(charset.symbols), trainable=False,
                                       name="charset_symbols")
    bytes_spec = tf.TensorSpec([None], tf.string, name="encoded")
    # No AutoGraph (as in steps.py): control flow here is tf.cond and tf.while_loop
    # already, so converting the code would only cost tracing time.
    self.serve_logits = tf.function(self._serve_logits, input_signature=[bytes_spec],
                                    autograph=False)
    self.preprocess = tf.function(self._preprocess, input_signature=[bytes_spec],
                                  autograph=False)
    self.serve_bytes = tf.function(self._serve_bytes, input_signature=[bytes_spec],
                                   autograph=False)
    inputs_spec = tf.TensorSpec([None, *pipeline.input_shape(data_cfg)], tf.float32,
                                name="inputs")
    length_spec = tf.TensorSpec([None], tf.int32, name="input_length")
    self.serve_features = tf.function(self._serve_features, autograph=False,
                                      input_signature=[inputs_spec, length_spec])
    # The model and the decoder, traced once and called by both serve_bytes and
    # serve_features (and saved once).
    self.transcribe = tf.function(self._outputs, autograph=False, input_signature=[
        inputs_spec, length_spec, tf.TensorSpec([None], tf.float32, name="step_size")])

  @classmethod
  def from_run(cls, run: loop.Run, top_k: Optional[int] = None,
                   input_scale: float = 1.0) -> "ServingModule":
    """Serves a (restored) run's model with its charset, image settings, primary
    decoder and beam width, so the export decodes exactly as evaluation does."""
    cfg = run.cfg
    return cls(run.model, run.charset, cfg.data, cfg.loop.beam_width, top_k,
               input_scale, decoder=decoders.served(cfg.loop.decoder),
               blank_penalty=cfg.decoding.blank_penalty)

  def signatures(self) -> Dict[str, tf.types.experimental.PolymorphicFunction]:
    """The SavedModel's signatures. The functions themselves, not concrete functions:
    tf.saved_model.save traces each in its save context, and one traced outside it
    would be traced there again."""
    return {"serving_default": self.serve_bytes, "features": self.serve_features,
            "logits": self.serve_logits}

  def _serve_logits(self, encoded):
    """Encoded files string [B] -> {logits float32 [B, T, C], logit_length [B]}."""
    inputs, input_length = self._preprocess(encoded)

    def forward():
      logits = self.model(inputs, input_length=input_length, training=False)
      return tf.cast(logits, tf.float32), self.model.output_length(input_length)

    logits, logit_length = tf.cond(
        tf.shape(inputs)[0] > 0, forward,
        lambda: (tf.zeros([0, 0, self._charset.num_classes]), tf.zeros([0], tf.int32)))
    return {"logits": logits, "logit_length": logit_length}

  def _preprocess(self, encoded):
    """Encoded files string [B] -> (inputs float32 [B, H, W_max, C] or [B, T_max, F],
    input_length int32 [B])."""
    return self._preprocess_scaled(encoded)[:2]

  def _preprocess_scaled(self, encoded):
    """_preprocess, and each input's position_unit per step along time (float32 [B])."""
    empty = tf.equal(tf.strings.length(encoded), 0)
    # Named here, because the decoder's own message says neither what nor which.
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(empty)),
        ["empty input bytes at batch index", tf.where(empty)[:, 0]], summarize=10)
    with tf.control_dependencies([check]):
      encoded = tf.identity(encoded)
    inputs, input_length, step_size = self._modality.serve_scaled(encoded)
    return inputs * self._input_scale, input_length, step_size

  def _serve_bytes(self, encoded):
    return self.transcribe(*self._preprocess_scaled(encoded))

  def _serve_features(self, inputs, input_length):
    return self.transcribe(inputs, input_length,
                           tf.fill(tf.shape(input_length), self._modality.step_size))

  def _outputs(self, inputs, input_length, step_size):
    # The model's ops reject a batch of zero images; a server may still send one.
    return tf.cond(tf.shape(inputs)[0] > 0,
                   lambda: self._transcribe(inputs, input_length, step_size),
                   lambda: {"text": tf.zeros([0], tf.string),
                            "confidence": tf.zeros([0], tf.float32),
                            "top_k_texts": tf.zeros([0, self.top_k], tf.string),
                            "top_k_scores": tf.zeros([0, self.top_k], tf.float32),
                            "char_count": tf.zeros([0], tf.int32),
                            "chars": tf.zeros([0, 0], tf.string),
                            "char_confidence": tf.zeros([0, 0], tf.float32),
                            "char_start": tf.zeros([0, 0], tf.float32),
                            "char_end": tf.zeros([0, 0], tf.float32)})

  def _transcribe(self, inputs, input_length, step_size):
    logits = self.model(inputs, input_length=input_length, training=False)
    # Taken off here, once, so that the character spans follow the same logits as
    # the decoder (whose own config leaves the penalty at 0).
    logits = decoders.penalize_blank(logits, self.blank_penalty)
    logit_length = self.model.output_length(input_length)
    paths, log_probs = self._decoder(logits, logit_length, self._decoder_config)
    texts = tf.stack([self._charset.decode(p) for p in paths], axis=1)
    return {"text": texts[:, 0], "confidence": tf.exp(log_probs[:, 0]),
            "top_k_texts": texts, "top_k_scores": log_probs,
            **self._char_detail(logits, logit_length, paths[0], input_length,
                                step_size)}

  def _char_detail(self, logits, logit_length, best, input_length, step_size):
    """The best path's characters, padded to the longest: see the module docstring."""
    spans = positions.char_spans(logits, logit_length, best)
    start, end = positions.to_input_units(spans, self.model.stride, input_length,
                                          step_size)
    chars = tf.ragged.map_flat_values(self.charset_tables[1].lookup, best)
    return {"char_count": tf.cast(best.row_lengths(), tf.int32),
            "chars": chars.to_tensor(""),
            "char_confidence": spans.confidence.to_tensor(0.0),
            "char_start": start.to_tensor(0.0), "char_end": end.to_tensor(0.0)}


# --- saving and loading ------------------------------------------------------------

def export(source: Union[loop.Run, ServingModule], export_dir: str,
           top_k: Optional[int] = None) -> str:
  """Saves `source` (a restored Run, or a ServingModule) as a SavedModel.

  export_dir is written in place; `export_checkpoint` is the gated, atomic version.
  Returns export_dir.
  """
  module = source if isinstance(source, ServingModule) else (
      ServingModule.from_run(source, top_k))
  tf.saved_model.save(module, export_dir, signatures=module.signatures())
  return export_dir


def load(export_dir: str):
  """Loads a SavedModel written by `export`. Raises FileNotFoundError (a user error
  for the CLIs) when export_dir holds none."""
  if not tf.saved_model.contains_saved_model(export_dir):
    raise FileNotFoundError(f"{export_dir} holds no SavedModel (saved_model.pb); "
                            "write one with tools/export_savedmodel.py")
  return tf.saved_model.load(export_dir)


def serving_fn(served) -> ServeFn:
  """The bytes-in function of a loaded SavedModel, a ServingModule or a
  host.Recognizer (a TFLite or ONNX export). Its outputs carry "char_unit" (the
  unit of char_start/char_end) where the export gives character positions."""
  if isinstance(served, host.Recognizer):
    return _host_serving_fn(served)
  if isinstance(served, ServingModule):
    call = lambda encoded: served.serve_bytes(tf.constant(encoded, tf.string))
  else:
    signature = served.signatures["serving_default"]
    # Exports written before the input was named for images and audio alike call it
    # image_bytes.
    name = next(iter(signature.structured_input_signature[1]))
    call = lambda encoded: signature(**{name: tf.constant(encoded, tf.string)})
  # Exports written before character positions have no unit (and no positions).
  unit = getattr(served, "position_unit", None)
  if unit is None:
    return call
  unit = unit.numpy().decode("utf-8")
  return lambda encoded: {**call(encoded), "char_unit": unit}


def _host_serving_fn(recognizer: host.Recognizer) -> ServeFn:
  """A Recognizer's greedy transcriptions in the outputs dict (top_k = 1), with the
  char_* outputs as a SavedModel gives them."""
  def serve(encoded):
    results = recognizer.transcribe_detail(encoded)
    texts = np.array([[t.encode("utf-8")] for t, _, _ in results],
                     object).reshape(-1, 1)
    scores = np.array([[s] for _, s, _ in results], np.float32).reshape(-1, 1)
    longest = max([len(c) for _, _, c in results], default=0)
    chars = np.full((len(results), longest), b"", object)
    values = np.zeros((3, len(results), longest), np.float32)
    for i, (_, _, row) in enumerate(results):
      for j, (char, confidence, start, end) in enumerate(row):
        chars[i, j] = char.encode("utf-8")
        values[:, i, j] = confidence, start, end
    return {"text": texts[:, 0], "confidence": np.exp(scores[:, 0]),
            "top_k_texts": texts, "top_k_scores": scores,
            "char_count": np.array([len(c) for _, _, c in results], np.int32),
            "chars": chars, "char_confidence": values[0], "char_start": values[1],
            "char_end": values[2], "char_unit": recognizer.position_unit}
  return serve


def load_serving(path: str) -> ServeFn:
  """The serving function of any export (format detected): a SavedModel folder, or a
  TFLite or ONNX export's folder or model file. Raises FileNotFoundError when path
  holds no export."""
  if host.detect_format(path) == "saved_model":
    return serving_fn(load(path if os.path.isdir(path) else os.path.dirname(path)))
  return serving_fn(host.load(path))


def load_logits(path: str):
  """The `logits` signature of a SavedModel export (folder or file in it) ->
  (encoded list -> (logits float32 [B, T, C], logit_length int32 [B]) in NumPy,
  the export's Charset). ConfigError for an export without it (written before it
  existed, or a TFLite/ONNX one)."""
  if host.detect_format(path) != "saved_model":
    raise ConfigError(f"{path}: host decoders (lm, lexicon, pattern) run on a "
                      "SavedModel export's logits; this export is not one")
  loaded = load(path if os.path.isdir(path) else os.path.dirname(path))
  if "logits" not in loaded.signatures or not hasattr(loaded, "charset_symbols"):
    raise ConfigError(f"{path} has no 'logits' signature (exported before there "
                      "was one): export the run again for host decoders")
  signature = loaded.signatures["logits"]
  charset = Charset([s.decode("utf-8") for s in loaded.charset_symbols.numpy()])

  def logits_fn(encoded):
    out = signature(encoded=tf.constant(encoded, tf.string))
    return out["logits"].numpy(), out["logit_length"].numpy()
  return logits_fn, charset


def run_logits(run: loop.Run):
  """The logits of a restored run's model on encoded files, as load_logits gives
  an export's -> (logits_fn, the run's Charset)."""
  module = ServingModule(run.model, run.charset, run.cfg.data, run.cfg.loop.beam_width,
                         decoder="greedy")

  def logits_fn(encoded):
    out = module.serve_logits(tf.constant(encoded, tf.string))
    return out["logits"].numpy(), out["logit_length"].numpy()
  return logits_fn, run.charset


def host_decoding_fn(logits_fn, charset: Charset, decode) -> ServeFn:
  """A ServeFn (the outputs dict above) that runs host decoder `decode` (a
  registry.HostDecodeFn) on logits_fn's logits: confidence and top_k_scores are
  the paths' CTC log probabilities, the ranking the decoder's own."""
  def serve(encoded):
    logits, lengths = logits_fn(encoded)
    paths, scores = decode(logits, lengths)
    texts = np.array([[charset.decode_py(rank[b]).encode("utf-8") for rank in paths]
                      for b in range(len(lengths))], object).reshape(len(lengths), -1)
    return {"text": texts[:, 0], "confidence": np.exp(scores[:, 0]),
            "top_k_texts": texts, "top_k_scores": scores}
  return serve


# --- transcription -----------------------------------------------------------------

@dataclasses.dataclass
class Transcription:
  path: str
  text: str = ""
  confidence: float = 0.0
  top_k: List[tuple] = dataclasses.field(default_factory=list)  # (text, log prob)
  error: Optional[str] = None   # set when the file could not be read or decoded
  # The best path's characters: {char, confidence, start, end}, start and end in
  # char_unit ("px" or "ms"); None when the export gives no positions.
  chars: Optional[List[dict]] = None
  char_unit: Optional[str] = None

  def as_dict(self) -> dict:
    if self.error is not None:
      return {"path": self.path, "error": self.error}
    out = {"path": self.path, "text": self.text, "confidence": self.confidence,
           "top_k": [{"text": t, "score": s} for t, s in self.top_k]}
    if self.chars is not None:
      out.update(chars=self.chars, unit=self.char_unit)
    return out


def image_paths(args: Sequence[str], manifest: Optional[str] = None) -> List[str]:
  """Image paths from file and folder arguments, then a manifest, in that order.

  A folder gives its image and WAV files, sorted; a file is taken
  as it is; a manifest gives the first tab-separated column of each non-empty line,
  relative paths resolved against its folder (so a training TSV works). Raises
  DataError for an argument that does not exist, so that a typo stops before any work.
  """
  paths = []
  for arg in args:
    if os.path.isdir(arg):
      paths.extend(os.path.join(arg, name) for name in sorted(os.listdir(arg))
                   if name.lower().endswith(sources.IMAGE_EXTENSIONS + (".wav",))
                   and os.path.isfile(os.path.join(arg, name)))
    elif os.path.exists(arg):
      paths.append(arg)
    else:
      raise DataError(f"{arg} does not exist")
  if manifest:
    if not os.path.isfile(manifest):
      raise DataError(f"--manifest={manifest} is not a file")
    base = os.path.dirname(os.path.abspath(manifest))
    with open(manifest, encoding="utf-8") as f:
      for line in f:
        first = line.rstrip("\r\n").split("\t")[0]
        if first.strip():
          paths.append(os.path.normpath(os.path.join(base, os.path.expanduser(first))))
  return paths


def transcribe(serve: ServeFn, images: Sequence[bytes]) -> List[Transcription]:
  """Encoded images -> their transcriptions (path left empty), in one call to `serve`.

  Raises one of INPUT_ERRORS when any image does not decode.
  """
  out = {k: np.asarray(v) for k, v in serve(list(images)).items()}
  texts = out["top_k_texts"]
  scores = out["top_k_scores"]
  unit = str(out["char_unit"]) if "char_unit" in out else None
  return [Transcription(
      path="", text=out["text"][i].decode("utf-8"),
      confidence=float(out["confidence"][i]),
      top_k=[(t.decode("utf-8"), float(s)) for t, s in zip(texts[i], scores[i])],
      chars=None if unit is None else char_detail(out, i), char_unit=unit)
          for i in range(len(images))]


def char_detail(out: Dict[str, np.ndarray], i: int) -> List[dict]:
  """Row i of a serving function's padded char_* outputs -> one dict per character
  of its best path: {char, confidence, start, end}."""
  return [{"char": out["chars"][i, j].decode("utf-8"),
           "confidence": round(float(out["char_confidence"][i, j]), 4),
           "start": round(float(out["char_start"][i, j]), 1),
           "end": round(float(out["char_end"][i, j]), 1)}
          for j in range(int(out["char_count"][i]))]


def transcribe_files(serve: ServeFn, paths: Sequence[str], batch_size: int,
                     progress: bool = False) -> Iterator[Transcription]:
  """Transcribes image files in batches, in order; one Transcription per path.

  A file that cannot be read or decoded yields a Transcription with `error` set and
  the others go on: a failing batch is retried one image at a time to find it.
  With progress, a count and rate line goes to stderr every few seconds.
  """
  start = last_report = time.time()
  for first in range(0, len(paths), batch_size):
    batch_paths = paths[first:first + batch_size]
    readable, results = [], {}
    for path in batch_paths:
      try:
        with open(path, "rb") as f:
          blob = f.read()
      except OSError as e:
        results[path] = Transcription(path, error=f"cannot read: {e.strerror or e}")
        continue
      if blob:
        readable.append((path, blob))
      else:
        results[path] = Transcription(path, error="empty file")
    results.update((t.path, t) for t in _transcribe_batch(serve, readable))
    for path in batch_paths:
      yield results[path]
    now = time.time()
    if progress and now - last_report >= _PROGRESS_EVERY_S:
      count = first + len(batch_paths)
      print(f"transcribed {count}/{len(paths)} files, {count / (now - start):.1f} "
            f"files/s", file=sys.stderr, flush=True)
      last_report = now


def transcribe_encoded(serve: ServeFn, keys: Sequence[str], blobs: Sequence[bytes],
                       batch_size: int) -> Iterator[Transcription]:
  """Encoded inputs named by `keys` -> one Transcription each (path: its key), in
  batches, in order; one that does not decode has `error` set."""
  for first in range(0, len(blobs), batch_size):
    yield from _transcribe_batch(serve, list(zip(keys[first:first + batch_size],
                                                 blobs[first:first + batch_size])))


def _transcribe_batch(serve: ServeFn, items: Sequence[tuple]) -> List[Transcription]:
  """(path, encoded bytes) pairs -> their Transcriptions in one call to `serve`, or
  one call each when the batch fails, so that the one that fails is found."""
  if not items:
    return []
  try:
    done = transcribe(serve, [blob for _, blob in items])
    return [dataclasses.replace(t, path=path) for (path, _), t in zip(items, done)]
  except INPUT_ERRORS:
    results = []
    for path, blob in items:
      try:
        results.append(dataclasses.replace(transcribe(serve, [blob])[0], path=path))
      except INPUT_ERRORS as e:
        results.append(Transcription(path, error=f"cannot decode: {error_message(e)}"))
    return results


def error_message(error: Exception) -> str:
  """The line of a TensorFlow op error that says what went wrong, without the graph
  node names and stack headers around it (a host.InputError says it already)."""
  if isinstance(error, host.InputError):
    return str(error)
  lines = str(error.message).strip().splitlines()
  # In graph errors the op's own message is the line before '[[{{node ...}}]]'.
  at = next((i for i, line in enumerate(lines) if "[[{{node" in line), None)
  line = lines[at - 1] if at else (lines[0] if lines else type(error).__name__)
  line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line)
  return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", line).strip()


# --- the parity gate ---------------------------------------------------------------

@dataclasses.dataclass
class Parity:
  """The gate's finding: CERs of both sides, and which transcriptions differ."""
  checkpoint_cer: float
  exported_cer: float
  num_samples: int
  num_different: int                   # samples transcribed differently
  first_different: Optional[str] = None  # "path: 'checkpoint' != 'exported'"
  tolerance: float = PARITY_TOLERANCE
  format: str = "saved_model"
  # Whether every transcription must match: float formats; int8 answers to its CER.
  exact: bool = True

  @property
  def ok(self) -> bool:
    # Equal CERs alone can hide different strings (an undertrained model gets
    # CER ~1 from nearly any output), so every transcription must match too.
    return (abs(self.checkpoint_cer - self.exported_cer) <= self.tolerance
            and (self.num_different == 0 or not self.exact))

  def describe(self) -> str:
    verdict = "passed" if self.ok else "FAILED"
    text = (f"parity gate {verdict}: checkpoint CER {self.checkpoint_cer:.6f}, "
            f"{FORMAT_NAMES[self.format]} CER {self.exported_cer:.6f} on "
            f"{self.num_samples} eval samples (tolerance {self.tolerance:g}); "
            f"{self.num_different} transcriptions differ")
    return text + (f", first: {self.first_different}" if self.first_different else "")


def check_parity(run: loop.Run, serve: ServeFn, samples: sources.Source,
                 limit: int = 0, fmt: str = "saved_model",
                 int8_cer_tolerance: float = INT8_CER_TOLERANCE) -> Parity:
  """Compares the checkpoint's eval step with `serve` (the encoded bytes the eval
  pipeline read, through the exported preprocessing) on the same examples (the first
  `limit` when > 0), scored with the same metric code: CER on both sides, and each
  transcription, both by the decoder the export serves.

  Files the pipeline drops (policy 'skip') are left out of both; with policy 'error'
  an undecodable file raises a DataError naming it. fmt: the export's format; an
  int8 one passes when its CER is within int8_cer_tolerance, other transcriptions
  allowed.
  """
  cfg = run.cfg
  # What the export decodes with: the primary decoder inside a SavedModel, greedy
  # on the host for the other formats.
  primary = decoders.served(cfg.loop.decoder) if fmt == "saved_model" else "greedy"
  if primary not in cfg.loop.decoder:
    raise ConfigError(f"--format={fmt} is gated against the greedy decoder; the run "
                      f"evaluates only --decoder={','.join(cfg.loop.decoder)}")
  sums, paths, labels, expected, encoded = {}, [], [], [], []
  for batch, batch_sums, decoded in loop.eval_batches(run, samples, limit=limit,
                                                      keep_encoded=True):
    encoded += list(batch["encoded"].numpy())
    sums = metrics.add_sums(sums, batch_sums)
    paths += [k.decode("utf-8") for k in batch["key"].numpy()]
    labels += [t.decode("utf-8") for t in batch["text"].numpy()]
    expected += [t.decode("utf-8") for t in decoded[primary].numpy()]
  if not paths:
    raise DataError(f"the eval set {cfg.data.eval_data} yielded no batch")
  served = list(transcribe_encoded(serve, paths, encoded, cfg.data.eval_batch_size))
  texts = [t.text for t in served]   # "" where serving could not decode the input
  # A file the pipeline decoded but serving cannot is a difference too.
  different = [i for i, t in enumerate(served)
               if t.error is not None or t.text != expected[i]]
  first = None
  if different:
    i = different[0]
    first = f"{paths[i]}: {expected[i]!r} != {served[i].error or texts[i]!r}"
  served_sums = metrics.batch_sums(tf.constant(texts, tf.string),
                                   tf.constant(labels, tf.string))
  checkpoint_sums = steps.decoder_sums(sums, primary)
  int8 = fmt == "tflite_int8"
  return Parity(checkpoint_cer=metrics.results(checkpoint_sums)["cer"],
                exported_cer=metrics.results(served_sums)["cer"],
                num_samples=len(paths), num_different=len(different),
                first_different=first, format=fmt, exact=not int8,
                tolerance=int8_cer_tolerance if int8 else PARITY_TOLERANCE)


# --- the export tool's work ----------------------------------------------------------

def export_checkpoint(cfg: Config, export_dir: str, which: str = "latest",
                      fmt: str = "saved_model", **options) -> Parity:
  """Restores checkpoint `which` of cfg.workdir and exports it as `fmt` (one of
  convert.FORMATS) behind the parity gate: see export_run, which takes `options`.
  Returns the Parity."""
  _check_target(export_dir, fmt, options.get("top_k"))
  if fmt != "saved_model":
    # The host decodes greedily: the checkpoint's side of the gate needs no other.
    cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, decoder=("greedy",)))
  run, step = loop.restore_trained(cfg, which)
  return export_run(run, step, export_dir, which, fmt, **options)


def _check_target(export_dir: str, fmt: str, top_k: Optional[int]) -> None:
  """Raises a user error for a format, top_k or export_dir that cannot be written."""
  if fmt not in convert.FORMATS:
    raise ConfigError(f"--format={fmt}: expected one of {', '.join(convert.FORMATS)}")
  if fmt != "saved_model" and top_k not in (None, 1):
    raise ConfigError(f"--top_k={top_k}: --format={fmt} decodes greedily, one path")
  if os.path.exists(export_dir):
    try:
      host.detect_format(export_dir)
    except (FileNotFoundError, ValueError, KeyError):
      raise ExportError(f"--export_dir={os.path.abspath(export_dir)} exists and is not "
                        "an export (SavedModel, TFLite or ONNX); refusing to overwrite "
                        "it") from None


def export_run(run: loop.Run, step: int, export_dir: str, which: str = "latest",
               fmt: str = "saved_model", top_k: Optional[int] = None,
               parity_samples: int = 0, input_scale: float = 1.0,
               int8_cer_tolerance: float = INT8_CER_TOLERANCE,
               calibration_examples: int = 100) -> Parity:
  """Exports a restored run (checkpoint `which`, at `step`) as `fmt`, and gates it.

  The export is written beside export_dir, loaded back and evaluated against the
  run's eval step on the eval set (its first `parity_samples` when > 0): a SavedModel
  with the run's primary decoder, TFLite and ONNX through ctc_trainer.host against
  its greedy decoder (which the run must evaluate). Only when the gate passes does
  it replace export_dir; otherwise it is deleted. Returns the Parity.
  """
  _check_target(export_dir, fmt, top_k)
  cfg = run.cfg
  export_dir = os.path.abspath(export_dir)
  samples = sources.load_samples(cfg.data, "eval", run.charset)

  parent = os.path.dirname(export_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.tmp-", dir=parent)
  try:
    if fmt == "saved_model":
      module = ServingModule.from_run(run, top_k, input_scale)
      export(module, staging)
      info = {"decoder": module.decoder_name, "beam_width": module.beam_width,
              "blank_penalty": module.blank_penalty,
              "position_unit": module.position_unit.numpy().decode("utf-8"),
              "top_k": module.top_k, "charset_size": len(module._charset.symbols),
              "image_height": cfg.data.image_height,
              "image_channels": cfg.data.image_channels,
              "max_image_width": cfg.data.max_image_width}
      info_path = os.path.join(staging, INFO_FILE)
    else:
      convert.write(run, fmt, staging, calibration_examples, input_scale)
      info = convert.sidecar(run, fmt)
      info_path = os.path.join(staging, host.INFO_FILE)
      _write_json(info_path, info)   # the host reads it to load the model
    logging.info("Exported step %d as %s to %s; checking parity", step, fmt, staging)
    parity = check_parity(run, load_serving(staging), samples, parity_samples, fmt,
                          int8_cer_tolerance)
    if parity.ok:
      info.update(workdir=cfg.workdir, checkpoint=which, step=step,
                  parity=dataclasses.asdict(parity))
      _write_json(info_path, info)
      _replace_dir(staging, export_dir)
    return parity
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _write_json(path: str, info: dict) -> None:
  """Provenance and settings beside the model (a SavedModel's assets.extra is not
  loaded by TensorFlow)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2, sort_keys=True, ensure_ascii=False)


def _replace_dir(new: str, target: str) -> None:
  """Moves `new` to `target`, replacing an older export there with one rename each."""
  old = None
  if os.path.exists(target):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-",
                           dir=os.path.dirname(target))
    os.replace(target, os.path.join(old, "export"))
  os.replace(new, target)
  if old:
    shutil.rmtree(old, ignore_errors=True)
