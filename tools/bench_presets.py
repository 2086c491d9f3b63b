"""Accuracy at equal wall time: OCR flagfiles trained side by side on real lines.

  python tools/bench_presets.py \
      --configs=tools/baselines/base_ocr_2026-12-02.cfg,configs/base_ocr.cfg \
      --data_dir=../shared/data/gt4histcomment --eval_set=Wecklein1894 --minutes=30

  python tools/bench_presets.py --train_lines=150 --minutes=20 \
      --configs="configs/printed_lines.cfg,configs/printed_lines.cfg --noaugment"

gt4histcomment by default: the training set is every commentary folder of
--data_dir but --eval_set, the eval set is --eval_set, lines with an empty
transcript left out of both (benchlib.split_lines); --train_lines=N trains on a
seeded random N of the training lines instead, as a user with a small set of their
own would. Each --configs entry is a flagfile, optionally followed by flags of that
run only ("configs/printed_lines.cfg --noaugment"). Each trains with only the data
flags added (--data_format=tsv and manifests of the lines in a temporary folder;
--charset: every character of the training and eval labels, so that an eval line
with a character the training set lacks counts as an error rather than stopping the
run) in its own workdir, as `python -m ctc_trainer.train` under `nice`,
for --minutes of wall time from its start (tracing included); then it gets SIGTERM,
which saves a checkpoint after the step in progress, and its latest checkpoint is
evaluated on the eval set (`python -m ctc_trainer.evaluate`, outside the budget).
By default all runs train at once (--together), so that the machine's load hits
them alike, each pinned to an equal share of the CPUs when the runs divide them
evenly; --notogether runs them one after the other. Evaluations the flagfile
schedules itself (--eval_every) happen inside the budget, as they would for a user.
Prints a markdown table: steps reached, examples seen, the median of the examples/s
the run logged, CER, WER and sequence accuracy of the primary decoder at the end,
and the best eval CER logged during the run.
"""

import os
import re
import shutil
import tempfile
from typing import List, Tuple

from absl import app, flags

import benchlib

flags.DEFINE_list("configs", ["tools/baselines/base_ocr_2026-12-02.cfg",
                              "configs/base_ocr.cfg"], "Flagfiles to compare, each "
                  "optionally followed by flags of its run only, after spaces.")
flags.DEFINE_string("data_dir", "../shared/data/gt4histcomment",
                    "A folder of sidecar folders (NAME.png + NAME.gt.txt).")
flags.DEFINE_string("eval_set", "Wecklein1894", "The folder of --data_dir held out "
                    "for evaluation; the others are the training set.")
flags.DEFINE_integer("train_lines", 0, "Train on a random subset of this many lines "
                     "(0: all of them).", lower_bound=0)
flags.DEFINE_integer("subset_seed", 0, "The seed that draws --train_lines.")
flags.DEFINE_float("minutes", 30.0, "Wall time each run trains.", lower_bound=0.1)
flags.DEFINE_bool("together", True, "Train all runs at once (else one after another).")
flags.DEFINE_list("extra_flags", [], "More flags for every run, e.g. --eval_every=200.")
flags.DEFINE_string("keep", "", "Keep the workdirs under this folder (default: a "
                    "temporary one, removed).")
FLAGS = flags.FLAGS

_STEP_LINE = re.compile(r"step (\d+)/\d+\s+loss")
_BEST_LINE = re.compile(r"New best eval CER ([0-9.]+) at step (\d+)")
_SPEED = re.compile(r"step \d+/\d+\s+loss \S+\s+([0-9.]+) ex/s")


def parse_run(entry: str) -> Tuple[str, str, List[str]]:
  """A --configs entry -> (run name, flagfile, that run's own flags)."""
  flagfile, *own = entry.split()
  name = "_".join([re.sub(r"\.cfg$", "", os.path.basename(flagfile))] +
                  [re.sub(r"[^A-Za-z0-9=.]+", "", f.lstrip("-")) for f in own])
  return name, flagfile, own


def summarize(workdir: str) -> dict:
  """Steps reached, the median of the examples/s it logged and the best eval CER it
  logged, from its train.log."""
  with open(os.path.join(workdir, "train.log"), encoding="utf-8") as f:
    text = f.read()
  steps = [int(s) for s in _STEP_LINE.findall(text)]
  best = [float(c) for c, _ in _BEST_LINE.findall(text)]
  speeds = sorted(float(v) for v in _SPEED.findall(text))
  return {"steps": max(steps, default=0), "best_logged_cer": min(best, default=None),
          "examples_per_sec": speeds[len(speeds) // 2] if speeds else None}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runs = [parse_run(entry) for entry in FLAGS.configs]
  if len({name for name, _, _ in runs}) < len(runs):
    raise app.UsageError("two --configs entries are the same run")
  try:
    folders, train_rows, eval_rows = benchlib.split_lines(
        FLAGS.data_dir, FLAGS.eval_set, FLAGS.train_lines, FLAGS.subset_seed)
  except ValueError as e:
    raise app.UsageError(f"--train_lines: {e}")
  root = FLAGS.keep or tempfile.mkdtemp(prefix="bench_presets-")
  os.makedirs(root, exist_ok=True)
  try:
    charset = os.path.join(root, "charset.txt")
    symbols = benchlib.write_charset(charset, [t for _, t in train_rows + eval_rows])
    data_flags = [
        "--data_format=tsv",
        f"--train_data={benchlib.write_manifest(os.path.join(root, 'train.tsv'), train_rows)}",
        f"--eval_data={benchlib.write_manifest(os.path.join(root, 'eval.tsv'), eval_rows)}",
        f"--charset={charset}"] + FLAGS.extra_flags
    print(f"train: {', '.join(folders)} ({len(train_rows)} lines); eval: "
          f"{FLAGS.eval_set} ({len(eval_rows)} lines); {symbols} symbols; "
          f"{FLAGS.minutes:g} minutes each, "
          f"{'all at once' if FLAGS.together else 'one after another'}; "
          f"{os.cpu_count()} CPUs", flush=True)
    groups = [runs] if FLAGS.together else [[run] for run in runs]
    for group in groups:
      # Runs side by side each get their own CPUs when they divide evenly (else
      # none is pinned): the faster run cannot take a larger share of the machine.
      cpus = benchlib.split_cpus(len(group))
      started = [benchlib.train_for(os.path.join(root, name),
                                    [f"--flagfile={flagfile}", *data_flags, *own],
                                    FLAGS.minutes,
                                    log_path=os.path.join(root, name, "train.log"),
                                    cpus=group_cpus)
                 for (name, flagfile, own), group_cpus in zip(group, cpus)]
      for finish in started:
        finish()
    print("\n| config | steps | examples | examples/s (median logged) | CER | WER | "
          "seq. accuracy | best logged CER |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, _, _ in runs:
      workdir = os.path.join(root, name)
      run = summarize(workdir)
      result = benchlib.evaluate(workdir, *data_flags)
      batch = re.search(r"--batch_size=(\d+)",
                        open(os.path.join(workdir, "flags.cfg")).read())
      examples = run["steps"] * int(batch.group(1)) if batch else "-"
      speed = run["examples_per_sec"]
      speed = "-" if speed is None else f"{speed:g}"
      if "error" in result:
        print(f"| {name} | {run['steps']} | {examples} | {speed} | {result['error']} "
              "| | | |")
        continue
      best = run["best_logged_cer"]
      print(f"| {name} | {run['steps']} | {examples} | {speed} | {result['cer']:.4f} | "
            f"{result['wer']:.4f} | {result['seq_accuracy']:.4f} | "
            f"{'-' if best is None else f'{best:.4f}'} |", flush=True)
  finally:
    if not FLAGS.keep:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  # Relative paths (flagfiles, --data_dir) are taken from the repository root.
  os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  app.run(main)
