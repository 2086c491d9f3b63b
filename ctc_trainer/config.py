"""The run's config: frozen dataclasses whose fields are also its command-line flags.

Each option is spelled once, as a field with its help and bounds (options.option);
the flags are derived from the fields, and so is from_flags. A model's own options
live in its config dataclass in models/, declared where the model registers. Only
entry points (train.py, evaluate.py, tools/) read flags; library code takes the
dataclasses, so every piece can be built in a test without flag parsing.
"""

import dataclasses
import os
from typing import Any, Optional, Tuple

import tensorflow as tf
from absl import flags

from ctc_trainer import decoders, models, options
from ctc_trainer.decoders import DecoderConfig
from ctc_trainer.errors import ConfigError
from ctc_trainer.models.crnn import CRNNConfig
from ctc_trainer.options import option
from ctc_trainer.warmstart import WarmStartConfig

# The Source registry: --data_format name -> "module:loader" in ctc_trainer/data/sources/,
# imported when used (data/ imports this module, so not the other way round). A new
# source is its module plus one line here.
SOURCES = {
    "tsv": "manifest:load_tsv",
    "csv": "manifest:load_csv",
    "jsonl": "jsonl:load",
    "filenames": "filenames:load",
    "sidecar": "sidecar:load",
    "synthetic": "synthetic:load",
    "tfrecord": "tfrecord:load",
}
DATA_FORMATS = tuple(SOURCES)
TFRECORD_COMPRESSIONS = ("auto", "none", "gzip")
POLICIES = ("error", "skip")
TEXT_NORMALIZATIONS = ("NFC", "NFKC", "NFD", "NFKD", "none")
# The Modality registry: --modality name -> "module:class" in ctc_trainer/data/, imported
# when used, as SOURCES is. A new modality is its module plus one line here.
MODALITIES = {
    "image": "image:ImageModality",
    "audio": "audio:AudioModality",
}
RESAMPLE_POLICIES = ("error", "resample")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "warmup_cosine")


def _positive(name: str):
  return (lambda v: v is not None and v > 0, f"--{name} must be > 0")


def _bucket_setting(value: str) -> bool:
  return value in ("auto", "none") or all(
      s.strip().isdigit() and int(s) > 0 for s in value.split(","))


@dataclasses.dataclass(frozen=True)
class AudioConfig:
  """WAV decoding, log-mel features and SpecAugment (modality=audio; data/audio.py)."""
  sample_rate: int = option(16000, "audio: the rate (Hz) features are computed at.",
                            minimum=1)
  resample_policy: str = option(
      "error", "audio: a WAV whose rate is not --sample_rate is a bad sample (error) or "
      "is resampled (anti-aliased linear interpolation).", choices=RESAMPLE_POLICIES)
  frame_length_ms: float = option(
      25.0, "audio: STFT window length in milliseconds (Hann window).",
      check=_positive("frame_length_ms"))
  frame_step_ms: float = option(
      10.0, "audio: STFT hop in milliseconds; one feature frame per hop.",
      check=_positive("frame_step_ms"))
  num_mel_bins: int = option(
      80, "audio: mel filters (20 Hz to half the sample rate), the feature size F of "
      "inputs [B, T, F].", minimum=1)
  max_audio_seconds: float = option(
      30.0, "audio: longer files are bad samples (--bad_sample_policy).",
      check=_positive("max_audio_seconds"))
  # SpecAugment, training only: masks per utterance and their largest widths.
  time_masks: int = option(0, "audio, training only: SpecAugment time masks per "
                           "utterance.", flag="spec_augment_time_masks", minimum=0)
  time_mask_frames: int = option(0, "audio: widest SpecAugment time mask, in frames.",
                                 flag="spec_augment_time_mask_frames", minimum=0)
  freq_masks: int = option(0, "audio, training only: SpecAugment frequency masks per "
                           "utterance.", flag="spec_augment_freq_masks", minimum=0)
  freq_mask_bins: int = option(0, "audio: widest SpecAugment frequency mask, in mel "
                               "bins.", flag="spec_augment_freq_mask_bins", minimum=0)

  def __post_init__(self):
    if self.frame_step_ms > self.frame_length_ms:
      raise ConfigError("--frame_step_ms must be <= --frame_length_ms")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where samples come from and how they are turned into batches."""
  train_data: str = option("", "Training data: a manifest file or a folder, as "
                           "--data_format says.", path=True)
  eval_data: str = option("", "Evaluation data, same form as --train_data.", path=True)
  data_format: str = option(
      "tsv", "tsv: 'path<TAB>label' lines; csv: columns picked by --csv_*; jsonl: "
      "{\"path\": ..., \"text\": ...} lines (NeMo manifests); filenames: a folder "
      "whose file names are the labels; sidecar: images with NAME.gt.txt "
      "transcripts; synthetic: demo text lines generated once into the "
      "--train_data/--eval_data folders; tfrecord: file patterns of TFRecord shards "
      "(tools/make_tfrecords.py).", choices=DATA_FORMATS)
  csv_path_column: str = option("0", "CSV column of the image path: a header name or "
                                "0-based index.")
  csv_label_column: str = option("1", "CSV column of the label: a header name or "
                                 "0-based index.")
  csv_header: bool = option(False, "The CSV's first row is a header.")
  text_normalization: str = option(
      "NFC", "Unicode normalization of listed labels as they are read (NFC, NFKC, NFD, "
      "NFKD or none): one spelling for a character that some transcripts write "
      "precomposed and others as a base letter plus combining marks. TFRecord labels "
      "are used as stored (tools/make_tfrecords.py stores them normalized).",
      choices=TEXT_NORMALIZATIONS)
  unknown_char_policy: str = option(
      "error", "A label character missing from the charset: error (names the file, "
      "line and character) or skip the sample and count it.", choices=POLICIES)
  bad_sample_policy: str = option(
      "error", "A missing or undecodable image: error (names the file) or skip it and "
      "count it.", choices=POLICIES)
  modality: str = option(
      "image", "What the data files hold: image (PNG, JPEG, BMP, GIF) or audio (16-bit "
      "PCM WAV, turned into log-mel features; docs/speech.md).", choices=tuple(MODALITIES))
  audio: AudioConfig = AudioConfig()
  image_height: int = option(32, "Images are resized to this height, keeping the "
                             "aspect ratio.", minimum=1)
  image_channels: int = option(1, "1: grayscale, 3: RGB.", choices=(1, 3))
  max_image_width: int = option(2048, "Resized images wider than this are squeezed to "
                                "this width.", minimum=1)
  too_wide_policy: str = option(
      "resize", "An image wider than --max_image_width after resizing to "
      "--image_height: resize (squeeze it to that width) or skip it, with a warning "
      "naming it.", choices=("resize", "skip"))
  max_label_length: int = option(
      0, "Labels longer than this many characters are bad samples "
      "(--bad_sample_policy); 0 = no limit.", minimum=0)
  batch_size: int = option(32, "Global training batch size.", minimum=1)
  eval_batch_size: int = option(64, "Evaluation batch size.", minimum=1)
  shuffle_buffer: int = option(2048, "Training shuffle buffer, in samples (paths, not "
                               "images).", minimum=1)
  seed: int = option(0, "Random seed (model init, shuffling).")
  bucket_boundaries: str = option(
      "auto", "Length bucketing: each image is padded up to the first of these widths "
      "that holds it, so batches have a few fixed shapes. 'auto': chosen from a scan of "
      "up to 1,000 images' sizes; 'none': pad each batch to its widest image; or "
      "ascending widths, e.g. 64,128,256 (--max_image_width is always added as the "
      "last).", check=(_bucket_setting, "--bucket_boundaries must be auto, none or "
                       "comma-separated positive widths"))
  tfrecord_compression: str = option(
      "auto", "tfrecord: auto (GZIP when the shard name ends in .gz), none or gzip.",
      choices=TFRECORD_COMPRESSIONS)
  deterministic_input: bool = option(
      True, "Parallel input stages emit in the seeded order (reproducible). False lets "
      "them emit whatever is ready first (faster when some files are slow to read).")
  data_service: str = option(
      "", "grpc://HOST:PORT of a tf.data service dispatcher (tools/data_service.py): "
      "the training input (read, decode, augment, batch) runs on its workers instead "
      "of in this process; eval stays local. Empty: off.",
      check=(lambda v: not v or (v.startswith("grpc://") and ":" in v[len("grpc://"):]),
             "--data_service must be grpc://HOST:PORT"))
  data_service_sharding: str = option(
      "dynamic", "How the data service splits the training input among its workers. "
      "dynamic (processing mode distributed_epoch): the dispatcher hands each "
      "example's position to one worker, so an epoch is seen once across workers "
      "and a resumed run continues from the checkpointed position; a lost worker's "
      "in-flight examples are skipped, never repeated. off (parallel_epochs): every "
      "worker runs the whole pipeline, so each example comes once per worker and "
      "epoch, and resume is not exact.", choices=("dynamic", "off"))
  cache_decoded: bool = option(
      False, "Decode the training set once into RAM before training (only for sets "
      "that fit in memory); epochs are shuffled by index over the whole set, and "
      "checkpoints stay small.")
  # Image augmentation, training only (data/augment.py). Strengths are the largest
  # draws; each example draws uniformly up to them.
  augment: bool = option(
      False, "image, training only: augment training images (geometry, strokes, "
      "blur, contrast, noise; the --augment_* flags). Never on eval or export.")
  augment_probability: float = option(
      0.5, "image: the fraction of training examples augmented; the others are seen "
      "as they are.", minimum=0, check=(lambda v: v <= 1,
                                        "--augment_probability must be <= 1"))
  augment_rotate_deg: float = option(
      1.5, "image: largest rotation in degrees (less on long lines: their ends move "
      "at most a tenth of the height).", minimum=0)
  augment_shear: float = option(0.2, "image: largest horizontal shear (slant), as "
                                "a fraction of the height.", minimum=0)
  augment_scale: float = option(0.08, "image: largest relative change of scale.",
                                minimum=0, below=1)
  augment_warp: float = option(0.03, "image: largest smooth (elastic) displacement, "
                               "as a fraction of the height.", minimum=0)
  augment_width_jitter: float = option(0.15, "image: largest relative change of the "
                                       "width (time axis).", minimum=0, below=1)
  augment_pad: float = option(0.5, "image: most padding added left and right, each, "
                              "as a fraction of the height.", minimum=0)
  augment_morph: float = option(0.5, "image: largest step toward a 3x3 dilation or "
                                "erosion of the strokes (0-1).", minimum=0,
                                check=(lambda v: v <= 1, "--augment_morph must be <= 1"))
  augment_blur: float = option(1.0, "image: largest Gaussian blur sigma, in pixels.",
                               minimum=0)
  augment_contrast: float = option(0.3, "image: largest relative change of "
                                   "contrast.", minimum=0, below=1)
  augment_brightness: float = option(0.1, "image: largest change of brightness "
                                     "(values are 0-1).", minimum=0)
  augment_noise: float = option(0.05, "image: largest std of added Gaussian noise "
                                "(values are 0-1).", minimum=0)
  # Synthetic demo data (data_format=synthetic): generated once into train/eval_data.
  synthetic_train_size: int = option(20000, "synthetic: number of training text lines "
                                     "to generate.", minimum=0)
  synthetic_eval_size: int = option(500, "synthetic: number of evaluation text lines "
                                    "to generate.", minimum=0)
  synthetic_alphabet: str = option("0123456789abcdefghijklmnopqrstuvwxyz",
                                   "synthetic: the characters of the random strings.")
  synthetic_min_length: int = option(3, "synthetic: shortest string.", minimum=1)
  synthetic_max_length: int = option(8, "synthetic: longest string.")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  optimizer: str = option("adam", "Optimizer.", choices=OPTIMIZERS)
  learning_rate: float = option(1e-3, "Peak learning rate.",
                                check=_positive("learning_rate"))
  lr_schedule: str = option(
      "constant", "constant, or linear warmup then cosine decay to 0 at --train_steps.",
      choices=LR_SCHEDULES)
  warmup_steps: int = option(0, "Warmup steps (warmup_cosine); shortened, with a "
                             "warning, when not below --train_steps.", minimum=0)
  weight_decay: float = option(1e-4, "AdamW weight decay.")
  clip_norm: float = option(5.0, "Global gradient norm clip; 0 = off.", minimum=0)
  confidence_penalty: float = option(
      0.0, "Subtract this times the entropy of the output distribution, summed over a "
      "sequence's frames, from its training loss: a penalty on over-confident frames "
      "(e.g. a sure blank over an unfamiliar glyph). 0 = off.", minimum=0)
  lr_plateau_factor: float = option(
      1.0, "On a plateau, multiply the learning rate by this: after "
      "--lr_plateau_patience evaluations without a better CER (and again after each "
      "further such run). 1.0 = off.", check=(lambda v: v is not None and 0 < v <= 1,
                                              "--lr_plateau_factor must be in (0, 1]"))
  lr_plateau_patience: int = option(
      3, "Evaluations without a better CER before --lr_plateau_factor applies.",
      minimum=1)
  ema_decay: float = option(
      0.0, "Keep an exponential moving average of the weights with this decay (e.g. "
      "0.999); eval, best/ and export then use the averaged weights. 0 = off.",
      minimum=0, below=1)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  train_steps: int = option(1000, "Total training steps.", minimum=1)
  log_every: int = option(50, "Steps between console/summary logs.", minimum=1)
  eval_every: int = option(500, "Steps between evaluations.", minimum=1)
  checkpoint_every: int = option(500, "Steps between checkpoints.", minimum=1)
  keep_checkpoints: int = option(3, "Latest checkpoints kept (the best one is kept "
                                 "apart).", minimum=1)
  beam_width: int = option(10, "Beam width of the eval decoders.", minimum=1)
  # Registered decoders (ctc_trainer/decoders) that eval reports; the first is the
  # primary: the headline metrics, best/, and what the SavedModel serves.
  decoder: Tuple[str, ...] = option(
      ("beam", "greedy"), "Decoders eval reports, comma-separated names from the "
      "registry in ctc_trainer/decoders/, such as greedy, beam and beam_pruned (beam "
      "search on a pruned problem: same top-1 on trained models, 10x+ faster at beam "
      "100; docs/benchmarks.md), and the host decoders lm (--lm_path), lexicon "
      "(--lexicon) and pattern (--pattern). The first is the primary: its "
      "cer/wer/seq_accuracy are the headline, select best/, and it is what predict "
      "uses; an export serves the first in-graph one.")
  num_text_samples: int = option(8, "Eval samples shown as text in TensorBoard.",
                                 minimum=0)
  num_image_samples: int = option(3, "Eval inputs shown as images in TensorBoard.",
                                  minimum=0)
  eval_max_batches: int = option(0, "Evaluate on at most this many batches; 0 = all.",
                                 minimum=0)
  seed: int = option(0, "Random seed (model init, shuffling).")
  deterministic: bool = option(
      False, "Deterministic ops (slower): with the same flags, a run killed and resumed "
      "ends with the same weights as one never interrupted.")
  max_nonfinite_steps: int = option(
      20, "A step with a non-finite loss or gradient is skipped and counted; this many "
      "in a row stop the run (checked at each log).", minimum=1)
  strategy: str = option(
      "default", "tf.distribute strategy: default (one device), mirrored (all local "
      "GPUs), multi_worker (machines in TF_CONFIG), tpu (TPU_NAME).",
      choices=("default", "mirrored", "multi_worker", "tpu"))
  precision: str = option(
      "float32", "Compute dtype; logits and the CTC loss stay float32, and "
      "mixed_float16 adds dynamic loss scaling.",
      choices=("float32", "mixed_bfloat16", "mixed_float16"))
  jit_compile: bool = option(False, "XLA-compile the train step's forward and backward "
                             "pass.")
  early_stop_patience: int = option(
      0, "Stop after this many evaluations in a row without a better primary-decoder "
      "CER (best/ keeps the best); 0 = off.", minimum=0)
  worker_timeout_s: int = option(
      120, "multi_worker: seconds a collective waits for the other workers before the "
      "run stops with an error naming the lost peer.", minimum=1)


@dataclasses.dataclass(frozen=True)
class Config:
  workdir: str
  charset: str = ""               # charset file; empty = build from train labels
  data: DataConfig = DataConfig()
  model: Any = CRNNConfig()       # the config class its model registered (models/)
  optim: OptimConfig = OptimConfig()
  loop: LoopConfig = LoopConfig()
  warm_start: WarmStartConfig = WarmStartConfig()
  # The decoders' settings: --beam_width again, and the host decoders' flags.
  decoding: DecoderConfig = DecoderConfig()


# ---------------------------------------------------------------------------
# Flags: one per option field above and per registered model's config field.

for _cls in (DataConfig, OptimConfig, LoopConfig, WarmStartConfig, DecoderConfig):
  options.define_flags(_cls)
flags.DEFINE_string("workdir", None, "Run directory: flags.cfg, charset, checkpoints, "
                    "summaries. A run resumes from the checkpoint found here.")
flags.DEFINE_string("charset", "", "Charset file: UTF-8, one symbol per line (a line "
                    "holding one space is the space). Empty: built from the training "
                    "labels and saved as WORKDIR/charset.txt.")
flags.DEFINE_string("model", "crnn", "Model name in the registry (ctc_trainer/models): "
                    + ", ".join(models.names()) + ".")
flags.DEFINE_bool("beam_prune", False,
                  "Deprecated: use --decoder=beam_pruned. True turns a primary 'beam' "
                  "decoder into 'beam_pruned' (kept so that old flags.cfg files resume).")
# Not part of a run's config: train.py's mode. Defined here so that the flags.cfg of
# older runs, which saved it, still parses in every entry point.
flags.DEFINE_bool("input_only", False, "Iterate the training input pipeline for "
                  "--train_steps batches without the model and report examples/sec "
                  "and padding efficiency: shows whether training is input-bound.")


def model_from_flags(fl: flags.FlagValues = flags.FLAGS):
  """The --model's own config dataclass, built from its flags."""
  if fl.model not in models.names():
    raise ConfigError(f"--model={fl.model!r} is unknown; known models: "
                      f"{', '.join(models.names())}")
  return options.from_flags(models.config_class(fl.model), fl)


def from_flags(fl: flags.FlagValues = flags.FLAGS, need_train: bool = True,
               need_eval: bool = True) -> Config:
  """Builds the Config from parsed flags. Raises ConfigError on bad combinations."""
  if not fl.workdir:
    raise ConfigError("--workdir is required")
  loop = options.from_flags(LoopConfig, fl)
  cfg = Config(workdir=_expand(fl.workdir), charset=_expand(fl.charset),
               data=options.from_flags(DataConfig, fl), model=model_from_flags(fl),
               optim=options.from_flags(OptimConfig, fl),
               loop=dataclasses.replace(
                   loop, decoder=_decoder_names(loop.decoder, fl.beam_prune)),
               warm_start=options.from_flags(WarmStartConfig, fl),
               decoding=options.from_flags(DecoderConfig, fl))
  validate(cfg, need_train, need_eval)
  return cfg


def _decoder_names(decoder: Tuple[str, ...], beam_prune: bool) -> Tuple[str, ...]:
  """--decoder, with the deprecated --beam_prune applied to its primary."""
  if beam_prune and decoder[:1] == ("beam",):
    return ("beam_pruned",) + decoder[1:]
  return decoder


def validate(cfg: Config, need_train: bool, need_eval: bool = True) -> None:
  """Checks what single-flag validators cannot: paths and combinations."""
  decoder, known = cfg.loop.decoder, ", ".join(decoders.names())
  if not decoder:
    raise ConfigError(f"--decoder names no decoder; known decoders: {known}")
  unknown = [name for name in decoder if name not in decoders.names()]
  if unknown:
    raise ConfigError(f"--decoder={','.join(decoder)}: unknown decoder "
                      f"{unknown[0]!r}; known decoders: {known}")
  if len(set(decoder)) != len(decoder):
    raise ConfigError(f"--decoder={','.join(decoder)} names a decoder twice")
  check_host_decoders(decoder, cfg.decoding, cfg.loop.strategy)
  d = cfg.data
  needed = [("eval_data", d.eval_data)] if need_eval else []
  if need_train:
    needed.insert(0, ("train_data", d.train_data))
  for name, path in needed:
    if not path:
      raise ConfigError(f"--{name} is required")
    if d.data_format == "tfrecord":
      if not tf.io.gfile.glob(path):
        raise ConfigError(f"--{name}={path} matches no file")
    elif d.data_format != "synthetic" and not os.path.exists(path):
      raise ConfigError(f"--{name}={path} does not exist")
  reads = models.modality_of(cfg.model)
  if d.modality != reads:
    readers = [n for n in models.names() if models.modality_of(n) == d.modality]
    raise ConfigError(f"--model={models.name_of(cfg.model)} reads {reads} inputs, not "
                      f"--modality={d.modality}; the {d.modality} models are: "
                      f"{', '.join(readers) or 'none'}")
  if d.data_service and (d.data_format == "tfrecord" or d.cache_decoded):
    raise ConfigError(
        f"--data_service works with listed samples (not --data_format=tfrecord or "
        f"--cache_decoded): its workers draw samples by position, which "
        f"{'TFRecord shards' if d.data_format == 'tfrecord' else 'the in-memory set'}"
        " do not offer")
  if d.synthetic_max_length < d.synthetic_min_length:
    raise ConfigError("--synthetic_max_length must be >= --synthetic_min_length")
  if cfg.charset and not os.path.isfile(cfg.charset):
    raise ConfigError(f"--charset={cfg.charset} is not a file")
  warm = cfg.warm_start
  if warm.init_from and not os.path.exists(warm.init_from) and not tf.io.gfile.exists(
      warm.init_from + ".index"):
    raise ConfigError(f"--init_from={warm.init_from} does not exist")
  if warm.init_from and warm.charset_mode == "keep" and cfg.charset:
    raise ConfigError("--charset_mode=keep uses the --init_from model's charset: "
                      "drop --charset, or use --charset_mode=new or union")


def check_host_decoders(names: Tuple[str, ...], decoding: DecoderConfig,
                        strategy: str = "default") -> None:
  """ConfigError for a host decoder among `names` whose settings it cannot use
  (a missing --lm_path, lexicon or extra, a pattern that does not compile), or that
  cannot run under `strategy`."""
  for name in names:
    decoder = decoders.get(name)
    if not decoder.host:
      continue
    if strategy in ("multi_worker", "tpu"):
      raise ConfigError(f"--decoder={name} decodes on this machine's host; it runs "
                        f"with --strategy=default or mirrored, not {strategy}")
    decoder.check(decoding)


def _expand(path: Optional[str]) -> str:
  return os.path.expanduser(path) if path else ""
