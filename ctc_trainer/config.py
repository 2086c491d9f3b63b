"""Every command-line flag of ctc_trainer, and the frozen dataclasses built from them.

Only entry points (train.py, evaluate.py, tools/) import this module's flags; library
code takes the dataclasses below, so every piece can be built in a test without
flag parsing.
"""

import dataclasses
import os
from typing import Optional, Tuple

from absl import flags

from ctc_trainer.errors import ConfigError

DATA_FORMATS = ("tsv", "csv", "jsonl", "filenames", "sidecar", "synthetic", "tfrecord")
TFRECORD_COMPRESSIONS = ("auto", "none", "gzip")
POLICIES = ("error", "skip")
MODALITIES = ("image", "audio")
RESAMPLE_POLICIES = ("error", "resample")
RNN_CELLS = ("lstm", "gru")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "warmup_cosine")


@dataclasses.dataclass(frozen=True)
class AudioConfig:
  """WAV decoding, log-mel features and SpecAugment (modality=audio; data/audio.py)."""
  sample_rate: int = 16000        # features are computed at this rate
  resample_policy: str = "error"  # a WAV at another rate: error, or resample it
  frame_length_ms: float = 25.0   # STFT window
  frame_step_ms: float = 10.0     # STFT hop: one feature frame per step
  num_mel_bins: int = 80
  max_audio_seconds: float = 30.0  # longer files are bad samples (bad_sample_policy)
  # SpecAugment, training only: masks per utterance and their largest widths.
  time_masks: int = 0
  time_mask_frames: int = 0
  freq_masks: int = 0
  freq_mask_bins: int = 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where samples come from and how they are turned into batches."""
  train_data: str = ""            # manifest file or folder (see data_format)
  eval_data: str = ""
  data_format: str = "tsv"        # one of DATA_FORMATS
  csv_path_column: str = "0"      # CSV: column name (with header) or 0-based index
  csv_label_column: str = "1"
  csv_header: bool = False
  unknown_char_policy: str = "error"  # a label char outside the charset
  bad_sample_policy: str = "error"    # an image that is missing or does not decode
  modality: str = "image"         # what the files hold: image, or audio (WAV)
  audio: AudioConfig = AudioConfig()
  image_height: int = 32
  image_channels: int = 1
  max_image_width: int = 2048     # wider images are resized down to this width
  too_wide_policy: str = "resize"  # or "skip": drop images wider than max_image_width
  max_label_length: int = 0       # longer labels are bad samples; 0 = no limit
  batch_size: int = 32
  eval_batch_size: int = 64
  shuffle_buffer: int = 2048
  seed: int = 0
  # Padded widths of the length buckets: "auto" (from a scan of the data), "none"
  # (pad each batch to its widest image) or ascending widths "64,128,256".
  bucket_boundaries: str = "auto"
  tfrecord_compression: str = "auto"  # tfrecord: auto (GZIP if the name ends .gz)
  deterministic_input: bool = True    # parallel input stages keep the seeded order
  cache_decoded: bool = False         # keep decoded examples in RAM after one pass
  # Synthetic demo data (data_format=synthetic): generated once into train/eval_data.
  synthetic_train_size: int = 20000
  synthetic_eval_size: int = 500
  synthetic_alphabet: str = "0123456789abcdefghijklmnopqrstuvwxyz"
  synthetic_min_length: int = 3
  synthetic_max_length: int = 8


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  name: str = "crnn"
  conv_filters: Tuple[int, ...] = (32, 64, 128)
  rnn_units: int = 128
  rnn_layers: int = 2
  rnn_cell: str = "lstm"          # ds2: lstm or gru (crnn always uses LSTMs)
  dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"
  warmup_steps: int = 0
  weight_decay: float = 1e-4      # AdamW only
  clip_norm: float = 5.0          # global-norm clipping; 0 disables


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  train_steps: int = 1000
  log_every: int = 50
  eval_every: int = 500
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  beam_width: int = 10
  beam_prune: bool = False        # prune sure-blank frames and unlikely classes first
  num_text_samples: int = 8       # eval samples written to TensorBoard as text
  num_image_samples: int = 3
  eval_max_batches: int = 0       # 0 = the whole eval set
  seed: int = 0
  deterministic: bool = False     # op determinism: a resumed run equals an unbroken one
  max_nonfinite_steps: int = 20   # consecutive skipped (non-finite) steps before stopping
  strategy: str = "default"       # see ctc_trainer/distribute.py
  precision: str = "float32"
  jit_compile: bool = False       # XLA for the forward and backward pass
  worker_timeout_s: int = 120     # multi_worker: a collective waits this long for peers


@dataclasses.dataclass(frozen=True)
class Config:
  workdir: str
  charset: str = ""               # charset file; empty = build from train labels
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  optim: OptimConfig = OptimConfig()
  loop: LoopConfig = LoopConfig()


# ---------------------------------------------------------------------------
# Flags. Grouped as the dataclasses are; defaults come from the dataclasses.

_D, _M, _O, _L = DataConfig(), ModelConfig(), OptimConfig(), LoopConfig()
_A = AudioConfig()

flags.DEFINE_string("workdir", None, "Run directory: flags.cfg, charset, checkpoints, "
                    "summaries. A run resumes from the checkpoint found here.")
flags.DEFINE_string("charset", "", "Charset file: UTF-8, one symbol per line (a line "
                    "holding one space is the space). Empty: built from the training "
                    "labels and saved as WORKDIR/charset.txt.")

flags.DEFINE_string("train_data", _D.train_data, "Training data: a manifest file or a "
                    "folder, as --data_format says.")
flags.DEFINE_string("eval_data", _D.eval_data, "Evaluation data, same form as "
                    "--train_data.")
flags.DEFINE_enum("data_format", _D.data_format, DATA_FORMATS,
                  "tsv: 'path<TAB>label' lines; csv: columns picked by --csv_*; "
                  "jsonl: {\"path\": ..., \"text\": ...} lines (NeMo manifests); "
                  "filenames: a folder whose file names are the labels; sidecar: "
                  "images with NAME.gt.txt transcripts; synthetic: demo text lines "
                  "generated once into the --train_data/--eval_data folders; "
                  "tfrecord: file patterns of TFRecord shards (tools/make_tfrecords.py).")
flags.DEFINE_string("csv_path_column", _D.csv_path_column,
                    "CSV column of the image path: a header name or 0-based index.")
flags.DEFINE_string("csv_label_column", _D.csv_label_column,
                    "CSV column of the label: a header name or 0-based index.")
flags.DEFINE_bool("csv_header", _D.csv_header, "The CSV's first row is a header.")
flags.DEFINE_enum("unknown_char_policy", _D.unknown_char_policy, POLICIES,
                  "A label character missing from the charset: error (names the "
                  "file, line and character) or skip the sample and count it.")
flags.DEFINE_enum("bad_sample_policy", _D.bad_sample_policy, POLICIES,
                  "A missing or undecodable image: error (names the file) or skip "
                  "it and count it.")
flags.DEFINE_enum("modality", _D.modality, MODALITIES,
                  "What the data files hold: image (PNG, JPEG, BMP, GIF) or audio "
                  "(16-bit PCM WAV, turned into log-mel features; docs/speech.md).")
flags.DEFINE_integer("sample_rate", _A.sample_rate,
                     "audio: the rate (Hz) features are computed at.")
flags.DEFINE_enum("resample_policy", _A.resample_policy, RESAMPLE_POLICIES,
                  "audio: a WAV whose rate is not --sample_rate is a bad sample "
                  "(error) or is resampled (anti-aliased linear interpolation).")
flags.DEFINE_float("frame_length_ms", _A.frame_length_ms,
                   "audio: STFT window length in milliseconds (Hann window).")
flags.DEFINE_float("frame_step_ms", _A.frame_step_ms,
                   "audio: STFT hop in milliseconds; one feature frame per hop.")
flags.DEFINE_integer("num_mel_bins", _A.num_mel_bins,
                     "audio: mel filters (20 Hz to half the sample rate), the feature "
                     "size F of inputs [B, T, F].")
flags.DEFINE_float("max_audio_seconds", _A.max_audio_seconds,
                   "audio: longer files are bad samples (--bad_sample_policy).")
flags.DEFINE_integer("spec_augment_time_masks", _A.time_masks,
                     "audio, training only: SpecAugment time masks per utterance.")
flags.DEFINE_integer("spec_augment_time_mask_frames", _A.time_mask_frames,
                     "audio: widest SpecAugment time mask, in frames.")
flags.DEFINE_integer("spec_augment_freq_masks", _A.freq_masks,
                     "audio, training only: SpecAugment frequency masks per utterance.")
flags.DEFINE_integer("spec_augment_freq_mask_bins", _A.freq_mask_bins,
                     "audio: widest SpecAugment frequency mask, in mel bins.")
flags.DEFINE_integer("image_height", _D.image_height,
                     "Images are resized to this height, keeping the aspect ratio.")
flags.DEFINE_enum("image_channels", str(_D.image_channels), ("1", "3"),
                  "1: grayscale, 3: RGB.")
flags.DEFINE_enum("too_wide_policy", _D.too_wide_policy, ("resize", "skip"),
                  "An image wider than --max_image_width after resizing to "
                  "--image_height: resize (squeeze it to that width) or skip it, "
                  "with a warning naming it.")
flags.DEFINE_integer("max_label_length", _D.max_label_length,
                     "Labels longer than this many characters are bad samples "
                     "(--bad_sample_policy); 0 = no limit.")
flags.DEFINE_integer("max_image_width", _D.max_image_width,
                     "Resized images wider than this are squeezed to this width.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Global training batch size.")
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Evaluation batch size.")
flags.DEFINE_integer("shuffle_buffer", _D.shuffle_buffer,
                     "Training shuffle buffer, in samples (paths, not images).")
flags.DEFINE_string("bucket_boundaries", _D.bucket_boundaries,
                    "Length bucketing: each image is padded up to the first of these "
                    "widths that holds it, so batches have a few fixed shapes. 'auto': "
                    "chosen from a scan of up to 1,000 images' sizes; 'none': pad each "
                    "batch to its widest image; or ascending widths, e.g. 64,128,256 "
                    "(--max_image_width is always added as the last).")
flags.DEFINE_enum("tfrecord_compression", _D.tfrecord_compression,
                  TFRECORD_COMPRESSIONS, "tfrecord: auto (GZIP when the shard name "
                  "ends in .gz), none or gzip.")
flags.DEFINE_bool("deterministic_input", _D.deterministic_input,
                  "Parallel input stages emit in the seeded order (reproducible). "
                  "False lets them emit whatever is ready first (faster when some "
                  "files are slow to read).")
flags.DEFINE_bool("cache_decoded", _D.cache_decoded,
                  "Keep decoded, resized examples in RAM after the first pass (only "
                  "for sets that fit in memory; shuffling then happens after the "
                  "cache, in a buffer of decoded images).")
flags.DEFINE_bool("input_only", False, "Iterate the training input pipeline for "
                  "--train_steps batches without the model and report examples/sec "
                  "and padding efficiency: shows whether training is input-bound.")
flags.DEFINE_integer("synthetic_train_size", _D.synthetic_train_size,
                     "synthetic: number of training text lines to generate.")
flags.DEFINE_integer("synthetic_eval_size", _D.synthetic_eval_size,
                     "synthetic: number of evaluation text lines to generate.")
flags.DEFINE_string("synthetic_alphabet", _D.synthetic_alphabet,
                    "synthetic: the characters of the random strings.")
flags.DEFINE_integer("synthetic_min_length", _D.synthetic_min_length,
                     "synthetic: shortest string.")
flags.DEFINE_integer("synthetic_max_length", _D.synthetic_max_length,
                     "synthetic: longest string.")

flags.DEFINE_string("model", _M.name, "Model name in the registry (ctc_trainer.models).")
flags.DEFINE_list("conv_filters", [str(f) for f in _M.conv_filters],
                  "Filters of each conv block (crnn, ds2).")
flags.DEFINE_integer("rnn_units", _M.rnn_units,
                     "Units per direction of each bidirectional RNN layer.")
flags.DEFINE_integer("rnn_layers", _M.rnn_layers, "Bidirectional RNN layers.")
flags.DEFINE_enum("rnn_cell", _M.rnn_cell, RNN_CELLS,
                  "ds2: the recurrent cell of its bidirectional layers.")
flags.DEFINE_float("dropout", _M.dropout, "Dropout before the output layer.")

flags.DEFINE_enum("optimizer", _O.optimizer, OPTIMIZERS, "Optimizer.")
flags.DEFINE_float("learning_rate", _O.learning_rate, "Peak learning rate.")
flags.DEFINE_enum("lr_schedule", _O.lr_schedule, LR_SCHEDULES,
                  "constant, or linear warmup then cosine decay to 0 at --train_steps.")
flags.DEFINE_integer("warmup_steps", _O.warmup_steps, "Warmup steps (warmup_cosine).")
flags.DEFINE_float("weight_decay", _O.weight_decay, "AdamW weight decay.")
flags.DEFINE_float("clip_norm", _O.clip_norm, "Global gradient norm clip; 0 = off.")

flags.DEFINE_integer("train_steps", _L.train_steps, "Total training steps.")
flags.DEFINE_integer("log_every", _L.log_every, "Steps between console/summary logs.")
flags.DEFINE_integer("eval_every", _L.eval_every, "Steps between evaluations.")
flags.DEFINE_integer("checkpoint_every", _L.checkpoint_every,
                     "Steps between checkpoints.")
flags.DEFINE_integer("keep_checkpoints", _L.keep_checkpoints,
                     "Latest checkpoints kept (the best one is kept apart).")
flags.DEFINE_integer("beam_width", _L.beam_width, "Beam width of the eval decoder.")
flags.DEFINE_bool("beam_prune", _L.beam_prune,
                  "Eval beam search on a pruned problem (sure-blank frames and classes "
                  "that never reach 1e-4 dropped): same top-1 on trained models, "
                  "10x+ faster at beam 100 (docs/benchmarks.md).")
flags.DEFINE_integer("num_text_samples", _L.num_text_samples,
                     "Eval samples shown as text in TensorBoard.")
flags.DEFINE_integer("num_image_samples", _L.num_image_samples,
                     "Eval inputs shown as images in TensorBoard.")
flags.DEFINE_integer("eval_max_batches", _L.eval_max_batches,
                     "Evaluate on at most this many batches; 0 = all.")
flags.DEFINE_integer("seed", _L.seed, "Random seed (model init, shuffling).")
flags.DEFINE_enum("strategy", _L.strategy,
                  ("default", "mirrored", "multi_worker", "tpu"),
                  "tf.distribute strategy: default (one device), mirrored (all local "
                  "GPUs), multi_worker (machines in TF_CONFIG), tpu (TPU_NAME).")
flags.DEFINE_enum("precision", _L.precision,
                  ("float32", "mixed_bfloat16", "mixed_float16"),
                  "Compute dtype; logits and the CTC loss stay float32, and "
                  "mixed_float16 adds dynamic loss scaling.")
flags.DEFINE_integer("worker_timeout_s", _L.worker_timeout_s,
                     "multi_worker: seconds a collective waits for the other workers "
                     "before the run stops with an error naming the lost peer.")
flags.DEFINE_bool("jit_compile", _L.jit_compile,
                  "XLA-compile the train step's forward and backward pass.")
flags.DEFINE_bool("deterministic", _L.deterministic,
                  "Deterministic ops (slower): with the same flags, a run killed and "
                  "resumed ends with the same weights as one never interrupted.")
flags.DEFINE_integer("max_nonfinite_steps", _L.max_nonfinite_steps,
                     "A step with a non-finite loss or gradient is skipped and counted; "
                     "this many in a row stop the run (checked at each log).")

_POSITIVE = ("image_height", "max_image_width", "batch_size", "eval_batch_size",
             "shuffle_buffer", "rnn_units", "rnn_layers", "train_steps", "log_every",
             "eval_every", "checkpoint_every", "keep_checkpoints", "beam_width",
             "synthetic_min_length", "max_nonfinite_steps", "worker_timeout_s")
_NON_NEGATIVE = ("warmup_steps", "num_text_samples", "num_image_samples",
                 "eval_max_batches", "synthetic_train_size", "synthetic_eval_size",
                 "spec_augment_time_masks", "spec_augment_time_mask_frames",
                 "spec_augment_freq_masks", "spec_augment_freq_mask_bins", "max_label_length")
for _name in _POSITIVE:
  flags.register_validator(_name, lambda v: v is not None and v > 0,
                           message=f"--{_name} must be > 0")
for _name in _NON_NEGATIVE:
  flags.register_validator(_name, lambda v: v is not None and v >= 0,
                           message=f"--{_name} must be >= 0")
flags.register_validator(
    "bucket_boundaries",
    lambda v: v in ("auto", "none") or all(s.strip().isdigit() and int(s) > 0
                                           for s in v.split(",")),
    message="--bucket_boundaries must be auto, none or comma-separated positive "
            "widths")
for _name in ("sample_rate", "num_mel_bins", "frame_length_ms", "frame_step_ms",
              "max_audio_seconds"):
  flags.register_validator(_name, lambda v: v is not None and v > 0,
                           message=f"--{_name} must be > 0")
flags.register_validator("learning_rate", lambda v: v > 0,
                         message="--learning_rate must be > 0")
flags.register_validator("clip_norm", lambda v: v >= 0,
                         message="--clip_norm must be >= 0")
flags.register_validator("dropout", lambda v: 0 <= v < 1,
                         message="--dropout must be in [0, 1)")
flags.register_validator(
    "conv_filters", lambda v: bool(v) and all(s.isdigit() and int(s) > 0 for s in v),
    message="--conv_filters must be a comma-separated list of positive integers")


def from_flags(fl: flags.FlagValues = flags.FLAGS, need_train: bool = True,
               need_eval: bool = True) -> Config:
  """Builds the Config from parsed flags. Raises ConfigError on bad combinations."""
  data = DataConfig(
      train_data=_expand(fl.train_data), eval_data=_expand(fl.eval_data),
      data_format=fl.data_format, csv_path_column=fl.csv_path_column,
      csv_label_column=fl.csv_label_column, csv_header=fl.csv_header,
      unknown_char_policy=fl.unknown_char_policy,
      bad_sample_policy=fl.bad_sample_policy, modality=fl.modality,
      audio=AudioConfig(
          sample_rate=fl.sample_rate, resample_policy=fl.resample_policy,
          frame_length_ms=fl.frame_length_ms, frame_step_ms=fl.frame_step_ms,
          num_mel_bins=fl.num_mel_bins, max_audio_seconds=fl.max_audio_seconds,
          time_masks=fl.spec_augment_time_masks,
          time_mask_frames=fl.spec_augment_time_mask_frames,
          freq_masks=fl.spec_augment_freq_masks,
          freq_mask_bins=fl.spec_augment_freq_mask_bins),
      image_height=fl.image_height,
      image_channels=int(fl.image_channels), max_image_width=fl.max_image_width,
      too_wide_policy=fl.too_wide_policy, max_label_length=fl.max_label_length,
      batch_size=fl.batch_size, eval_batch_size=fl.eval_batch_size,
      shuffle_buffer=fl.shuffle_buffer, seed=fl.seed,
      bucket_boundaries=fl.bucket_boundaries,
      tfrecord_compression=fl.tfrecord_compression,
      deterministic_input=fl.deterministic_input, cache_decoded=fl.cache_decoded,
      synthetic_train_size=fl.synthetic_train_size,
      synthetic_eval_size=fl.synthetic_eval_size,
      synthetic_alphabet=fl.synthetic_alphabet,
      synthetic_min_length=fl.synthetic_min_length,
      synthetic_max_length=fl.synthetic_max_length)
  model = ModelConfig(name=fl.model, conv_filters=tuple(int(f) for f in fl.conv_filters),
                      rnn_units=fl.rnn_units, rnn_layers=fl.rnn_layers,
                      rnn_cell=fl.rnn_cell, dropout=fl.dropout)
  optim = OptimConfig(optimizer=fl.optimizer, learning_rate=fl.learning_rate,
                      lr_schedule=fl.lr_schedule, warmup_steps=fl.warmup_steps,
                      weight_decay=fl.weight_decay, clip_norm=fl.clip_norm)
  loop = LoopConfig(train_steps=fl.train_steps, log_every=fl.log_every,
                    eval_every=fl.eval_every, checkpoint_every=fl.checkpoint_every,
                    keep_checkpoints=fl.keep_checkpoints, beam_width=fl.beam_width,
                    beam_prune=fl.beam_prune,
                    num_text_samples=fl.num_text_samples,
                    num_image_samples=fl.num_image_samples,
                    eval_max_batches=fl.eval_max_batches, seed=fl.seed,
                    deterministic=fl.deterministic,
                    max_nonfinite_steps=fl.max_nonfinite_steps,
                    strategy=fl.strategy, precision=fl.precision,
                    jit_compile=fl.jit_compile, worker_timeout_s=fl.worker_timeout_s)
  if not fl.workdir:
    raise ConfigError("--workdir is required")
  cfg = Config(workdir=_expand(fl.workdir), charset=_expand(fl.charset), data=data,
               model=model, optim=optim, loop=loop)
  validate(cfg, need_train, need_eval)
  return cfg


def validate(cfg: Config, need_train: bool, need_eval: bool = True) -> None:
  """Checks what single-flag validators cannot: paths and combinations."""
  from ctc_trainer import models  # late: models imports TensorFlow
  if cfg.model.name not in models.names():
    raise ConfigError(f"--model={cfg.model.name!r} is unknown; known models: "
                      f"{', '.join(models.names())}")
  d = cfg.data
  needed = [("eval_data", d.eval_data)] if need_eval else []
  if need_train:
    needed.insert(0, ("train_data", d.train_data))
  for name, path in needed:
    if not path:
      raise ConfigError(f"--{name} is required")
    if d.data_format == "tfrecord":
      import tensorflow as tf  # late, like models: TensorFlow
      if not tf.io.gfile.glob(path):
        raise ConfigError(f"--{name}={path} matches no file")
    elif d.data_format != "synthetic" and not os.path.exists(path):
      raise ConfigError(f"--{name}={path} does not exist")
  if models.modality_of(cfg.model.name) != d.modality:
    readers = [n for n in models.names() if models.modality_of(n) == d.modality]
    raise ConfigError(f"--model={cfg.model.name} does not read --modality="
                      f"{d.modality} inputs; the {d.modality} models are: "
                      f"{', '.join(readers)}")
  from ctc_trainer.data import modalities  # late: imports TensorFlow
  modalities.get(d).check_config()
  if d.synthetic_max_length < d.synthetic_min_length:
    raise ConfigError("--synthetic_max_length must be >= --synthetic_min_length")
  if cfg.charset and not os.path.isfile(cfg.charset):
    raise ConfigError(f"--charset={cfg.charset} is not a file")
  if cfg.optim.lr_schedule == "warmup_cosine" and (
      cfg.optim.warmup_steps >= cfg.loop.train_steps):
    raise ConfigError("--warmup_steps must be smaller than --train_steps")


def _expand(path: Optional[str]) -> str:
  return os.path.expanduser(path) if path else ""
