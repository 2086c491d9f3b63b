"""ctc_trainer against Calamari 2.3.1: CER against wall time on the same lines, same
machine, same wall budget.

  python tools/bench_accuracy.py --minutes=60 \
      --data_dir=../shared/data/gt4histcomment --eval_set=Wecklein1894 [--lm_order=6]

The split: the training set is every commentary folder of --data_dir but --eval_set,
the eval set is --eval_set; lines with an empty transcript are left out of both (for
both tools). ctc_trainer reads them from tsv manifests, Calamari from a temporary
folder of symlinks in its sidecar layout (NAME.png + NAME.gt.txt), so both see
exactly the same lines.

- ctc_trainer: `python -m ctc_trainer.train --flagfile=--config` plus the data flags
  (--charset lists every character of the training and eval labels, so an eval
  character the training set lacks counts as an error) and --ctc_flags. Its curve is
  eval/cer from the TensorBoard event files under WORKDIR/eval (each value with the
  wall time it was written), measured from the process start; its best CER is the
  minimum over those evaluations (each one covers the whole eval set). By default
  they decode best path (--decoder=greedy in --ctc_flags), as Calamari's validation
  and calamari-predict do: the same decoding for both, and on this CPU an
  evaluation of the 208 lines in about 20 s instead of 60-80 s with beam search.
- Calamari: `calamari-train` from its own venv (--calamari_venv; created and
  `calamari-ocr==2.3.1 tensorflow==2.15.*` installed there when it lacks
  calamari-train; never a dependency of this project) with its default network and
  preprocessing, the eval set as its validation set, early stopping off in effect
  (n_to_go far beyond the budget) and its best model exported. Its curve is the
  val_CER of its "Results of epoch N" log lines, each stamped with the wall time at
  which this tool read it from Calamari's output, measured from the process start.
  Its best model is then run over the eval set with `calamari-predict` (outside the
  budget) and scored with ctc_trainer.metrics, the metric of ctc_trainer's eval/cer,
  so the two best CERs are measured the same way.

With --lm_order=N, --lm_tune_lines training lines (random, seed 0) are held out from
both tools' training set first; after training, ctc_trainer's best checkpoint is
decoded as a user would tune its decoding, each setting picked on the held-out lines
(on lines the model trained on, the grids are flat) and then the eval set decoded
with it (ctc_trainer.evaluate): greedy with the --blank_penalty of --blank_penalties
that does best there; and with the character LM, an N-gram model of the remaining
training labels (tools/make_lm.py), its --lm_alpha, --lm_beta and --blank_penalty
picked by tools/tune_lm.py. Calamari decodes as calamari-predict does by default
(greedy, no language model).

Both train under `nice` for --minutes of wall time each, side by side (--together,
the default: the machine's load hits both alike; each pinned to its own half of the
CPUs when their number is even, so the faster tool cannot take a larger share) or
one after the other; then each gets SIGTERM. Prints both curves and the acceptance
numbers: each tool's best CER, their ratio, and the time ctc_trainer first reached
Calamari's best CER against the time Calamari took to reach it.
"""

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Sequence, Tuple

from absl import app, flags

import benchlib

flags.DEFINE_string("data_dir", "../shared/data/gt4histcomment",
                    "A folder of sidecar folders (NAME.png + NAME.gt.txt).")
flags.DEFINE_string("eval_set", "Wecklein1894", "The folder of --data_dir held out "
                    "for evaluation; the others are the training set.")
flags.DEFINE_float("minutes", 60.0, "Wall time each tool trains.", lower_bound=0.5)
flags.DEFINE_bool("together", True, "Train both at once (else one after the other).")
flags.DEFINE_string("config", "configs/printed_lines.cfg", "ctc_trainer's flagfile.")
flags.DEFINE_list("ctc_flags", ["--eval_every=200", "--checkpoint_every=200",
                                "--keep_checkpoints=1000", "--decoder=greedy"],
                  "More flags for ctc_trainer: evaluations often enough for a curve, "
                  "a checkpoint kept at each (with --keep, another decoder can then "
                  "be run along the curve: tools/tune_lm.py --checkpoint=PATH), "
                  "greedy (best path) decoding as in Calamari's validation.")
flags.DEFINE_string("calamari_venv", os.path.expanduser(
    "~/.cache/ctc_trainer/calamari-2.3.1"), "Calamari's own venv (created when it "
                    "lacks bin/calamari-train).")
flags.DEFINE_string("calamari_python", "python3.11", "The Python that creates "
                    "--calamari_venv (TensorFlow 2.15 needs 3.9-3.11).")
flags.DEFINE_integer("calamari_samples_per_epoch", 1000, "Lines per Calamari epoch "
                     "(one validation, so one curve point, per epoch).")
flags.DEFINE_list("calamari_flags", [], "More flags for calamari-train, e.g. "
                  "--train.batch_size=16.")
flags.DEFINE_integer("lm_order", 0, "After training: also decode ctc_trainer's best "
                     "checkpoint with a character n-gram LM of this order made from "
                     "the training labels (tools/make_lm.py), its weights tuned "
                     "(tools/tune_lm.py) on --lm_tune_lines held-out training lines; "
                     "0: no LM.", lower_bound=0)
flags.DEFINE_integer("lm_tune_lines", 150, "With --lm_order: this many training "
                     "lines, drawn at random (seed 0), are held out from both tools' "
                     "training and from the LM's text, to tune the LM weights on.",
                     lower_bound=1)
flags.DEFINE_list("lm_alphas", ["0.2", "0.4", "0.6", "0.8", "1"], "--lm_alpha grid.")
flags.DEFINE_list("lm_betas", ["0", "1", "2", "3"], "--lm_beta grid.")
flags.DEFINE_list("blank_penalties", ["0", "0.5", "1", "1.5", "2", "3"],
                  "With --lm_order: --blank_penalty values tried on the held-out "
                  "lines, for greedy decoding and in the LM's grid.")
flags.DEFINE_string("keep", "", "Keep the work folders under this folder (default: "
                    "a temporary one, removed).")
FLAGS = flags.FLAGS

def ctc_curve(workdir: str, started: float) -> List[Tuple[float, int, float]]:
  """(seconds since `started`, step, eval/cer) of each evaluation in WORKDIR/eval."""
  import tensorflow as tf
  points = []
  for path in sorted(glob.glob(os.path.join(workdir, "eval", "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == "eval/cer":
          points.append((event.wall_time - started, event.step,
                         float(tf.make_ndarray(value.tensor))))
  return sorted(points)


def score(pairs: Sequence[Tuple[str, str]]) -> float:
  """(prediction, truth) pairs -> CER with ctc_trainer.metrics (eval/cer's metric)."""
  import tensorflow as tf
  from ctc_trainer import metrics
  sums = metrics.batch_sums(tf.constant([p for p, _ in pairs]),
                            tf.constant([t for _, t in pairs]))
  return metrics.results(sums)["cer"]


def link_sidecar(rows: Sequence[Tuple[str, str]], into: str) -> List[str]:
  """Symlinks NAME.png and NAME.gt.txt of each (image, text) row into `into` -> the
  linked image paths."""
  os.makedirs(into)
  images = []
  for image, _ in rows:
    name = os.path.basename(image)[:-len(".png")]
    for ext in (".png", ".gt.txt"):
      target = os.path.join(into, name + ext)
      if os.path.exists(target):
        raise app.UsageError(f"{name}{ext} is in two folders of {FLAGS.data_dir}")
      os.symlink(os.path.abspath(image[:-len(".png")] + ext), target)
    images.append(os.path.join(into, name + ".png"))
  return images


def ensure_calamari(venv: str) -> str:
  """venv/bin (calamari-train and calamari-predict), installing Calamari 2.3.1 there
  first when it is missing."""
  bin_dir = os.path.join(venv, "bin")
  if os.path.exists(os.path.join(bin_dir, "calamari-train")):
    return bin_dir
  steps = [[FLAGS.calamari_python, "-m", "venv", venv],
           [os.path.join(bin_dir, "python"), "-m", "pip", "install",
            "calamari-ocr==2.3.1", "tensorflow==2.15.*"]]
  for cmd in steps:
    print("installing Calamari:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
  return bin_dir


class Calamari:
  """calamari-train under `nice`, its output read line by line, stamped with the
  seconds since its start and written to `log_path`."""

  def __init__(self, bin_dir: str, train: str, val: str, output_dir: str,
               log_path: str, minutes: float, cpus=None):
    self.output_dir = output_dir
    cmd = ["nice", "-n", "10", os.path.join(bin_dir, "calamari-train"),
           "--train.images", os.path.join(train, "*.png"),
           "--val.images", os.path.join(val, "*.png"),
           "--trainer.output_dir", output_dir,
           "--trainer.epochs", "100000",
           "--trainer.samples_per_epoch", str(FLAGS.calamari_samples_per_epoch),
           "--early_stopping.n_to_go", "100000",
           "--trainer.export_best", "True",
           "--trainer.progress_bar", "False",
           *FLAGS.calamari_flags]
    self.lines: List[Tuple[float, str]] = []
    self.log = open(log_path, "w", encoding="utf-8")
    self.log.write(" ".join(cmd) + "\n")
    self.started = time.time()
    self.deadline = self.started + minutes * 60
    self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, encoding="utf-8", errors="replace",
                                 env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
                                 preexec_fn=benchlib.pinned(cpus))
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.proc.stdout:
      seconds = time.time() - self.started
      self.lines.append((seconds, line.rstrip("\n")))
      self.log.write(f"[{seconds:8.1f}s] {line}")
      self.log.flush()

  def finish(self) -> float:
    try:
      self.proc.wait(timeout=max(self.deadline - time.time(), 0))
    except subprocess.TimeoutExpired:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    took = time.time() - self.started
    self.reader.join(timeout=10)
    self.log.close()
    return took


def calamari_best_cer(bin_dir: str, output_dir: str, eval_rows, eval_dir: str,
                      log_path: str) -> Optional[float]:
  """Calamari's exported best model run over the eval lines (calamari-predict writes
  NAME.pred.txt next to each linked image) -> CER by ctc_trainer.metrics; None
  when it exported no model."""
  checkpoint = os.path.join(output_dir, "best.ckpt.json")
  if not os.path.exists(checkpoint):
    return None
  cmd = ["nice", "-n", "10", os.path.join(bin_dir, "calamari-predict"),
         "--checkpoint", checkpoint, "--data.images", os.path.join(eval_dir, "*.png"),
         "--data.pred_extension", ".pred.txt", "--verbose", "False",
         "--predictor.progress_bar", "False"]
  with open(log_path, "w") as log:
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                   env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
  pairs = []
  for image, truth in eval_rows:
    name = os.path.basename(image)[:-len(".png")]
    with open(os.path.join(eval_dir, name + ".pred.txt"), encoding="utf-8") as f:
      pairs.append((f.read().rstrip("\r\n"), truth))
  return score(pairs)


def greedy_penalty_cer(workdir: str, tune_manifest: str) -> Tuple[float, dict]:
  """ctc_trainer's best checkpoint decoded greedily with each --blank_penalties value
  on the held-out lines; the eval set decoded with the best of them (the first of
  equals) -> (that penalty, evaluate's metrics)."""
  held_out = []
  for penalty in FLAGS.blank_penalties:
    found = benchlib.evaluate(workdir, "--decoder=greedy", f"--blank_penalty={penalty}",
                              f"--eval_data={tune_manifest}", which="best")
    if "error" in found:
      raise RuntimeError(f"evaluate --blank_penalty={penalty} failed: {found['error']}")
    print(f"  greedy, blank penalty {penalty} on the held-out lines: cer "
          f"{found['cer']:.4f}", flush=True)
    held_out.append((found["cer"], float(penalty)))
  penalty = min(held_out, key=lambda r: r[0])[1]
  found = benchlib.evaluate(workdir, "--decoder=greedy", f"--blank_penalty={penalty:g}",
                            which="best")
  if "error" in found:
    raise RuntimeError(f"evaluate --blank_penalty={penalty:g} failed: {found['error']}")
  return penalty, found


def lm_cer(root: str, workdir: str, train_manifest: str, tune_manifest: str) -> dict:
  """The user's recipe for the character LM, on ctc_trainer's best checkpoint: an
  --lm_order-gram model of the training labels (make_lm.py), its weights picked on
  the held-out lines (tune_lm.py), then the eval set decoded with them (evaluate)
  -> evaluate's metrics. Logs: ROOT/make_lm.log and ROOT/tune_lm.log."""
  arpa = os.path.join(root, f"char{FLAGS.lm_order}.arpa")
  flagfile = os.path.join(root, "lm.cfg")

  def run(log_name: str, *cmd: str) -> None:
    with open(os.path.join(root, log_name), "w") as log:
      subprocess.run(["nice", "-n", "10", sys.executable, *cmd], check=True,
                     cwd=benchlib.REPO, env=benchlib._child_env(), stdout=log,
                     stderr=subprocess.STDOUT)

  print(f"LM: tools/make_lm.py --order={FLAGS.lm_order} on {train_manifest}; "
        f"tools/tune_lm.py on {tune_manifest} (log {root}/tune_lm.log)", flush=True)
  run("make_lm.log", "tools/make_lm.py", f"--label_manifest={train_manifest}",
      "--unit=char", f"--order={FLAGS.lm_order}", f"--output={arpa}")
  run("tune_lm.log", "tools/tune_lm.py", f"--workdir={workdir}", f"--lm_path={arpa}",
      f"--eval_data={tune_manifest}", "--checkpoint=best", f"--lm_flagfile={flagfile}",
      f"--alphas={','.join(FLAGS.lm_alphas)}", f"--betas={','.join(FLAGS.lm_betas)}",
      f"--blank_penalties={','.join(FLAGS.blank_penalties)}")
  found = benchlib.evaluate(workdir, f"--flagfile={flagfile}", which="best")
  if "error" in found:
    raise RuntimeError(f"evaluate with {flagfile} failed: {found['error']}")
  with open(flagfile, encoding="utf-8") as f:
    print("".join(f"  {line}" for line in f), end="")
  return found


def _curve_table(name: str, points, unit: str) -> None:
  print(f"\n{name}: CER against wall time (from its start)\n")
  print(f"| minutes | {unit} | CER |")
  print("|---:|---:|---:|")
  for seconds, where, cer in points:
    print(f"| {seconds / 60:.1f} | {where} | {cer:.4f} |")
  if not points:
    print("| - | - | - |")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  bin_dir = ensure_calamari(FLAGS.calamari_venv)
  root = FLAGS.keep or tempfile.mkdtemp(prefix="bench_accuracy-")
  os.makedirs(root, exist_ok=True)
  try:
    folders, train_rows, eval_rows = benchlib.split_lines(FLAGS.data_dir, FLAGS.eval_set)
    tune_rows = []
    if FLAGS.lm_order:
      try:
        train_rows, tune_rows = benchlib.hold_out(train_rows, FLAGS.lm_tune_lines)
      except ValueError as e:
        raise app.UsageError(f"--lm_tune_lines: {e}") from None
      tune_manifest = benchlib.write_manifest(os.path.join(root, "tune.tsv"), tune_rows)
    charset = os.path.join(root, "charset.txt")
    symbols = benchlib.write_charset(charset, [t for _, t in train_rows + tune_rows + eval_rows])
    train_manifest = benchlib.write_manifest(os.path.join(root, "train.tsv"), train_rows)
    data_flags = ["--data_format=tsv", f"--train_data={train_manifest}",
                  f"--eval_data={benchlib.write_manifest(os.path.join(root, 'eval.tsv'), eval_rows)}",
                  f"--charset={charset}"]
    cal_train = os.path.join(root, "calamari_data", "train")
    cal_eval = os.path.join(root, "calamari_data", "eval")
    link_sidecar(train_rows, cal_train)
    link_sidecar(eval_rows, cal_eval)
    print(f"train: {', '.join(folders)} ({len(train_rows)} lines); eval: "
          f"{FLAGS.eval_set} ({len(eval_rows)} lines); "
          f"{f'held out to tune the LM: {len(tune_rows)} lines; ' if tune_rows else ''}"
          f"{symbols} symbols; "
          f"{FLAGS.minutes:g} minutes each, "
          f"{'side by side' if FLAGS.together else 'one after the other'}; "
          f"{os.cpu_count()} CPUs; work folder {root}", flush=True)

    workdir = os.path.join(root, "ctc_trainer")
    cal_out = os.path.join(root, "calamari")

    # Side by side, each tool gets its own half of the CPUs: unpinned, the faster
    # one takes a larger share of the machine (docs/benchmarks.md, Part 10).
    ctc_cpus, cal_cpus = benchlib.split_cpus(2) if FLAGS.together else (None, None)
    where = lambda cpus: f", CPUs {','.join(map(str, cpus))}" if cpus else ""

    def start_ctc():
      print(f"ctc_trainer: {FLAGS.config} {' '.join(FLAGS.ctc_flags)} "
            f"(log {workdir}.log{where(ctc_cpus)})", flush=True)
      return benchlib.train_for(workdir, [f"--flagfile={FLAGS.config}", *data_flags,
                                          *FLAGS.ctc_flags], FLAGS.minutes,
                                cpus=ctc_cpus)

    def start_calamari():
      print(f"Calamari: {bin_dir}/calamari-train (log {cal_out}.log"
            f"{where(cal_cpus)})", flush=True)
      return Calamari(bin_dir, cal_train, cal_eval, cal_out, cal_out + ".log",
                      FLAGS.minutes, cal_cpus)

    if FLAGS.together:
      ctc, cal = start_ctc(), start_calamari()
      ctc_seconds, cal_seconds = ctc(), cal.finish()
    else:
      ctc = start_ctc()
      ctc_seconds = ctc()
      cal = start_calamari()
      cal_seconds = cal.finish()
    print(f"trained: ctc_trainer {ctc_seconds / 60:.1f} min, Calamari "
          f"{cal_seconds / 60:.1f} min; scoring Calamari's best model", flush=True)

    ctc_points = ctc_curve(workdir, ctc.started)
    cal_points = benchlib.calamari_curve(cal.lines)
    _curve_table("ctc_trainer", ctc_points, "step")
    _curve_table("Calamari 2.3.1 (val_CER, its own metric)", cal_points, "epoch")

    ctc_best = min((c for _, _, c in ctc_points), default=None)
    cal_best = calamari_best_cer(bin_dir, cal_out, eval_rows, cal_eval,
                                 cal_out + "-predict.log")
    # Calamari's time to its best: the epoch whose val_CER was lowest.
    cal_best_at = min(cal_points, key=lambda p: p[2])[0] if cal_points else None
    reach = (benchlib.first_reaching([(t, c) for t, _, c in ctc_points], cal_best)
             if cal_best is not None else None)
    fmt = lambda v, f="{:.4f}": "-" if v is None else f.format(v)
    print("\n| | ctc_trainer | Calamari 2.3.1 | ratio | target |")
    print("|---|---:|---:|---:|---|")
    ratio = ctc_best / cal_best if ctc_best is not None and cal_best else None
    print(f"| best CER (ctc_trainer.metrics on {FLAGS.eval_set}) | {fmt(ctc_best)} | "
          f"{fmt(cal_best)} | {fmt(ratio, '{:.2f}')} | <= 0.8 |")
    time_ratio = reach / cal_best_at if reach is not None and cal_best_at else None
    print(f"| minutes to Calamari's best CER | {fmt(reach and reach / 60, '{:.1f}')} | "
          f"{fmt(cal_best_at and cal_best_at / 60, '{:.1f}')} | "
          f"{fmt(time_ratio, '{:.2f}')} | <= 0.5 |", flush=True)
    if reach is None and cal_best is not None:
      print("ctc_trainer did not reach Calamari's best CER within the budget.")
    if FLAGS.lm_order and ctc_best is not None:
      penalty, found = greedy_penalty_cer(workdir, tune_manifest)
      print(f"| best checkpoint, greedy, blank penalty {penalty:g} (picked on the "
            f"held-out lines) | {found['cer']:.4f} | {fmt(cal_best)} | "
            f"{fmt(found['cer'] / cal_best if cal_best else None, '{:.2f}')} | "
            "<= 0.8 |", flush=True)
      found = lm_cer(root, workdir, train_manifest, tune_manifest)
      lm_ratio = found["cer"] / cal_best if cal_best else None
      print(f"| best checkpoint, character {FLAGS.lm_order}-gram LM (weights from "
            f"the held-out lines, as is its blank penalty) | {found['cer']:.4f} | "
            f"{fmt(cal_best)} | "
            f"{fmt(lm_ratio, '{:.2f}')} | <= 0.8 |", flush=True)
  finally:
    if not FLAGS.keep:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  # Relative paths (--config, --data_dir) are taken from the repository root.
  os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  sys.path.insert(0, os.getcwd())
  app.run(main)
