"""Graph hygiene and learning of the step functions, on hand-made batches."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import ctc, distribute

from tests.helpers import build_steps, make_batch

TEXTS = ["abc", "hgf", "aab", "d"]


def _rss_bytes():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def tiny_fns():
  """The tiny model's step functions, shared by the tests that only count traces
  and memory: each build traces for seconds."""
  return build_steps()[1]


def test_each_step_traces_once_over_many_shapes(tiny_fns):
  for i, width in enumerate([24, 40, 33, 64, 24, 57] * 3):
    texts = TEXTS[: 2 + i % 3]
    tiny_fns.train_step(make_batch(texts, width, seed=i))
    tiny_fns.eval_step(make_batch(texts, width, seed=i))
  assert tiny_fns.train_step.experimental_get_tracing_count() == 1
  assert tiny_fns.eval_step.experimental_get_tracing_count() == 1


def test_overfits_one_batch():
  _, fns = build_steps(learning_rate=1e-2)
  batch = make_batch(TEXTS, 32)
  losses = [float(fns.train_step(batch)["loss_sum"]) for _ in range(120)]
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses[::10]


def test_confidence_penalty_keeps_outputs_less_sure_and_logs_the_ctc_loss():
  """From the same weights and batches, the penalized step logs the same CTC loss
  at its first step (the penalty is not part of the logged loss) and trains to a
  higher output entropy than the plain step."""
  batch = make_batch(TEXTS, 32)
  plain_model, plain = build_steps(learning_rate=1e-2)
  penalized_model, penalized = build_steps(learning_rate=1e-2, confidence_penalty=0.5)
  penalized_model.set_weights(plain_model.get_weights())
  first = [float(fns.train_step(batch)["loss_sum"]) for fns in (plain, penalized)]
  assert first[0] == pytest.approx(first[1], rel=1e-6)
  for _ in range(60):
    plain.train_step(batch)
    penalized.train_step(batch)

  def entropy(model):
    logits = model(batch["inputs"], input_length=batch["input_length"], training=False)
    lengths = model.output_length(batch["input_length"])
    return float(tf.reduce_sum(ctc.frame_entropy(logits, lengths)))
  assert entropy(penalized_model) > 1.5 * entropy(plain_model)


def test_eval_memory_is_flat_over_1000_calls(tiny_fns):
  """The K.ctc_decode leak: decoding in a loop must not grow the graph or RSS."""
  batches = [make_batch(TEXTS, w, seed=w) for w in (24, 31, 40)]
  for i in range(100):
    tiny_fns.eval_step(batches[i % 3])
  rss_100 = _rss_bytes()
  for i in range(900):
    tiny_fns.eval_step(batches[i % 3])
  rss_1000 = _rss_bytes()
  assert tiny_fns.eval_step.experimental_get_tracing_count() == 1
  assert rss_1000 <= 1.05 * rss_100, (rss_100, rss_1000)


def test_xla_train_step_matches_graph_step():
  batch = make_batch(TEXTS, 32)
  results = []
  for jit in (False, True):
    keras.utils.set_random_seed(3)
    model, fns = build_steps(jit_compile=jit)
    out = fns.train_step(batch)
    results.append((float(out["loss_sum"]), [v.numpy() for v in model.trainable_variables]))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4)
  for a, b in zip(results[0][1], results[1][1]):
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_ctc_in_float32(policy):
  distribute.set_precision(policy)
  try:
    model, fns = build_steps(loss_scale=policy == "mixed_float16")
    batch = make_batch(TEXTS, 32)
    assert model(batch["inputs"]).dtype == tf.float32  # logits
    assert model.blocks[0][0].compute_dtype != "float32"
    losses = [float(fns.train_step(batch)["loss_sum"]) for _ in range(3)]
    assert np.isfinite(losses).all()
  finally:
    distribute.set_precision("float32")


def test_pruned_beam_eval_gives_the_same_strings_as_beam():
  batch = make_batch(TEXTS, 40)
  keras.utils.set_random_seed(5)
  _, fns = build_steps(decoder_names=("beam", "beam_pruned"))
  for _ in range(30):
    fns.train_step(batch)
  sums, samples = fns.eval_step(batch)
  assert samples["beam_pruned"].numpy().tolist() == samples["beam"].numpy().tolist()
  assert float(sums["beam_pruned/char_edits"]) == float(sums["beam/char_edits"])
