"""Accuracy at equal wall time: OCR flagfiles trained side by side on real lines.

  python tools/bench_presets.py \
      --configs=tools/baselines/base_ocr_2026-12-02.cfg,configs/base_ocr.cfg \
      --data_dir=../shared/data/gt4histcomment --eval_set=Wecklein1894 --minutes=30

gt4histcomment by default: the training set is every commentary folder of
--data_dir but --eval_set (linked into one sidecar folder in a temporary directory),
the eval set is --eval_set. Each flagfile trains with only the data flags added
(--data_format=sidecar, --bad_sample_policy=skip: the set has a few empty
transcripts; --charset: every character of the training and eval labels, so that
an eval line with a character the training set lacks counts as an error rather
than stopping the run) in its own workdir, as `python -m ctc_trainer.train` under `nice`,
for --minutes of wall time from its start (tracing included); then it gets SIGTERM,
which saves a checkpoint after the step in progress, and its latest checkpoint is
evaluated on the eval set (`python -m ctc_trainer.evaluate`, outside the budget).
By default all runs train at once (--together), so that the machine's load hits
them alike; --notogether runs them one after the other. Evaluations the flagfile
schedules itself (--eval_every) happen inside the budget, as they would for a user.
Prints a markdown table: steps reached, examples seen, CER, WER and sequence accuracy
of the primary decoder at the end, and the best eval CER logged during the run.
"""

import os
import re
import shutil
import tempfile

from absl import app, flags

import benchlib

flags.DEFINE_list("configs", ["tools/baselines/base_ocr_2026-12-02.cfg",
                              "configs/base_ocr.cfg"], "Flagfiles to compare.")
flags.DEFINE_string("data_dir", "../shared/data/gt4histcomment",
                    "A folder of sidecar folders (NAME.png + NAME.gt.txt).")
flags.DEFINE_string("eval_set", "Wecklein1894", "The folder of --data_dir held out "
                    "for evaluation; the others are the training set.")
flags.DEFINE_float("minutes", 30.0, "Wall time each run trains.", lower_bound=0.1)
flags.DEFINE_bool("together", True, "Train all runs at once (else one after another).")
flags.DEFINE_list("extra_flags", [], "More flags for every run, e.g. --eval_every=200.")
flags.DEFINE_string("keep", "", "Keep the workdirs under this folder (default: a "
                    "temporary one, removed).")
FLAGS = flags.FLAGS

_STEP_LINE = re.compile(r"step (\d+)/\d+\s+loss")
_BEST_LINE = re.compile(r"New best eval CER ([0-9.]+) at step (\d+)")


def link_training_set(data_dir: str, eval_set: str, into: str) -> list:
  """Symlinks every file of data_dir's folders but eval_set into `into` -> their
  names (sidecar names are unique across gt4histcomment's folders)."""
  os.makedirs(into)
  folders = benchlib.books(data_dir, leave_out=eval_set)
  for folder in folders:
    for name in os.listdir(os.path.join(data_dir, folder)):
      target = os.path.join(into, name)
      if os.path.exists(target):
        raise app.UsageError(f"{name} is in two folders of {data_dir}")
      os.symlink(os.path.abspath(os.path.join(data_dir, folder, name)), target)
  return folders


def write_charset(data_dir: str, path: str) -> int:
  """Every character of every .gt.txt label under data_dir -> charset file at
  `path`; returns its size."""
  texts = []
  for folder, _, names in os.walk(data_dir, followlinks=True):
    for name in sorted(names):
      if name.endswith(".gt.txt"):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
          texts.append(f.read().rstrip("\r\n"))
  return benchlib.write_charset(path, texts)


def summarize(workdir: str) -> dict:
  """Steps reached and the best eval CER the run logged, from its train.log."""
  with open(os.path.join(workdir, "train.log"), encoding="utf-8") as f:
    text = f.read()
  steps = [int(s) for s in _STEP_LINE.findall(text)]
  best = [float(c) for c, _ in _BEST_LINE.findall(text)]
  return {"steps": max(steps, default=0), "best_logged_cer": min(best, default=None)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  root = FLAGS.keep or tempfile.mkdtemp(prefix="bench_presets-")
  try:
    train_dir = os.path.join(root, "train")
    folders = link_training_set(FLAGS.data_dir, FLAGS.eval_set, train_dir)
    charset = os.path.join(root, "charset.txt")
    symbols = write_charset(FLAGS.data_dir, charset)
    data_flags = ["--data_format=sidecar", f"--train_data={train_dir}",
                  f"--eval_data={os.path.join(FLAGS.data_dir, FLAGS.eval_set)}",
                  "--bad_sample_policy=skip", f"--charset={charset}"] + FLAGS.extra_flags
    names = [re.sub(r"\.cfg$", "", os.path.basename(f)) for f in FLAGS.configs]
    print(f"train: {', '.join(folders)}; eval: {FLAGS.eval_set}; {symbols} symbols; "
          f"{FLAGS.minutes:g} minutes each, "
          f"{'all at once' if FLAGS.together else 'one after another'}; "
          f"{os.cpu_count()} CPUs", flush=True)
    groups = ([list(zip(names, FLAGS.configs))] if FLAGS.together else
              [[pair] for pair in zip(names, FLAGS.configs)])
    for group in groups:
      runs = [benchlib.train_for(os.path.join(root, name), [f"--flagfile={flagfile}",
                                                            *data_flags],
                                 FLAGS.minutes, log_path=os.path.join(root, name,
                                                                      "train.log"))
              for name, flagfile in group]
      for finish in runs:
        finish()
    print("\n| config | steps | examples | CER | WER | seq. accuracy | best logged "
          "CER |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, flagfile in zip(names, FLAGS.configs):
      workdir = os.path.join(root, name)
      run = summarize(workdir)
      result = benchlib.evaluate(workdir, *data_flags)
      batch = re.search(r"--batch_size=(\d+)",
                        open(os.path.join(workdir, "flags.cfg")).read())
      examples = run["steps"] * int(batch.group(1)) if batch else "-"
      if "error" in result:
        print(f"| {name} | {run['steps']} | {examples} | {result['error']} | | | |")
        continue
      best = run["best_logged_cer"]
      print(f"| {name} | {run['steps']} | {examples} | {result['cer']:.4f} | "
            f"{result['wer']:.4f} | {result['seq_accuracy']:.4f} | "
            f"{'-' if best is None else f'{best:.4f}'} |", flush=True)
  finally:
    if not FLAGS.keep:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  # Relative paths (flagfiles, --data_dir) are taken from the repository root.
  os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  app.run(main)
