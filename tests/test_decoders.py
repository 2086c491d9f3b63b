"""The decoder registry: built-in decoders on hand-made logits, eval_step reporting
per configured decoder, the SavedModel serving the primary one, and --decoder."""

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from ctc_trainer import config, decoders, export, metrics
from ctc_trainer.config import DataConfig
from ctc_trainer.decoders import DecoderConfig, registry
from ctc_trainer.errors import ConfigError

from tests.helpers import CHARSET, HEIGHT, build_steps, make_batch

TEXTS = ["abc", "hgf", "aab", "d"]


def _logits(paths, num_classes=CHARSET.num_classes, sure=8.0, seed=0):
  """Logits [B, T, C] whose best path per row is `paths` (frame-wise class ids),
  each frame sure by `sure` nats over small noise."""
  rng = np.random.default_rng(seed)
  frames = max(len(p) for p in paths)
  logits = rng.normal(0.0, 0.3, (len(paths), frames, num_classes)).astype(np.float32)
  for row, path in enumerate(paths):
    logits[row, np.arange(len(path)), path] += sure
  return tf.constant(logits)


def _texts(ids):
  return [t.decode() for t in CHARSET.decode(ids).numpy()]


def _unsure(num_classes=CHARSET.num_classes):
  """One row of 3 frames, sure blanks around a frame where the blank leads 'b' by
  one nat: P("") = 0.73, P("b") = 0.27."""
  logits = np.full((1, 3, num_classes), -6.0, np.float32)
  logits[0, :, 0] = 4.0
  b = CHARSET.encode_py("b")[0]
  logits[0, 1, 0], logits[0, 1, b] = 1.0, 0.0
  return tf.constant(logits), tf.constant([3], tf.int32)


@pytest.mark.parametrize("name", ["greedy", "beam", "beam_pruned"])
def test_blank_penalty_turns_an_unsure_blank_into_the_symbol(name):
  logits, lengths = _unsure()
  decode = decoders.get(name)
  texts = {}
  for penalty in (0.0, 2.0):
    paths, _ = decode(logits, lengths, DecoderConfig(beam_width=4, blank_penalty=penalty))
    texts[penalty] = _texts(paths[0])
  assert texts == {0.0: [""], 2.0: ["b"]}


def test_penalize_blank_shifts_the_blank_only_and_is_a_no_op_at_zero():
  logits, _ = _unsure()
  assert registry.penalize_blank(logits, 0.0) is logits
  shifted = registry.penalize_blank(tf.cast(logits, tf.float16), 1.5)
  assert shifted.dtype == tf.float16
  np.testing.assert_allclose(logits.numpy() - shifted.numpy().astype(np.float32),
                             np.eye(1, CHARSET.num_classes)[None] * 1.5 +
                             np.zeros(logits.shape), atol=1e-2)


def test_built_in_decoders_are_registered():
  assert {"greedy", "beam", "beam_pruned"} <= set(decoders.names())
  assert decoders.get("greedy").max_paths(DecoderConfig(beam_width=8)) == 1
  assert decoders.get("beam").max_paths(DecoderConfig(beam_width=8)) == 8


def test_unknown_name_is_a_config_error_listing_the_known_ones():
  with pytest.raises(ConfigError, match="unknown decoder 'nope'; known decoders: "
                     + ", ".join(decoders.names())):
    decoders.get("nope")


def test_a_name_cannot_be_registered_twice(monkeypatch):
  monkeypatch.setattr(registry, "_DECODERS", dict(registry._DECODERS))
  with pytest.raises(ValueError, match="'greedy' is already registered"):
    decoders.register("greedy")(lambda logits, logit_length, config: None)


def test_greedy_collapses_repeats_and_drops_blanks():
  a, b, h = (CHARSET.encode_py(c)[0] for c in "abh")
  # a a _ a b b _ h, and a row cut by its length after "a _ b".
  logits = _logits([[a, a, 0, a, b, b, 0, h], [a, 0, b, b, h, h, h, h]])
  length = tf.constant([8, 3])
  paths, scores = decoders.get("greedy")(logits, length, DecoderConfig())
  assert len(paths) == 1 and scores.shape == (2, 1)
  assert _texts(paths[0]) == ["aabh", "ab"]
  # The score is the best alignment's log probability, over valid frames only.
  log_probs = tf.nn.log_softmax(logits).numpy().max(axis=2)
  np.testing.assert_allclose(scores.numpy()[:, 0],
                             [log_probs[0].sum(), log_probs[1, :3].sum()], rtol=1e-5)


def test_greedy_gives_one_path_only():
  with pytest.raises(ValueError, match="'greedy' gives 1 to 1 paths, not 2"):
    decoders.get("greedy")(_logits([[1]]), tf.constant([1]),
                           DecoderConfig(beam_width=4, top_paths=2))


def test_beam_and_beam_pruned_agree_on_a_peaked_distribution():
  a, b, d = (CHARSET.encode_py(c)[0] for c in "abd")
  paths = [[0, a, 0, 0, a, 0, b, 0, 0, 0], [d, d, 0, 0, 0, b, 0, 0, 0, 0],
           [0] * 10]
  logits, length = _logits(paths, sure=14.0), tf.constant([10, 10, 10])
  cfg = DecoderConfig(beam_width=8, top_paths=2)
  beam_paths, beam_scores = decoders.get("beam")(logits, length, cfg)
  pruned_paths, pruned_scores = decoders.get("beam_pruned")(logits, length, cfg)
  assert _texts(beam_paths[0]) == ["aab", "db", ""]
  assert _texts(pruned_paths[0]) == _texts(beam_paths[0])
  assert len(pruned_paths) == 2 and pruned_scores.shape == (3, 2)
  np.testing.assert_allclose(pruned_scores.numpy()[:, 0], beam_scores.numpy()[:, 0],
                             atol=1e-2)


@pytest.mark.parametrize("name", decoders.graph_names())
def test_every_decoder_keeps_the_contract_inside_one_trace(name):
  """Graph-pure, None batch/time/class dims, top_paths paths and scores, traced once."""
  decoder = decoders.get(name)
  top_paths = min(2, decoder.max_paths(DecoderConfig(beam_width=4)))
  cfg = DecoderConfig(beam_width=4, top_paths=top_paths)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32),
                                tf.TensorSpec([None], tf.int32)])
  def decode(logits, logit_length):
    paths, scores = decoder(logits, logit_length, cfg)
    return [CHARSET.decode(p) for p in paths], scores

  for batch, frames in [(2, 12), (5, 30), (1, 7)]:
    logits = tf.random.stateless_normal([batch, frames, CHARSET.num_classes],
                                        seed=[batch, frames], stddev=3.0)
    texts, scores = decode(logits, tf.fill([batch], frames))
    assert len(texts) == top_paths and texts[0].shape == (batch,)
    assert scores.dtype == tf.float32 and scores.shape == (batch, top_paths)
    assert np.isfinite(scores.numpy()).all()
  assert decode.experimental_get_tracing_count() == 1


def test_eval_step_reports_sums_per_configured_decoder():
  model, fns = build_steps(decoder_names=("greedy", "beam"))
  batch = make_batch(TEXTS, 40)
  sums, samples = fns.eval_step(batch)
  assert set(samples) == {"greedy", "beam", "greedy/log_prob", "beam/log_prob"}
  assert set(sums) == {"loss_sum", "loss_examples"} | {
      f"{name}/{key}" for name in ("greedy", "beam") for key in metrics.SUM_KEYS}
  # Each decoder's sums are the metric sums of its own strings.
  logits = model(batch["inputs"], input_length=batch["input_length"], training=False)
  paths, scores = decoders.get("greedy")(
      logits, model.output_length(batch["input_length"]), DecoderConfig())
  expected = metrics.batch_sums(CHARSET.decode(paths[0]), batch["text"])
  assert samples["greedy"].numpy().tolist() == CHARSET.decode(paths[0]).numpy().tolist()
  np.testing.assert_allclose(samples["greedy/log_prob"], scores[:, 0], rtol=1e-5)
  for key in metrics.SUM_KEYS:
    assert float(sums[f"greedy/{key}"]) == pytest.approx(float(expected[key]))
  beam = metrics.batch_sums(samples["beam"], batch["text"])
  assert float(sums["beam/char_edits"]) == pytest.approx(float(beam["char_edits"]))


def test_a_decoder_registered_in_a_test_is_used_by_eval_step(monkeypatch):
  monkeypatch.setattr(registry, "_DECODERS", dict(registry._DECODERS))

  @decoders.register("always_empty", single_path=True)
  def always_empty(logits, logit_length, config):
    del logit_length, config
    batch = tf.shape(logits, out_type=tf.int64)[0]
    empty = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32),
                                             tf.zeros([batch], tf.int64))
    return [empty], tf.zeros([batch, 1])

  _, fns = build_steps(decoder_names=("always_empty", "greedy"))
  sums, samples = fns.eval_step(make_batch(TEXTS, 40))
  assert samples["always_empty"].numpy().tolist() == [b""] * len(TEXTS)
  ref_chars = sum(len(t) for t in TEXTS)
  assert float(sums["always_empty/char_edits"]) == float(sums["always_empty/ref_chars"])
  assert float(sums["always_empty/ref_chars"]) == ref_chars
  assert float(sums["always_empty/seq_correct"]) == 0.0
  assert "greedy/char_edits" in sums


def test_serving_module_serves_the_configured_decoder():
  """A greedy primary: the serving module's strings are eval_step's greedy strings,
  with one path and the best path's probability as confidence (test_export saves and
  loads a serving module)."""
  model, fns = build_steps(decoder_names=("greedy", "beam"))
  batch = make_batch(TEXTS, 40)
  _, samples = fns.eval_step(batch)
  module = export.ServingModule(model, CHARSET, DataConfig(image_height=HEIGHT),
                                beam_width=4, decoder="greedy")
  assert module.top_k == 1
  served = module.serve_features(batch["inputs"], batch["input_length"])
  assert served["text"].numpy().tolist() == samples["greedy"].numpy().tolist()
  assert served["top_k_texts"].shape == (len(TEXTS), 1)
  logits = model(batch["inputs"], input_length=batch["input_length"], training=False)
  _, scores = decoders.get("greedy")(logits, model.output_length(batch["input_length"]),
                                     DecoderConfig())
  np.testing.assert_allclose(served["confidence"].numpy(), np.exp(scores[:, 0]),
                             rtol=1e-5)
  with pytest.raises(ConfigError, match="--top_k=2 must be between 1 and 1"):
    export.ServingModule(model, CHARSET, DataConfig(image_height=HEIGHT),
                         beam_width=4, top_k=2, decoder="greedy")


def test_serving_module_decodes_with_the_runs_blank_penalty():
  """eval_step and the serving module built with the same --blank_penalty give the
  same strings; a penalty far below zero leaves nothing but blanks."""
  batch = make_batch(TEXTS, 40)
  for penalty in (3.0, -50.0):
    model, fns = build_steps(decoder_names=("greedy",),
                             decoder_config=DecoderConfig(blank_penalty=penalty))
    _, samples = fns.eval_step(batch)
    module = export.ServingModule(model, CHARSET, DataConfig(image_height=HEIGHT),
                                  beam_width=4, decoder="greedy", blank_penalty=penalty)
    served = module.serve_features(batch["inputs"], batch["input_length"])
    assert served["text"].numpy().tolist() == samples["greedy"].numpy().tolist()
  assert served["text"].numpy().tolist() == [b""] * len(TEXTS)


def test_serving_module_with_beam_pruned_matches_eval_step():
  model, fns = build_steps(decoder_names=("beam_pruned",))
  batch = make_batch(TEXTS, 40)
  _, samples = fns.eval_step(batch)
  module = export.ServingModule(model, CHARSET, DataConfig(image_height=HEIGHT),
                                beam_width=4, top_k=2, decoder="beam_pruned")
  served = module.serve_features(batch["inputs"], batch["input_length"])
  assert served["text"].numpy().tolist() == samples["beam_pruned"].numpy().tolist()
  assert served["top_k_texts"].shape == (len(TEXTS), 2)


# --- --decoder and the deprecated --beam_prune --------------------------------------

def _parse(*args):
  with flagsaver.flagsaver():
    flags.FLAGS(["test", "--workdir=/tmp/unused", "--data_format=synthetic",
                 "--train_data=/tmp/unused/t", "--eval_data=/tmp/unused/e", *args])
    return config.from_flags().loop.decoder


@pytest.mark.parametrize("args, expected", [
    ((), ("beam", "greedy")),
    (("--decoder=greedy,beam_pruned",), ("greedy", "beam_pruned")),
    (("--decoder=greedy",), ("greedy",)),
    # An old flags.cfg's --beam_prune turns the primary beam into beam_pruned.
    (("--beam_prune",), ("beam_pruned", "greedy")),
    (("--nobeam_prune",), ("beam", "greedy")),
    (("--decoder=greedy,beam", "--beam_prune"), ("greedy", "beam")),
])
def test_decoder_flag(args, expected):
  assert _parse(*args) == expected


@pytest.mark.parametrize("value, message", [
    ("beam,nope", "--decoder=beam,nope: unknown decoder 'nope'; known decoders: "
                  + ", ".join(decoders.names())),
    ("beam,beam", "--decoder=beam,beam names a decoder twice"),
    ("", "--decoder names no decoder"),
])
def test_bad_decoder_flag_is_a_config_error(value, message):
  with pytest.raises(ConfigError, match=message):
    _parse(f"--decoder={value}")
