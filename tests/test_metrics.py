import pytest
import tensorflow as tf

from ctc_trainer import metrics


def _run(preds, refs):
  return metrics.results(metrics.batch_sums(tf.constant(preds), tf.constant(refs)))


def test_known_strings_match_hand_computed_values():
  preds = ["kitten", "hello word", "abc", ""]
  refs = ["sitting", "hello world", "abc", "xy"]
  r = _run(preds, refs)
  # char edits: kitten/sitting 3, hello word/hello world 1, abc 0, ""/xy 2 -> 6 of 7+11+3+2=23.
  assert r["cer"] == pytest.approx(6 / 23)
  # word edits: 1 + 1 + 0 + 1 (deleted "xy") -> 3 of 5 reference words.
  assert r["wer"] == pytest.approx(3 / 5)
  assert r["seq_accuracy"] == pytest.approx(1 / 4)


def test_empty_predictions_and_references():
  r = _run(["", "ab", ""], ["", "", "cd"])
  # "" vs "" is exact; "ab" vs "" costs 2 insertions; "" vs "cd" 2 deletions.
  assert r["cer"] == pytest.approx(4 / 2)
  assert r["seq_accuracy"] == pytest.approx(1 / 3)
  all_empty = _run(["", ""], ["", ""])
  assert all_empty["cer"] == 0 and all_empty["wer"] == 0
  assert all_empty["seq_accuracy"] == 1


def test_sums_add_across_batches_like_one_corpus():
  preds, refs = ["ab", "xyz", "hello", "q"], ["abc", "xyz", "help", ""]
  whole = _run(preds, refs)
  sums = metrics.add_sums({}, metrics.batch_sums(tf.constant(preds[:1]), tf.constant(refs[:1])))
  sums = metrics.add_sums(sums, metrics.batch_sums(tf.constant(preds[1:]), tf.constant(refs[1:])))
  assert metrics.results(sums) == pytest.approx(whole)


def test_unicode_counts_characters_not_bytes():
  r = _run(["héllo"], ["hello"])
  assert r["cer"] == pytest.approx(1 / 5)
