"""The tf.data service (--data_service, tools/data_service.py) and exact resume under a
distribution strategy, with real processes on 127.0.0.1.

One background job starts a dispatcher (fault tolerant: journal in its work dir) and
two workers, trains a two-process multi-worker run through them, then a one-process
run during which one service worker is SIGKILLed, then stops the service with
SIGTERM. Another kills a mirrored run (two logical CPU devices) and resumes it,
recording the keys of every training batch."""

import json
import pathlib
import re
import signal
import subprocess
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import train
from tests.helpers import (TINY_FLAGS, Ran, background, child_env, run_process,
                           start_process)
from tests.test_distribute import _run_workers

SERVICE_TOOL = "tools/data_service.py"


def _wait_for(path, pattern, proc, timeout=150):
  """The first match of `pattern` in the file at `path`, once it is written there."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    found = re.search(pattern, path.read_text())
    if found:
      return found
    if proc is not None and proc.poll() is not None:
      break
    time.sleep(0.3)
  raise AssertionError(f"no {pattern!r} in {path}:\n{path.read_text()[-3000:]}")


def _start_service(root):
  """A dispatcher and two workers -> (address, processes, their log paths)."""
  logs = {name: root / f"{name}.log" for name in ("dispatcher", "worker1", "worker2")}
  procs = {}

  def start(name, *args):
    with open(logs[name], "w") as log:
      procs[name] = start_process(SERVICE_TOOL, *args, "--host=127.0.0.1",
                                  stdout=log, stderr=subprocess.STDOUT)

  start("dispatcher", "--role=dispatcher", f"--work_dir={root / 'journal'}")
  address = _wait_for(logs["dispatcher"], r"dispatcher listening on (grpc://\S+)",
                      procs["dispatcher"])[1]
  for name in ("worker1", "worker2"):
    start(name, "--role=worker", f"--dispatcher_address={address}")
  _wait_for(logs["dispatcher"], r"data service: 2 worker\(s\) registered",
            procs["dispatcher"])
  return address, procs, logs


@background("service_runs")
def _service_runs(root, data_flags):
  """-> dict: the multi-worker run (workdir, workers), the run that lost a service
  worker (what it printed, the step logged when the worker was killed), the
  service's logs and exit codes."""
  address, procs, logs = _start_service(root)
  service_flags = [f"--data_service={address}"]
  try:
    multi = _run_workers(root / "multi", data_flags, "--train_steps=4", *service_flags)
    trainer_log = root / "trainer.log"
    with open(trainer_log, "w") as log:
      trainer = start_process(
          "-m", "ctc_trainer.train", f"--workdir={root / 'lost'}", *TINY_FLAGS,
          *data_flags, *service_flags, "--train_steps=500", "--log_every=20",
          "--eval_every=100000", "--checkpoint_every=100000", stdout=log,
          stderr=subprocess.STDOUT)
    killed_at = int(_wait_for(trainer_log, r"step (\d+)/500", trainer)[1])
    procs["worker2"].kill()
    code = trainer.wait(timeout=240)
    lost = _wait_for(logs["dispatcher"], r"Lost worker \S+ due to timeout", None, 60)[0]
    worker2 = _wait_for(logs["worker2"], r"worker listening on (\S+)", None)[1]
  finally:
    for name in ("dispatcher", "worker1"):
      procs[name].send_signal(signal.SIGTERM)
    codes = {name: procs[name].wait(timeout=60) for name in ("dispatcher", "worker1")}
  return {"multi": (root / "multi", multi),
          "lost": (Ran(code, "", trainer_log.read_text()), killed_at, lost, worker2),
          "logs": {name: path.read_text() for name, path in logs.items()},
          "codes": codes}


def _losses(log):
  return [float(x) for x in re.findall(r"step \d+/\d+  loss ([\d.]+)", log)]


@pytest.mark.slow
def test_training_through_the_service_survives_a_lost_worker(service_runs):
  """Two service workers feed a run; one is SIGKILLed mid-run; the run goes on to its
  last step, its loss falls, and the dispatcher's log names the lost worker."""
  ran, killed_at, lost, worker2 = service_runs["lost"]
  assert ran.code == 0, ran.err[-3000:]
  assert "Training input from the tf.data service at grpc://127.0.0.1:" in ran.err
  steps = [int(s) for s in re.findall(r"step (\d+)/500", ran.err)]
  assert steps[-1] == 500 and killed_at < 500
  assert len([s for s in steps if s > killed_at]) >= 3   # trained on after the loss
  losses = _losses(ran.err)
  assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
  assert lost == f"Lost worker {worker2} due to timeout"


@pytest.mark.slow
def test_service_processes_say_where_they_listen_and_stop_on_sigterm(service_runs):
  logs, codes = service_runs["logs"], service_runs["codes"]
  assert re.search(r"dispatcher listening on grpc://127\.0\.0\.1:\d+ \(journal: \S+journal\)",
                   logs["dispatcher"])
  assert re.search(r"worker listening on 127\.0\.0\.1:\d+ for dispatcher grpc://",
                   logs["worker1"])
  assert codes == {"dispatcher": 0, "worker1": 0}, logs
  assert "dispatcher stopped" in logs["dispatcher"]
  assert "worker stopped" in logs["worker1"]


@pytest.mark.slow
def test_multi_worker_through_the_service_ends_with_equal_weights(service_runs):
  workdir, workers = service_runs["multi"]
  for worker in workers:
    assert worker.code == 0, worker.err[-3000:]
    assert "Training input from the tf.data service" in worker.err
  chief = tf.train.load_checkpoint(str(workdir / "checkpoints"))
  other = tf.train.load_checkpoint(str(workdir / "workers" / "worker-1" / "checkpoints"))
  names = [n for n, _ in tf.train.list_variables(str(workdir / "checkpoints"))
           if n.startswith("model/")]
  assert names and int(chief.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 4
  for name in names:
    np.testing.assert_array_equal(chief.get_tensor(name), other.get_tensor(name))
  # Each worker saved its own input position: pipeline i of 2 reads positions
  # i, i + 2, ...; 4 steps of 4 examples per worker end at 30 and 31.
  key = "input_position/.ATTRIBUTES/VARIABLE_VALUE"
  assert (int(chief.get_tensor(key)), int(other.get_tensor(key))) == (30, 31)


# --- mirrored: killed and resumed, no example twice within an epoch -------------------

RECORDING_TRAIN = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from absl import app
    from ctc_trainer import loop, train

    record, args = sys.argv[1], sys.argv[2:]
    next_batch = loop._next_batch

    def recording(iterator, samples, cfg):
      # Each training batch's keys, replica by replica (the stream's order).
      batch = next_batch(iterator, samples, cfg)
      if samples.count() == 64:   # the training set, not the eval set
        keys = batch["key"]
        parts = keys.values if hasattr(keys, "values") else (keys,)
        with open(record, "a") as f:
          f.write(json.dumps([k.decode() for p in parts for k in p.numpy()]) + "\\n")
      return batch

    loop._next_batch = recording
    sys.argv = ["ctc_trainer.train", *args]
    app.run(train.main)
""")
MIRRORED_FLAGS = ["--strategy=mirrored", "--train_steps=12", "--checkpoint_every=4",
                  "--eval_every=100", "--bucket_boundaries=none", "--log_every=4"]


@background("mirrored_resume")
def _mirrored_kill_and_resume(root, data_flags):
  """A mirrored run killed after step 6 (last checkpoint: step 4), then resumed to
  step 12 -> (what each launch printed, the keys of each launch's batches, the
  training set's keys)."""
  workdir = root / "w"
  args = [f"--workdir={workdir}", *TINY_FLAGS, *data_flags, *MIRRORED_FLAGS]
  launches, records = [], []
  for index, env in enumerate([{train.KILL_AFTER_STEP: "6"}, {}]):
    record = root / f"keys{index}.jsonl"
    launches.append(run_process("-c", RECORDING_TRAIN, record, *args, check=False,
                                env=child_env(**env)))
    records.append([json.loads(line) for line in record.read_text().splitlines()])
  train_folder = pathlib.Path(data_flags[0].split("=", 1)[1])
  return launches, records, {str(p) for p in train_folder.glob("*.png")}


@pytest.mark.slow
def test_mirrored_resume_sees_no_example_twice_within_an_epoch(mirrored_resume):
  (killed, resumed), (first, second), train_keys = mirrored_resume
  assert killed.code == -signal.SIGKILL, killed.err[-3000:]
  assert resumed.code == 0, resumed.err[-3000:]
  assert "Resuming at step 4 of 12" in resumed.err
  # 4 steps of 8 examples: positions 0..31 trained on and saved.
  assert "The input continues after stream position 31 (epoch 0)" in resumed.err
  assert len(first) == 6 and len(second) == 8
  assert all(len(batch) == 8 for batch in first + second)
  # What the model was trained on: the first launch up to its checkpoint, then the
  # resumed launch. The 64 examples of the first epoch each once, then 32 distinct
  # ones of the second.
  trained = [k for batch in first[:4] + second for k in batch]
  assert len(train_keys) == 64
  assert sorted(trained[:64]) == sorted(train_keys)
  assert len(set(trained[64:])) == 32
  # And the killed launch's unsaved steps 5 and 6 are what the resumed one trains
  # on first: the same positions, from the same checkpointed place.
  assert second[:2] == first[4:6]
