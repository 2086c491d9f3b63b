"""Shared by the tests: tiny configs, models and hand-made batches; entry points run
in this process (run_main) or, where the process boundary is the point, in a child
(run_process)."""

import contextlib
import fcntl
import dataclasses
import importlib.util
import io
import logging
import os
import pathlib
import pickle
import subprocess
import sys
import threading
from typing import Callable, Dict, List, Optional, Set, Tuple
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl import logging as absl_logging
from absl.testing import flagsaver

from ctc_trainer import config, models, steps
from ctc_trainer.charset import Charset
from ctc_trainer.config import OptimConfig
from ctc_trainer.data import pipeline, sources
from ctc_trainer.loop import make_optimizer
from ctc_trainer.models.crnn import CRNNConfig

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY_MODEL = CRNNConfig(conv_filters=(8, 16), rnn_units=16, rnn_layers=1, dropout=0.0)
CHARSET = Charset(list("abcdefgh"))
HEIGHT = 16

# The tiny synthetic OCR run of the CLI tests: 64 training and 16 eval images of 2-4
# characters, a 16-unit model, an eval and a checkpoint every 3 steps.
TINY_FLAGS = [
    "--data_format=synthetic", "--synthetic_train_size=64", "--synthetic_eval_size=16",
    "--synthetic_min_length=2", "--synthetic_max_length=4", "--image_height=16",
    "--conv_filters=8,16", "--rnn_units=16", "--rnn_layers=1", "--dropout=0",
    "--batch_size=8", "--eval_batch_size=8", "--log_every=2", "--eval_every=3",
    "--checkpoint_every=3", "--beam_width=4",
]


def make_batch(texts, width, seed=0):
  """A batch dict per the contract, with random images of the given padded width."""
  rng = np.random.default_rng(seed)
  ids = [CHARSET.encode_py(t) for t in texts]
  max_len = max(1, max(len(i) for i in ids))
  labels = np.zeros((len(texts), max_len), np.int32)
  for row, i in enumerate(ids):
    labels[row, :len(i)] = i
  input_length = np.full(len(texts), width, np.int32)
  input_length[0] = max(4, width - 5)  # one shorter example: padding is real
  return {
      "inputs": tf.constant(rng.random((len(texts), HEIGHT, width, 1), np.float32)),
      "input_length": tf.constant(input_length),
      "labels": tf.constant(labels),
      "label_length": tf.constant([len(i) for i in ids], tf.int32),
      "text": tf.constant(texts),
      "key": tf.constant([f"k{i}" for i in range(len(texts))]),
  }


def build_parts(batch_size=4, beam_width=4, learning_rate=3e-3, jit_compile=False,
                loss_scale=False, decoder_names=("beam", "greedy"), initial_scale=2.0**15,
                confidence_penalty=0.0, decoder_config=None):
  """-> (model, optimizer, step functions) for the tiny model. loss_scale: wrap the
  optimizer in a LossScaleOptimizer whose scale starts at initial_scale."""
  model = models.build(TINY_MODEL, CHARSET.num_classes, (HEIGHT, None, 1))
  optimizer = make_optimizer(OptimConfig(learning_rate=learning_rate), 1000)
  if loss_scale:
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=initial_scale)
  optimizer.build(model.trainable_variables)
  spec = pipeline.batch_signature(channels=1, height=HEIGHT)
  fns = steps.make_step_fns(model, optimizer, CHARSET, tf.distribute.get_strategy(), spec,
                            global_batch_size=batch_size, clip_norm=5.0,
                            beam_width=beam_width, jit_compile=jit_compile,
                            decoder_names=decoder_names,
                            confidence_penalty=confidence_penalty,
                            decoder_config=decoder_config)
  return model, optimizer, fns


def build_steps(**kwargs):
  """-> (model, step functions); see build_parts."""
  model, _, fns = build_parts(**kwargs)
  return model, fns


# --- entry points ------------------------------------------------------------------

@dataclasses.dataclass
class Ran:
  """What a user would see of one command: exit status, stdout, and stderr (which
  holds the absl log)."""
  code: int
  out: str
  err: str


@contextlib.contextmanager
def _log_into(stream):
  """Sends the absl log at INFO and above to `stream` while active."""
  logger = absl_logging.get_absl_logger()
  handler = logging.StreamHandler(stream)
  handler.setFormatter(logging.Formatter("%(levelname).1s %(message)s"))
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)


def run_main(main: Callable, *args, prog: str = "ctc_trainer") -> Ran:
  """Runs an entry point's `main` in this process as `prog ARGS` would run it.

  As absl's app.run does: the flags are parsed from a fresh command line (a parse
  error exits with status 1) and the return value is the exit status. Every flag is
  restored afterwards; sys.argv is the command line meanwhile, since
  cli.apply_workdir_flags reads it. Any other exception propagates: in a process it
  would be a traceback, which user errors must never show.
  """
  argv = [prog, *map(str, args)]
  out, err = io.StringIO(), io.StringIO()
  with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv), \
      contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _log_into(err):
    try:
      code = main(flags.FLAGS(argv)) or 0
    except flags.Error as e:
      print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
      code = 1
    except SystemExit as e:
      code = e.code
  return Ran(code, out.getvalue(), err.getvalue())


def load_tool(name: str):
  """tools/NAME.py as a module (imported once: it defines flags)."""
  module_name = f"tools_{name}"
  if module_name not in sys.modules:
    spec = importlib.util.spec_from_file_location(module_name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
  return sys.modules[module_name]


def child_env(**extra) -> Dict[str, str]:
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **extra)


_children: Set[subprocess.Popen] = set()
_children_lock = threading.Lock()   # background jobs start children from a thread
_session_over = threading.Event()


def start_process(*args, env=None, **popen_kwargs) -> subprocess.Popen:
  """Starts `python ARGS` from the repository root in a child process (text mode),
  killed at the end of the session at the latest (kill_children)."""
  with _children_lock:
    if _session_over.is_set():
      raise RuntimeError("the test session is over: no new child processes")
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, text=True,
                            env=env or child_env(), **popen_kwargs)
    _children.add(proc)
  return proc


def kill_children() -> None:
  """Kills every child still running; none can be started after this."""
  with _children_lock:
    _session_over.set()
    for proc in _children:
      proc.kill()
    _children.clear()


def run_process(*args, env=None, check=True, timeout=280) -> Ran:
  """Runs `python ARGS` from the repository root in a child process to its end."""
  proc = start_process(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    out, err = proc.communicate(timeout=timeout)
  finally:
    proc.kill()
  if check and proc.returncode != 0:
    raise AssertionError(f"{args[:2]} failed ({proc.returncode}):\n{err[-3000:]}")
  return Ran(proc.returncode, out, err)


# Jobs of child processes that need nothing from this process but the tiny data set:
# they start when the session does, two at a time, and so fill the time the
# in-process tests leave idle while the tests that wait for them run last.
# conftest.background_jobs starts the jobs whose fixtures the selected tests use.
BACKGROUND: Dict[str, Callable] = {}


def background(fixture_name: str):
  """Decorates job(root, data_flags) -> result: registers it as a background job and
  makes it a session fixture `fixture_name` that waits for the job's result. root
  is an empty folder of the job's own; data_flags name the tiny synthetic set."""
  def register(job):
    BACKGROUND[fixture_name] = job

    @pytest.fixture(scope="session", name=fixture_name)
    def result(background_jobs):
      return background_jobs[fixture_name].result()
    result.__doc__ = job.__doc__
    return result
  return register


# --- made once per session, also across pytest-xdist workers -------------------

def shared_root(tmp_path_factory) -> pathlib.Path:
  """A folder that every worker of this session sees: under pytest-xdist each
  worker's base temp folder is a child of the session's."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once(tmp_path_factory, name, make):
  """make(folder) -> result, run by one worker of the session; the others wait for it
  under a file lock and get its (pickled) result. The first to fail leaves the job
  to the next worker."""
  root = shared_root(tmp_path_factory) / f"once-{name}"
  root.mkdir(exist_ok=True)
  done = root / "result.pickle"
  with open(root / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if done.exists():
      return pickle.loads(done.read_bytes())
    folder = root / "made"
    folder.mkdir(exist_ok=True)
    result = make(folder)
    done.write_bytes(pickle.dumps(result))
    return result


# --- a trained run -----------------------------------------------------------------

def make_tiny_data(root: pathlib.Path) -> List[str]:
  """Generates the tiny synthetic set of TINY_FLAGS into ROOT/train and ROOT/eval
  -> the --train_data and --eval_data flags that name it."""
  data_flags = [f"--train_data={root / 'train'}", f"--eval_data={root / 'eval'}"]
  with flagsaver.flagsaver():
    flags.FLAGS(["data", f"--workdir={root / 'unused'}", *TINY_FLAGS, *data_flags])
    cfg = config.from_flags()
  for split in ("train", "eval"):
    sources.load_samples(cfg.data, split)
  return data_flags


@dataclasses.dataclass
class TinyRun:
  """A run of the train CLI on the tiny synthetic set (TINY_FLAGS) for 6 steps."""
  root: pathlib.Path      # holds train/ and eval/ (the data) and run/ (the workdir)
  data_flags: List[str]   # --train_data and --eval_data
  ran: Optional[Ran] = None  # what the train command printed

  @property
  def workdir(self) -> pathlib.Path:
    return self.root / "run"

  def eval_images(self) -> List[Tuple[str, str]]:
    """The eval set's (path, label) pairs, in manifest order."""
    folder = self.root / "eval"
    lines = (folder / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    return [(str(folder / name), label) for name, label in
            (line.split("\t") for line in lines if line)]

  def config(self) -> config.Config:
    """The run's Config, from its WORKDIR/flags.cfg, as evaluate reads it."""
    with flagsaver.flagsaver():
      flags.FLAGS(["config", f"--flagfile={self.workdir / 'flags.cfg'}"])
      return config.from_flags(need_train=False)
