"""Speech end to end: the ds2 model, tools/make_digit_sequences.py, and training,
evaluation and transcription of WAVs on a tiny generated set."""

import dataclasses
import filecmp
import glob
import json
import os
import wave

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import config, export, host, loop, metrics, models
from ctc_trainer.charset import Charset
from ctc_trainer.config import AudioConfig, Config, DataConfig, LoopConfig, OptimConfig
from ctc_trainer.data import audio, pipeline, sources
from ctc_trainer.models.speech import DS2Config
from tests.helpers import load_tool, once, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDD = os.path.join(ROOT, "..", "shared", "data", "fsdd", "recordings")
RATE = 8000
TINY_DS2 = DS2Config(conv_filters=(8, 8), rnn_units=16, rnn_layers=1, rnn_cell="gru",
                     dropout=0.0)
FEATURES = AudioConfig(sample_rate=RATE, num_mel_bins=16, max_audio_seconds=5)


# --- the model ---------------------------------------------------------------------

def test_registry_has_ds2_and_it_rejects_image_shapes():
  assert "ds2" in models.names() and models.modality_of("ds2") == "audio"
  with pytest.raises(ValueError, match="set --modality=audio"):
    models.build(TINY_DS2, 5, (32, None, 1))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("frames", [1, 3, 4, 5, 33])
def test_output_frames_are_output_length(cell, frames):
  model = models.build(dataclasses.replace(TINY_DS2, rnn_cell=cell), 7, (None, 16))
  logits = model(tf.zeros([2, frames, 16]), input_length=tf.constant([frames, 1]))
  assert logits.shape == (2, -(-frames // 4), 7)
  np.testing.assert_array_equal(model.output_length(tf.constant([frames, 1])),
                                [logits.shape[1], 1])


def test_logits_do_not_depend_on_batch_padding():
  """An utterance's logits are the same alone and padded into a longer batch, for
  either parity of the padded length (strided convs must not shift with it)."""
  model = models.build(TINY_DS2, 7, (None, 16))
  features = tf.random.normal([1, 21, 16], seed=1)
  alone = model(features, input_length=tf.constant([21]))
  frames = int(model.output_length(tf.constant([21]))[0])
  for padded_length in (40, 43):
    padded = tf.pad(features, [[0, 0], [0, padded_length - 21], [0, 0]])
    other = tf.random.normal([1, padded_length, 16], seed=2)
    batched = model(tf.concat([padded, other], 0),
                    input_length=tf.constant([21, padded_length]))
    np.testing.assert_allclose(alone[0, :frames], batched[0, :frames], atol=1e-5)


def test_model_and_modality_must_agree(tmp_path):
  manifest = tmp_path / "m.tsv"
  manifest.write_text("")
  cfg = Config(workdir=str(tmp_path), data=DataConfig(
      train_data=str(manifest), eval_data=str(manifest), modality="audio"))
  with pytest.raises(config.ConfigError, match="--model=crnn reads image inputs, not "
                     "--modality=audio; the audio models are: ds2"):
    config.validate(cfg, need_train=True)
  config.validate(dataclasses.replace(cfg, model=TINY_DS2), need_train=True)


# --- tools/make_digit_sequences.py ---------------------------------------------------

def make_clips(folder, speakers=("ann", "bob"), indices=3):
  """Single-'digit' clips {digit}_{speaker}_{index}.wav: digit d is two tones, its own
  pair per digit (so a tiny model can tell them apart), 0.12 s, per-clip jitter."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  t = np.arange(int(0.12 * RATE)) / RATE
  for digit in range(10):
    for s, speaker in enumerate(speakers):
      for index in range(indices):
        low, high = 250 + 60 * digit + 10 * s, 1500 + 200 * (digit % 5)
        x = 0.3 * np.sin(2 * np.pi * low * t) + 0.2 * np.sin(2 * np.pi * high * t)
        x = x * np.hanning(len(t)) + rng.normal(0, 0.005, len(t))
        pcm = np.round(x * 32767).astype("<i2")
        with wave.open(os.path.join(folder, f"{digit}_{speaker}_{index}.wav"), "wb") as w:
          w.setnchannels(1)
          w.setsampwidth(2)
          w.setframerate(RATE)
          w.writeframes(pcm.tobytes())
  return folder


def run_tool(*args, check=True):
  """tools/make_digit_sequences.py ARGS, its main run in this process."""
  ran = run_main(load_tool("make_digit_sequences").main, *args,
                 prog="tools/make_digit_sequences.py")
  if check and ran.code != 0:
    raise AssertionError(f"make_digit_sequences failed:\n{ran.err[-3000:]}")
  return ran


def read_manifest(folder):
  with open(os.path.join(folder, "manifest.tsv"), encoding="utf-8") as f:
    return [line.rstrip("\n").split("\t") for line in f]


def read_spans(folder):
  with open(os.path.join(folder, "spans.jsonl"), encoding="utf-8") as f:
    return {row["name"]: row for row in map(json.loads, f)}


def read_clips(folder):
  with open(os.path.join(folder, "clips.tsv"), encoding="utf-8") as f:
    return {name: clips.split(",") for name, clips in
            (line.rstrip("\n").split("\t") for line in f)}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  return once(tmp_path_factory, "clips", lambda folder: make_clips(str(folder)))


@pytest.fixture(scope="module")
def digits(clips, tmp_path_factory):
  """A generated set: 64 train and 16 eval utterances of 1-3 digits (made once per
  session)."""
  def make(folder):
    out = str(folder)
    proc = run_tool(f"--source_dir={clips}", f"--output_dir={out}", "--num_train=64",
                    "--num_eval=16", "--max_digits=3", "--gap_ms=20,60",
                    "--eval_max_index=0", "--noise_db=30")
    return out, proc
  return once(tmp_path_factory, "digits", make)


def test_tool_labels_are_the_clips_digits_and_the_split_is_by_index(digits, clips):
  out, proc = digits
  assert "train: 64 utterances" in proc.err and "eval: 16 utterances" in proc.err
  for split, count in (("train", 64), ("eval", 16)):
    folder = os.path.join(out, split)
    manifest, sources = read_manifest(folder), read_clips(folder)
    assert len(manifest) == count
    for name, text in manifest:
      used = sources[name]
      assert 1 <= len(text) <= 3 and text == "".join(c[0] for c in used)
      assert len({c.split("_")[1] for c in used}) == 1        # one speaker
      indices = {int(c.rsplit("_", 1)[1][:-4]) for c in used}
      assert indices <= ({0} if split == "eval" else {1, 2})
      info = audio.read_wav_info(os.path.join(folder, name))
      assert info.sample_rate == RATE and info.channels == 1
    # spans.jsonl: where each clip lies (what positions are checked against).
    for name, row in read_spans(folder).items():
      with wave.open(os.path.join(folder, name)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
      inside = np.zeros(len(pcm), bool)
      for (start, end), clip in zip(row["spans_ms"], sources[name]):
        a, b = round(start * RATE / 1000), round(end * RATE / 1000)
        with wave.open(os.path.join(clips, clip)) as w:
          samples = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        assert b - a == len(samples)
        assert np.corrcoef(pcm[a:b], samples)[0, 1] > 0.95   # the clip, under noise
        inside[a:b] = True
      assert len(row["spans_ms"]) == len(row["text"])
      # Outside the clips: the 30 dB noise alone.
      assert np.std(pcm[~inside]) < 0.1 * np.std(pcm[inside])


def test_tool_is_deterministic_and_splits_by_speaker(clips, digits, tmp_path):
  out, _ = digits
  again = str(tmp_path / "again")
  run_tool(f"--source_dir={clips}", f"--output_dir={again}", "--num_train=64",
           "--num_eval=16", "--max_digits=3", "--gap_ms=20,60", "--eval_max_index=0",
           "--noise_db=30")
  for split in ("train", "eval"):
    names = sorted(os.listdir(os.path.join(out, split)))
    match, mismatch, errors = filecmp.cmpfiles(
        os.path.join(out, split), os.path.join(again, split), names, shallow=False)
    assert not mismatch and not errors
  by_speaker = str(tmp_path / "speaker")
  run_tool(f"--source_dir={clips}", f"--output_dir={by_speaker}", "--split=speaker",
           "--eval_speakers=bob", "--num_train=8", "--num_eval=8")
  for split, speaker in (("train", "ann"), ("eval", "bob")):
    used = read_clips(os.path.join(by_speaker, split)).values()
    assert {c.split("_")[1] for cs in used for c in cs} == {speaker}
  refused = run_tool(f"--source_dir={clips}", f"--output_dir={out}",
                     "--eval_max_index=0", check=False)
  assert refused.code == 2 and "pass --overwrite" in refused.err


def test_tool_writes_tfrecords_the_pipeline_reads(clips, tmp_path):
  out = str(tmp_path / "records")
  run_tool(f"--source_dir={clips}", f"--output_dir={out}", "--output_format=tfrecord",
           "--num_shards=2", "--num_train=10", "--num_eval=6", "--eval_max_index=0")
  assert sorted(os.path.basename(p) for p in glob.glob(f"{out}/eval/*.tfrecord")) == [
      "eval-00000-of-00002.tfrecord", "eval-00001-of-00002.tfrecord"]
  cfg = DataConfig(data_format="tfrecord", train_data=f"{out}/train/*.tfrecord",
                   eval_data=f"{out}/eval/*.tfrecord", modality="audio", audio=FEATURES,
                   eval_batch_size=4)
  batches = list(pipeline.make_dataset(cfg, Charset("0123456789"), "eval"))
  assert sum(len(b["key"]) for b in batches) == 6
  assert batches[0]["inputs"].shape[2] == 16
  keys = sorted(k.decode() for b in batches for k in b["key"].numpy())
  assert keys == [f"eval/{i:05d}.wav" for i in range(6)]


@pytest.mark.skipif(not os.path.isdir(FSDD), reason="needs ../shared/data/fsdd")
def test_tool_on_fsdd_keeps_the_official_test_split_apart(tmp_path):
  out = str(tmp_path / "fsdd")
  run_tool(f"--source_dir={FSDD}", f"--output_dir={out}", "--num_train=20",
           "--num_eval=20", "--max_digits=4")
  for split, allowed in (("train", range(5, 50)), ("eval", range(0, 5))):
    for used in read_clips(os.path.join(out, split)).values():
      assert all(int(c.rsplit("_", 1)[1][:-4]) in allowed for c in used)
  # Each recorded span is its real clip's duration, in order.
  spans, clips = read_spans(f"{out}/eval"), read_clips(f"{out}/eval")
  for name, row in spans.items():
    for (start, end), clip in zip(row["spans_ms"], clips[name]):
      info = audio.read_wav_info(os.path.join(FSDD, clip))
      assert end - start == pytest.approx(info.frames * 1000 / info.sample_rate, abs=0.01)
    assert all(a[1] < b[0] for a, b in zip(row["spans_ms"], row["spans_ms"][1:]))
  cfg = DataConfig(train_data=f"{out}/train/manifest.tsv",
                   eval_data=f"{out}/eval/manifest.tsv", modality="audio",
                   audio=dataclasses.replace(FEATURES, num_mel_bins=40),
                   eval_batch_size=20)
  batch = next(iter(pipeline.make_dataset(cfg, Charset("0123456789"), "eval")))
  lengths = batch["input_length"].numpy()
  assert batch["inputs"].shape[2] == 40 and lengths.min() > 30   # ~0.3 s+ each


# --- train, evaluate, transcribe -----------------------------------------------------

@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
  """A 6-step run of the tiny speech model on that set (trained once per session)
  -> (its Config, what train_and_evaluate returned)."""
  out, _ = digits

  def make(workdir):
    cfg = Config(
        workdir=str(workdir),
        data=DataConfig(train_data=f"{out}/train/manifest.tsv",
                        eval_data=f"{out}/eval/manifest.tsv", modality="audio",
                        audio=dataclasses.replace(FEATURES, time_masks=1,
                                                  time_mask_frames=5, freq_masks=1,
                                                  freq_mask_bins=3),
                        batch_size=8, eval_batch_size=8, bucket_boundaries="none"),
        model=TINY_DS2, optim=OptimConfig(learning_rate=3e-3),
        loop=LoopConfig(train_steps=6, log_every=3, eval_every=6, checkpoint_every=6,
                        beam_width=4, num_image_samples=2))
    config.validate(cfg, need_train=True)
    return cfg, loop.train_and_evaluate(cfg)
  return once(tmp_path_factory, "speech_run", make)


def test_train_evaluates_and_checkpoints_audio(trained):
  cfg, results = trained
  assert results["num_seqs"] == 16 and 0.0 <= results["cer"]
  assert os.path.exists(os.path.join(cfg.workdir, "charset.txt"))
  again = loop.evaluate_checkpoint(cfg, "latest")
  assert again["step"] == 6
  assert again["cer"] == pytest.approx(results["cer"])


@pytest.fixture(scope="module")
def speech_trainer(trained):
  """The run's latest checkpoint, restored in this process."""
  return loop.restore_trained(trained[0], "latest")[0]


@pytest.fixture(scope="module")
def evaluated(trained, speech_trainer):
  """The checkpoint's beam transcription of each eval WAV by the eval step: the
  strings that loop.evaluate, and so the evaluate CLI, scores -> {path: text}."""
  cfg, _ = trained
  trainer = speech_trainer
  texts = {}
  for batch in pipeline.make_dataset(cfg.data, trainer.charset, "eval"):
    _, decoded = trainer.step_fns.eval_step(batch)
    texts.update(zip([k.decode() for k in batch["key"].numpy()],
                     [t.decode() for t in decoded["beam"].numpy()]))
  return texts


def test_export_serves_wav_bytes_as_evaluation_decodes(trained, speech_trainer, evaluated,
                                                      tmp_path):
  """The exported SavedModel, given WAV bytes, transcribes each eval utterance as the
  eval step did, so its CER is the one evaluation reported; the export's own parity
  gate agrees."""
  cfg, results = trained
  trainer = speech_trainer
  export.export(export.ServingModule.from_run(trainer), str(tmp_path))
  serve = export.serving_fn(export.load(str(tmp_path)))
  samples = sources.load_samples(cfg.data, "eval", trainer.charset)
  parity = export.check_parity(trainer, serve, samples)
  assert parity.ok and parity.num_samples == 16, parity.describe()
  paths = sorted(evaluated)
  # Batches of 5, not eval's 8: padding must not change a transcription.
  served = [t.text for t in export.transcribe_files(serve, paths, batch_size=5)]
  assert served == [evaluated[p] for p in paths]
  assert any(served), "an all-empty output would make this test vacuous"
  labels = dict(read_manifest(os.path.dirname(cfg.data.eval_data)))
  sums = metrics.batch_sums(tf.constant(served),
                            tf.constant([labels[os.path.basename(p)] for p in paths]))
  assert metrics.results(sums)["cer"] == pytest.approx(results["cer"], abs=1e-9)


# --- TFLite / ONNX exports (the `export` extra) ---------------------------------------

def test_host_log_mel_is_the_pipelines(clips):
  """ctc_trainer.host computes the training features in NumPy: within 1e-4 of
  tf.signal's, normalization included."""
  sidecar = audio.AudioModality(DataConfig(modality="audio", audio=FEATURES)).host_settings()
  for path in sorted(glob.glob(os.path.join(clips, "*.wav")))[::7]:
    blob = open(path, "rb").read()
    expected, frames = audio.decode_and_featurize(tf.constant(blob), FEATURES)
    got = host.log_mel(host.decode_wav(blob, RATE, sidecar["max_samples"]), sidecar)
    assert got.shape == (frames, FEATURES.num_mel_bins)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_tflite_export_of_the_speech_model_passes_its_gate(trained, tmp_path):
  """The ds2 model (GRUs) converts to TFLite, and through host.py's WAV decoding and
  log-mel gives the checkpoint's greedy transcription of every eval utterance."""
  pytest.importorskip("ai_edge_litert")
  cfg, _ = trained
  parity = export.export_checkpoint(cfg, str(tmp_path / "tflite"), fmt="tflite")
  assert parity.ok and parity.num_samples == 16 and parity.num_different == 0, \
      parity.describe()
  assert host.detect_format(str(tmp_path / "tflite")) == "tflite"
