"""The outer loop: when to train, log, evaluate and checkpoint; resume from the workdir.

train_and_evaluate(cfg) reads top to bottom in stages. Step functions (steps.py) do the
math; this file does everything that touches the host, once per interval rather than
once per step, so the hot loop never waits on a device-to-host copy except at logs.
"""

import dataclasses
import itertools
import os
import time
from typing import Dict, Optional, Tuple

import keras
import tensorflow as tf
from absl import logging

from ctc_trainer import metrics, models, summaries
from ctc_trainer.charset import Charset
from ctc_trainer.checkpoints import Checkpoints
from ctc_trainer.config import Config, OptimConfig
from ctc_trainer.data import pipeline, sources
from ctc_trainer.steps import Steps, make_steps

CHARSET_FILE = "charset.txt"


# --- building blocks ---------------------------------------------------------------

def load_charset(cfg: Config) -> Charset:
  """The run's charset. Order of precedence, so that a resumed run never changes ids:
  WORKDIR/charset.txt, then --charset (copied into the workdir), then one built from
  the training labels (saved into the workdir)."""
  saved = os.path.join(cfg.workdir, CHARSET_FILE)
  if os.path.exists(saved):
    charset = Charset.from_file(saved)
    if cfg.charset and Charset.from_file(cfg.charset).symbols != charset.symbols:
      raise sources.DataError(
          f"--charset={cfg.charset} differs from {saved}, which this workdir was "
          "trained with; use a new --workdir to change the charset")
    return charset
  if cfg.charset:
    charset = Charset.from_file(cfg.charset)
  else:
    train = sources.load_samples(cfg.data, "train", None)
    charset = Charset.from_texts(s.text for s in train.samples)
    logging.info("Built a charset of %d symbols from %d training labels",
                 charset.size, len(train.samples))
  os.makedirs(cfg.workdir, exist_ok=True)
  charset.save(saved)
  return charset


def make_optimizer(cfg: OptimConfig, train_steps: int) -> keras.optimizers.Optimizer:
  lr = cfg.learning_rate
  if cfg.lr_schedule == "warmup_cosine":
    lr = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps, decay_steps=train_steps - cfg.warmup_steps)
  if cfg.optimizer == "adamw":
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay)
  return keras.optimizers.Adam(learning_rate=lr)


@dataclasses.dataclass
class Trainer:
  """Everything a run holds: built once by `setup`, used by train and eval."""
  cfg: Config
  charset: Charset
  strategy: tf.distribute.Strategy
  model: keras.Model
  optimizer: Optional[keras.optimizers.Optimizer]
  checkpoints: Checkpoints
  steps: Steps


def setup(cfg: Config, for_training: bool = True) -> Trainer:
  charset = load_charset(cfg)
  strategy = tf.distribute.get_strategy()
  keras.utils.set_random_seed(cfg.loop.seed)
  input_shape = (cfg.data.image_height, None, cfg.data.image_channels)
  with strategy.scope():
    model = models.build(cfg.model, charset.num_classes, input_shape)
    optimizer = None
    if for_training:
      optimizer = make_optimizer(cfg.optim, cfg.loop.train_steps)
      optimizer.build(model.trainable_variables)  # so a restore fills real slots
  checkpoints = Checkpoints(cfg.workdir, model, optimizer, cfg.loop.keep_checkpoints)
  spec = pipeline.batch_signature(cfg.data.image_channels, cfg.data.image_height)
  steps = make_steps(model, optimizer, charset, strategy, spec,
                     global_batch_size=cfg.data.batch_size, clip_norm=cfg.optim.clip_norm,
                     beam_width=cfg.loop.beam_width)
  return Trainer(cfg, charset, strategy, model, optimizer, checkpoints, steps)


def _next_batch(iterator, samples):
  """next(iterator), turning an input pipeline failure into a DataError naming the file."""
  try:
    return next(iterator)
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
    raise pipeline.explain_pipeline_error(e, samples) from None


# --- evaluation ------------------------------------------------------------------

def evaluate(trainer: Trainer, eval_samples: sources.SampleList,
             ) -> Tuple[Dict[str, float], Optional[dict], Optional[dict]]:
  """One pass over the eval set -> (metrics, first batch, its decoded samples).

  Sums stay tensors until the end: one host sync per eval, not one per batch.
  """
  cfg = trainer.cfg
  dataset = pipeline.make_dataset(cfg.data, trainer.charset, "eval", samples=eval_samples)
  sums, first_batch, first_samples = {}, None, None
  iterator = iter(dataset)
  for index in itertools.count():
    if index == cfg.loop.eval_max_batches > 0:
      break
    try:
      batch = _next_batch(iterator, eval_samples)
    except StopIteration:
      break
    batch_sums, samples = trainer.steps.eval_step(batch)
    sums = metrics.add_sums(sums, batch_sums)
    if index == 0:
      first_batch, first_samples = batch, samples
  if not sums:
    raise sources.DataError(f"the eval set {cfg.data.eval_data} yielded no batch")
  host = {k: float(v) for k, v in sums.items()}
  results = metrics.results(host)
  results["loss"] = host["loss_sum"] / max(host["loss_examples"], 1.0)
  results["greedy_cer"] = metrics.results(
      dict(host, char_edits=host["greedy_char_edits"]))["cer"]
  results["greedy_seq_accuracy"] = metrics.results(
      dict(host, seq_correct=host["greedy_seq_correct"]))["seq_accuracy"]
  return results, first_batch, first_samples


def format_eval(results: Dict[str, float]) -> str:
  return (f"cer {results['cer']:.4f}  wer {results['wer']:.4f}  "
          f"seq_accuracy {results['seq_accuracy']:.4f}  loss {results['loss']:.4f}  "
          f"(greedy: cer {results['greedy_cer']:.4f}, seq_accuracy "
          f"{results['greedy_seq_accuracy']:.4f}; {int(results['num_seqs'])} sequences)")


def _eval_and_report(trainer: Trainer, eval_samples, writer, step: int) -> Dict[str, float]:
  start = time.time()
  results, batch, samples = evaluate(trainer, eval_samples)
  logging.info("eval step %d: %s [%.1fs]", step, format_eval(results), time.time() - start)
  summaries.write_scalars(writer, step, "eval/eval", {
      k: results[k] for k in ("cer", "wer", "seq_accuracy", "loss", "greedy_cer")})
  summaries.write_samples(writer, step, "eval/eval", batch, samples,
                          trainer.cfg.loop.num_text_samples,
                          trainer.cfg.loop.num_image_samples)
  writer.flush()
  return results


# --- the run ---------------------------------------------------------------------

def train_and_evaluate(cfg: Config) -> Dict[str, float]:
  """Trains to cfg.loop.train_steps, resuming from cfg.workdir; returns final eval."""
  # 1. Model, optimizer, step functions; resume if the workdir has a checkpoint.
  trainer = setup(cfg)
  start_step = trainer.checkpoints.restore("latest")
  loop = cfg.loop
  if start_step:
    logging.info("Resuming at step %d of %d", start_step, loop.train_steps)

  # 2. Data. Samples are listed once (paths and labels only); images stream from disk.
  #    The shuffle seed moves with the start step so a resumed run sees new orders.
  train_samples = sources.load_samples(cfg.data, "train", trainer.charset)
  eval_samples = sources.load_samples(cfg.data, "eval", trainer.charset)
  data_cfg = dataclasses.replace(cfg.data, seed=cfg.data.seed + start_step)
  dataset = pipeline.make_dataset(data_cfg, trainer.charset, "train",
                                  samples=train_samples)
  iterator = iter(trainer.strategy.experimental_distribute_dataset(dataset))
  train_writer = tf.summary.create_file_writer(os.path.join(cfg.workdir, "train"))
  eval_writer = tf.summary.create_file_writer(os.path.join(cfg.workdir, "eval"))

  # 3. Train. Per-step outputs are summed as tensors and read once per log interval.
  interval = {}
  interval_start, wait_time = time.time(), 0.0
  run_start, run_start_step = time.time(), start_step
  step, results = start_step, None
  while step < loop.train_steps:
    fetch_start = time.time()
    batch = _next_batch(iterator, train_samples)
    wait_time += time.time() - fetch_start
    out = trainer.steps.train_step(batch)
    step += 1
    interval = metrics.add_sums(interval, out)

    if step % loop.log_every == 0 or step == loop.train_steps:
      now = time.time()
      host = {k: float(v) for k, v in interval.items()}
      steps_done = loop.log_every if step % loop.log_every == 0 else step % loop.log_every
      seen = host["examples"] + host["infeasible"]
      elapsed = now - interval_start
      scalars = {
          "loss": host["loss_sum"] / max(host["examples"], 1.0),
          "grad_norm": host["grad_norm"] / steps_done,
          "learning_rate": float(trainer.optimizer.learning_rate),
          "examples_per_sec": seen / elapsed,
          "input_wait_fraction": wait_time / elapsed,
          "infeasible": host["infeasible"],
      }
      summaries.write_scalars(train_writer, step, "train", scalars)
      rate = (step - run_start_step) / (now - run_start)
      logging.info("step %d/%d  loss %.4f  %.0f ex/s  input wait %.0f%%  ETA %s",
                   step, loop.train_steps, scalars["loss"], scalars["examples_per_sec"],
                   100 * scalars["input_wait_fraction"],
                   summaries.format_duration((loop.train_steps - step) / rate))
      if host["infeasible"]:
        logging.warning("%d training examples had labels longer than the model's "
                        "output frames and were left out of the loss",
                        int(host["infeasible"]))
      interval, interval_start, wait_time = {}, now, 0.0

    # 4. Evaluate, keep the best; checkpoint on schedule and at the end. The time
    #    this takes is left out of the next interval's examples/sec (not of the ETA).
    pause_start = time.time()
    final = step == loop.train_steps
    if step % loop.eval_every == 0 or final:
      results = _eval_and_report(trainer, eval_samples, eval_writer, step)
      if trainer.checkpoints.save_if_best(step, results["cer"]):
        logging.info("New best eval CER %.4f at step %d", results["cer"], step)
    if step % loop.checkpoint_every == 0 or final:
      path = trainer.checkpoints.save(step)
      logging.info("Saved checkpoint %s", path)
    interval_start += time.time() - pause_start

  # 5. A run resumed at or past its end only evaluates.
  if results is None:
    results, _, _ = evaluate(trainer, eval_samples)
    logging.info("Already trained to step %d: %s", start_step, format_eval(results))
  return results


def evaluate_checkpoint(cfg: Config, which: str = "latest") -> Dict[str, float]:
  """Restores a checkpoint of cfg.workdir ('latest', 'best' or a path) and evaluates."""
  trainer = setup(cfg, for_training=False)
  step = trainer.checkpoints.restore(which, expect_partial=True)
  if not step:
    raise sources.DataError(f"no checkpoint in {cfg.workdir}: train first")
  eval_samples = sources.load_samples(cfg.data, "eval", trainer.charset)
  results, _, _ = evaluate(trainer, eval_samples)
  results["step"] = step
  return results
