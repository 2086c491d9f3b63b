"""Session fixtures: the tiny synthetic set is generated once, the tiny OCR run
trained once and exported once per session (tests that change a run work on a copy
of it); background jobs of child processes start with the session."""

import concurrent.futures
import os

# Quiet TensorFlow's C++ logs in test output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from ctc_trainer import loop, train  # noqa: E402
from tests.helpers import (BACKGROUND, TINY_FLAGS, TinyRun, kill_children,  # noqa: E402
                           load_tool, make_tiny_data, run_main)


def pytest_collection_modifyitems(items):
  """Tests that wait for a background job run last, so that their jobs overlap with
  every in-process test; the order is kept otherwise."""
  items.sort(key=lambda item: any(name in BACKGROUND for name in item.fixturenames))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
  """-> (root holding the tiny set's train/ and eval/, the flags that name them)."""
  root = tmp_path_factory.mktemp("tiny")
  return root, make_tiny_data(root)


@pytest.fixture(scope="session", autouse=True)
def background_jobs(request, tmp_path_factory):
  """Starts the background jobs (helpers.background) whose fixtures the selected
  tests use -> {fixture name: Future of the job's result}. Their child processes
  are killed when the session ends."""
  used = {name for item in request.session.items for name in item.fixturenames}
  wanted = [name for name in BACKGROUND if name in used]
  if not wanted:
    yield {}
    return
  _, data_flags = request.getfixturevalue("tiny_data")
  executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  futures = {name: executor.submit(BACKGROUND[name], tmp_path_factory.mktemp(name),
                                   data_flags) for name in wanted}
  yield futures
  executor.shutdown(wait=False, cancel_futures=True)
  kill_children()


@pytest.fixture(scope="session")
def tiny_run(tiny_data) -> TinyRun:
  """The train CLI, in this process, on the tiny synthetic set for 6 steps.

  Shared by every test that reads a trained run; one that writes to a run copies
  its workdir first (shutil.copytree).
  """
  run = TinyRun(*tiny_data)
  run.ran = run_main(train.main, f"--workdir={run.workdir}", "--train_steps=6",
                     *TINY_FLAGS, *run.data_flags, prog="ctc_trainer.train")
  assert run.ran.code == 0, run.ran.err[-3000:]
  return run


@pytest.fixture(scope="session")
def restored(tiny_run):
  """The tiny run's latest checkpoint restored in this process -> (loop.Run, step).
  Its eval step decodes with beam and greedy; tests read it, none trains it."""
  return loop.restore_trained(tiny_run.config(), "latest")


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
  """The tiny run's latest checkpoint exported by tools/export_savedmodel.py (in this
  process), through its parity gate -> the export folder, alone in its parent."""
  export_dir = tmp_path_factory.mktemp("export") / "export"
  ran = run_main(load_tool("export_savedmodel").main, f"--workdir={tiny_run.workdir}",
                 f"--export_dir={export_dir}", prog="tools/export_savedmodel.py")
  assert ran.code == 0, ran.err[-3000:]
  return export_dir
