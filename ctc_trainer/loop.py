"""The outer loop: when to train, log, evaluate and checkpoint; resume from the workdir.

train_and_evaluate(cfg) reads top to bottom in stages. Step functions (steps.py) do the
math; this file does everything that touches the host, once per interval rather than
once per step, so the hot loop never waits on a device-to-host copy except at logs.
"""

import contextlib
import dataclasses
import itertools
import os
import signal
import time
from typing import Callable, Dict, Iterator, Optional, Tuple

import keras
import tensorflow as tf
from absl import logging

from ctc_trainer import distribute, metrics, models, summaries, warmstart
from ctc_trainer.charset import Charset
from ctc_trainer.checkpoints import Checkpoints
from ctc_trainer.config import Config, OptimConfig
from ctc_trainer.errors import (CheckpointError, DataError, NonFiniteError,
                                TrainingInterrupted)
from ctc_trainer.data import failures, modalities, pipeline, sources, throughput
from ctc_trainer.data import augment
from ctc_trainer.steps import StepFns, decoder_sums, make_step_fns

CHARSET_FILE = "charset.txt"
# A progress line at least this often, whatever --log_every says: on long lines and a
# slow machine 100 steps can take many minutes, and a silent run looks hung.
LOG_EVERY_S = 30.0


# --- building blocks ---------------------------------------------------------------

def load_charset(cfg: Config, source: Optional[Charset] = None) -> Charset:
  """The run's charset. Order of precedence, so that a resumed run never changes ids:
  WORKDIR/charset.txt, then --charset (copied into the workdir), then one built from
  the training labels (saved into the workdir). source: the charset of a warm start's
  model, combined with the latter two as --charset_mode says."""
  saved = os.path.join(cfg.workdir, CHARSET_FILE)
  if os.path.exists(saved):
    charset = Charset.from_file(saved)
    if cfg.charset and Charset.from_file(cfg.charset).symbols != charset.symbols:
      raise DataError(
          f"--charset={cfg.charset} differs from {saved}, which this workdir was "
          "trained with; use a new --workdir to change the charset")
    return charset
  if source is None:
    charset = _data_charset(cfg)
  else:
    charset = warmstart.combine_charsets(cfg.warm_start.charset_mode, source,
                                         lambda: _data_charset(cfg))
  os.makedirs(cfg.workdir, exist_ok=True)
  charset.save(saved)
  return charset


def _data_charset(cfg: Config) -> Charset:
  """--charset, or the symbols of the training labels."""
  if cfg.charset:
    return Charset.from_file(cfg.charset)
  train = sources.load_samples(cfg.data, "train", None)
  charset = Charset.from_texts(train.label_texts())  # TFRecords: read from shards
  logging.info("Built a charset of %d symbols from the training labels", charset.size)
  return charset


def warmup_steps(cfg: OptimConfig, train_steps: int) -> int:
  """cfg.warmup_steps, or a tenth of train_steps when it is not below them: a short
  run from a long run's flagfile (a smoke test, a quick look) still warms up, and
  still decays, instead of refusing to start."""
  if cfg.warmup_steps < train_steps:
    return cfg.warmup_steps
  shorter = train_steps // 10
  logging.warning("--warmup_steps=%d is not below --train_steps=%d: warming up over "
                  "the first %d steps instead", cfg.warmup_steps, train_steps, shorter)
  return shorter


class ScaledLearningRate(keras.optimizers.schedules.LearningRateSchedule):
  """A learning rate schedule times a non-trainable variable. The plateau cuts
  assign the variable, so the traced train_step reads the new rate without
  retracing, and the checkpoint carries it across a resume."""

  def __init__(self, base: keras.optimizers.schedules.LearningRateSchedule,
               scale: tf.Variable):
    self.base, self.scale = base, scale

  def __call__(self, step):
    return tf.cast(self.base(step), tf.float32) * tf.cast(self.scale, tf.float32)

  def get_config(self):
    return {"base": self.base, "scale": float(tf.convert_to_tensor(self.scale))}


def make_optimizer(cfg: OptimConfig, train_steps: int,
                   lr_scale: Optional[tf.Variable] = None) -> keras.optimizers.Optimizer:
  """The optimizer of cfg. lr_scale: a variable a scheduled learning rate is
  multiplied by (the plateau cuts; a constant rate is cut in the optimizer's own
  variable, which keeps the optimizer's checkpoint layout). With --ema_decay, Keras
  keeps the weights' moving average in the optimizer, updated in apply_gradients
  (so inside train_step)."""
  lr = cfg.learning_rate
  if cfg.lr_schedule == "warmup_cosine":
    warmup = warmup_steps(cfg, train_steps)
    lr = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=cfg.learning_rate,
        warmup_steps=warmup, decay_steps=train_steps - warmup)
  if lr_scale is not None and callable(lr):
    lr = ScaledLearningRate(lr, lr_scale)
  ema = {"use_ema": cfg.ema_decay > 0, "ema_momentum": cfg.ema_decay or 0.99}
  if cfg.optimizer == "adamw":
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay, **ema)
  return keras.optimizers.Adam(learning_rate=lr, **ema)


def uses_ema(optimizer: Optional[keras.optimizers.Optimizer]) -> bool:
  inner = getattr(optimizer, "inner_optimizer", optimizer)  # under loss scaling
  return bool(getattr(inner, "use_ema", False))


@contextlib.contextmanager
def averaged_weights(run: "Run"):
  """While active, the model holds the moving average of its weights (when the run
  keeps one): what eval measures and best/ saves. The trained weights come back
  after, so training goes on from them."""
  if not uses_ema(run.optimizer):
    yield
    return
  weights = run.model.trainable_variables
  trained = [tf.identity(v) for v in weights]
  run.optimizer.finalize_variable_values(weights)
  try:
    yield
  finally:
    for variable, value in zip(weights, trained):
      variable.assign(value)


@dataclasses.dataclass
class Run:
  """The parts of a run, built once by `build_run`: what train_and_evaluate trains and
  evaluate, export and predict restore. It holds; it does not train."""
  cfg: Config
  charset: Charset
  strategy: tf.distribute.Strategy
  model: keras.Model
  optimizer: Optional[keras.optimizers.Optimizer]
  checkpoints: Checkpoints
  step_fns: StepFns
  # The plateau cuts' multiplier of a scheduled learning rate, when they are on.
  lr_scale: Optional[tf.Variable] = None
  # The eval inputs built so far, each reused by every later pass over the same
  # samples with the same options: building one traces its map functions.
  # {options: (samples, dataset)}
  eval_inputs: Dict[tuple, tuple] = dataclasses.field(default_factory=dict, repr=False)


def _warm_start_source(cfg: Config) -> Optional[warmstart.Source]:
  """The --init_from model for a fresh training run; None when there is none, or
  when the workdir holds a checkpoint, which the run resumes from instead."""
  init_from = cfg.warm_start.init_from
  if not init_from:
    return None
  saved = tf.train.latest_checkpoint(
      os.path.join(distribute.checkpoint_dir(cfg.workdir), "checkpoints"))
  if saved:
    logging.info("%s holds checkpoint %s: resuming from it, --init_from=%s ignored",
                 cfg.workdir, saved, init_from)
    return None
  return warmstart.open_source(init_from)


def build_run(cfg: Config, for_training: bool = True) -> Run:
  """The run's parts. A fresh training run with --init_from starts from that model's
  weights (warmstart.py)."""
  # The strategy first: multi-worker collectives must be set up before any op runs.
  strategy = distribute.make_strategy(cfg.loop.strategy, cfg.loop.worker_timeout_s)
  source = _warm_start_source(cfg) if for_training else None
  charset = load_charset(cfg, source.charset if source else None)
  distribute.set_precision(cfg.loop.precision)
  keras.utils.set_random_seed(cfg.loop.seed)
  input_shape = pipeline.input_shape(cfg.data)
  with strategy.scope():
    model = models.build(cfg.model, charset.num_classes, input_shape)
    if source:
      warmstart.initialize(model, source, charset, cfg.warm_start)
    optimizer = lr_scale = None
    if cfg.optim.lr_plateau_factor < 1.0 and cfg.optim.lr_schedule != "constant":
      lr_scale = tf.Variable(1.0, trainable=False, name="lr_scale")
    # Inference needs the optimizer too when it holds the weights' moving average.
    if for_training or cfg.optim.ema_decay > 0:
      optimizer = make_optimizer(cfg.optim, cfg.loop.train_steps, lr_scale)
      if cfg.loop.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
      optimizer.build(model.trainable_variables)  # so a restore fills real slots
  checkpoints = Checkpoints(distribute.checkpoint_dir(cfg.workdir),
                            cfg.loop.keep_checkpoints, model, optimizer=optimizer,
                            lr_scale=lr_scale)
  signature = pipeline.batch_signature(cfg.data.image_channels, cfg.data.image_height,
                                       input_shape)
  step_fns = make_step_fns(
      model, optimizer, charset, strategy, distribute.distributed_spec(strategy, signature),
      global_batch_size=cfg.data.batch_size, clip_norm=cfg.optim.clip_norm,
      beam_width=cfg.loop.beam_width, confidence_penalty=cfg.optim.confidence_penalty,
      jit_compile=cfg.loop.jit_compile, decoder_names=cfg.loop.decoder,
      frozen=cfg.warm_start.freeze if for_training else (),
      frozen_steps=cfg.warm_start.freeze_steps, decoder_config=cfg.decoding)
  return Run(cfg, charset, strategy, model, optimizer, checkpoints, step_fns, lr_scale)


def make_iterator(run: Run, split: str, samples: sources.Source,
                  seen: Optional[tf.Variable] = None, **options):
  """An iterator over `split` batches. On the default strategy it is a plain tf.data
  iterator, which checkpoints its position; under a distribution strategy each
  worker reads its own shard through an InputContext. seen (training by position,
  see positioned_input): the highest stream position this worker has trained on
  (-1: none), restored from the checkpoint; the stream continues after it.
  options: further make_dataset arguments (limit, keep_encoded)."""
  return iter(_make_input(run, split, samples, seen, **options))


def _make_input(run: Run, split: str, samples: sources.Source,
                seen: Optional[tf.Variable] = None, **options):
  """make_iterator's dataset: a tf.data.Dataset, or a distributed dataset under a
  strategy."""
  def make(context):
    start = None
    if seen is not None:
      pipelines, index = ((context.num_input_pipelines, context.input_pipeline_id)
                          if context else (1, 0))
      last = int(seen.numpy())
      start = index if last < 0 else last + pipelines
    return pipeline.make_dataset(run.cfg.data, run.charset, split,
                                 input_context=context, samples=samples,
                                 start_position=start, **options)
  if not distribute.is_distributed(run.strategy):
    return make(None)
  return run.strategy.distribute_datasets_from_function(make)


def positioned_input(run: Run, samples: sources.Source) -> bool:
  """Whether training reads its stream by position (ListedSource.
  positioned_examples) and checkpoints the highest position trained on: where a
  plain tf.data iterator, which checkpoints itself, is not there to save (under a
  distribution strategy the iterator is a DistributedIterator, not trackable; the
  data service keeps its position in the service)."""
  cfg = run.cfg.data
  wanted = distribute.is_distributed(run.strategy) or bool(cfg.data_service)
  return wanted and not cfg.cache_decoded and hasattr(samples, "positioned_examples")


def _highest_position(run: Run, position) -> tf.Tensor:
  """The highest stream position in a batch (all of this worker's replicas)."""
  local = run.strategy.experimental_local_results(position)
  return tf.reduce_max(tf.concat([tf.reshape(p, [-1]) for p in local], 0))


def _next_batch(iterator, samples, cfg):
  """next(iterator), turning an input pipeline failure into a DataError naming the file."""
  try:
    return next(iterator)
  except failures.PIPELINE_ERRORS as e:
    raise failures.explain(e, samples, cfg) from None


# --- evaluation ------------------------------------------------------------------

DECODER_METRICS = ("cer", "wer", "seq_accuracy")   # reported per decoder


def eval_batches(run: Run, samples: sources.Source, max_batches: int = 0,
                 **options) -> Iterator[Tuple[dict, dict, dict]]:
  """The one eval loop (evaluate, and export's parity gate): yields, per eval batch
  (at most max_batches when > 0), (batch, eval_step's metric sums, its decoded
  strings per decoder). options: make_dataset's limit and keep_encoded; the batch
  keeps its `encoded` bytes, which eval_step does not take."""
  key = tuple(sorted(options.items()))
  built = run.eval_inputs.get(key)
  if built is None or built[0] is not samples:
    built = run.eval_inputs[key] = (samples, _make_input(run, "eval", samples, **options))
  iterator = iter(built[1])
  for index in itertools.count():
    if index == max_batches > 0:
      return
    try:
      batch = _next_batch(iterator, samples, run.cfg.data)
    except StopIteration:
      return
    encoded = batch.pop("encoded", None)
    batch_sums, decoded = run.step_fns.evaluate(batch)   # host decoders too
    if encoded is not None:
      batch["encoded"] = encoded
    yield batch, batch_sums, decoded


def evaluate(run: Run, eval_samples: sources.Source,
             on_batch: Optional[Callable[[dict, dict], None]] = None,
             ) -> Tuple[Dict[str, float], Optional[dict], Optional[dict]]:
  """One pass over the eval set -> (metrics, first batch, its decoded samples).

  metrics: the primary decoder's (the first of --decoder) cer, wer, seq_accuracy and
  num_seqs, the loss, and "<decoder>/cer", "/wer", "/seq_accuracy" of each decoder,
  primary first. Sums stay tensors until the end: one host sync per eval, not one
  per batch. on_batch: called with each batch and its decoded samples (the report's
  rows come from the very pass that gives the metrics).
  """
  cfg = run.cfg
  sums, first_batch, first_samples = {}, None, None
  for index, (batch, batch_sums, samples) in enumerate(
      eval_batches(run, eval_samples, cfg.loop.eval_max_batches)):
    sums = metrics.add_sums(sums, batch_sums)
    if on_batch:
      on_batch(batch, samples)
    if index == 0:
      first_replica = lambda v: run.strategy.experimental_local_results(v)[0]
      first_batch, first_samples = tf.nest.map_structure(first_replica, batch), samples
  if not sums:
    raise DataError(f"the eval set {cfg.data.eval_data} yielded no batch")
  host = {k: float(v) for k, v in sums.items()}
  names = cfg.loop.decoder
  results = metrics.results(decoder_sums(host, names[0]))
  results["loss"] = host["loss_sum"] / max(host["loss_examples"], 1.0)
  for name in names:
    per_decoder = metrics.results(decoder_sums(host, name))
    results.update({f"{name}/{k}": per_decoder[k] for k in DECODER_METRICS})
  return results, first_batch, first_samples


def format_eval(results: Dict[str, float]) -> str:
  """One line: the primary decoder's metrics and the loss, then each other
  decoder's, in their order in `results` (evaluate puts the primary first)."""
  names = [k[:-len("/cer")] for k in results if k.endswith("/cer")]
  line = "  ".join(f"{k} {results[k]:.4f}" for k in (*DECODER_METRICS, "loss"))
  others = "".join(
      f"; {name}: " + ", ".join(f"{k} {results[f'{name}/{k}']:.4f}"
                                for k in DECODER_METRICS)
      for name in names[1:])
  return f"{line}  ({names[0]}{others}; {int(results['num_seqs'])} sequences)"


def _eval_and_report(run: Run, eval_samples, writer, step: int) -> Dict[str, float]:
  start = time.time()
  results, batch, samples = evaluate(run, eval_samples)
  logging.info("eval step %d: %s [%.1fs]", step, format_eval(results), time.time() - start)
  names = run.cfg.loop.decoder
  summaries.write_scalars(writer, step, "eval", {
      k: results[k] for k in (*DECODER_METRICS, "loss",
                              *(f"{n}/{m}" for n in names for m in DECODER_METRICS))})
  summaries.write_samples(writer, step, "eval", batch, samples, names,
                          run.cfg.loop.num_text_samples,
                          run.cfg.loop.num_image_samples,
                          modalities.get(run.cfg.data).preview)
  writer.flush()
  return results


# --- the run ---------------------------------------------------------------------

@contextlib.contextmanager
def _stop_requests():
  """While active, SIGTERM and SIGINT only record themselves; the loop then saves a
  checkpoint and stops between two steps instead of dying mid-step."""
  received = []
  signals = (signal.SIGTERM, signal.SIGINT)
  try:
    previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum))
                for sig in signals}
  except ValueError:  # not the main thread: signals stay as they are
    previous = {}
  try:
    yield received
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


class _Interval:
  """Step outputs of one log interval, added up as tensors and read once."""

  def __init__(self, nonfinite_run=None):
    self.sums, self.steps, self.start, self.wait = {}, 0, time.time(), 0.0
    self.keys = {"infeasible_keys": [], "nonfinite_keys": []}
    # Length of the current run of skipped steps and its maximum, kept as tensors
    # so that counting them costs no host sync; the run carries across intervals.
    self.nonfinite_run = tf.constant(0.0) if nonfinite_run is None else nonfinite_run
    self.max_run = self.nonfinite_run

  def add(self, out, wait: float, padding) -> None:
    out = dict(out, **padding)
    for name, keys in self.keys.items():
      keys.append(out.pop(name))
    self.nonfinite_run = (self.nonfinite_run + 1.0) * out["skipped"]
    self.max_run = tf.maximum(self.max_run, self.nonfinite_run)
    self.sums = metrics.add_sums(self.sums, out)
    self.wait += wait
    self.steps += 1

  def read(self) -> Tuple[Dict[str, float], Dict[str, list]]:
    host = {k: float(v) for k, v in self.sums.items()}
    host["max_run"] = float(self.max_run)
    keys = {name: [k.decode("utf-8", "replace") for k in tf.concat(parts, 0).numpy()]
            for name, parts in self.keys.items()}
    return host, keys


def train_scalars(host: Dict[str, float], steps: int, elapsed: float,
                  wait: float) -> Dict[str, float]:
  """The train/* scalars of one log interval from its summed step outputs.

  The mean loss is over the examples of the steps that were applied: a skipped
  (non-finite) step adds neither loss nor examples to it. Throughput counts every
  example the steps read.
  """
  finite_steps = max(steps - host["skipped"], 1.0)
  return {
      "loss": host["loss_sum"] / max(host["loss_examples"], 1.0),
      "grad_norm": host["grad_norm"] / finite_steps,
      "examples_per_sec": (host["examples"] + host["infeasible"]) / elapsed,
      "input_wait_fraction": wait / elapsed,
      "infeasible": host["infeasible"],
      "skipped_steps": host["skipped"],
      "padding_efficiency": host["valid_columns"] / max(host["padded_columns"], 1.0),
  }


def log_due(step: int, log_every: int, first_or_final: bool, seconds: float) -> bool:
  """Whether step ends a log interval: every log_every steps, the first and the final
  step of a run, and whenever the interval has run LOG_EVERY_S seconds."""
  return step % log_every == 0 or first_or_final or seconds >= LOG_EVERY_S


def _log_interval(interval: _Interval, step: int, run: Run, writer,
                  progress: Tuple[float, int]) -> None:
  """Reads an interval once: console line, train/* scalars, bad-batch reports.

  Raises NonFiniteError when --max_nonfinite_steps steps in a row were skipped.
  """
  loop = run.cfg.loop
  host, keys = interval.read()
  now = time.time()
  elapsed = max(now - interval.start, 1e-9)
  scalars = train_scalars(host, interval.steps, elapsed, interval.wait)
  scalars["learning_rate"] = float(tf.convert_to_tensor(run.optimizer.learning_rate))
  summaries.write_scalars(writer, step, "train", scalars)
  run_start, run_start_step = progress
  if step == run_start_step + 1:
    # The first step also traces the step function and fills the input pipeline:
    # say what it cost, and leave it out of the ETA, which later lines base on the
    # steps after it.
    eta = f"first step took {elapsed:.1f}s (tracing, input start-up)"
  else:
    # Wall time per step since the first, evaluations and checkpoints included:
    # when the run will end, and what --train_steps would have to be to end sooner.
    rate = (step - run_start_step - 1) / max(now - run_start, 1e-9)
    eta = (f"ETA {summaries.format_duration((loop.train_steps - step) / rate)} to "
           f"step {loop.train_steps} at {rate:.{2 if rate < 10 else 0}f} steps/s")
  logging.info("step %d/%d  loss %.4f  %.0f ex/s  input wait %.0f%%  padding "
               "efficiency %.0f%%  %s", step, loop.train_steps, scalars["loss"],
               scalars["examples_per_sec"], 100 * scalars["input_wait_fraction"],
               100 * scalars["padding_efficiency"], eta)
  if keys["infeasible_keys"]:
    logging.warning("%d examples have labels longer than the model's output frames "
                    "and were left out of the loss: %s", len(keys["infeasible_keys"]),
                    ", ".join(keys["infeasible_keys"][:10]))
  if host["skipped"]:
    logging.warning("%d steps skipped for a non-finite loss or gradient (weights "
                    "unchanged); their batches held: %s", int(host["skipped"]),
                    ", ".join(keys["nonfinite_keys"][:10]))
  if host["max_run"] >= loop.max_nonfinite_steps:
    raise NonFiniteError(
        f"{int(host['max_run'])} consecutive steps had a non-finite loss or gradient "
        f"(limit --max_nonfinite_steps={loop.max_nonfinite_steps}); stopping at step "
        f"{step}. Lower --learning_rate or check the data around: "
        + ", ".join(keys["nonfinite_keys"][:5]))


def _early_stopped(run: Run) -> bool:
  """Whether --early_stop_patience evaluations in a row brought no better CER
  (logged when so)."""
  patience, stale = run.cfg.loop.early_stop_patience, int(run.checkpoints.stale_evals)
  if not patience or stale < patience:
    return False
  logging.info("Early stopping: no eval CER better than %.4f (step %d) in the %d "
               "evaluations since (--early_stop_patience=%d); best/ holds that model",
               float(run.checkpoints.best_cer), int(run.checkpoints.best_step), stale,
               patience)
  return True


def cut_learning_rate(run: Run, factor: float) -> None:
  """Multiplies the learning rate by `factor`: a schedule's multiplier (lr_scale) or
  a constant rate's own variable in the optimizer. Both are variables that
  train_step reads, so it is not retraced."""
  if run.lr_scale is not None:
    run.lr_scale.assign(float(tf.convert_to_tensor(run.lr_scale)) * factor)
  else:
    run.optimizer.learning_rate = float(
        tf.convert_to_tensor(run.optimizer.learning_rate)) * factor


def _after_eval(run: Run) -> bool:
  """The plateau cut and early stopping, once an eval is counted -> whether to stop.

  The learning rate is multiplied by --lr_plateau_factor at every
  --lr_plateau_patience evaluations without a better CER.
  """
  stale = int(run.checkpoints.stale_evals)
  optim = run.cfg.optim
  if optim.lr_plateau_factor < 1.0 and stale and stale % optim.lr_plateau_patience == 0:
    cut_learning_rate(run, optim.lr_plateau_factor)
    logging.info("No better eval CER in %d evaluations: learning rate multiplied by "
                 "%g, now %.3g", stale, optim.lr_plateau_factor,
                 float(tf.convert_to_tensor(run.optimizer.learning_rate)))
  return _early_stopped(run)


def train_and_evaluate(cfg: Config, after_step: Optional[Callable[[int], None]] = None,
                       ) -> Dict[str, float]:
  """Trains to cfg.loop.train_steps, resuming from cfg.workdir; returns final eval.

  after_step: testing only; called with the step number once that step is done
  (logged, evaluated and checkpointed as scheduled). train.py wires it to a kill
  switch so that tests stop a run at a known step.
  """
  loop = cfg.loop
  if loop.deterministic:
    tf.config.experimental.enable_op_determinism()

  # 1. Model, optimizer, step functions.
  run = build_run(cfg)

  # 2. Data. Samples are listed once (paths and labels only); images stream from
  #    disk. What the checkpoint holds of the input is where it stopped, so a
  #    resumed run continues the same order instead of replaying it: on one device
  #    the tf.data iterator itself; under a strategy or through the data service
  #    the highest stream position trained on (this worker's), after which the
  #    stream is rebuilt once restored.
  train_samples = sources.load_samples(cfg.data, "train", run.charset)
  eval_samples = sources.load_samples(cfg.data, "eval", run.charset)
  time_axis = modalities.get(cfg.data).time_axis   # for padding efficiency
  seen = iterator = None
  if positioned_input(run, train_samples):
    seen = tf.Variable(-1, dtype=tf.int64, trainable=False, name="input_position")
    run.checkpoints.track(input_position=seen)
  else:
    iterator = make_iterator(run, "train", train_samples)
    if isinstance(iterator, tf.data.Iterator):
      run.checkpoints.track(iterator=iterator)
    else:
      logging.warning("Under --strategy=%s the input position of %s is not "
                      "checkpointed: a resumed run starts a new pass over the data",
                      loop.strategy, train_samples.describe())

  # 3. Resume: the latest readable checkpoint, if any.
  start_step = run.checkpoints.restore("latest")
  if start_step:
    logging.info("Resuming at step %d of %d", start_step, loop.train_steps)
  if seen is not None:
    iterator = make_iterator(run, "train", train_samples, seen=seen)
    if int(seen.numpy()) >= 0:
      logging.info("The input continues after stream position %d (epoch %d)",
                   int(seen.numpy()), int(seen.numpy()) // train_samples.count())
  if cfg.data.data_service:
    logging.info("Training input from the tf.data service at %s (sharding %s)",
                 cfg.data.data_service, cfg.data.data_service_sharding)
  # A run that stopped early stays stopped.
  stopping = bool(start_step) and _early_stopped(run)
  if distribute.is_chief():
    train_writer = tf.summary.create_file_writer(os.path.join(cfg.workdir, "train"))
    eval_writer = tf.summary.create_file_writer(os.path.join(cfg.workdir, "eval"))
  else:
    train_writer = eval_writer = tf.summary.create_noop_writer()
  if not start_step and distribute.is_chief():
    augment.write_preview(cfg.data, run.charset, train_samples, train_writer, 0)

  # 4. Train. Step outputs are summed as tensors and read once per log interval:
  #    every --log_every steps, after the first step, and at least every LOG_EVERY_S.
  #    The first --freeze_steps steps run the step function that leaves --freeze alone.
  if start_step < run.step_fns.frozen_steps:
    logging.info("Steps %d to %d leave %s unchanged (--freeze)", start_step + 1,
                 run.step_fns.frozen_steps, ", ".join(cfg.warm_start.freeze))
  interval = _Interval()
  progress = (time.time(), start_step)
  step, results = start_step, None
  with _stop_requests() as stop:
    while step < loop.train_steps and not stopping:
      fetch_start = time.time()
      batch = _next_batch(iterator, train_samples, cfg.data)
      wait = time.time() - fetch_start
      if seen is not None:   # eager ops, no host sync
        seen.assign(tf.maximum(seen, _highest_position(run, batch.pop("position"))))
      try:
        interval.add(run.step_fns.train_step_for(step)(batch), wait,
                     throughput.padding_sums(batch, time_axis, run.strategy))
      except distribute.PEER_ERRORS as e:
        raise distribute.peer_lost(e, step + 1) from None
      step += 1
      final = step == loop.train_steps
      first = step == start_step + 1
      if log_due(step, loop.log_every, first or final, time.time() - interval.start):
        _log_interval(interval, step, run, train_writer, progress)
        interval = _Interval(interval.nonfinite_run)
        if first:   # the ETA counts from the end of the first step
          progress = (time.time(), start_step)

      # 5. Evaluate (the averaged weights, with --ema_decay) and keep the best; cut
      #    the learning rate or stop early on a plateau; checkpoint on schedule, at
      #    the end, and when asked to stop. The time this takes is left out of
      #    examples/sec.
      pause_start = time.time()
      if step % loop.eval_every == 0 or final:
        with averaged_weights(run):
          results = _eval_and_report(run, eval_samples, eval_writer, step)
          if run.checkpoints.save_if_best(step, results["cer"]):
            logging.info("New best eval CER %.4f at step %d", results["cer"], step)
        stopping = _after_eval(run)
      if step % loop.checkpoint_every == 0 or final or stop or stopping:
        logging.info("Saved checkpoint %s", run.checkpoints.save(step))
      if stop and not final:
        train_writer.flush()
        raise TrainingInterrupted(stop[0], step)
      interval.start += time.time() - pause_start
      if after_step:
        after_step(step)

  # 6. A run resumed at or past its end, or one that stopped early, only evaluates.
  if results is None:
    with averaged_weights(run):
      results, _, _ = evaluate(run, eval_samples)
    logging.info("Already trained to step %d: %s", start_step, format_eval(results))
  return results


def restore_trained(cfg: Config, which: str = "latest") -> Tuple[Run, int]:
  """A Run for inference with checkpoint `which` of cfg.workdir ('latest',
  'best' or a path prefix) restored -> (run, its step). Raises CheckpointError
  when the workdir holds none."""
  run = build_run(cfg, for_training=False)
  step = run.checkpoints.restore(which, expect_partial=True)
  if not step:
    raise CheckpointError(f"no checkpoint in {cfg.workdir}: train first")
  if uses_ema(run.optimizer):
    # Inference uses the moving average: the model takes its values for good.
    run.optimizer.finalize_variable_values(run.model.trainable_variables)
  return run, step


def evaluate_checkpoint(cfg: Config, which: str = "latest",
                        on_batch: Optional[Callable[[dict, dict], None]] = None,
                        ) -> Dict[str, float]:
  """Restores a checkpoint of cfg.workdir ('latest', 'best' or a path) and evaluates
  (on_batch: as for evaluate)."""
  run, step = restore_trained(cfg, which)
  eval_samples = sources.load_samples(cfg.data, "eval", run.charset)
  results, _, _ = evaluate(run, eval_samples, on_batch)
  results["step"] = step
  return results
