"""Reliability: non-finite guard, checkpoint fallbacks, signals, kills, exact resume."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer.checkpoints import Checkpoints
from ctc_trainer.errors import CheckpointError
from tests.helpers import build_steps, make_batch
from tests.test_cli import TINY, run


def test_nonfinite_step_is_skipped_and_reported():
  model, fns = build_steps()
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


def test_infeasible_examples_are_reported_by_key():
  _, fns = build_steps()
  # 8 columns give 2 output frames: "abc" cannot fit, "d" can.
  batch = make_batch(["abc", "d"], 8)
  batch["input_length"] = tf.constant([8, 8])
  out = fns.train_step(batch)
  assert out["infeasible_keys"].numpy().tolist() == [b"k0"]
  assert float(out["infeasible"]) == 1.0 and np.isfinite(float(out["loss_sum"]))


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


# --- whole runs in subprocesses -------------------------------------------------------

def _train_cmd(root, workdir, *extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  args = [sys.executable, "-m", "ctc_trainer.train", f"--workdir={workdir}",
          f"--train_data={root / 'train'}", f"--eval_data={root / 'eval'}", *TINY,
          *extra]
  return args, env


def _wait_for_line(proc, needle, timeout=180):
  deadline = time.time() + timeout
  for line in proc.stderr:
    if needle in line:
      return
    if time.time() > deadline:
      break
  raise AssertionError(f"never saw {needle!r}")


def test_sigterm_saves_and_resumes(tmp_path):
  args, env = _train_cmd(tmp_path, tmp_path / "w", "--train_steps=400",
                         "--checkpoint_every=1000", "--eval_every=1000")
  proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
  _wait_for_line(proc, "step 4/400")
  proc.send_signal(signal.SIGTERM)
  proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM
  saved = tf.train.latest_checkpoint(str(tmp_path / "w" / "checkpoints"))
  step = int(saved.rsplit("-", 1)[1])
  assert 4 <= step < 400
  resumed = run("ctc_trainer.train", f"--flagfile={tmp_path / 'w' / 'flags.cfg'}",
                "--train_steps=" + str(step + 2))
  assert f"Resuming at step {step} of {step + 2}" in resumed.stderr


@pytest.mark.slow
def test_three_sigkills_then_the_run_completes(tmp_path):
  workdir = tmp_path / "w"
  args, env = _train_cmd(tmp_path, workdir, "--train_steps=40", "--checkpoint_every=4",
                         "--eval_every=8")
  rng = random.Random(0)
  for _ in range(3):
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_line(proc, "step ")
    time.sleep(rng.uniform(0.0, 2.0))  # anywhere: mid-step, mid-eval, mid-save
    proc.kill()
    proc.wait()
  final = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
  assert final.returncode == 0, final.stderr[-2000:]
  assert "step 40/40" in final.stderr
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-40")
  best = tf.train.latest_checkpoint(str(workdir / "best"))
  assert best is not None
  assert any(name.startswith("model/") for name, _ in tf.train.list_variables(best))


@pytest.mark.slow
def test_deterministic_resume_equals_uninterrupted_run(tmp_path):
  common = ["--train_steps=12", "--checkpoint_every=4", "--eval_every=6",
            "--deterministic", "--dropout=0.2", "--shuffle_buffer=16"]
  args, env = _train_cmd(tmp_path, tmp_path / "straight", *common)
  subprocess.run(args, check=True, capture_output=True, env=env, timeout=300)

  args, env = _train_cmd(tmp_path, tmp_path / "broken", *common)
  proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
  _wait_for_line(proc, "step 6/12")
  proc.kill()
  proc.wait()
  assert tf.train.latest_checkpoint(str(tmp_path / "broken" / "checkpoints"))
  resumed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
  assert "Resuming at step" in resumed.stderr, resumed.stderr[-2000:]

  straight = tf.train.load_checkpoint(str(tmp_path / "straight" / "checkpoints"))
  broken = tf.train.load_checkpoint(str(tmp_path / "broken" / "checkpoints"))
  names = [n for n, _ in tf.train.list_variables(str(tmp_path / "straight" / "checkpoints"))
           if n.startswith(("model/", "rng/", "optimizer/"))]
  assert len(names) > 10
  for name in names:
    np.testing.assert_array_equal(straight.get_tensor(name), broken.get_tensor(name),
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
