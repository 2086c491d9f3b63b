"""Early stopping, the on-plateau learning rate and the weights' moving average
(--early_stop_patience, --lr_plateau_factor/--lr_plateau_patience, --ema_decay), on
the tiny synthetic set."""

import math
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from ctc_trainer import checkpoints, config, loop, models
from ctc_trainer.data import sources
from tests.helpers import CHARSET, HEIGHT, TINY_FLAGS, TINY_MODEL, once


def tiny_config(tiny_data, workdir, *extra) -> config.Config:
  """The Config of TINY_FLAGS on the tiny set in `workdir`, `extra` flags last."""
  _, data_flags = tiny_data
  with flagsaver.flagsaver():
    flags.FLAGS(["test", f"--workdir={workdir}", *TINY_FLAGS, *data_flags, *extra])
    return config.from_flags()


def checkpoint_step(path) -> int:
  return int(tf.train.load_variable(path, "step/.ATTRIBUTES/VARIABLE_VALUE"))


def restored(cfg, which):
  """A training build of cfg's run with checkpoint `which` restored, as resume
  does (trained weights in the model, the average in the optimizer)."""
  run = loop.build_run(cfg)
  assert run.checkpoints.restore(which)
  return run


def values(variables):
  return [v.numpy() for v in variables]


# --- early stopping and the plateau cut -------------------------------------------

# The hand-made eval's CER at each evaluation: the best comes at the second.
CERS = (0.5, 0.4, 0.45, 0.6, 0.7, 0.8, 0.9, 0.95)


@pytest.fixture(scope="module")
def stopped_early(tiny_data, tmp_path_factory):
  """A run evaluated every step by a hand-made eval (CERS) with patience 2 and a
  plateau cut of 0.5 after each evaluation without a better CER -> (cfg, the
  steps the eval was called at). Run once per session."""
  def make(folder):
    cfg = tiny_config(tiny_data, folder, "--train_steps=30", "--eval_every=1",
                      "--checkpoint_every=100", "--early_stop_patience=2",
                      "--lr_plateau_factor=0.5", "--lr_plateau_patience=1")
    called = []

    def fake_eval(run, eval_samples, writer, step):
      called.append(step)
      return {"cer": CERS[len(called) - 1]}

    with mock.patch.object(loop, "_eval_and_report", fake_eval):
      loop.train_and_evaluate(cfg)
    return cfg, called
  return once(tmp_path_factory, "stopped_early", make)


def test_early_stopping_stops_within_patience_of_the_best(stopped_early):
  cfg, called = stopped_early
  patience, every = cfg.loop.early_stop_patience, cfg.loop.eval_every
  best_step = called[int(np.argmin(CERS[:len(called)]))]
  latest = tf.train.latest_checkpoint(f"{cfg.workdir}/checkpoints")
  assert checkpoint_step(latest) == called[-1] <= best_step + patience * every
  assert called[-1] < cfg.loop.train_steps
  assert checkpoint_step(tf.train.latest_checkpoint(f"{cfg.workdir}/best")) == best_step


def test_a_run_that_stopped_early_does_not_train_on(stopped_early):
  cfg, _ = stopped_early
  latest = tf.train.latest_checkpoint(f"{cfg.workdir}/checkpoints")
  with mock.patch.object(loop, "_eval_and_report") as fake_eval:
    loop.train_and_evaluate(cfg)
  fake_eval.assert_not_called()
  assert tf.train.latest_checkpoint(f"{cfg.workdir}/checkpoints") == latest


def test_the_plateau_cut_lowers_the_learning_rate_and_is_restored(stopped_early):
  cfg, called = stopped_early
  stale = len(called) - 1 - int(np.argmin(CERS[:len(called)]))
  run = restored(cfg, "latest")
  assert stale > 0 and learning_rate(run) == pytest.approx(
      cfg.optim.learning_rate * cfg.optim.lr_plateau_factor ** stale)


def learning_rate(run) -> float:
  return float(tf.convert_to_tensor(run.optimizer.learning_rate))


def first_batch(run):
  samples = sources.load_samples(run.cfg.data, "train", run.charset)
  return next(loop.make_iterator(run, "train", samples))


@pytest.mark.parametrize("schedule", ["constant", "warmup_cosine"])
def test_a_cut_does_not_retrace_train_step(tiny_data, tmp_path, schedule):
  cfg = tiny_config(tiny_data, tmp_path, "--lr_plateau_factor=0.5", "--ema_decay=0.9",
                    f"--lr_schedule={schedule}", "--warmup_steps=1", "--train_steps=8")
  run = loop.build_run(cfg)
  batch = first_batch(run)
  run.step_fns.train_step(batch)
  uncut = learning_rate(run)
  loop.cut_learning_rate(run, 0.25)
  assert learning_rate(run) == pytest.approx(0.25 * uncut) and uncut > 0
  before = values(run.model.trainable_variables)
  run.step_fns.train_step(batch)
  assert run.step_fns.train_step.experimental_get_tracing_count() == 1
  assert any((a != b).any() for a, b in zip(before, values(run.model.trainable_variables)))


# --- the moving average ------------------------------------------------------------

@pytest.fixture(scope="module")
def ema_run(tiny_data, tmp_path_factory):
  """The Config of a 6-step run with --ema_decay=0.9, trained once per session."""
  def make(folder):
    cfg = tiny_config(tiny_data, folder, "--train_steps=6", "--ema_decay=0.9")
    loop.train_and_evaluate(cfg)
    return cfg
  return once(tmp_path_factory, "ema_run", make)


def test_ema_eval_differs_from_raw_eval(ema_run):
  run = restored(ema_run, "latest")
  samples = sources.load_samples(ema_run.data, "eval", run.charset)
  trained = values(run.model.trainable_variables)
  raw, _, _ = loop.evaluate(run, samples)
  with loop.averaged_weights(run):
    averaged, _, _ = loop.evaluate(run, samples)
  assert not math.isclose(raw["loss"], averaged["loss"], rel_tol=1e-6)
  for before, after in zip(trained, values(run.model.trainable_variables)):
    np.testing.assert_array_equal(before, after)   # training goes on from these


def test_best_and_export_hold_the_ema_weights(ema_run):
  best = tf.train.latest_checkpoint(f"{ema_run.workdir}/best")
  step = checkpoint_step(best)
  at_best = restored(ema_run, f"{ema_run.workdir}/checkpoints/ckpt-{step}")
  trained = values(at_best.model.trainable_variables)
  with loop.averaged_weights(at_best):
    averaged = values(at_best.model.trainable_variables)
  # best/'s model slot itself holds the average, not the trained weights.
  from_best = values(restored(ema_run, "best").model.trainable_variables)
  for ema, saved, raw in zip(averaged, from_best, trained):
    np.testing.assert_array_equal(ema, saved)
  assert any((a != b).any() for a, b in zip(averaged, trained))
  # What evaluate, predict and export restore: the latest average.
  latest = restored(ema_run, "latest")
  with loop.averaged_weights(latest):
    expected = values(latest.model.trainable_variables)
  served, _ = loop.restore_trained(ema_run, "latest")
  for a, b in zip(expected, values(served.model.trainable_variables)):
    np.testing.assert_array_equal(a, b)


# --- checkpoints from before ---------------------------------------------------------

def test_turning_on_the_plateau_cuts_resumes_a_run(tiny_data, tmp_path):
  flags = ("--train_steps=3", "--warmup_steps=1", "--lr_schedule=warmup_cosine")
  cfg = tiny_config(tiny_data, tmp_path, *flags)
  run = loop.build_run(cfg)
  run.step_fns.train_step(first_batch(run))   # past the warmup: a rate above 0
  run.checkpoints.save(1)
  rate = learning_rate(run)
  assert rate > 0
  resumed = restored(tiny_config(tiny_data, tmp_path, *flags, "--lr_plateau_factor=0.5"),
                     "latest")
  assert learning_rate(resumed) == pytest.approx(rate)


def test_a_checkpoint_without_the_counters_restores(tmp_path):
  model = models.build(TINY_MODEL, CHARSET.num_classes, (HEIGHT, None, 1))
  # The layout written before best_step and stale_evals.
  step = tf.Variable(7, dtype=tf.int64)
  old = tf.train.Checkpoint(
      step=step, best_cer=tf.Variable(0.25, dtype=tf.float64),
      model=tf.train.Checkpoint(net=model, weights=list(model.weights)),
      rng=checkpoints.rng_states(model))
  path = old.save(str(tmp_path / "checkpoints" / "ckpt"))
  restoring = checkpoints.Checkpoints(str(tmp_path), 1, model)
  assert restoring.restore(path) == 7
  assert float(restoring.best_cer) == 0.25 and int(restoring.stale_evals) == 0
