"""tf.distribute: mirrored equals one device; multi-worker runs on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.test_cli import TINY

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
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", MIRRORED_CHECK], capture_output=True,
                        text=True, env=env, timeout=300, cwd=os.getcwd())
  assert "MIRRORED_OK" in proc.stdout, proc.stderr[-3000:]


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(tmp_path, *extra):
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  procs = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    args = [sys.executable, "-m", "ctc_trainer.train", f"--workdir={tmp_path / 'w'}",
            f"--train_data={tmp_path / 'train'}", f"--eval_data={tmp_path / 'eval'}",
            "--strategy=multi_worker", *TINY, *extra]
    procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env))
  return procs


@pytest.mark.slow
def test_multi_worker_two_processes_end_with_equal_weights(tmp_path):
  # Generate the synthetic set first so the two workers do not race to create it.
  subprocess.run([sys.executable, "-c", (
      "from ctc_trainer.config import DataConfig; from ctc_trainer.data import sources;"
      f"cfg = DataConfig(data_format='synthetic', train_data='{tmp_path / 'train'}',"
      f"eval_data='{tmp_path / 'eval'}', synthetic_train_size=64, synthetic_eval_size=16,"
      "synthetic_min_length=2, synthetic_max_length=4);"
      "sources.load_samples(cfg, 'train'); sources.load_samples(cfg, 'eval')")],
      check=True, timeout=120)
  procs = _start_workers(tmp_path, "--train_steps=4")
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  chief = tf.train.load_checkpoint(str(tmp_path / "w" / "checkpoints"))
  other = tf.train.load_checkpoint(str(tmp_path / "w" / "workers" / "worker-1" / "checkpoints"))
  names = [n for n, _ in tf.train.list_variables(str(tmp_path / "w" / "checkpoints"))
           if n.startswith("model/")]
  assert names and int(chief.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 4
  for name in names:
    np.testing.assert_array_equal(chief.get_tensor(name), other.get_tensor(name))
  assert os.listdir(tmp_path / "w" / "train")  # the chief wrote summaries


@pytest.mark.slow
def test_killed_worker_is_reported_not_a_hang(tmp_path):
  procs = _start_workers(tmp_path, "--train_steps=100000", "--worker_timeout_s=15",
                         "--eval_every=100000", "--checkpoint_every=100000")
  chief, worker = procs
  for line in chief.stderr:
    if "step 2/" in line:
      break
  start = time.time()
  worker.kill()
  _, err = chief.communicate(timeout=180)
  assert chief.returncode not in (0, None)
  assert time.time() - start < 180
  assert "worker" in err.lower() and "Traceback" not in err, err[-3000:]
