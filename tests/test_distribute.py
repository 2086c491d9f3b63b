"""tf.distribute: mirrored equals one device; multi-worker runs on 127.0.0.1.

These start child processes: logical CPU devices must be set before TensorFlow
starts, and the workers of a multi-worker run are processes."""

import json
import os
import signal
import socket
import subprocess
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import train
from tests.helpers import (TINY_FLAGS, Ran, background, child_env, run_process,
                           start_process)

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
      fns = steps.make_step_fns(model, optimizer, CHARSET, strategy,
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


@background("mirrored")
def _mirrored_check(root, data_flags):
  """MIRRORED_CHECK in a child process -> what it printed."""
  return run_process("-c", MIRRORED_CHECK, check=False)


def test_mirrored_two_cpus_matches_one_device(mirrored):
  assert "MIRRORED_OK" in mirrored.out, mirrored.err[-3000:]


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _run_workers(workdir, data_flags, *extra, worker_env=(), tee=None):
  """Two workers to their end, on the tiny set (already generated, so they do not
  race to write it) -> what each printed. worker_env: extra environment of worker 1.
  tee: a file open for writing that worker 0's stderr goes to (read back after),
  for a caller that watches it while the run goes on."""
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  procs = []
  for index in range(2):
    env = child_env(TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}),
        **(dict(worker_env) if index == 1 else {}))
    procs.append(start_process(
        "-m", "ctc_trainer.train", f"--workdir={workdir}", *TINY_FLAGS, *data_flags,
        "--strategy=multi_worker", *extra, env=env, stdout=subprocess.PIPE,
        stderr=tee if tee is not None and index == 0 else subprocess.PIPE))
  try:
    outs = [p.communicate(timeout=280) for p in procs]
  finally:
    for p in procs:
      p.kill()
  if tee is not None:
    tee.flush()
    outs[0] = (outs[0][0], open(tee.name).read())
  return [Ran(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def assert_workers_agree(workdir, step):
  """A two-worker run's checkpoints (the chief's and worker 1's) are both at `step`
  with equal model weights -> (the chief's, worker 1's) checkpoint readers."""
  chief = tf.train.load_checkpoint(str(workdir / "checkpoints"))
  other = tf.train.load_checkpoint(str(workdir / "workers" / "worker-1" / "checkpoints"))
  names = [n for n, _ in tf.train.list_variables(str(workdir / "checkpoints"))
           if n.startswith("model/")]
  assert names and int(chief.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == step
  for name in names:
    np.testing.assert_array_equal(chief.get_tensor(name), other.get_tensor(name))
  return chief, other


@background("killed_worker")
def _kill_a_worker(root, data_flags):
  """A long two-worker run that checkpoints at step 3, whose worker 1 is SIGKILLed
  right after it -> (its workdir, what each worker printed, seconds until both had
  ended). The data-service test runs two workers to their end."""
  start = time.time()
  workers = _run_workers(root / "w", data_flags, "--train_steps=100000",
                         "--worker_timeout_s=15", "--eval_every=100000",
                         "--checkpoint_every=3",
                         worker_env={train.KILL_AFTER_STEP: "3"})
  return root / "w", workers, time.time() - start


@pytest.mark.slow
def test_multi_worker_two_processes_checkpoint_equal_weights(killed_worker):
  """Both workers saved step 3 (worker 1 in its own folder) with equal weights, and
  the chief wrote the summaries."""
  workdir, _, _ = killed_worker
  assert_workers_agree(workdir, 3)
  assert os.listdir(workdir / "train")


@pytest.mark.slow
def test_killed_worker_is_reported_not_a_hang(killed_worker):
  """The chief stops at step 4 with the message docs/reliability.md gives, not a
  traceback or a hang."""
  _, (chief, worker), seconds = killed_worker
  assert worker.code == -signal.SIGKILL
  assert chief.code == 2, chief.err[-3000:]
  assert ("error: lost contact with another worker during step 4: " in chief.err
          and "Restart all workers; they resume from the last checkpoint" in chief.err)
  assert "Traceback" not in chief.err
  assert seconds < 180
