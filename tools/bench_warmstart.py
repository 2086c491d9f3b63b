"""Warm start vs training from scratch on a few lines of a new book, same wall time.

  nice -n 10 python tools/bench_warmstart.py [--work_dir=/tmp/ctc_bench_warmstart] \
      [--minutes=12] [--base_minutes=60] [--target_train_lines=60]

On gt4histcomment (../shared/data/gt4histcomment, sidecar layout: NAME.png +
NAME.gt.txt), the lines of --target (Wecklein1894) are shuffled with --seed: the first
--target_train_lines are the new training set, the rest the test set. Lines with empty
transcriptions are left out. tsv manifests pointing at the shared files are written
into --work_dir (no data is copied).

1. base: a small CRNN (BASE_FLAGS, 32 px lines) trained on the other four commentaries
   (every 25th line held out as its eval set, which picks its best/) for --base_steps
   steps, stopped (SIGTERM: a checkpoint is saved) after --base_minutes if not done.
   A --base_workdir that already holds a checkpoint is reused as it is.
2. warm: --init_from=base --charset_mode=union on the target's training lines.
3. scratch: the same flags and the same charset file as warm (so both have the same
   output layer and skip the same test lines), from a random init.
warm and scratch train side by side, each for --minutes of wall time (then SIGTERM),
at a constant learning rate, with no evaluation while training; then the latest
checkpoint of each is evaluated on the target's test lines (test characters that
neither charset has make their lines skipped: --unknown_char_policy=skip, reported).
Prints a markdown table for docs/benchmarks.md.
"""

import os
import random
import tempfile
import time

import tensorflow as tf
from absl import app, flags, logging

import benchlib

flags.DEFINE_string("data", benchlib.GT4HISTCOMMENT,
                    "gt4histcomment: one sidecar folder per commentary.")
flags.DEFINE_string("target", "Wecklein1894", "The commentary to adapt to.")
flags.DEFINE_integer("target_train_lines", 60, "Target lines to train on; the rest "
                     "are the test set.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Shuffle of the target's lines.")
flags.DEFINE_string("work_dir", os.path.join(tempfile.gettempdir(),
                                             "ctc_bench_warmstart"),
                    "Manifests and the runs' workdirs (kept for inspection).")
flags.DEFINE_string("base_workdir", "", "The base run's workdir; default WORK_DIR/base. "
                    "Reused as it is when it holds a checkpoint.")
flags.DEFINE_integer("base_steps", 600, "Base run's --train_steps (its schedule).",
                     lower_bound=1)
flags.DEFINE_float("base_minutes", 60, "Stop the base run after this long.")
flags.DEFINE_float("minutes", 12, "Wall time of each of warm and scratch.")
flags.DEFINE_list("warm_flags", [], "Further flags for the warm run only, e.g. "
                  "--freeze=conv,--freeze_steps=50.")
FLAGS = flags.FLAGS

# The small CRNN of every run, at 32 px.
MODEL_FLAGS = ["--flagfile=configs/base_ocr.cfg", "--data_format=tsv",
               "--conv_filters=16,32,64", "--rnn_units=64", "--batch_size=16",
               "--cache_decoded"]
BASE_FLAGS = ["--learning_rate=2e-3", "--warmup_steps=50", "--eval_every=300",
              "--checkpoint_every=300", "--log_every=50"]
# warm and scratch: a constant rate (they are stopped by the clock, not a schedule),
# no evaluation or checkpoint until stopped.
ADAPT_FLAGS = ["--lr_schedule=constant", "--learning_rate=1e-3", "--train_steps=100000",
               "--eval_every=100000", "--checkpoint_every=100000", "--log_every=20",
               "--unknown_char_policy=skip"]


def write_manifests(data, target, train_lines, seed, out):
  """-> {name: tsv path} for base_train, base_eval, target_train, target_eval."""
  base = [line for book in benchlib.books(data, leave_out=target)
          for line in benchlib.labelled_lines(os.path.join(data, book))]
  lines = list(benchlib.labelled_lines(os.path.join(data, target)))
  random.Random(seed).shuffle(lines)
  splits = {"base_train": [r for i, r in enumerate(base) if i % 25],
            "base_eval": [r for i, r in enumerate(base) if not i % 25],
            "target_train": lines[:train_lines], "target_eval": lines[train_lines:]}
  paths = {}
  for name, rows in splits.items():
    paths[name] = benchlib.write_manifest(os.path.join(out, f"{name}.tsv"), rows)
    logging.info("%s: %d lines", name, len(rows))
  return paths


def train_for(workdir, flags_, minutes):
  return benchlib.train_for(workdir, flags_, minutes, nice=0)   # the tool is niced


def evaluate(workdir, eval_data, which="latest"):
  result = benchlib.evaluate(workdir, f"--eval_data={eval_data}",
                             "--unknown_char_policy=skip", which=which, nice=0)
  if "error" in result:
    raise RuntimeError(f"evaluating {workdir}: {result['error']}")
  return result


def has_checkpoint(workdir):
  return os.path.isfile(os.path.join(workdir, "checkpoints", "checkpoint"))


def main(argv):
  del argv
  work = os.path.abspath(FLAGS.work_dir)
  data = os.path.abspath(FLAGS.data)
  paths = write_manifests(data, FLAGS.target, FLAGS.target_train_lines, FLAGS.seed,
                          work)
  base = os.path.abspath(FLAGS.base_workdir or os.path.join(work, "base"))
  if has_checkpoint(base):
    logging.info("Reusing the base run in %s", base)
  else:
    logging.info("Training the base run in %s for at most %.0f minutes", base,
                 FLAGS.base_minutes)
    train_for(base, [*MODEL_FLAGS, *BASE_FLAGS, f"--train_steps={FLAGS.base_steps}",
                     f"--train_data={paths['base_train']}",
                     f"--eval_data={paths['base_eval']}"], FLAGS.base_minutes)()

  runs = {name: os.path.join(work, name) for name in ("warm", "scratch")}
  for workdir in runs.values():
    if os.path.exists(workdir):
      raise SystemExit(f"{workdir} exists: remove it or pick another --work_dir")
  common = [*MODEL_FLAGS, *ADAPT_FLAGS, f"--train_data={paths['target_train']}",
            f"--eval_data={paths['target_eval']}"]
  # warm first, alone, until it has written its charset (the union); scratch then
  # trains with that same charset file, and both run side by side for --minutes.
  warm = train_for(runs["warm"], [*common, f"--init_from={base}",
                                  "--charset_mode=union", *FLAGS.warm_flags],
                   FLAGS.minutes)
  charset = os.path.join(runs["warm"], "charset.txt")
  while not os.path.exists(charset):
    time.sleep(1)
  scratch = train_for(runs["scratch"], [*common, f"--charset={charset}"], FLAGS.minutes)
  warm()
  scratch()

  results = {name: evaluate(workdir, paths["target_eval"])
             for name, workdir in runs.items()}
  # The checkpoint the warm start read: best/ when the base has one.
  which = "best" if tf.train.latest_checkpoint(os.path.join(base, "best")) else "latest"
  base_cer = evaluate(base, paths["base_eval"], which)
  with open(charset, encoding="utf-8") as f:
    classes = sum(1 for line in f if line.rstrip("\r\n"))
  print(f"\nbase: {which} checkpoint, step {base_cer['step']}, CER "
        f"{base_cer['cer']:.4f} on its {int(base_cer['num_seqs'])} held-out lines; "
        f"union charset: {classes} symbols")
  print(f"{FLAGS.target}: {FLAGS.target_train_lines} training lines, "
        f"{int(results['warm']['num_seqs'])} test lines; {FLAGS.minutes:g} minutes "
        "each, side by side\n")
  print("| run | steps | CER | WER | sequence accuracy |")
  print("|---|---:|---:|---:|---:|")
  for name, r in results.items():
    print(f"| {name} | {r['step']} | {r['cer']:.4f} | {r['wer']:.4f} | "
          f"{r['seq_accuracy']:.4f} |")
  reduction = 1 - results["warm"]["cer"] / results["scratch"]["cer"]
  print(f"\nwarm start CER is {100 * reduction:.0f}% lower than from scratch")


if __name__ == "__main__":
  app.run(main)
