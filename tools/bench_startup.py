"""Fixed costs a user waits for: a short training run (start-up, tracing, a few steps,
evaluations, checkpoints), a SavedModel export through its parity gate, and an
evaluation, each as the command a user runs, for this working tree and a baseline
git revision side by side.

  python tools/bench_startup.py --baseline=f066a16 [--rounds=3]

The baseline is checked out (`git worktree add --detach`) into a temporary folder
and removed at the end. Every command runs in a child process from its tree's root
(PYTHONPATH that tree), on the same small synthetic set (generated once, before any
timing, by this tree's train CLI):
  train     python -m ctc_trainer.train, demo model flags, --train_steps (default
            20) with an evaluation and a checkpoint every --eval_every steps;
  export    python tools/export_savedmodel.py --workdir=(that run), parity gate on;
  evaluate  python -m ctc_trainer.evaluate --workdir=(that run).
Measured per command: the child's CPU time (user + system, from the OS's accounting
of the finished child) and its wall time. The two trees take turns within each round
(the order alternates from round to round) so that machine noise hits them alike;
the table gives each command's median over the rounds and the ratio
current / baseline. Prints a markdown table for docs/benchmarks.md.
"""

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

from absl import app, flags

flags.DEFINE_string("baseline", None, "The git revision to compare with.")
flags.DEFINE_integer("rounds", 3, "Rounds; each runs every command once per tree.",
                     lower_bound=1)
flags.DEFINE_integer("train_steps", 20, "Steps of the timed training run.",
                     lower_bound=1)
flags.DEFINE_integer("eval_every", 10, "Evaluate and checkpoint every N steps.",
                     lower_bound=1)
flags.DEFINE_string("keep", "", "Keep the work folder here (default: a temporary "
                    "one, removed).")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("train", "export", "evaluate")
# The demo's model on a small synthetic set: what the tests' and a user's first runs
# look like, where fixed costs are most of the time.
DATA_FLAGS = ["--data_format=synthetic", "--synthetic_train_size=256",
              "--synthetic_eval_size=64"]
MODEL_FLAGS = ["--flagfile=configs/demo_ocr.cfg", "--batch_size=16",
               "--eval_batch_size=32", "--log_every=10", "--warmup_steps=5"]


def timed(tree: str, args: List[str]) -> Tuple[float, float]:
  """`python ARGS` in `tree` -> (CPU seconds of the child, wall seconds); raises on
  failure with the end of its output."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  started = time.monotonic()
  ran = subprocess.run([sys.executable, *args], cwd=tree, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="2"))
  wall = time.monotonic() - started
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if ran.returncode:
    raise RuntimeError(f"{args[:2]} in {tree} failed ({ran.returncode}):\n"
                       f"{ran.stderr[-3000:]}")
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return cpu, wall


def run_commands(tree: str, root: str, name: str, data: List[str]
                 ) -> Dict[str, Tuple[float, float]]:
  """The three commands in `tree`, in a fresh folder under root -> {command:
  (cpu, wall)}."""
  work = tempfile.mkdtemp(prefix=f"{name}-", dir=root)
  workdir, export_dir = os.path.join(work, "run"), os.path.join(work, "export")
  return {
      "train": timed(tree, ["-m", "ctc_trainer.train", f"--workdir={workdir}",
                            *MODEL_FLAGS, *DATA_FLAGS, *data,
                            f"--train_steps={FLAGS.train_steps}",
                            f"--eval_every={FLAGS.eval_every}",
                            f"--checkpoint_every={FLAGS.eval_every}"]),
      "export": timed(tree, ["tools/export_savedmodel.py", f"--workdir={workdir}",
                             f"--export_dir={export_dir}"]),
      "evaluate": timed(tree, ["-m", "ctc_trainer.evaluate", f"--workdir={workdir}"]),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.baseline:
    raise app.UsageError("--baseline=REVISION is required")
  root = FLAGS.keep or tempfile.mkdtemp(prefix="bench_startup-")
  os.makedirs(root, exist_ok=True)
  baseline = os.path.join(root, "baseline")
  subprocess.run(["git", "worktree", "add", "--detach", baseline, FLAGS.baseline],
                 cwd=REPO, check=True, capture_output=True)
  try:
    data = [f"--train_data={os.path.join(root, 'data', 'train')}",
            f"--eval_data={os.path.join(root, 'data', 'eval')}"]
    # Generates the set (and warms the disk cache) outside the timing.
    timed(REPO, ["-m", "ctc_trainer.train", f"--workdir={os.path.join(root, 'warm')}",
                 *MODEL_FLAGS, *DATA_FLAGS, *data, "--train_steps=1",
                 "--eval_every=1000", "--checkpoint_every=1000"])
    trees = {"baseline": baseline, "current": REPO}
    results: Dict[str, Dict[str, List[Tuple[float, float]]]] = {
        name: {c: [] for c in COMMANDS} for name in trees}
    for round_index in range(FLAGS.rounds):
      order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
      for name in order:
        for command, value in run_commands(trees[name], root, name, data).items():
          results[name][command].append(value)
          print(f"round {round_index + 1} {name:8s} {command:8s} CPU {value[0]:6.1f} s"
                f"  wall {value[1]:6.1f} s", flush=True)
    print(f"\nbaseline {FLAGS.baseline}, {FLAGS.rounds} rounds, medians; "
          f"{os.cpu_count()} CPUs\n")
    print("| command | CPU s baseline | CPU s current | current / baseline | "
          "wall s baseline | wall s current | current / baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for command in COMMANDS:
      cpu = {n: statistics.median(v[0] for v in results[n][command]) for n in trees}
      wall = {n: statistics.median(v[1] for v in results[n][command]) for n in trees}
      print(f"| {command} | {cpu['baseline']:.1f} | {cpu['current']:.1f} | "
            f"{cpu['current'] / cpu['baseline']:.2f} | {wall['baseline']:.1f} | "
            f"{wall['current']:.1f} | {wall['current'] / wall['baseline']:.2f} |")
  finally:
    subprocess.run(["git", "worktree", "remove", "--force", baseline], cwd=REPO,
                   capture_output=True)
    if not FLAGS.keep:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
