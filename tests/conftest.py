"""Session fixtures: the tiny OCR run is trained once and exported once per session;
tests that change a run work on a copy of it."""

import os

# Quiet TensorFlow's C++ logs in test output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from ctc_trainer import train  # noqa: E402
from tests.helpers import TINY_FLAGS, TinyRun, load_tool, run_main  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
  """The train CLI, in this process, on the tiny synthetic set for 6 steps.

  Shared by every test that reads a trained run; one that writes to a run copies
  its workdir first (shutil.copytree).
  """
  root = tmp_path_factory.mktemp("tiny")
  run = TinyRun(root, None)
  run.ran = run_main(train.main, f"--workdir={run.workdir}", "--train_steps=6",
                     *TINY_FLAGS, *run.data_flags, prog="ctc_trainer.train")
  assert run.ran.code == 0, run.ran.err[-3000:]
  return run


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
  """The tiny run's latest checkpoint exported by tools/export_savedmodel.py (in this
  process), through its parity gate -> the export folder, alone in its parent."""
  export_dir = tmp_path_factory.mktemp("export") / "export"
  ran = run_main(load_tool("export_savedmodel").main, f"--workdir={tiny_run.workdir}",
                 f"--export_dir={export_dir}", prog="tools/export_savedmodel.py")
  assert ran.code == 0, ran.err[-3000:]
  return export_dir
