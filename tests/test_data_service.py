"""The tf.data service (--data_service, tools/data_service.py) and exact resume under a
distribution strategy, with real processes on 127.0.0.1.

One background job starts a dispatcher (fault tolerant: journal in its work dir), two
service workers and a two-process multi-worker run through them, all at once,
SIGKILLs one service worker mid-run, then stops the service with SIGTERM. Another kills a mirrored run (two logical CPU devices) and resumes it,
recording the keys of every training batch."""

import json
import pathlib
import re
import signal
import subprocess
import textwrap
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import train
from ctc_trainer.config import DataConfig
from ctc_trainer.data import sources
from tests.helpers import (TINY_FLAGS, background, child_env, run_main, run_process,
                           start_process)
from tests.test_distribute import _free_ports, _run_workers, assert_workers_agree

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
  """A dispatcher (on a port chosen here, so that nothing waits for it to say which)
  and two workers, all starting at once -> (address, processes, their log paths)."""
  logs = {name: root / f"{name}.log" for name in ("dispatcher", "worker1", "worker2")}
  port = _free_ports(1)[0]
  address = f"grpc://127.0.0.1:{port}"
  procs = {}

  def start(name, *args):
    with open(logs[name], "w") as log:
      procs[name] = start_process(SERVICE_TOOL, *args, "--host=127.0.0.1",
                                  stdout=log, stderr=subprocess.STDOUT)

  start("dispatcher", "--role=dispatcher", f"--port={port}",
        f"--work_dir={root / 'journal'}")
  for name in ("worker1", "worker2"):
    start(name, "--role=worker", f"--dispatcher_address={address}")
  return address, procs, logs


@background("service_runs")
def _service_runs(root, data_flags):
  """Two trainers (multi_worker) through a dispatcher and two service workers, all
  started at once; service worker 2 is SIGKILLed once the chief has logged step 10
  of 60
  -> dict: the run (workdir, what each trainer printed, the step logged when the
  worker was killed), the dispatcher's line about the lost worker, the worker's
  address, the service's logs and exit codes."""
  address, procs, logs = _start_service(root)
  try:
    chief_log = root / "chief.log"
    with open(chief_log, "w") as chief_stderr:
      # Worker 0's log goes to a file, which this thread watches for step 10
      # while the run goes on.
      runner = threading.Thread(target=lambda: results.append(_run_workers(
          root / "multi", data_flags, "--train_steps=60", "--log_every=5",
          "--learning_rate=0.01",
          "--eval_every=100", "--checkpoint_every=100",
          f"--data_service={address}", tee=chief_stderr)))
      results = []
      runner.start()
      _wait_for(logs["dispatcher"], r"data service: 2 worker\(s\) registered",
                procs["dispatcher"], timeout=280)
      killed_at = int(_wait_for(chief_log, r"step ([1-5]\d)/60", None, 280)[1])
      procs["worker2"].kill()
      runner.join(timeout=280)
    lost = _wait_for(logs["dispatcher"], r"Lost worker \S+ due to timeout", None, 60)[0]
    worker2 = _wait_for(logs["worker2"], r"worker listening on (\S+)", None)[1]
  finally:
    for name in ("dispatcher", "worker1"):
      procs[name].send_signal(signal.SIGTERM)
    codes = {name: procs[name].wait(timeout=60) for name in ("dispatcher", "worker1")}
  return {"run": (root / "multi", results[0], killed_at), "lost": (lost, worker2),
          "logs": {name: path.read_text() for name, path in logs.items()},
          "codes": codes}


def _losses(log):
  return [float(x) for x in re.findall(r"step \d+/\d+  loss ([\d.]+)", log)]


@pytest.mark.slow
def test_training_through_the_service_survives_a_lost_worker(service_runs):
  """Two service workers feed a two-trainer run; one service worker is SIGKILLed
  mid-run; the run goes on to its last step, its loss falls, and the dispatcher's
  log names the lost worker."""
  _, (chief, other), killed_at = service_runs["run"]
  lost, worker2 = service_runs["lost"]
  for trainer in (chief, other):
    assert trainer.code == 0, trainer.err[-3000:]
    assert "Training input from the tf.data service at grpc://127.0.0.1:" in trainer.err
  steps = [int(s) for s in re.findall(r"step (\d+)/60", chief.err)]
  assert steps[-1] == 60 and 10 <= killed_at < 60
  losses = _losses(chief.err)   # steps 1, 5, 10, ..., 60
  assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
  assert lost == f"Lost worker {worker2} due to timeout"


@pytest.mark.slow
def test_service_processes_say_where_they_listen_and_stop_on_sigterm(service_runs):
  logs, codes = service_runs["logs"], service_runs["codes"]
  assert re.search(r"dispatcher listening on grpc://127\.0\.0\.1:\d+ "
                   r"\(journal: \S+journal\)", logs["dispatcher"])
  assert re.search(r"worker listening on 127\.0\.0\.1:\d+ for dispatcher grpc://",
                   logs["worker1"])
  assert codes == {"dispatcher": 0, "worker1": 0}, logs
  assert "dispatcher stopped" in logs["dispatcher"]
  assert "worker stopped" in logs["worker1"]


@pytest.mark.slow
def test_multi_worker_through_the_service_ends_with_equal_weights(service_runs):
  """The two trainers of that run end with equal weights, and each saved its own
  input position: trainer i of 2 reads positions i, i + 2, ..."""
  workdir, _, _ = service_runs["run"]
  chief, other = assert_workers_agree(workdir, 60)
  # 60 steps of 4 examples per trainer: at least up to 2 * 239 + i; more where the
  # lost service worker's share was skipped.
  key = "input_position/.ATTRIBUTES/VARIABLE_VALUE"
  for index, saved in enumerate((chief, other)):
    position = int(saved.get_tensor(key))
    assert position % 2 == index and position >= 2 * 239 + index


# --- in this process -----------------------------------------------------------------

def _listed(count):
  return sources.base.ListedSource(
      [sources.base.Sample(f"/data/{i:03d}.png", "ab", "test") for i in range(count)])


def _keys(ds, n):
  return [(int(x["position"]), x["key"].decode())
          for x in ds.take(n).as_numpy_iterator()]


def test_positioned_stream_is_a_permutation_per_epoch_and_continues_exactly():
  samples, cfg = _listed(10), DataConfig(seed=3)
  stream = _keys(samples.positioned_examples(cfg, 0, None, read=False), 30)
  assert [p for p, _ in stream] == list(range(30))
  epochs = [[k for _, k in stream[i:i + 10]] for i in (0, 10, 20)]
  for epoch in epochs:
    assert sorted(epoch) == sorted(s.path for s in samples.samples)
  assert epochs[0] != epochs[1]   # each epoch its own order
  later = samples.positioned_examples(cfg, 17, None, read=False)
  assert _keys(later, 13) == stream[17:]
  # Pipeline 1 of 2 reads every other position, from its own start.
  context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
  assert _keys(samples.positioned_examples(cfg, 21, context, read=False), 4) == [
      stream[21], stream[23], stream[25], stream[27]]


def test_data_service_flags_are_checked(tiny_data, tmp_path):
  _, data_flags = tiny_data
  bad_address = run_main(train.main, f"--workdir={tmp_path / 'a'}", *TINY_FLAGS,
                         *data_flags, "--data_service=localhost:5050",
                         prog="ctc_trainer.train")
  assert bad_address.code == 1
  assert "--data_service must be grpc://HOST:PORT" in bad_address.err
  cached = run_main(train.main, f"--workdir={tmp_path / 'b'}", *TINY_FLAGS,
                    *data_flags, "--data_service=grpc://localhost:5050",
                    "--cache_decoded", prog="ctc_trainer.train")
  assert cached.code == 2, cached.err[-2000:]
  assert "--data_service works with listed samples (not --data_format=tfrecord or " \
         "--cache_decoded)" in cached.err


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
