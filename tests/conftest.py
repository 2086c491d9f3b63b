"""Session fixtures: the tiny synthetic set is generated once, the tiny OCR run
trained once and exported once per test session, also when pytest-xdist runs the
suite in several worker processes (tests that change a run work on a copy of it);
background jobs of child processes start with the session, in one worker."""

import concurrent.futures
import os
import pathlib
import pickle
import time

# Quiet TensorFlow's C++ logs in test output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from ctc_trainer import loop, train  # noqa: E402
from tests.helpers import (BACKGROUND, TINY_FLAGS, TinyRun, kill_children,  # noqa: E402
                           load_tool, make_tiny_data, once, run_main, shared_root)

# The tests' own processes run their graphs without TensorFlow's graph optimizer
# (grappler): it rewrites each function on its first call, which adds to every test's
# first trace, and nothing a test asserts depends on it. Child processes (the CLIs, a
# SavedModel loaded by TensorFlow alone, multi-worker runs) and every benchmark run
# with it on.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

# How long a worker waits for a job that another worker runs; each job's own child
# processes time out before this.
WAIT_S = 600


def pytest_collection_modifyitems(items):
  """Tests that wait for a background job run last, so that their jobs overlap with
  every in-process test; the order is kept otherwise."""
  items.sort(key=lambda item: any(name in BACKGROUND for name in item.fixturenames))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
  """-> (root holding the tiny set's train/ and eval/, the flags that name them)."""
  return once(tmp_path_factory, "tiny", lambda root: (root, make_tiny_data(root)))


class _Shared:
  """A background job another worker runs: waits for the result it writes."""

  def __init__(self, path: pathlib.Path):
    self._path = path

  def result(self):
    deadline = time.monotonic() + WAIT_S
    while not self._path.exists():
      if time.monotonic() > deadline:
        raise TimeoutError(f"no result from the worker running {self._path.stem}")
      time.sleep(0.5)
    outcome, value = pickle.loads(self._path.read_bytes())
    if outcome == "error":
      raise RuntimeError(f"background job {self._path.stem} failed: {value}")
    return value


def _run_and_share(job, root, data_flags, path: pathlib.Path):
  """Runs job in this worker, leaving its result (or its error) for the others."""
  try:
    value = job(root, data_flags)
  except BaseException as error:
    path.with_suffix(".tmp").write_bytes(pickle.dumps(("error", repr(error))))
    path.with_suffix(".tmp").replace(path)
    raise
  path.with_suffix(".tmp").write_bytes(pickle.dumps(("ok", value)))
  path.with_suffix(".tmp").replace(path)
  return value


@pytest.fixture(scope="session", autouse=True)
def background_jobs(request, tmp_path_factory):
  """Starts the background jobs (helpers.background) whose fixtures the selected
  tests use -> {fixture name: a Future-like of the job's result}. The first worker of
  the session to get here runs them all; the others wait for the results it shares.
  Its child processes are killed when its session ends, after the jobs have."""
  used = {name for item in request.session.items for name in item.fixturenames}
  wanted = [name for name in BACKGROUND if name in used]
  if not wanted:
    yield {}
    return
  _, data_flags = request.getfixturevalue("tiny_data")
  shared = shared_root(tmp_path_factory) / "background"
  shared.mkdir(exist_ok=True)
  try:
    os.close(os.open(shared / "owner", os.O_CREAT | os.O_EXCL))
  except FileExistsError:
    yield {name: _Shared(shared / f"{name}.pickle") for name in wanted}
    return
  executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)
  futures = {name: executor.submit(_run_and_share, BACKGROUND[name],
                                   tmp_path_factory.mktemp(name), data_flags,
                                   shared / f"{name}.pickle") for name in wanted}
  yield futures
  # Another worker may still be waiting for a job: let the jobs end first (each
  # bounds its own children), unless pytest is stopping early.
  stopping = request.session.shouldstop or request.session.shouldfail
  executor.shutdown(wait=not stopping, cancel_futures=bool(stopping))
  kill_children()


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> TinyRun:
  """The train CLI, in this process, on the tiny synthetic set for 6 steps.

  Shared by every test that reads a trained run; one that writes to a run copies
  its workdir first (shutil.copytree).
  """
  def make(_):
    run = TinyRun(*tiny_data)
    run.ran = run_main(train.main, f"--workdir={run.workdir}", "--train_steps=6",
                       *TINY_FLAGS, *run.data_flags, prog="ctc_trainer.train")
    assert run.ran.code == 0, run.ran.err[-3000:]
    return run
  return once(tmp_path_factory, "tiny_run", make)


@pytest.fixture(scope="session")
def restored(tiny_run):
  """The tiny run's latest checkpoint restored in this process -> (loop.Run, step).
  Its eval step decodes with beam and greedy; tests read it, none trains it."""
  return loop.restore_trained(tiny_run.config(), "latest")


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
  """The tiny run's latest checkpoint exported by tools/export_savedmodel.py (in this
  process), through its parity gate -> the export folder, alone in its parent."""
  def make(folder):
    export_dir = folder / "export"
    ran = run_main(load_tool("export_savedmodel").main, f"--workdir={tiny_run.workdir}",
                   f"--export_dir={export_dir}", prog="tools/export_savedmodel.py")
    assert ran.code == 0, ran.err[-3000:]
    return export_dir
  return once(tmp_path_factory, "exported", make)
