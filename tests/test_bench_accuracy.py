"""The accuracy benchmarks' pure parts (tools/benchlib.py): the gt4histcomment split
and its small-set subsets, Calamari's training log read as a CER curve, and the first
time a curve reaches a target CER. No Calamari needed."""

import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "tools"))
import benchlib  # noqa: E402


# The shape of tfaip's LoggerCallback lines (calamari-train 2.3.1); the second epoch
# has no validation, so no val_CER.
LOG = [
    (12.0, "INFO     2026-12-03 04:44:53,188 tfaip.trainer.callbacks.logger_callback: "
           "Start of epoch    1"),
    (70.5, "INFO     2026-12-03 04:45:51,010 tfaip.trainer.callbacks.logger_callback: "
           "Results of epoch    1 CER: 0.9512 - loss: 120.3000 - lr: 0.0010 - "
           "val_CER: 0.8731 - val_loss: 98.1000"),
    (99.0, "INFO     2026-12-03 04:46:20,000 tfaip.trainer.callbacks.logger_callback: "
           "Results of epoch    2 CER: 0.8000 - loss: 90.0000 - lr: 0.0010"),
    (118.0, "INFO     2026-12-03 04:46:39,000 tfaip.trainer.callbacks.earlys: "
            "Better value of val_CER found. Old = 0.8731, Best = 0.3502"),
    (130.25, "INFO     2026-12-03 04:46:51,200 tfaip.trainer.callbacks.logger_callback: "
             "Results of epoch   13 CER: 0.4100 - loss: 40.0000 - val_CER: 0.3502"),
    (150.0, "INFO     2026-12-03 04:47:11,000 tfaip.trainer.callbacks.earlys: "
            "No better value of val_CER = 0.4 found. Keeping best = 0.3502"),
    (151.0, "INFO     2026-12-03 04:47:12,000 tfaip.trainer.callbacks.logger_callback: "
            "Results of epoch   14 CER: 0.4000 - loss: 39.0000 - val_CER: 0.4000"),
]


def test_calamari_curve_reads_val_cer_of_each_validated_epoch():
  # Epoch 1 has no verdict line: its Results line's time; the others: their verdict's.
  assert benchlib.calamari_curve(LOG) == [(70.5, 1, 0.8731), (118.0, 13, 0.3502),
                                          (150.0, 14, 0.4)]


def test_calamari_curve_of_a_log_without_epochs_is_empty():
  assert benchlib.calamari_curve(LOG[:1]) == []


def test_first_reaching_is_the_first_point_at_or_below_the_target():
  curve = [(10.0, 0.9), (20.0, 0.3), (30.0, 0.5), (40.0, 0.2)]
  assert benchlib.first_reaching(curve, 0.3) == 20.0
  assert benchlib.first_reaching(curve, 0.25) == 40.0
  assert benchlib.first_reaching(curve, 0.1) is None


def _sidecar_set(root):
  """Three 'commentaries' of sidecar pairs; one line of b has an empty transcript."""
  for book, count in (("a", 5), ("b", 4), ("c", 3)):
    (root / book).mkdir()
    for i in range(count):
      (root / book / f"{book}{i}.png").write_bytes(b"png")
      text = "" if (book, i) == ("b", 2) else f"{book} line {i}\n"
      (root / book / f"{book}{i}.gt.txt").write_text(text, encoding="utf-8")


def test_split_lines_holds_out_the_eval_set_and_leaves_out_empty_lines(tmp_path):
  _sidecar_set(tmp_path)
  folders, train, evals = benchlib.split_lines(str(tmp_path), "c")
  assert folders == ["a", "b"]
  assert [t for _, t in train] == [f"a line {i}" for i in range(5)] + [
      "b line 0", "b line 1", "b line 3"]
  assert [t for _, t in evals] == ["c line 0", "c line 1", "c line 2"]
  assert all(p.endswith(".png") for p, _ in train + evals)


def test_split_lines_subset_is_seeded_and_drawn_from_the_training_lines(tmp_path):
  _sidecar_set(tmp_path)
  _, every, _ = benchlib.split_lines(str(tmp_path), "c")
  _, subset, evals = benchlib.split_lines(str(tmp_path), "c", train_lines=4, seed=1)
  assert len(subset) == 4 and set(subset) <= set(every) and subset == sorted(subset)
  assert benchlib.split_lines(str(tmp_path), "c", train_lines=4, seed=1)[1] == subset
  others = {tuple(benchlib.split_lines(str(tmp_path), "c", 4, seed)[1])
            for seed in range(2, 8)}
  assert len(others | {tuple(subset)}) > 1   # the seed draws
  assert len(evals) == 3                     # the eval set is never subsampled
  with pytest.raises(ValueError, match="9 training lines asked for; the training set "
                     "has 8"):
    benchlib.split_lines(str(tmp_path), "c", train_lines=9)


def test_hold_out_partitions_the_rows_in_order_and_is_seeded():
  rows = [(f"{i}.png", f"line {i}") for i in range(20)]
  rest, held = benchlib.hold_out(rows, 5)
  assert len(held) == 5 and len(rest) == 15
  assert sorted(rest + held) == sorted(rows)                  # every row, once
  assert rest == [r for r in rows if r in rest] and held == [r for r in rows if r in held]
  assert benchlib.hold_out(rows, 5) == (rest, held)           # seed 0 by default
  assert {tuple(benchlib.hold_out(rows, 5, seed)[1]) for seed in range(1, 6)} - {tuple(held)}
  for count in (0, 20):
    with pytest.raises(ValueError, match=f"cannot hold out {count} of 20 lines"):
      benchlib.hold_out(rows, count)


def test_split_cpus_deals_equal_disjoint_groups_or_none(monkeypatch):
  monkeypatch.setattr(benchlib.os, "sched_getaffinity", lambda pid: {3, 0, 2, 1})
  assert benchlib.split_cpus(2) == [[0, 1], [2, 3]]
  assert benchlib.split_cpus(1) == [[0, 1, 2, 3]]
  # Three runs on four CPUs cannot share them equally: no pinning rather than unfair.
  assert benchlib.split_cpus(3) == [None, None, None]
  assert benchlib.split_cpus(5) == [None] * 5


def test_pinned_child_runs_only_on_its_cpus():
  cpu = sorted(benchlib.os.sched_getaffinity(0))[-1]
  out = benchlib.subprocess.run(
      [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
      preexec_fn=benchlib.pinned([cpu]), capture_output=True, text=True, check=True)
  assert out.stdout.strip() == f"[{cpu}]"
  assert benchlib.pinned(None) is None
