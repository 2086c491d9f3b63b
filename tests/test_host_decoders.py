"""The host decoders (lm, lexicon, pattern): their constraints hold on random logits,
an n-gram LM from tools/make_lm.py loads in KenLM with probabilities that sum to 1
and lowers the WER of a constructed case, eval and predict run them (from the
checkpoint and from the SavedModel's logits), and their flags fail with one line."""

import json
import re
import sys
import wave

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import config, decoders, evaluate, export, metrics, models, predict, steps
from ctc_trainer.charset import Charset
from ctc_trainer.data import pipeline
from ctc_trainer.decoders import DecoderConfig, lm, pattern, search
from ctc_trainer.errors import ConfigError
from tests.helpers import (CHARSET, HEIGHT, TINY_MODEL, load_tool, make_batch,
                           run_main)

CHARS = Charset(list("abco 1-"))
LEXICON = ["ab", "ba", "aab", "c", "co-1"]


def _random_logits(rng, batch, frames, classes, scale):
  logits = rng.normal(0.0, scale, (batch, frames, classes)).astype(np.float32)
  lengths = rng.integers(1, frames + 1, batch).astype(np.int32)
  return logits, lengths


def _decode(name, charset, top_paths=2, **settings):
  decode = decoders.get(name).build(
      charset, DecoderConfig(beam_width=8, top_paths=top_paths, **settings))
  return decode


@pytest.fixture
def lexicon_file(tmp_path):
  path = tmp_path / "words.txt"
  path.write_text("\n".join(LEXICON) + "\n\n", encoding="utf-8")
  return str(path)


def test_lexicon_words_mode_never_outputs_a_word_outside_the_lexicon(lexicon_file):
  decode = _decode("lexicon", CHARS, lexicon=lexicon_file)
  rng = np.random.default_rng(0)
  outputs = set()
  for scale in (1.0, 3.0, 6.0):
    for _ in range(6):
      logits, lengths = _random_logits(rng, 8, 14, CHARS.num_classes, scale)
      paths, scores = decode(logits, lengths)
      for rank in paths:
        for ids in rank:
          text = CHARS.decode_py(ids)
          outputs.add(text)
          assert text == "" or text.split(" ") and all(
              w in LEXICON for w in text.split(" ")), text
  # Not vacuous: the search found multi-word outputs, not only empty ones.
  assert any(" " in t for t in outputs) and len(outputs) > 20


def test_lexicon_words_and_chars_mode_constrains_only_the_words(lexicon_file):
  decode = _decode("lexicon", CHARS, lexicon=lexicon_file,
                   lexicon_mode="words_and_chars")
  word_chars = set("".join(LEXICON))
  rng = np.random.default_rng(1)
  seen_free = False
  for _ in range(8):
    logits, lengths = _random_logits(rng, 8, 12, CHARS.num_classes, 3.0)
    for ids in decode(logits, lengths)[0][0]:
      text = CHARS.decode_py(ids)
      words = re.findall(f"[{re.escape(''.join(sorted(word_chars)))}]+", text)
      assert all(w in LEXICON for w in words), text
      seen_free |= bool(set(text) - word_chars)
  assert seen_free   # characters outside the lexicon's do appear between words


@pytest.mark.parametrize("expression", [
    "[a-c]{2}o?1+", "(ab|ba)-[0-9]", "a.c*", "[^ ]{1,3}( [a-c]+)?", r"\d|c{2,}"])
def test_pattern_mode_output_always_matches_in_full(expression):
  decode = _decode("pattern", CHARS, pattern=expression)
  rng = np.random.default_rng(2)
  matched = 0
  for scale in (1.0, 4.0):
    for _ in range(5):
      logits, lengths = _random_logits(rng, 8, 10, CHARS.num_classes, scale)
      paths, scores = decode(logits, lengths)
      for k, rank in enumerate(paths):
        for b, ids in enumerate(rank):
          text = CHARS.decode_py(ids)
          if scores[b, k] == -np.inf:   # nothing matching fits: no output
            assert text == ""
            continue
          assert re.fullmatch(expression, text), (expression, text)
          matched += 1
  assert matched > 40



def test_host_decoders_take_the_blank_penalty_off_first():
  """A frame where the blank leads 'b' by one nat: the pattern decoder (any string
  of the charset) writes nothing, and 'b' once the penalty outweighs that nat."""
  logits = np.full((1, 3, CHARS.num_classes), -6.0, np.float32)
  logits[0, :, 0] = 4.0
  logits[0, 1, 0], logits[0, 1, CHARS.encode_py("b")[0]] = 1.0, 0.0
  texts = {}
  for penalty in (0.0, 2.0):
    decode = _decode("pattern", CHARS, top_paths=1, pattern="[abco 1-]*",
                     blank_penalty=penalty)
    paths, _ = decode(logits, np.array([3], np.int32))
    texts[penalty] = CHARS.decode_py(paths[0][0])
  assert texts == {0.0: "", 2.0: "b"}

@pytest.mark.parametrize("expression", [
    "[A-Z]{3}[0-9]{3,4}", "(?:ab|c)*d+", "x?y{2,}z", r"[\d.-]+", "a|b|", "[]a]b",
    "^ab$", r"\w\s\W"])
def test_pattern_automaton_agrees_with_python_re(expression):
  symbols = list("ABZ09.-abcdxyz ]_")
  scorer = pattern.PatternScorer(pattern.compile_pattern(expression), symbols)
  rng = np.random.default_rng(3)
  for _ in range(300):
    text = "".join(rng.choice(symbols, int(rng.integers(0, 8))))
    state = scorer.initial()
    for ch in text:
      step = scorer.extend(state, symbols.index(ch) + 1)
      if step is None:
        break
      state = step[0]
    accepted = step is not None if text else True
    accepted = accepted and scorer.final(state) is not None
    assert accepted == bool(re.fullmatch(expression, text)), (expression, text)


@pytest.mark.parametrize("expression, message", [
    ("[A-Z", "missing ]"), ("(ab", "missing \\)"), ("*a", "nothing to repeat"),
    ("a{3,1}", "bad repeat"), ("a{x}", "bad repeat"), ("[z-a]", "bad range"),
    ("", "needs --pattern")])
def test_a_pattern_that_does_not_compile_is_a_config_error(expression, message):
  with pytest.raises(ConfigError, match=message):
    config.check_host_decoders(("pattern",), DecoderConfig(pattern=expression))


def test_lexicon_flag_errors(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n \n")
  for path, message in [("", "needs --lexicon"), (str(tmp_path / "no.txt"),
                                                  "is not a file"),
                        (str(empty), "holds no word")]:
    with pytest.raises(ConfigError, match=message):
      config.check_host_decoders(("lexicon",), DecoderConfig(lexicon=path))


def test_lm_flag_errors(tmp_path, monkeypatch):
  with pytest.raises(ConfigError, match="needs --lm_path"):
    config.check_host_decoders(("lm",), DecoderConfig())
  with pytest.raises(ConfigError, match="is not a file"):
    config.check_host_decoders(("lm",), DecoderConfig(lm_path=str(tmp_path / "x")))
  (tmp_path / "x.arpa").write_text("\\data\\\n")
  monkeypatch.setitem(sys.modules, "kenlm", None)   # not installed
  with pytest.raises(ConfigError, match=r"kenlm package.*pip install -e '\.\[lm\]'"):
    config.check_host_decoders(("lm",), DecoderConfig(lm_path=str(tmp_path / "x.arpa")))
  with pytest.raises(ConfigError, match="runs with --strategy=default or mirrored"):
    config.check_host_decoders(("lexicon",), DecoderConfig(), "multi_worker")


# --- language models -------------------------------------------------------------

make_lm = load_tool("make_lm")
CORPUS = ["the cat sat", "the cat ran", "a cat sat", "the dog sat", "the cat sat down"]


@pytest.fixture(scope="module")
def kenlm():
  return pytest.importorskip("kenlm")


def _score(model, kenlm, words, bos=True):
  """KenLM's log10 P(words[-1] | words[:-1])."""
  state, out = kenlm.State(), kenlm.State()
  (model.BeginSentenceWrite if bos else model.NullContextWrite)(state)
  for w in words[:-1]:
    model.BaseScore(state, w, out)
    state, out = out, kenlm.State()
  return model.BaseScore(state, words[-1], out)


@pytest.mark.parametrize("unit, order", [("word", 3), ("char", 4), ("word", 2)])
def test_make_lm_writes_an_arpa_kenlm_loads_with_normalized_probabilities(
    tmp_path, kenlm, unit, order):
  path = str(tmp_path / "lm.arpa")
  summary = make_lm.build(CORPUS + [""], unit, order, path)
  assert summary["sentences"] == len(CORPUS)
  model = kenlm.Model(path)
  assert model.order == order
  vocabulary = lm.arpa_unigrams(path) - {"<s>"}
  contexts = ([[], ["the"], ["the", "cat"], ["zebra"], ["cat", "sat"]] if unit == "word"
              else [[], ["t"], ["t", "h"], ["<sp>", "c", "a"], ["q"]])
  for context in contexts:
    total = sum(10 ** _score(model, kenlm, context + [w]) for w in vocabulary)
    assert total == pytest.approx(1.0, abs=1e-4), context
  assert lm.is_char_model(model, lm.arpa_unigrams(path)) == (unit == "char")
  if unit == "word" and order == 3:
    # Seen continuations beat unseen ones; a frequent one beats a rare one.
    assert _score(model, kenlm, ["the", "cat", "sat"]) > _score(
        model, kenlm, ["the", "cat", "ran"]) > _score(model, kenlm, ["the", "cat", "dog"])
    assert _score(model, kenlm, ["cat"]) > _score(model, kenlm, ["dog"])


def test_make_lm_cli_reads_a_manifest(tmp_path, kenlm):
  manifest = tmp_path / "m.tsv"
  manifest.write_text("".join(f"{i}.png\t{t}\n" for i, t in enumerate(CORPUS)))
  ran = run_main(make_lm.main, f"--label_manifest={manifest}", "--unit=word", "--order=2",
                 f"--output={tmp_path / 'out.arpa'}", prog="tools/make_lm.py")
  assert ran.code == 0, ran.err
  assert "5 sentences" in ran.out and kenlm.Model(str(tmp_path / "out.arpa")).order == 2
  ran = run_main(make_lm.main, f"--output={tmp_path / 'o.arpa'}", prog="make_lm")
  assert ran.code == 2 and "exactly one of --text, --label_manifest" in ran.err


def test_make_lm_normalizes_text_as_the_labels_are(tmp_path):
  """A decomposed spelling becomes the precomposed symbol the network emits (NFC, as
  the training labels are read); --text_normalization=none keeps the marks."""
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\u1f04\u03b2\n\u03b1\u0313\u0301\u03b3\n", encoding="utf-8")
  for normalization, marks in (("NFC", False), ("none", True)):
    arpa = tmp_path / f"{normalization}.arpa"
    ran = run_main(make_lm.main, f"--text={corpus}", "--unit=char", "--order=2",
                   f"--text_normalization={normalization}", f"--output={arpa}",
                   prog="tools/make_lm.py")
    assert ran.code == 0, ran.err
    section = arpa.read_text(encoding="utf-8").split("\\1-grams:")[1].split("\\2-grams:")[0]
    unigrams = {line.split()[1] for line in section.splitlines() if line.strip()}
    assert "\u1f04" in unigrams
    assert ("\u0313" in unigrams) is marks and ("\u0301" in unigrams) is marks


def _ambiguous_logits(charset, texts, confusions, rng):
  """Logits spelling each text, one character per frame between blanks, where each
  character of `confusions` (true -> wrong) loses to the wrong one by a little."""
  frames = 2 * max(map(len, texts)) + 1
  logits = np.full((len(texts), frames, charset.num_classes), -8.0, np.float32)
  logits[:, :, 0] = 4.0
  for b, text in enumerate(texts):
    for i, ch in enumerate(text):
      t = 2 * i + 1
      logits[b, t, 0] = -8.0
      true = charset.encode_py(ch)[0]
      logits[b, t, true] = 4.0
      if ch in confusions:
        logits[b, t, charset.encode_py(confusions[ch])[0]] = 4.0 + rng.uniform(0.1, 0.4)
  return logits, np.full(len(texts), frames, np.int32)


def _wer(texts, references):
  sums = metrics.batch_sums(tf.constant(texts), tf.constant(references))
  return metrics.results(sums)["wer"]


@pytest.mark.parametrize("unit, order", [("word", 2), ("char", 5)])
def test_lm_decoding_lowers_the_wer_of_a_constructed_case(tmp_path, kenlm, unit, order):
  charset = Charset(list(" acdeghnorst"))
  training = ["the cat sat", "the dog ran", "a cat ran", "the cat ran", "a dog sat",
              "the rat sat"] * 3
  path = str(tmp_path / "lm.arpa")
  make_lm.build(training, unit, order, path)
  references = ["the cat sat", "a dog ran", "the cat ran", "the rat sat"]
  # The acoustic model hears "cot", "dag", "rot", "sot": each slightly ahead.
  logits, lengths = _ambiguous_logits(charset, references, {"a": "o", "o": "a"},
                                      np.random.default_rng(0))
  beam = decoders.get("beam")(tf.constant(logits), tf.constant(lengths),
                              DecoderConfig(beam_width=8))[0][0]
  beam_texts = [t.decode() for t in charset.decode(beam).numpy()]
  decode = _decode("lm", charset, top_paths=1, lm_path=path, lm_alpha=1.0, lm_beta=0.5)
  lm_texts = search.texts(charset, decode(logits, lengths)[0][0])
  assert _wer(beam_texts, references) >= 0.5
  assert _wer(lm_texts, references) < 0.5 * _wer(beam_texts, references), lm_texts


# --- eval, export and predict --------------------------------------------------------

def test_eval_scores_a_host_decoder_on_its_own_strings():
  """StepFns.evaluate: eval_step's logits through a host decoder, its strings
  scored by the same sums as the in-graph decoders'."""
  model = models.build(TINY_MODEL, CHARSET.num_classes, (HEIGHT, None, 1))
  fns = steps.make_step_fns(
      model, None, CHARSET, tf.distribute.get_strategy(),
      pipeline.batch_signature(channels=1, height=HEIGHT), global_batch_size=4,
      clip_norm=5.0, beam_width=4, decoder_names=("greedy", "pattern"),
      decoder_config=DecoderConfig(pattern="[a-h]{2}"))
  batch = make_batch(["abc", "hgf", "aab", "d"], 40)
  sums, samples = fns.evaluate(batch)
  texts = [t.decode() for t in samples["pattern"].numpy()]
  assert len(texts) == 4 and all(re.fullmatch("[a-h]{2}", t) for t in texts), texts
  assert not any(k.startswith("host/") for k in samples)
  own = metrics.batch_sums(samples["pattern"], batch["text"])
  for key in metrics.SUM_KEYS:
    assert float(sums[f"pattern/{key}"]) == float(own[key])
  assert "greedy/char_edits" in sums and samples["pattern/log_prob"].shape == (4,)


def test_evaluate_cli_with_the_lexicon_decoder(tiny_run, tmp_path):
  lexicon = tmp_path / "words.txt"
  labels = [label for _, label in tiny_run.eval_images()]
  lexicon.write_text("\n".join(labels[:8]) + "\n")
  ran = run_main(evaluate.main, f"--workdir={tiny_run.workdir}",
                 "--decoder=lexicon,greedy", f"--lexicon={lexicon}", "--json",
                 prog="ctc_trainer.evaluate")
  assert ran.code == 0, ran.err[-2000:]
  results = json.loads(ran.out.splitlines()[-1])
  assert {"lexicon/cer", "lexicon/wer", "greedy/cer"} <= set(results)
  assert results["cer"] == results["lexicon/cer"]   # the primary
  ran = run_main(evaluate.main, f"--workdir={tiny_run.workdir}", "--decoder=lm",
                 prog="ctc_trainer.evaluate")
  assert ran.code == 2 and "--decoder=lm needs --lm_path" in ran.err


def test_exported_logits_equal_the_checkpoints_and_feed_the_lm(
    exported, restored, tiny_run, tmp_path, kenlm):
  logits_fn, charset = export.load_logits(str(exported))
  run, _ = restored
  assert charset.symbols == run.charset.symbols
  blobs = [open(p, "rb").read() for p, _ in tiny_run.eval_images()[:4]]
  exported_logits, exported_lengths = logits_fn(blobs)
  own_logits, own_lengths = export.run_logits(run)[0](blobs)
  np.testing.assert_array_equal(exported_lengths, own_lengths)
  np.testing.assert_allclose(exported_logits, own_logits, atol=1e-5)
  # An LM of the eval labels on the exported logits, through predict's path.
  labels = [label for _, label in tiny_run.eval_images()]
  make_lm.build(labels, "char", 3, str(tmp_path / "lm.arpa"))
  path = tmp_path / "images"
  path.mkdir()
  for i, blob in enumerate(blobs):
    (path / f"{i}.png").write_bytes(blob)
  ran = run_main(predict.main, f"--model_path={exported}", "--decoder=lm",
                 f"--lm_path={tmp_path / 'lm.arpa'}", "--json", str(path),
                 prog="ctc_trainer.predict")
  assert ran.code == 0, ran.err[-2000:]
  lines = [json.loads(line) for line in ran.out.splitlines()]
  assert len(lines) == 4 and all(set(line["text"]) <= set(charset.symbols)
                                 for line in lines)
  # predict's settings: the default beam width, and top_k = min(5, beam width).
  decode = decoders.get("lm").build(charset, DecoderConfig(
      beam_width=10, top_paths=5, lm_path=str(tmp_path / "lm.arpa")))
  expected = search.texts(charset, decode(exported_logits, exported_lengths)[0][0])
  assert [line["text"] for line in lines] == expected


def test_predict_with_a_host_decoder_needs_its_settings(exported, tiny_run):
  ran = run_main(predict.main, f"--model_path={exported}", "--decoder=lexicon",
                 tiny_run.eval_images()[0][0], prog="ctc_trainer.predict")
  assert ran.code == 2 and "needs --lexicon" in ran.err


def test_make_digit_sequences_speaks_words_with_pauses_between_them(tmp_path):
  """--words: labels are words of the file separated by spaces, and each word pause
  is at least --word_gap_ms long (silence in the audio between the words' clips)."""
  source = tmp_path / "clips"
  source.mkdir()
  rng = np.random.default_rng(0)
  for digit in "0123456789":
    for index in range(6):   # 20 ms of noise at 8 kHz: never silent
      with wave.open(str(source / f"{digit}_spk_{index}.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((rng.uniform(0.2, 0.5, 160) * 32767).astype("<i2").tobytes())
  words = tmp_path / "words.txt"
  words.write_text("123\n4056\n789\n")
  ran = run_main(load_tool("make_digit_sequences").main, f"--source_dir={source}",
                 f"--output_dir={tmp_path / 'out'}", f"--words={words}",
                 "--min_words=2", "--max_words=3", "--num_train=20", "--num_eval=5",
                 "--gap_ms=0,0", "--word_gap_ms=100,100",
                 prog="tools/make_digit_sequences.py")
  assert ran.code == 0, ran.err[-3000:]
  lines = (tmp_path / "out" / "train" / "manifest.tsv").read_text().splitlines()
  for line in lines:
    name, text = line.split("\t")
    assert 2 <= len(text.split(" ")) <= 3 and set(text.split(" ")) <= {
        "123", "4056", "789"}, text
    with wave.open(str(tmp_path / "out" / "train" / name)) as w:
      samples = w.getnframes()
    # 160 samples per digit, no gap inside a word, 800 (100 ms) between words.
    digits = len(text.replace(" ", ""))
    assert samples == 160 * digits + 800 * text.count(" ")


def test_tune_lm_grid_searches_and_writes_the_best_pair(tiny_run, tmp_path, kenlm):
  labels = [label for _, label in tiny_run.eval_images()]
  make_lm.build(labels, "char", 3, str(tmp_path / "lm.arpa"))
  out = tmp_path / "lm.cfg"
  ran = run_main(load_tool("tune_lm").main, f"--workdir={tiny_run.workdir}",
                 f"--lm_path={tmp_path / 'lm.arpa'}", "--alphas=0,2", "--betas=0",
                 f"--lm_flagfile={out}", prog="tools/tune_lm.py")
  assert ran.code == 0, ran.err[-2000:]
  found = {}
  for line in ran.out.splitlines():
    m = re.match(r"\[\d/2\] alpha (\S+) beta 0 blank_penalty 0: cer (\S+)", line)
    if m:
      found[float(m.group(1))] = float(m.group(2))
  assert len(found) == 2
  best = min(found, key=found.get)
  flagfile = out.read_text()
  assert f"--lm_alpha={best:g}\n" in flagfile and "--decoder=lm\n" in flagfile
  assert "--lm_beta=0\n" in flagfile


def test_tune_lm_searches_the_blank_penalty_as_evaluate_applies_it(tiny_run, tmp_path,
                                                                    kenlm):
  """Each penalty's CER in the grid is what evaluate gives with that penalty, and
  the best one goes into the flagfile."""
  labels = [label for _, label in tiny_run.eval_images()]
  make_lm.build(labels, "char", 3, str(tmp_path / "lm.arpa"))
  out = tmp_path / "lm.cfg"
  ran = run_main(load_tool("tune_lm").main, f"--workdir={tiny_run.workdir}",
                 f"--lm_path={tmp_path / 'lm.arpa'}", "--alphas=0.5", "--betas=0",
                 "--blank_penalties=-3,0,3", f"--lm_flagfile={out}", prog="tools/tune_lm.py")
  assert ran.code == 0, ran.err[-2000:]
  found = {float(m.group(1)): float(m.group(2)) for m in re.finditer(
      r"\[\d/3\] alpha 0.5 beta 0 blank_penalty (\S+): cer (\S+)", ran.out)}
  assert sorted(found) == [-3.0, 0.0, 3.0] and len(set(found.values())) > 1
  best = min(found, key=found.get)
  assert f"--blank_penalty={best:g}\n" in out.read_text()
  for penalty in (-3.0, 3.0):
    ran = run_main(evaluate.main, f"--workdir={tiny_run.workdir}", f"--flagfile={out}",
                   f"--blank_penalty={penalty:g}", "--json", prog="ctc_trainer.evaluate")
    assert ran.code == 0, ran.err[-2000:]
    assert json.loads(ran.out.splitlines()[-1])["cer"] == pytest.approx(found[penalty],
                                                                        abs=5e-5)
