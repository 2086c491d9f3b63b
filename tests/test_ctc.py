import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import ctc
from ctc_trainer.charset import Charset

CHARSET = Charset(list("abdehlorw "))


def _one_hot_logits(text, frames):
  """Logits whose best path spells `text`: blanks between repeats and as filler."""
  path = []
  for i, c in enumerate(text):
    if i and text[i - 1] == c:
      path.append(0)
    path.append(CHARSET.encode_py(c)[0])
  path += [0] * (frames - len(path))
  logits = np.full((frames, CHARSET.num_classes), -10.0, np.float32)
  logits[np.arange(frames), path] = 10.0
  return logits


@pytest.mark.parametrize("text", ["aab", "hello world", ""])
def test_one_hot_logits_decode_to_their_string(text):
  frames = 30
  logits = tf.constant(_one_hot_logits(text, frames)[None])
  length = tf.constant([frames])
  greedy = CHARSET.decode(ctc.greedy_decode(logits, length))
  ids, scores = ctc.beam_search_decode(logits, length, beam_width=8, top_paths=2)
  beam = CHARSET.decode(ids[0])
  assert greedy.numpy()[0].decode() == text
  assert beam.numpy()[0].decode() == text
  assert scores.shape == (1, 2) and scores[0, 0] >= scores[0, 1]


def test_decoders_respect_logit_length_and_batch():
  frames = 30
  batch = np.stack([_one_hot_logits("hello", frames), _one_hot_logits("ab", frames)])
  # Cut the first example to 3 frames: only "hel" is in them.
  length = tf.constant([3, frames])
  greedy = CHARSET.decode(ctc.greedy_decode(tf.constant(batch), length)).numpy()
  ids, _ = ctc.beam_search_decode(tf.constant(batch), length, beam_width=4)
  beam = CHARSET.decode(ids[0]).numpy()
  assert greedy.tolist() == [b"hel", b"ab"] and beam.tolist() == [b"hel", b"ab"]
  # A trailing example that decodes to nothing still gets its (empty) row.
  empty = np.stack([_one_hot_logits("ab", frames), _one_hot_logits("", frames)])
  assert CHARSET.decode(ctc.greedy_decode(tf.constant(empty), tf.constant([frames] * 2))
                        ).numpy().tolist() == [b"ab", b""]


def test_required_frames_counts_repeats():
  labels = tf.constant([[1, 1, 2, 0], [3, 4, 5, 6], [2, 2, 2, 0], [0, 0, 0, 0]])
  lengths = tf.constant([3, 4, 3, 0])
  assert ctc.required_frames(labels, lengths).numpy().tolist() == [4, 4, 5, 0]
  # A padded 0 after a real label must not count as a repeat of padding.
  assert ctc.required_frames(tf.constant([[1, 0, 0]]), tf.constant([1])).numpy() == [1]


@pytest.mark.parametrize("sparse_labels", [False, True])
def test_infeasible_labels_are_masked_not_inf(sparse_labels):
  logits = tf.Variable(tf.random.normal([2, 4, 5]))
  labels = tf.constant([[1, 2, 0, 0, 0], [1, 1, 2, 3, 4]])
  label_length = tf.constant([2, 5])
  with tf.GradientTape() as tape:
    loss, feasible = ctc.ctc_loss(labels, label_length, logits, tf.constant([4, 4]),
                                  sparse_labels=sparse_labels)
    total = tf.reduce_sum(loss)
  grad = tape.gradient(total, logits)
  assert feasible.numpy().tolist() == [True, False]
  assert np.isfinite(loss.numpy()).all() and loss.numpy()[1] == 0
  assert np.isfinite(grad.numpy()).all()
  assert np.abs(grad.numpy()[1]).sum() == 0 and np.abs(grad.numpy()[0]).sum() > 0


def test_loss_matches_tensorflow_on_feasible_labels():
  logits = tf.random.normal([3, 12, 6], seed=1)
  labels = tf.constant([[1, 2, 3], [4, 4, 0], [5, 0, 0]])
  label_length = tf.constant([3, 2, 1])
  ours, _ = ctc.ctc_loss(labels, label_length, logits, tf.constant([12, 10, 5]))
  ref = tf.nn.ctc_loss(labels, logits, label_length, tf.constant([12, 10, 5]),
                       logits_time_major=False, blank_index=0)
  np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5)


def test_sparse_labels_give_the_dense_loss_and_gradient():
  """The CPU fast path (TensorFlow's kernel on sparse labels) computes the same
  loss and gradient as dense labels, repeats, padding and an infeasible row too."""
  logits = tf.Variable(tf.random.normal([4, 12, 6], seed=2))
  labels = tf.constant([[1, 2, 3, 0, 0], [2, 2, 2, 2, 2], [1, 0, 0, 0, 0],
                        [5, 4, 4, 2, 1]])
  label_length, logit_length = tf.constant([3, 5, 1, 5]), tf.constant([12, 8, 3, 9])
  results = []
  for sparse_labels in (False, True):
    with tf.GradientTape() as tape:
      loss, feasible = ctc.ctc_loss(labels, label_length, logits, logit_length,
                                    sparse_labels=sparse_labels)
      total = tf.reduce_sum(loss)
    results.append((loss.numpy(), feasible.numpy(), tape.gradient(total, logits)))
  (dense, dense_ok, dense_grad), (sparse, sparse_ok, sparse_grad) = results
  assert dense_ok.tolist() == sparse_ok.tolist() == [True, False, True, True]
  np.testing.assert_allclose(sparse, dense, rtol=1e-5)
  np.testing.assert_allclose(sparse_grad.numpy(), dense_grad.numpy(), atol=1e-5)


def test_frame_entropy_sums_valid_frames_only():
  """Uniform frames have entropy ln(C), near one-hot frames about 0, and frames
  past logit_length (padding) count for nothing, whatever they hold."""
  num_classes = 6
  uniform = np.zeros((7, num_classes), np.float32)
  peaked = np.full((7, num_classes), -20.0, np.float32)
  peaked[:, 2] = 20.0
  mixed = np.concatenate([peaked[:4], uniform[:3]])   # 4 sure frames, 3 padding
  logits = tf.constant(np.stack([uniform, peaked, mixed]))
  entropy = ctc.frame_entropy(logits, tf.constant([7, 7, 4])).numpy()
  np.testing.assert_allclose(entropy, [7 * np.log(num_classes), 0.0, 0.0], atol=1e-5)
  np.testing.assert_allclose(
      ctc.frame_entropy(logits, tf.constant([5, 7, 7])).numpy(),
      [5 * np.log(num_classes), 0.0, 3 * np.log(num_classes)], atol=1e-5)
