"""What the accuracy benchmarks share: gt4histcomment's sidecar folders read as
labelled lines, training runs started as a user starts them and stopped by the clock
(SIGTERM: the run saves a checkpoint), `ctc_trainer.evaluate --json`, and the
CER-against-time curve of Calamari's training log (bench_accuracy).

The tools import it as `benchlib` (a script's own folder is first on sys.path).
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GT4HISTCOMMENT = os.path.join(REPO, "..", "shared", "data", "gt4histcomment")


def labelled_lines(folder: str) -> Iterator[Tuple[str, str]]:
  """(image path, transcription) of each NAME.png + NAME.gt.txt in a sidecar folder,
  sorted by name; lines with an empty transcription are left out."""
  for name in sorted(os.listdir(folder)):
    if name.endswith(".png"):
      with open(os.path.join(folder, name[:-4] + ".gt.txt"), encoding="utf-8") as f:
        text = f.read().rstrip("\r\n")
      if text.strip():
        yield os.path.join(folder, name), text


def books(data_dir: str, leave_out: str = "") -> List[str]:
  """The commentary folders of data_dir, sorted, but `leave_out`."""
  return sorted(b for b in os.listdir(data_dir)
                if os.path.isdir(os.path.join(data_dir, b)) and b != leave_out)


def split_lines(data_dir: str, eval_set: str, train_lines: int = 0, seed: int = 0
                ) -> Tuple[List[str], List[Tuple[str, str]], List[Tuple[str, str]]]:
  """gt4histcomment's split: the training lines are those of every folder of data_dir
  but eval_set, the eval lines those of eval_set (labelled_lines: empty transcriptions
  left out) -> (the training folders, training rows, eval rows). train_lines > 0:
  a random `train_lines` of the training rows, drawn with `seed`, in name order."""
  folders = books(data_dir, leave_out=eval_set)
  train = [row for folder in folders
           for row in labelled_lines(os.path.join(data_dir, folder))]
  if train_lines:
    if train_lines > len(train):
      raise ValueError(f"{train_lines} training lines asked for; the training set "
                       f"has {len(train)}")
    train = sorted(random.Random(seed).sample(train, train_lines))
  return folders, train, list(labelled_lines(os.path.join(data_dir, eval_set)))


def hold_out(rows: Sequence, count: int, seed: int = 0) -> Tuple[list, list]:
  """rows -> (the rest, `count` of them drawn at random with `seed`), each in the
  order of `rows`; at least one row must remain."""
  if not 0 < count < len(rows):
    raise ValueError(f"cannot hold out {count} of {len(rows)} lines")
  held = set(random.Random(seed).sample(range(len(rows)), count))
  return ([r for i, r in enumerate(rows) if i not in held],
          [r for i, r in enumerate(rows) if i in held])


def write_manifest(path: str, rows: Sequence[Tuple[str, str]]) -> str:
  """A tsv manifest of (image path, text) rows at `path` (absolute image paths)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(f"{os.path.abspath(p)}\t{t}\n" for p, t in rows)
  return path


def write_charset(path: str, texts: Sequence[str]) -> int:
  """Every character of `texts`, normalized as ctc_trainer reads labels by default
  (--text_normalization), -> a charset file at `path` (for --charset); returns its
  size. Given the eval labels too, a character only the eval set has counts as an
  error instead of stopping the run."""
  from ctc_trainer.charset import Charset, normalize_text
  from ctc_trainer.config import DataConfig
  form = DataConfig().text_normalization
  charset = Charset.from_texts([normalize_text(t, form) for t in texts])
  charset.save(path)
  return charset.size


def _child_env() -> dict:
  return dict(os.environ, PYTHONPATH=REPO)


def split_cpus(parts: int) -> List[Optional[List[int]]]:
  """This process's CPUs dealt into `parts` equal groups, one per run started side by
  side (each pinned to its group: runs at once then get the same share of the
  machine, whichever is faster); [None] * parts (no pinning) when there are fewer
  CPUs than parts or they do not divide evenly."""
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) < parts or len(cpus) % parts:
    return [None] * parts
  size = len(cpus) // parts
  return [cpus[i * size:(i + 1) * size] for i in range(parts)]


def pinned(cpus: Optional[Sequence[int]]) -> Optional[Callable[[], None]]:
  """A Popen preexec_fn that pins the child (and so all its threads; TensorFlow sizes
  its thread pools by the CPUs it may run on) to `cpus`; None for no pinning."""
  if not cpus:
    return None
  return lambda: os.sched_setaffinity(0, cpus)


def train_for(workdir: str, flags: Sequence[str], minutes: float, nice: int = 10,
              log_path: str = "", cpus: Optional[Sequence[int]] = None
              ) -> Callable[[], float]:
  """Starts `python -m ctc_trainer.train --workdir=WORKDIR FLAGS` under `nice` (and
  pinned to `cpus` when given), its output into log_path (default WORKDIR.log)
  -> finish(), which waits until `minutes` after the start, then stops the run with
  SIGTERM (it saves a checkpoint after the step in progress) and waits for it to
  exit; finish() returns the seconds the run took and raises if it failed."""
  log_path = log_path or workdir.rstrip("/") + ".log"
  os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
  log = open(log_path, "w")
  started = time.time()
  proc = subprocess.Popen(
      ["nice", "-n", str(nice), sys.executable, "-m", "ctc_trainer.train",
       f"--workdir={workdir}", *flags],
      cwd=REPO, env=_child_env(), stdout=log, stderr=subprocess.STDOUT,
      preexec_fn=pinned(cpus))
  deadline = started + minutes * 60

  def finish() -> float:
    try:
      proc.wait(timeout=max(deadline - time.time(), 0))
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGTERM)
      proc.wait()
    log.close()
    # -SIGTERM: stopped before its handler was installed (no checkpoint).
    if proc.returncode not in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
      raise RuntimeError(f"training {workdir} failed ({proc.returncode}); see {log.name}")
    return time.time() - started
  finish.started = started  # the run's start, for curves measured from it
  return finish


def evaluate(workdir: str, *flags: str, which: str = "latest", nice: int = 10) -> dict:
  """`python -m ctc_trainer.evaluate --workdir=WORKDIR --checkpoint=WHICH --json FLAGS`
  -> its metrics; {"error": last line of its stderr} when it fails."""
  out = subprocess.run(
      ["nice", "-n", str(nice), sys.executable, "-m", "ctc_trainer.evaluate",
       f"--workdir={workdir}", f"--checkpoint={which}", "--json", *flags],
      cwd=REPO, env=_child_env(), capture_output=True, text=True)
  if out.returncode:
    return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
  return json.loads(out.stdout.strip().splitlines()[-1])


_EPOCH_LINE = re.compile(r"Results of epoch\s+(\d+)\b.*?\bval_CER: ([0-9.eE+-]+)")
_VERDICT_LINE = re.compile(r"(Better value|No better value) of val_CER")


def calamari_curve(stamped_lines: Sequence[Tuple[float, str]]) -> List[Tuple[float, int, float]]:
  """(seconds, line) pairs of calamari-train's output -> (seconds, epoch, val_CER) for
  each "Results of epoch N ... val_CER: X" line (epochs without validation have no
  val_CER and are left out). The seconds are those of the epoch's early-stopping
  verdict line ("Better value of val_CER found" / "No better value of val_CER"),
  logged as soon as the validation ends, when there is one: the Results line
  comes only after the new best model has been exported, a minute later or more."""
  curve = []
  verdict_at = None
  for seconds, line in stamped_lines:
    if _VERDICT_LINE.search(line):
      verdict_at = seconds
      continue
    match = _EPOCH_LINE.search(line)
    if match:
      curve.append((seconds if verdict_at is None else verdict_at,
                    int(match.group(1)), float(match.group(2))))
      verdict_at = None
  return curve


def first_reaching(curve: Sequence[Tuple[float, float]], target: float) -> Optional[float]:
  """(seconds, CER) points in time order -> the seconds of the first with CER <=
  target; None if none."""
  return next((t for t, cer in curve if cer <= target), None)
