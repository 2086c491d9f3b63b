"""tf.distribute: mirrored equals one device; multi-worker runs on 127.0.0.1.

These start child processes: logical CPU devices must be set before TensorFlow
starts, and the workers of a multi-worker run are processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import train
from tests.helpers import TINY_FLAGS, child_env, run_process

MIRRORED_CHECK = textwrap.dedent("""
    import numpy as np, keras, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from ctc_trainer import distribute, models, steps
    from ctc_trainer.data import pipeline
    from tests.helpers import CHARSET, HEIGHT, TINY_MODEL, make_batch

    batch = make_batch(["abc", "hgf", "aab", "d"], 32, seed=7)
    signature = pipeline.batch_signature(1, HEIGHT)

    def one_step(strategy, batch_for_step):
      keras.utils.set_random_seed(1)
      with strategy.scope():
        model = models.build(TINY_MODEL, CHARSET.num_classes, (HEIGHT, None, 1))
        optimizer = keras.optimizers.SGD(learning_rate=1.0)
        optimizer.build(model.trainable_variables)
      before = [v.numpy().copy() for v in model.trainable_variables]
      fns = steps.make_steps(model, optimizer, CHARSET, strategy,
                             distribute.distributed_spec(strategy, signature),
                             global_batch_size=4, clip_norm=0.5, beam_width=4)
      out = fns.train_step(batch_for_step(strategy))
      grads = [b - v.numpy() for b, v in zip(before, model.trainable_variables)]
      return float(out["loss_sum"]), float(out["grad_norm"]), grads

    single = one_step(tf.distribute.get_strategy(), lambda s: batch)
    mirrored_strategy = distribute.make_strategy("mirrored")
    assert mirrored_strategy.num_replicas_in_sync == 2
    split = lambda s: next(iter(s.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).unbatch().batch(4))))
    mirrored = one_step(mirrored_strategy, split)
    np.testing.assert_allclose(mirrored[0], single[0], rtol=1e-5)
    np.testing.assert_allclose(mirrored[1], single[1], rtol=1e-5)
    assert single[1] > 0.5  # clipping was active: it must use the global norm
    for a, b in zip(mirrored[2], single[2]):
      np.testing.assert_allclose(a, b, atol=1e-5)
    print("MIRRORED_OK", single[0], mirrored[0])
""")


def test_mirrored_two_cpus_matches_one_device():
  ran = run_process("-c", MIRRORED_CHECK, check=False)
  assert "MIRRORED_OK" in ran.out, ran.err[-3000:]


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(tiny_run, workdir, *extra, worker_env=()):
  """Two workers on the tiny run's data (already generated, so they do not race to
  write it). worker_env: extra environment for worker 1."""
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  procs = []
  for index in range(2):
    env = child_env(TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}),
        **(dict(worker_env) if index == 1 else {}))
    args = [sys.executable, "-m", "ctc_trainer.train", f"--workdir={workdir}",
            *TINY_FLAGS, *tiny_run.data_flags, "--strategy=multi_worker", *extra]
    procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env))
  return procs


def _communicate(procs, timeout):
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()


@pytest.mark.slow
def test_multi_worker_two_processes_end_with_equal_weights(tiny_run, tmp_path):
  workdir = tmp_path / "w"
  procs = _start_workers(tiny_run, workdir, "--train_steps=4")
  outs = _communicate(procs, timeout=280)
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  chief = tf.train.load_checkpoint(str(workdir / "checkpoints"))
  other = tf.train.load_checkpoint(str(workdir / "workers" / "worker-1" / "checkpoints"))
  names = [n for n, _ in tf.train.list_variables(str(workdir / "checkpoints"))
           if n.startswith("model/")]
  assert names and int(chief.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 4
  for name in names:
    np.testing.assert_array_equal(chief.get_tensor(name), other.get_tensor(name))
  assert os.listdir(workdir / "train")  # the chief wrote summaries


@pytest.mark.slow
def test_killed_worker_is_reported_not_a_hang(tiny_run, tmp_path):
  """Worker 1 is SIGKILLed right after step 3; the chief stops at step 4 with the
  message docs/reliability.md gives, not a traceback or a hang."""
  procs = _start_workers(tiny_run, tmp_path / "w", "--train_steps=100000",
                         "--worker_timeout_s=15", "--eval_every=100000",
                         "--checkpoint_every=100000",
                         worker_env={train.KILL_AFTER_STEP: "3"})
  start = time.time()
  (_, chief_err), _ = _communicate(procs, timeout=280)
  chief, worker = procs
  assert worker.returncode == -signal.SIGKILL
  assert chief.returncode == 2, chief_err[-3000:]
  assert ("error: lost contact with another worker during step 4: " in chief_err
          and "Restart all workers; they resume from the last checkpoint" in chief_err)
  assert "Traceback" not in chief_err
  assert time.time() - start < 180
