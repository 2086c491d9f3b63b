"""Reliability: non-finite guard, loss-scale overflow, checkpoint fallbacks, signals,
kills and exact resume.

Kills are deterministic: the train entry point SIGKILLs itself right after a chosen
step when CTC_TRAINER_TEST_KILL_AFTER_STEP is set (train.KILL_AFTER_STEP)."""

import os
import re
import signal
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import distribute, train
from ctc_trainer.checkpoints import Checkpoints
from ctc_trainer.errors import CheckpointError
from tests.helpers import (TINY_FLAGS, Ran, background, build_parts, build_steps,
                           child_env, make_batch, run_main, run_process, start_process)


@pytest.fixture(scope="module")
def tiny_steps():
  """(model, step functions) of the tiny model, shared: each trace costs seconds."""
  return build_steps()


def test_nonfinite_step_is_skipped_and_reported(tiny_steps):
  model, fns = tiny_steps
  good = make_batch(["abc", "de"], 32)
  fns.train_step(good)
  before = [v.numpy().copy() for v in model.trainable_variables]
  bad = dict(good, inputs=tf.tensor_scatter_nd_update(
      good["inputs"], [[1, 0, 0, 0]], [np.nan]))
  out = fns.train_step(bad)
  assert float(out["skipped"]) == 1.0
  assert out["nonfinite_keys"].numpy().tolist() == [b"k0", b"k1"]
  for b, v in zip(before, model.trainable_variables):
    np.testing.assert_array_equal(b, v.numpy())
  out = fns.train_step(good)
  assert float(out["skipped"]) == 0.0 and out["nonfinite_keys"].shape == (0,)


def test_mixed_float16_overflow_lowers_the_loss_scale_and_skips_the_step():
  """A loss scale of 2^40 overflows the float16 backward pass: the loss-scale
  optimizer halves its scale and leaves the weights alone, and the step is counted
  as skipped, until the scale is low enough for an update."""
  distribute.set_precision("mixed_float16")
  try:
    model, optimizer, fns = build_parts(loss_scale=True, initial_scale=2.0**40)
    batch = make_batch(["abc", "hgf", "aab", "d"], 32)
    before = [v.numpy().copy() for v in model.trainable_variables]
    out = fns.train_step(batch)
    assert float(out["skipped"]) == 1.0
    assert float(optimizer.dynamic_scale) == 2.0**39
    assert out["nonfinite_keys"].numpy().tolist() == [b"k0", b"k1", b"k2", b"k3"]
    assert float(out["loss_sum"]) == 0.0  # a skipped step adds nothing to the mean
    for b, v in zip(before, model.trainable_variables):
      np.testing.assert_array_equal(b, v.numpy())
    skipped = [float(fns.train_step(batch)["skipped"]) for _ in range(40)]
    assert 0.0 in skipped, "the scale never came down far enough for an update"
    first_update = skipped.index(0.0)
    assert all(s == 1.0 for s in skipped[:first_update])
    assert float(optimizer.dynamic_scale) == 2.0**(39 - first_update)  # halved each
    assert any(not np.array_equal(b, v.numpy())
               for b, v in zip(before, model.trainable_variables))
  finally:
    distribute.set_precision("float32")


def test_infeasible_examples_are_reported_by_key(tiny_steps):
  _, fns = tiny_steps
  # 8 columns give 2 output frames: "abc" cannot fit, "d" can.
  batch = make_batch(["abc", "d"], 8)
  batch["input_length"] = tf.constant([8, 8])
  out = fns.train_step(batch)
  assert out["infeasible_keys"].numpy().tolist() == [b"k0"]
  assert float(out["infeasible"]) == 1.0 and np.isfinite(float(out["loss_sum"]))


def test_max_nonfinite_steps_stops_the_run(tiny_run, tmp_path):
  """A learning rate of 1e30 makes the weights non-finite after a step; every later
  step is skipped, and the third in a row stops the run with one message."""
  ran = run_main(train.main, f"--workdir={tmp_path / 'w'}", *TINY_FLAGS,
                 *tiny_run.data_flags, "--learning_rate=1e30", "--train_steps=20",
                 "--max_nonfinite_steps=3", "--log_every=2", "--eval_every=100",
                 prog="ctc_trainer.train")
  assert ran.code == 2, ran.err[-3000:]
  stopped = re.search(r"error: 3 consecutive steps had a non-finite loss or gradient "
                      r"\(limit --max_nonfinite_steps=3\); stopping at step (\d+)\.",
                      ran.err)
  assert stopped, ran.err[-3000:]
  assert int(stopped[1]) < 20   # checked at a log interval, long before the end
  assert "steps skipped for a non-finite loss or gradient" in ran.err
  assert "final eval" not in ran.out


def _checkpoints(tmp_path):
  model, _ = build_steps()
  return model, Checkpoints(str(tmp_path), 3, model)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
  model, ckpts = _checkpoints(tmp_path)
  ckpts.save(1)
  model.trainable_variables[0].assign_add(tf.ones_like(model.trainable_variables[0]))
  latest = ckpts.save(2)
  with open(latest + ".data-00000-of-00001", "r+b") as f:
    f.truncate(10)
  _, fresh = _checkpoints(tmp_path)
  assert fresh.restore("latest") == 1
  # With nothing readable at all the error says so, naming the files.
  for prefix in fresh.latest.checkpoints:
    os.truncate(prefix + ".index", 5)
  _, broken = _checkpoints(tmp_path)
  with pytest.raises(CheckpointError, match="no usable checkpoint: .*ckpt-2"):
    broken.restore("latest")


def test_full_disk_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
  _, ckpts = _checkpoints(tmp_path)
  first = ckpts.save(1)

  def no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(tf.train.Checkpoint, "_write", no_space)  # what the manager calls
  with pytest.raises(CheckpointError, match="No space left.*previous one .*ckpt-1"):
    ckpts.save(2)
  monkeypatch.undo()
  _, fresh = _checkpoints(tmp_path)
  assert fresh.latest.latest_checkpoint == first and fresh.restore("latest") == 1


# --- whole runs in child processes: the process boundary is the point ----------------
# They run as background jobs (helpers.background), started with the session.

def _train_args(workdir, data_flags, *extra):
  return ["-m", "ctc_trainer.train", f"--workdir={workdir}", *TINY_FLAGS, *data_flags,
          *extra]


@background("sigtermed")
def _sigterm_a_run(root, data_flags):
  """A long run stopped by SIGTERM once under way -> (workdir, what it printed)."""
  workdir = root / "w"
  proc = start_process(*_train_args(workdir, data_flags, "--train_steps=400",
                                    "--checkpoint_every=1000", "--eval_every=1000"),
                       stderr=subprocess.PIPE)
  try:
    for line in proc.stderr:   # under way: the log line of step 4
      if "step 4/400" in line:
        break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  return workdir, Ran(proc.returncode, "", err)


def test_sigterm_saves_and_resumes(sigtermed):
  workdir, stopped = sigtermed
  assert stopped.code == 128 + signal.SIGTERM, stopped.err[-3000:]
  assert "stopped by SIGTERM at step" in stopped.err
  saved = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
  step = int(saved.rsplit("-", 1)[1])
  assert 4 <= step < 400
  resumed = run_main(train.main, f"--flagfile={workdir / 'flags.cfg'}",
                     f"--train_steps={step + 2}", prog="ctc_trainer.train")
  assert resumed.code == 0, resumed.err[-3000:]
  assert f"Resuming at step {step} of {step + 2}" in resumed.err


# One straight run, and the same run killed twice and resumed; both with
# --deterministic, dropout and shuffling, so that the end states can be compared.
CHAIN_FLAGS = ["--train_steps=12", "--checkpoint_every=4", "--eval_every=6",
               "--deterministic", "--dropout=0.2", "--shuffle_buffer=16"]
KILLS = (6, 8)   # after an eval with steps 5-6 unsaved; right after a save


@background("killed_and_straight")
def _kill_and_resume(root, data_flags):
  """-> (workdir of the killed run, what each launch printed, workdir of the
  straight run)."""
  straight_log = open(root / "straight.log", "w")
  straight = start_process(*_train_args(root / "straight", data_flags, *CHAIN_FLAGS),
                           stdout=straight_log, stderr=subprocess.STDOUT)
  workdir, launches = root / "killed", []
  try:
    for kill_step in KILLS:
      launches.append(run_process(
          *_train_args(workdir, data_flags, *CHAIN_FLAGS), check=False,
          env=child_env(**{train.KILL_AFTER_STEP: str(kill_step)})))
    # What a kill during the step 12 save leaves: files the `checkpoint` index does
    # not name yet. The next run must ignore them and then write over them.
    for suffix in (".index", ".data-00000-of-00001"):
      (workdir / "checkpoints" / f"ckpt-12{suffix}").write_bytes(b"cut short")
    launches.append(run_process(*_train_args(workdir, data_flags, *CHAIN_FLAGS),
                                check=False))
    assert straight.wait(timeout=280) == 0, (root / "straight.log").read_text()[-3000:]
  finally:
    straight.kill()
    straight_log.close()
  return workdir, launches, root / "straight"


@pytest.mark.slow
def test_two_sigkills_then_the_run_completes(killed_and_straight):
  workdir, launches, _ = killed_and_straight
  resumed_from = [None, 4, 8]   # the last checkpoint before each launch
  for launch, step, kill in zip(launches, resumed_from, KILLS + (None,)):
    expected_code = -signal.SIGKILL if kill else 0
    assert launch.code == expected_code, launch.err[-3000:]
    if step:
      assert f"Resuming at step {step} of 12" in launch.err
    else:
      assert "Resuming" not in launch.err
  assert "step 12/12" in launches[-1].err
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-12")
  best = tf.train.latest_checkpoint(str(workdir / "best"))
  assert best is not None
  assert any(name.startswith("model/") for name, _ in tf.train.list_variables(best))


@pytest.mark.slow
def test_deterministic_resume_equals_uninterrupted_run(killed_and_straight):
  workdir, _, straight_dir = killed_and_straight
  straight = tf.train.load_checkpoint(str(straight_dir / "checkpoints"))
  killed = tf.train.load_checkpoint(str(workdir / "checkpoints"))
  assert tf.train.latest_checkpoint(str(straight_dir / "checkpoints")).endswith("ckpt-12")
  names = [n for n, _ in tf.train.list_variables(str(straight_dir / "checkpoints"))
           if n.startswith(("model/", "rng/", "optimizer/"))]
  assert len(names) > 10
  for name in names:
    np.testing.assert_array_equal(straight.get_tensor(name), killed.get_tensor(name),
                                  err_msg=name)


def test_best_cer_survives_a_crash_between_best_and_latest(tmp_path):
  """A new best saved after the latest checkpoint (then a crash) must still bound
  what counts as a better model after resuming, or best/ regresses."""
  _, ckpts = _checkpoints(tmp_path)
  ckpts.save(1)                           # latest: best_cer still inf
  assert ckpts.save_if_best(2, 0.10)      # best/: 0.10; then the process dies
  _, resumed = _checkpoints(tmp_path)
  assert resumed.restore("latest") == 1
  assert float(resumed.best_cer) == pytest.approx(0.10)
  assert not resumed.save_if_best(3, 0.20)
  assert resumed.save_if_best(4, 0.05)


def test_logged_mean_loss_leaves_out_skipped_steps():
  """A skipped step adds neither loss nor examples to the logged mean."""
  from ctc_trainer import loop, metrics  # pylint: disable=import-outside-toplevel
  _, fns = build_steps()
  good = make_batch(["abc", "de"], 32)
  bad = dict(good, inputs=tf.tensor_scatter_nd_update(
      good["inputs"], [[1, 0, 0, 0]], [np.nan]))
  padding = {"valid_columns": tf.constant(1.0), "padded_columns": tf.constant(1.0)}
  outputs = [fns.train_step(good), fns.train_step(bad)]
  sums = {}
  for out in outputs:
    out = {k: v for k, v in out.items() if not k.endswith("_keys")}
    sums = metrics.add_sums(sums, dict(out, **padding))
  host = {k: float(v) for k, v in sums.items()}
  first = outputs[0]
  expected = float(first["loss_sum"]) / float(first["examples"])
  scalars = loop.train_scalars(host, steps=2, elapsed=1.0, wait=0.0)
  assert scalars["skipped_steps"] == 1.0
  assert scalars["loss"] == pytest.approx(expected)
  assert scalars["examples_per_sec"] == 4.0   # both batches were read
