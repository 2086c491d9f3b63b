"""evaluate --report: totals equal to evaluate's metrics, the character alignment
behind the confusion tables, the HTML page and its images, a bad report path."""

import collections
import html
import json
import random
import re

import pytest
import tensorflow as tf
from PIL import Image

from ctc_trainer import evaluate, metrics, report
from ctc_trainer.config import DataConfig
from ctc_trainer.data import modalities
from tests.helpers import once, run_main

WORST = 3


def evaluate_cli(*args):
  return run_main(evaluate.main, *args, prog="ctc_trainer.evaluate")


def read_tsv(path):
  """-> rows of fields (header first), with the report's escapes undone."""
  unescape = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
  lines = path.read_text(encoding="utf-8").split("\n")
  assert lines[-1] == ""
  return [[re.sub(r"\\[\\tnr]", lambda m: unescape[m.group()], field)
           for field in line.split("\t")] for line in lines[:-1]]


@pytest.fixture(scope="module")
def reported(tiny_run, tmp_path_factory):
  """evaluate --report on the tiny run's best checkpoint -> (report folder, the
  metrics it printed); run once per session."""
  def make(made):
    folder = made / "out"
    ran = evaluate_cli(f"--workdir={tiny_run.workdir}", "--checkpoint=best", "--json",
                       f"--report={folder}", f"--report_worst={WORST}")
    assert ran.code == 0, ran.err[-3000:]
    return folder, json.loads(ran.out)
  return once(tmp_path_factory, "reported", make)


def test_report_totals_equal_evaluate_metrics(tiny_run, reported):
  folder, with_report = reported
  ran = evaluate_cli(f"--workdir={tiny_run.workdir}", "--checkpoint=best", "--json")
  assert ran.code == 0, ran.err[-3000:]
  plain = json.loads(ran.out)
  assert with_report == plain
  header, *rows = read_tsv(folder / "samples.tsv")
  assert header == ["key", "truth", "prediction", "edits", "ref_chars", "confidence"]
  assert sorted(r[0] for r in rows) == sorted(p for p, _ in tiny_run.eval_images())
  assert {(r[0], r[1]) for r in rows} == set(tiny_run.eval_images())
  edits = sum(int(r[3]) for r in rows)
  ref_chars = sum(int(r[4]) for r in rows)
  assert ref_chars == sum(len(r[1]) for r in rows)
  assert edits / ref_chars == plain["cer"]
  assert sum(r[1] == r[2] for r in rows) / len(rows) == plain["seq_accuracy"]
  assert len(rows) == plain["num_seqs"]
  assert all(0.0 < float(r[5]) <= 1.0 for r in rows)
  # The confusion table accounts for every edit, and each row's edits are its
  # alignment's.
  kind, *confusions = read_tsv(folder / "confusions.tsv")
  assert kind == ["kind", "truth", "predicted", "count"]
  assert sum(int(c[3]) for c in confusions) == edits
  counts = [int(c[3]) for c in confusions]
  assert counts == sorted(counts, reverse=True)
  for key, truth, prediction, row_edits, *_ in rows:
    pairs = report.align(truth, prediction)
    assert sum(t != p for t, p in pairs) == int(row_edits), key


def edit_distance(truth, prediction):
  return int(metrics.sample_char_counts(tf.constant([prediction]),
                                        tf.constant([truth]))["char_edits"][0])


@pytest.mark.parametrize("truth, prediction, substitutions, deletions, insertions", [
    ("abc", "abc", {}, {}, {}),
    ("abc", "axc", {("b", "x"): 1}, {}, {}),
    ("abc", "ac", {}, {"b": 1}, {}),
    ("ac", "abc", {}, {}, {"b": 1}),
    ("", "ab", {}, {}, {"a": 1, "b": 1}),
    ("aa", "", {}, {"a": 2}, {}),
    ("kitten", "sitting", {("k", "s"): 1, ("e", "i"): 1}, {}, {"g": 1}),
    ("ἀγαθός λόγος", "αγαθος λογος", {("ἀ", "α"): 1, ("ό", "ο"): 2}, {}, {}),
    ("ab cd", "abcd!", {}, {" ": 1}, {"!": 1}),
])
def test_alignment_counts_substitutions_deletions_insertions(
    truth, prediction, substitutions, deletions, insertions):
  confusions = report.Confusions()
  confusions.add(report.align(truth, prediction))
  assert dict(confusions.substitutions) == substitutions
  assert dict(confusions.deletions) == deletions
  assert dict(confusions.insertions) == insertions
  assert confusions.edits == edit_distance(truth, prediction)
  assert dict(confusions.occurrences) == dict(collections.Counter(truth))


def test_alignment_is_minimal_and_spells_both_strings():
  rng = random.Random(7)
  for _ in range(40):
    truth = "".join(rng.choices("abcä ", k=rng.randrange(0, 9)))
    prediction = "".join(rng.choices("abcä ", k=rng.randrange(0, 9)))
    pairs = report.align(truth, prediction)
    assert "".join(t for t, _ in pairs if t is not None) == truth
    assert "".join(p for _, p in pairs if p is not None) == prediction
    assert sum(t != p for t, p in pairs) == edit_distance(truth, prediction)


def test_html_names_the_worst_lines_and_their_images_exist(reported):
  folder, _ = reported
  page = (folder / "report.html").read_text(encoding="utf-8")
  assert "<script" not in page and "http" not in page   # self-contained
  _, *rows = read_tsv(folder / "samples.tsv")

  def cer(row):
    return int(row[3]) / int(row[4]) if int(row[4]) else int(row[3])

  # Most edits first, then highest CER, then eval order (sorted() is stable).
  ranked = sorted((r for r in rows if int(r[3])), key=lambda r: (-int(r[3]), -cer(r)))
  assert len(ranked) >= WORST   # an undertrained run gets lines wrong
  shown = [html.unescape(k) for k in re.findall(r'<span class="key">([^<]*)</span>', page)]
  assert shown == [row[0] for row in ranked[:WORST]]
  sources = re.findall(r'<img src="([^"]+)"', page)
  assert len(sources) == WORST
  for source in sources:
    with Image.open(folder / source) as image:
      assert image.format == "PNG" and image.height == 16 and image.width > 1
  assert "CER" in page and "sequence accuracy" in page


def test_tsv_fields_escape_tabs_and_newlines(tmp_path):
  rows = [report.Sample("a\tb.png", "x\ny", "x\\y", 1, 3, 0.5),
          report.Sample("c.png", "", "z", 1, 0, 0.25)]
  results = {"cer": 2.0 / 3, "wer": 1.0, "seq_accuracy": 0.0, "loss": 1.0,
             "num_seqs": 2.0, "beam/cer": 2.0 / 3}
  folder = report.prepare_folder(str(tmp_path / "r"))
  report.write_report(folder, rows, [], results, modalities.get(DataConfig()), {})
  header, *read = read_tsv(tmp_path / "r" / "samples.tsv")
  assert len(header) == 6 and all(len(r) == 6 for r in read)
  assert [r[:3] for r in read] == [["a\tb.png", "x\ny", "x\\y"], ["c.png", "", "z"]]
  assert "None shown (--report_worst=0)" in (tmp_path / "r" / "report.html").read_text()


def test_a_file_as_report_folder_is_one_clear_error(tiny_run, tmp_path):
  path = tmp_path / "taken"
  path.write_text("not a folder")
  ran = evaluate_cli(f"--workdir={tiny_run.workdir}", f"--report={path}")
  assert ran.code == 2
  assert f"error: --report={path} is a file, not a folder" in ran.err
  assert "Traceback" not in ran.err
  assert path.read_text() == "not a folder"


def test_audio_lines_keep_their_spectrogram_without_padding(tmp_path):
  """A hand-made audio batch through the collector: the worst line first, and its
  image the Modality's spectrogram of its own frames only."""
  modality = modalities.get(DataConfig(modality="audio"))
  frames, bins = 30, modality.example_shape[-1]
  batch = {"inputs": tf.random.stateless_normal([2, frames, bins], seed=[1, 2]),
           "input_length": tf.constant([frames, 12]),
           "text": tf.constant(["one", "two"]), "key": tf.constant(["a.wav", "b.wav"])}
  decoded = {"greedy": tf.constant(["one", "tw"]),
             "greedy/log_prob": tf.constant([-0.1, -2.0])}
  collector = report._Collector("greedy", modality, worst=5)
  collector.add(batch, decoded)
  worst = collector.worst_lines()
  assert [sample.key for sample, _ in worst] == ["b.wav"]
  assert worst[0][0].confidence == pytest.approx(float(tf.exp(-2.0)))
  folder = report.prepare_folder(str(tmp_path / "r"))
  report.write_report(folder, collector.rows, worst, {
      "cer": 1 / 6, "wer": 0.5, "seq_accuracy": 0.5, "loss": 1.0, "num_seqs": 2.0,
      "greedy/cer": 1 / 6}, modality, {})
  with Image.open(tmp_path / "r" / "images" / "0001.png") as image:
    assert image.size == (12, bins)   # time to the right, the padding cut off
