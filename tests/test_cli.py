"""End to end: the train and evaluate CLIs as a user runs them (in this process; the
signal, kill and multi-worker tests start real processes)."""

import json
import os
import re
import shutil

import pytest
import tensorflow as tf
from PIL import Image

from ctc_trainer import evaluate, loop, train
from ctc_trainer.data import sources
from tests.helpers import TINY_FLAGS, run_main


def train_cli(*args):
  return run_main(train.main, *args, prog="ctc_trainer.train")


def evaluate_cli(*args):
  return run_main(evaluate.main, *args, prog="ctc_trainer.evaluate")


def test_train_writes_checkpoints_summaries_and_flags(tiny_run):
  workdir, ran = tiny_run.workdir, tiny_run.ran
  assert "final eval: cer" in ran.out
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
  # The ETA says until when, to which step and at what rate.
  assert "step 6/6" in ran.err
  assert re.search(r"ETA \d+m\d\ds to step 6 at [0-9.]+ steps/s", ran.err), ran.err
  assert "step 1/6" in ran.err and "first step took" in ran.err


def test_rerun_from_flags_cfg_resumes_at_saved_step(tiny_run, tmp_path):
  workdir = shutil.copytree(tiny_run.workdir, tmp_path / "run")
  # The copy's flags.cfg names the original workdir; the command line wins.
  second = train_cli(f"--flagfile={workdir / 'flags.cfg'}", f"--workdir={workdir}",
                     "--train_steps=8")
  assert second.code == 0, second.err[-3000:]
  assert "Resuming at step 6 of 8" in second.err
  assert "step 8/8" in second.err and "step 2/8" not in second.err
  assert "ckpt-8.index" in os.listdir(workdir / "checkpoints")
  assert "ckpt-8.index" not in os.listdir(tiny_run.workdir / "checkpoints")


def test_evaluate_cli_prints_metrics(tiny_run):
  ran = evaluate_cli(f"--workdir={tiny_run.workdir}")
  assert ran.code == 0, ran.err[-3000:]
  assert ran.out.startswith("step 6: ")
  assert "cer" in ran.out and "wer" in ran.out and "seq_accuracy" in ran.out
  assert "(beam; greedy: cer " in ran.out
  ran = evaluate_cli(f"--workdir={tiny_run.workdir}", "--checkpoint=best", "--json")
  metrics = json.loads(ran.out)
  assert {"cer", "wer", "seq_accuracy"} <= set(metrics)
  # Per decoder too; the primary (--decoder's first, beam) is the headline.
  assert {f"{d}/{m}" for d in ("beam", "greedy") for m in ("cer", "wer", "seq_accuracy")
          } <= set(metrics)
  assert metrics["cer"] == metrics["beam/cer"]
  assert 0 <= metrics["seq_accuracy"] <= 1 and metrics["num_seqs"] == 16


def test_evaluations_reuse_one_eval_input_and_score_alike(restored):
  """A second evaluation of a run iterates the eval input the first one built (not a
  rebuilt one) and scores every sequence again, the same."""
  run, _ = restored
  samples = sources.load_samples(run.cfg.data, "eval", run.charset)
  first, _, _ = loop.evaluate(run, samples)
  built = {key: dataset for key, (_, dataset) in run.eval_inputs.items()}
  second, _, _ = loop.evaluate(run, samples)
  assert first == second and second["num_seqs"] == 16
  assert run.eval_inputs.keys() == built.keys()
  assert all(run.eval_inputs[key][1] is dataset for key, dataset in built.items())


def test_evaluate_without_a_trained_run_fails_with_one_line(tmp_path):
  ran = evaluate_cli(f"--workdir={tmp_path}")
  assert ran.code == 2
  assert f"error: {tmp_path}/flags.cfg not found" in ran.err


@pytest.mark.parametrize("flag, message", [
    ("--model=nope", "--model='nope' is unknown"),
    ("--batch_size=0", "--batch_size must be > 0"),
    ("--train_data=/no/such/file.tsv", "--train_data=/no/such/file.tsv does not exist"),
])
def test_bad_flags_fail_before_work_with_one_message(tmp_path, flag, message):
  manifest = tmp_path / "m.tsv"
  manifest.write_text("")
  ran = train_cli(f"--workdir={tmp_path / 'w'}", "--data_format=tsv",
                  f"--train_data={manifest}", f"--eval_data={manifest}", flag)
  assert ran.code != 0
  assert message in ran.err
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
  ran = train_cli(f"--workdir={tmp_path / 'w'}", "--data_format=tsv",
                  f"--train_data={manifest}", f"--eval_data={manifest}",
                  "--train_steps=2", *TINY_FLAGS[5:])
  assert ran.code == 2, ran.err[-2000:]
  assert "error: " in ran.err and "b.png" in ran.err


def test_out_of_charset_label_names_file_and_line(tmp_path):
  manifest = _write_manifest(tmp_path, [("a.png", "ab"), ("b.png", "bé")])
  charset = tmp_path / "charset.txt"
  charset.write_text("a\nb\n", encoding="utf-8")
  ran = train_cli(f"--workdir={tmp_path / 'w'}", "--data_format=tsv",
                  f"--train_data={manifest}", f"--eval_data={manifest}",
                  "--train_steps=2", f"--charset={charset}", *TINY_FLAGS[5:])
  assert ran.code == 2
  assert "m.tsv:2" in ran.err and "'é'" in ran.err


def test_input_only_reports_throughput_without_training(tiny_run, tmp_path):
  ran = train_cli(f"--workdir={tmp_path / 'w'}", "--input_only", "--train_steps=5",
                  *tiny_run.data_flags, *TINY_FLAGS)
  assert ran.code == 0, ran.err[-3000:]
  assert "input only:" in ran.out and "examples/s" in ran.out
  assert "padding efficiency" in ran.out
  assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.parametrize("step, first_or_final, seconds, due", [
    (1, True, 0.0, True),      # the first step, with what it cost
    (5, False, 1.0, False),
    (5, False, 30.0, True),    # a slow interval: no silent minutes
    (100, False, 1.0, True),   # --log_every
])
def test_progress_is_logged_by_steps_and_by_wall_time(step, first_or_final, seconds,
                                                      due):
  assert loop.log_due(step, 100, first_or_final, seconds) is due
