"""End to end: the train and evaluate CLIs as a user runs them, in subprocesses."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from PIL import Image

TINY = [
    "--data_format=synthetic", "--synthetic_train_size=64", "--synthetic_eval_size=16",
    "--synthetic_min_length=2", "--synthetic_max_length=4", "--image_height=16",
    "--conv_filters=8,16", "--rnn_units=16", "--rnn_layers=1", "--batch_size=8",
    "--eval_batch_size=8", "--log_every=2", "--eval_every=3", "--checkpoint_every=3",
    "--beam_width=4",
]


def run(module, *args, check=True):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                        text=True, env=env, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  workdir = root / "run"
  data = [f"--train_data={root / 'train'}", f"--eval_data={root / 'eval'}"]
  first = run("ctc_trainer.train", f"--workdir={workdir}", "--train_steps=6", *TINY, *data)
  return workdir, first


def test_train_writes_checkpoints_summaries_and_flags(trained):
  workdir, first = trained
  assert "final eval: cer" in first.stdout
  assert sorted(os.listdir(workdir / "checkpoints")) == [
      "checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index",
      "ckpt-6.data-00000-of-00001", "ckpt-6.index"]
  assert any(f.startswith("ckpt-") for f in os.listdir(workdir / "best"))
  for run_dir in ("train", "eval"):
    assert any("tfevents" in f for f in os.listdir(workdir / run_dir))
  flags_cfg = (workdir / "flags.cfg").read_text()
  assert "--train_steps=6" in flags_cfg and "--rnn_units=16" in flags_cfg
  assert "--decoder=beam,greedy" in flags_cfg
  tags = {value.tag for events in (workdir / "eval").glob("*tfevents*")
          for event in tf.compat.v1.train.summary_iterator(str(events))
          for value in event.summary.value}
  assert {"eval/cer", "eval/wer", "eval/seq_accuracy", "eval/loss", "eval/beam/cer",
          "eval/greedy/cer", "eval/greedy/seq_accuracy", "eval/samples"} <= tags, tags
  assert (workdir / "charset.txt").exists()
  assert "step 6/6" in first.stderr and "ETA" in first.stderr


def test_rerun_from_flags_cfg_resumes_at_saved_step(trained):
  workdir, _ = trained
  second = run("ctc_trainer.train", f"--flagfile={workdir / 'flags.cfg'}",
               "--train_steps=8")
  assert "Resuming at step 6 of 8" in second.stderr
  assert "step 8/8" in second.stderr and "step 2/8" not in second.stderr
  assert "ckpt-8.index" in os.listdir(workdir / "checkpoints")


def test_evaluate_cli_prints_metrics(trained):
  workdir, _ = trained
  text = run("ctc_trainer.evaluate", f"--workdir={workdir}").stdout
  assert "cer" in text and "wer" in text and "seq_accuracy" in text
  assert "(beam; greedy: cer " in text
  metrics = json.loads(run("ctc_trainer.evaluate", f"--workdir={workdir}",
                           "--checkpoint=best", "--json").stdout)
  assert {"cer", "wer", "seq_accuracy"} <= set(metrics)
  # Per decoder too; the primary (--decoder's first, beam) is the headline.
  assert {f"{d}/{m}" for d in ("beam", "greedy") for m in ("cer", "wer", "seq_accuracy")
          } <= set(metrics)
  assert metrics["cer"] == metrics["beam/cer"]
  assert 0 <= metrics["seq_accuracy"] <= 1 and metrics["num_seqs"] == 16


@pytest.mark.parametrize("flag, message", [
    ("--model=nope", "--model='nope' is unknown"),
    ("--batch_size=0", "--batch_size must be > 0"),
    ("--train_data=/no/such/file.tsv", "--train_data=/no/such/file.tsv does not exist"),
])
def test_bad_flags_fail_before_work_with_one_message(tmp_path, flag, message):
  manifest = tmp_path / "m.tsv"
  manifest.write_text("")
  proc = run("ctc_trainer.train", f"--workdir={tmp_path / 'w'}", "--data_format=tsv",
             f"--train_data={manifest}", f"--eval_data={manifest}", flag, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def _write_manifest(tmp_path, rows):
  lines = []
  for name, label in rows:
    Image.new("L", (40, 16), 255).save(tmp_path / name)
    lines.append(f"{name}\t{label}")
  manifest = tmp_path / "m.tsv"
  manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return manifest


def test_bad_data_gives_clear_error_naming_the_file(tmp_path):
  manifest = _write_manifest(tmp_path, [("a.png", "ab"), ("b.png", "ba")])
  (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  proc = run("ctc_trainer.train", f"--workdir={tmp_path / 'w'}", "--data_format=tsv",
             f"--train_data={manifest}", f"--eval_data={manifest}", "--train_steps=2",
             *TINY[5:], check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "b.png" in proc.stderr and "Traceback" not in proc.stderr


def test_out_of_charset_label_names_file_and_line(tmp_path):
  manifest = _write_manifest(tmp_path, [("a.png", "ab"), ("b.png", "bé")])
  charset = tmp_path / "charset.txt"
  charset.write_text("a\nb\n", encoding="utf-8")
  proc = run("ctc_trainer.train", f"--workdir={tmp_path / 'w'}", "--data_format=tsv",
             f"--train_data={manifest}", f"--eval_data={manifest}", "--train_steps=2",
             f"--charset={charset}", *TINY[5:], check=False)
  assert proc.returncode == 2
  assert "m.tsv:2" in proc.stderr and "'é'" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_input_only_reports_throughput_without_training(tmp_path):
  proc = run("ctc_trainer.train", f"--workdir={tmp_path / 'w'}", "--input_only",
             "--train_steps=5", f"--train_data={tmp_path / 'train'}",
             f"--eval_data={tmp_path / 'eval'}", *TINY)
  assert "input only:" in proc.stdout and "examples/s" in proc.stdout
  assert "padding efficiency" in proc.stdout
  assert not (tmp_path / "w" / "checkpoints").exists()
