"""The beam_pruned decoder decodes as the plain beam does, on a smaller problem."""

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import ctc
from ctc_trainer.charset import Charset
from ctc_trainer.decoders import beam_pruned

CHARSET = Charset(list("abdehlorw "))
FRAMES = 40


def _peaked_logits(text, frames=FRAMES, num_classes=CHARSET.num_classes, seed=0,
                   gap=14.0):
  """Logits [frames, classes] of a confident model spelling `text`: each character on
  one frame, then two or more frames that are blank with probability ~1, so that the
  blank separating a repeat ("aa") is one the pruning may drop. Every frame has a
  little noise, and each character frame a runner-up class."""
  rng = np.random.default_rng(seed)
  ids = CHARSET.encode_py(text) if num_classes == CHARSET.num_classes else text
  logits = rng.normal(0.0, 0.5, (frames, num_classes)).astype(np.float32)
  logits[:, 0] += gap
  step = max(2, (frames - 1) // max(len(ids), 1))
  assert step * len(ids) <= frames, "text too long for the frames"
  for i, c in enumerate(ids):
    t = 1 + i * step
    logits[t, 0] -= gap - 3.0
    logits[t, c] += gap
    logits[t, 1 + (c + 4) % (num_classes - 1)] += gap - 6.0
  return logits


def _decode_both(logits, length, beam_width=16, top_paths=1, **kw):
  logits, length = tf.constant(logits), tf.constant(length, tf.int32)
  plain = ctc.beam_search_decode(logits, length, beam_width, top_paths)
  pruned = beam_pruned.pruned_beam_search_decode(logits, length, beam_width, top_paths,
                                                 **kw)
  return plain, pruned


TEXTS = ["aab", "hello", "aaa", "abba", "", "w", "hello world", "ll"]
BOTH_MODES = pytest.mark.parametrize("greedy_if_sure", [True, False],
                                     ids=["greedy_if_sure", "always_search"])


@BOTH_MODES
@pytest.mark.parametrize("top_paths", [1, 2])
def test_top1_matches_unpruned_on_peaked_logits_with_repeats(greedy_if_sure, top_paths):
  logits = np.stack([_peaked_logits(t, seed=i) for i, t in enumerate(TEXTS)])
  length = [FRAMES] * len(TEXTS)
  length[1] = 20  # "hello" cut after "hel": padding frames never count
  (plain, plain_scores), (pruned, scores) = _decode_both(
      logits, length, top_paths=top_paths, greedy_if_sure=greedy_if_sure)
  assert len(pruned) == top_paths and scores.shape == (len(TEXTS), top_paths)
  assert pruned[0].to_list() == plain[0].to_list()
  texts = [t.decode() for t in CHARSET.decode(pruned[0]).numpy()]
  assert texts == ["aab", "hel", "aaa", "abba", "", "w", "hello world", "ll"]
  # The scores approximate the unpruned log probabilities.
  np.testing.assert_allclose(scores.numpy()[:, 0], plain_scores.numpy()[:, 0],
                             atol=1e-2)


def test_problem_shrinks_and_keeps_a_blank_only_between_possible_repeats():
  logits = tf.constant(_peaked_logits("aab")[None])
  pruned = beam_pruned.prune(logits, tf.constant([FRAMES]))
  # a, blank, a, b: the leading and trailing blank runs are gone, the run between the
  # two a's is one frame, which keeps "aa" from collapsing to "a", and the run between
  # a and b (which share no likely class) is gone.
  assert pruned.length.numpy().tolist() == [4]
  blank_probs = tf.exp(pruned.log_probs[0, :, 0]).numpy()
  assert blank_probs[1] > 0.999 and (blank_probs[[0, 2, 3]] < 0.5).all()
  # Kept: blank, a, b and their two runner-ups, in id order.
  class_ids = pruned.class_ids.numpy()[0].tolist()
  assert len(class_ids) == 5 and sorted(class_ids) == class_ids
  # A class threshold of 0 makes every class a possible repeat: a blank stays in
  # every inner run.
  pruned = beam_pruned.prune(logits, tf.constant([FRAMES]), class_threshold=0.0)
  assert pruned.length.numpy().tolist() == [5]
  assert pruned.class_ids.shape[1] == CHARSET.num_classes


@BOTH_MODES
def test_ids_map_back_to_original_classes(greedy_if_sure):
  num_classes = 80
  rows = [[42, 7, 79, 79], [3], [79, 1, 1, 2]]
  logits = np.stack([_peaked_logits(r, num_classes=num_classes, seed=i)
                     for i, r in enumerate(rows)])
  (plain, _), (pruned, _) = _decode_both(logits, [FRAMES] * 3,
                                         greedy_if_sure=greedy_if_sure)
  assert pruned[0].to_list() == plain[0].to_list() == rows
  reduced = beam_pruned.prune(tf.constant(logits), tf.constant([FRAMES] * 3))
  assert reduced.log_probs.shape[2] < 10  # of 80


@BOTH_MODES
def test_empty_outputs(greedy_if_sure):
  all_blank = np.full((3, FRAMES, CHARSET.num_classes), -10.0, np.float32)
  all_blank[..., 0] = 10.0
  (plain, _), (pruned, scores) = _decode_both(all_blank, [FRAMES, 5, 0],
                                              greedy_if_sure=greedy_if_sure)
  assert pruned[0].to_list() == plain[0].to_list() == [[], [], []]
  assert np.isfinite(scores.numpy()).all()
  mixed = np.stack([all_blank[0], _peaked_logits("ab")])
  (plain, _), (pruned, _) = _decode_both(mixed, [FRAMES, FRAMES],
                                         greedy_if_sure=greedy_if_sure)
  assert pruned[0].to_list() == plain[0].to_list() == [[], CHARSET.encode_py("ab")]


def test_thresholds_that_keep_everything_match_exactly():
  logits = tf.random.stateless_normal([4, 12, 6], seed=[1, 2], stddev=2.0)
  (plain, plain_scores), (pruned, scores) = _decode_both(
      logits, [12, 9, 12, 3], top_paths=3, blank_threshold=1.5, class_threshold=0.0)
  for a, b in zip(plain, pruned):
    assert a.to_list() == b.to_list()
  np.testing.assert_allclose(scores.numpy(), plain_scores.numpy(), rtol=1e-5)


@BOTH_MODES
def test_traces_once_with_none_dims(greedy_if_sure):
  @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32),
                                tf.TensorSpec([None], tf.int32)])
  def decode(logits, length):
    ids, scores = beam_pruned.pruned_beam_search_decode(
        logits, length, beam_width=8, greedy_if_sure=greedy_if_sure)
    return CHARSET.decode(ids[0]), scores

  for i, (texts, frames) in enumerate([(["ab", "hello"], 30), (["aa"], 12),
                                       (["", "w", "ll", "bad"], 50)]):
    logits = np.stack([_peaked_logits(t, frames, seed=i) for t in texts])
    out, _ = decode(tf.constant(logits), tf.constant([frames] * len(texts)))
    assert [s.decode() for s in out.numpy()] == texts
  assert decode.experimental_get_tracing_count() == 1


def test_rejects_bad_thresholds():
  with pytest.raises(ValueError, match="blank_threshold"):
    beam_pruned.prune(tf.zeros([1, 2, 3]), tf.constant([2]), blank_threshold=0.0)


@BOTH_MODES
def test_top1_matches_unpruned_on_noisy_logits(greedy_if_sure):
  """Less confident outputs: characters spilling onto neighbouring frames, runner-ups
  close behind, blank frames that are not all droppable."""
  rng = np.random.default_rng(3)
  num, frames, classes = 24, 30, 12
  logits = rng.normal(0.0, 2.0, (num, frames, classes)).astype(np.float32)
  logits[..., 0] += rng.uniform(8.0, 18.0, (num, frames))
  for row in range(num):
    for t in rng.choice(frames, size=8, replace=False):
      c = int(rng.integers(1, classes))
      logits[row, t, c] += 16.0
      logits[row, t, 1 + c % (classes - 1)] += rng.uniform(10.0, 16.0)
      if t + 1 < frames:
        logits[row, t + 1, c] += rng.uniform(6.0, 14.0)
  length = rng.integers(10, frames + 1, num)
  # Both kinds of rows are here: sure ones (best path > 0.55, taken greedily) and
  # searched ones.
  log_probs = tf.nn.log_softmax(logits).numpy()
  best_path = np.array([log_probs[i, :n].max(axis=1).sum()
                        for i, n in enumerate(length)])
  assert 0 < np.sum(best_path > np.log(0.55)) < num
  (plain, plain_scores), (pruned, scores) = _decode_both(
      logits, length, greedy_if_sure=greedy_if_sure)
  assert pruned[0].to_list() == plain[0].to_list()
  np.testing.assert_allclose(scores.numpy(), plain_scores.numpy(), atol=0.05)
  reduced = beam_pruned.prune(tf.constant(logits), tf.constant(length, tf.int32))
  assert reduced.length.numpy().sum() < 0.7 * length.sum()
