"""Tests for ctc_trainer.data.audio and the audio path of the input pipeline."""

import dataclasses
import os
import wave

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer.charset import Charset
from ctc_trainer.config import AudioConfig, Config, DataConfig, LoopConfig
from ctc_trainer.data import (audio, buckets, failures, modalities, pipeline,
                              tfrecord, throughput)
from ctc_trainer.data.sources import load_samples

RATE = 8000
CFG = AudioConfig(sample_rate=RATE, frame_length_ms=25, frame_step_ms=10, num_mel_bins=40,
                  max_audio_seconds=5)
CHARSET = Charset("0123456789")


def known_signal(seconds=0.5, rate=RATE, seed=0):
  """A chirp over 100-3000 Hz plus a 440 Hz tone and faint white noise, so that every
  mel bin has energy well above float32 rounding. float32 [n] in [-1, 1)."""
  t = np.arange(int(seconds * rate)) / rate
  chirp = np.sin(2 * np.pi * (100 * t + (2900 / (2 * seconds)) * t * t))
  noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
  return (0.4 * chirp + 0.3 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)


def write_wav(path, samples, rate=RATE, channels=1):
  """float [n] or [n, channels] in [-1, 1) -> a 16-bit PCM WAV; returns the path."""
  pcm = np.clip(np.round(np.asarray(samples) * 32768), -32768, 32767).astype("<i2")
  with wave.open(str(path), "wb") as w:
    w.setnchannels(channels)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(pcm.tobytes())
  return str(path)


def read_pcm(path):
  with wave.open(str(path), "rb") as w:
    data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return data.reshape(-1, w.getnchannels()).astype(np.float64) / 32768.0


# --- an independent NumPy reference ------------------------------------------------

def numpy_mel_matrix(bins, fft_length, rate, lower_hz, upper_hz):
  """[fft_length // 2 + 1, bins]: HTK-mel triangles, computed in the mel domain."""
  hz_to_mel = lambda f: 1127.0 * np.log1p(np.asarray(f) / 700.0)
  mel = hz_to_mel(np.linspace(0, rate / 2, fft_length // 2 + 1))[:, None]
  edges = np.linspace(hz_to_mel(lower_hz), hz_to_mel(upper_hz), bins + 2)
  left, center, right = edges[:-2], edges[1:-1], edges[2:]
  rising = (mel - left) / (center - left)
  falling = (right - mel) / (right - center)
  return np.maximum(0.0, np.minimum(rising, falling))


def numpy_log_mel(x, cfg):
  """[n] -> [ceil(n / hop), F]: zero-pad the end, periodic Hann, |rfft|^2, mel, log."""
  length = int(round(cfg.sample_rate * cfg.frame_length_ms / 1000))
  hop = int(round(cfg.sample_rate * cfg.frame_step_ms / 1000))
  fft = 1 << (length - 1).bit_length()
  frames = -(-len(x) // hop)
  padded = np.zeros((frames - 1) * hop + length)
  padded[:len(x)] = x
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)
  index = np.arange(length)[None, :] + hop * np.arange(frames)[:, None]
  power = np.abs(np.fft.rfft(padded[index] * window, n=fft)) ** 2
  mel = power @ numpy_mel_matrix(cfg.num_mel_bins, fft, cfg.sample_rate, 20.0,
                                 cfg.sample_rate / 2)
  return np.log(mel + 1e-6)


def numpy_normalize(features):
  return (features - features.mean(0)) / np.sqrt(features.var(0) + 1e-5)


# --- features ----------------------------------------------------------------------

def test_log_mel_matches_numpy_reference():
  x = known_signal()
  got = audio.log_mel(tf.constant(x), CFG).numpy()
  want = numpy_log_mel(x.astype(np.float64), CFG)
  assert got.shape == want.shape == (50, 40)
  np.testing.assert_allclose(got, want, atol=2e-3)


def test_wav_features_match_numpy_eagerly_and_in_dataset_map(tmp_path):
  """decode_and_featurize = NumPy (decode, log-mel, per-bin normalization), the same
  eagerly and inside tf.data.Dataset.map."""
  path = write_wav(tmp_path / "a.wav", known_signal(0.73))
  want = numpy_normalize(numpy_log_mel(read_pcm(path)[:, 0], CFG))
  encoded = tf.io.read_file(path)
  eager, frames = audio.decode_and_featurize(encoded, CFG)
  assert int(frames) == want.shape[0] == audio.num_frames(int(0.73 * RATE), CFG)
  np.testing.assert_allclose(eager.numpy(), want, atol=2e-3)
  mapped = tf.data.Dataset.from_tensors(encoded).map(
      lambda e: audio.decode_and_featurize(e, CFG))
  (in_map, _), = list(mapped)
  # Graph and eager kernels may round differently (oneDNN), hence no exact equality.
  np.testing.assert_allclose(in_map.numpy(), eager.numpy(), atol=1e-4)


@pytest.mark.parametrize("samples", [1, 79, 80, 81, 4000])
def test_num_frames_is_the_feature_length(samples):
  features = audio.log_mel(tf.ones([samples]), CFG)
  assert features.shape[0] == audio.num_frames(samples, CFG) == -(-samples // 80)


def test_stereo_is_mixed_to_mono(tmp_path):
  x = known_signal(0.3)
  stereo = write_wav(tmp_path / "s.wav", np.stack([x, np.zeros_like(x)], 1), channels=2)
  mono = write_wav(tmp_path / "m.wav", x / 2)
  got = audio.decode_wav(tf.io.read_file(stereo), CFG).numpy()
  np.testing.assert_allclose(got, audio.decode_wav(tf.io.read_file(mono), CFG).numpy(),
                             atol=1.5 / 32768)


def test_sample_rate_mismatch_is_an_error_naming_both_rates(tmp_path):
  path = write_wav(tmp_path / "hi.wav", known_signal(0.2, rate=16000), rate=16000)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="WAV sample rate 16000 Hz is not --sample_rate=8000"):
    audio.decode_and_featurize(tf.io.read_file(path), CFG)


def test_resample_policy_converts_the_rate(tmp_path):
  t = np.arange(16000) / 16000
  path = write_wav(tmp_path / "hi.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate=16000)
  cfg = dataclasses.replace(CFG, resample_policy="resample")
  waveform = audio.decode_wav(tf.io.read_file(path), cfg).numpy()
  want = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
  assert waveform.shape == (8000,)
  np.testing.assert_allclose(waveform[50:-50], want[50:-50], atol=2e-3)


def test_resampling_down_suppresses_aliases():
  """A 3 kHz tone at 16 kHz survives to 8 kHz; a 6 kHz one (above the new Nyquist
  frequency, it would alias to 2 kHz) is filtered out first."""
  t = np.arange(16000) / 16000
  for hz, lowest, highest in ((3000, 0.45, 0.55), (6000, 0.0, 0.01)):
    tone = tf.constant(0.5 * np.sin(2 * np.pi * hz * t), tf.float32)
    out = audio.resample(tone, tf.constant(16000), 8000).numpy()[100:-100]
    amplitude = np.sqrt(2 * np.mean(out ** 2))
    assert lowest <= amplitude <= highest, (hz, amplitude)


@pytest.mark.parametrize("blob, message", [
    (b"", "Header mismatch|too short|empty|Not enough"),
    (b"GIF89a not a wav at all", "RIFF"),
])
def test_undecodable_bytes_raise(blob, message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    audio.decode_and_featurize(tf.constant(blob), CFG)


def test_read_wav_info_and_describe(tmp_path):
  path = write_wav(tmp_path / "s.wav", np.zeros((4410, 2)), rate=44100, channels=2)
  assert audio.read_wav_info(path) == audio.WavInfo(44100, 2, 16, 1, 4410)
  assert audio.describe_wav(path) == "a WAV of 44100 Hz, 2 channels, 16-bit PCM, 0.10 s"
  (tmp_path / "empty.wav").write_bytes(b"")
  assert audio.describe_wav(str(tmp_path / "empty.wav")) == "empty file"
  (tmp_path / "x.wav").write_bytes(b"\x89PNG\r\n\x1a\n....")
  assert "not a WAV file" in audio.describe_wav(str(tmp_path / "x.wav"))


# --- SpecAugment ---------------------------------------------------------------------

AUGMENT = dataclasses.replace(CFG, time_masks=2, time_mask_frames=8, freq_masks=2,
                              freq_mask_bins=5)


def test_spec_augment_masks_are_seeded_and_inside_the_valid_frames():
  features = tf.random.normal([60, 40], seed=1) + 5.0   # no zeros of its own
  length = tf.constant(45)
  first = audio.spec_augment(features, length, AUGMENT, tf.constant([1, 2])).numpy()
  again = audio.spec_augment(features, length, AUGMENT, tf.constant([1, 2])).numpy()
  np.testing.assert_array_equal(first, again)
  masked = first == 0
  # Masks zero whole rows (time) or whole columns (frequency), nothing else.
  rows, cols = masked.all(1), masked.all(0)
  np.testing.assert_array_equal(masked, rows[:, None] | cols[None, :])
  assert not rows[45:].any()                          # padding frames untouched
  assert rows.sum() <= 16 and cols.sum() <= 10
  draws = [audio.spec_augment(features, length, AUGMENT, tf.constant([1, s])).numpy()
           for s in range(3, 8)]
  assert any((d == 0).any() for d in draws)
  assert any(not np.array_equal(d == 0, masked) for d in draws)


def make_audio_set(folder, count=6):
  """WAVs of 0.2-0.7 s with different tones, and a manifest; -> manifest path."""
  os.makedirs(folder, exist_ok=True)
  lines = []
  for i in range(count):
    t = np.arange(int((0.2 + 0.1 * i) * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t)
    write_wav(os.path.join(folder, f"{i}.wav"),
              tone + np.random.default_rng(i).normal(0, 0.01, t.shape))
    lines.append(f"{i}.wav\t{i}{i + 1}\n")
  manifest = os.path.join(folder, "m.tsv")
  with open(manifest, "w", encoding="utf-8") as f:
    f.writelines(lines)
  return manifest


def audio_config(manifest, **kwargs):
  return DataConfig(train_data=manifest, eval_data=manifest, modality="audio",
                    audio=AUGMENT, batch_size=3, eval_batch_size=4, shuffle_buffer=8,
                    bucket_boundaries="none", **kwargs)


def by_key(batches):
  """{key: valid features [T, F]} over batches."""
  out = {}
  for b in batches:
    for key, x, n in zip(b["key"].numpy(), b["inputs"].numpy(),
                         b["input_length"].numpy()):
      out.setdefault(key.decode(), []).append(x[:n])
  return out


def test_spec_augment_changes_training_inputs_and_never_eval_inputs(tmp_path):
  cfg = audio_config(make_audio_set(tmp_path))
  # In a dataset map like the pipeline's: eager kernels may round differently.
  paths = load_samples(cfg, "eval").paths
  features = tf.data.Dataset.from_tensor_slices(paths).map(
      lambda p: audio.decode_and_featurize(tf.io.read_file(p), AUGMENT)[0])
  clean = {p: x.numpy() for p, x in zip(paths, features)}
  for first, second in zip(pipeline.make_dataset(cfg, CHARSET, "eval"),
                           pipeline.make_dataset(cfg, CHARSET, "eval")):
    np.testing.assert_array_equal(first["inputs"], second["inputs"])
  evals = by_key(pipeline.make_dataset(cfg, CHARSET, "eval"))
  assert set(evals) == set(clean)
  for key, (x,) in evals.items():
    np.testing.assert_array_equal(x, clean[key])
  trains = by_key(pipeline.make_dataset(cfg, CHARSET, "train").take(8))
  changed = [not np.array_equal(x, clean[key]) for key, xs in trains.items() for x in xs]
  assert sum(changed) >= len(changed) // 2
  # Masks only zero values: every training input is its clean features, masked.
  for key, xs in trains.items():
    for x in xs:
      assert np.all((x == clean[key]) | (x == 0))
  # Without masks the training inputs are the clean features.
  plain = dataclasses.replace(cfg, audio=CFG)
  for key, xs in by_key(pipeline.make_dataset(plain, CHARSET, "train").take(4)).items():
    for x in xs:
      np.testing.assert_array_equal(x, clean[key])


def test_audio_batches_follow_the_contract(tmp_path):
  cfg = audio_config(make_audio_set(tmp_path))
  batches = list(pipeline.make_dataset(cfg, CHARSET, "eval"))
  signature = pipeline.batch_signature(1, 1, pipeline.input_shape(cfg))
  first = batches[0]
  for name, spec in signature.items():
    assert spec.is_compatible_with(first[name]), name
  frames = [audio.num_frames(int((0.2 + 0.1 * i) * RATE), CFG) for i in range(4)]
  np.testing.assert_array_equal(first["input_length"], frames)
  assert first["inputs"].shape == (4, max(frames), 40)
  np.testing.assert_array_equal(first["inputs"][0, frames[0]:], 0.0)  # zero padding
  assert [t.decode() for t in first["text"].numpy()] == ["01", "12", "23", "34"]


def test_padding_efficiency_counts_frames_not_mel_bins(tmp_path):
  # One training batch holds the whole set: valid frames over batch x longest.
  cfg = dataclasses.replace(audio_config(make_audio_set(tmp_path, 4)), batch_size=4)
  frames = [audio.num_frames(int((0.2 + 0.1 * i) * RATE), CFG) for i in range(4)]
  run = Config(workdir=str(tmp_path / "run"), data=cfg,
               loop=LoopConfig(train_steps=1, log_every=1))
  stats = throughput.run_input_only(run, CHARSET)
  assert stats.valid_columns == sum(frames)
  assert stats.padded_columns == 4 * max(frames)
  batch = next(iter(pipeline.make_dataset(cfg, CHARSET, "eval")))
  sums = throughput.padding_sums(batch, modalities.get(cfg).time_axis)
  assert float(sums["padded_columns"]) == 4 * max(frames)


def test_buckets_are_in_frames(tmp_path):
  cfg = dataclasses.replace(audio_config(make_audio_set(tmp_path, 12)),
                            bucket_boundaries="auto", batch_size=1)
  samples = load_samples(cfg, "train")
  widths = buckets.bucket_widths(cfg, samples, modalities.get(cfg), batch_size=1)
  assert widths[-1] == audio.max_frames(CFG) == 500
  np.testing.assert_array_equal(
      sorted(samples.length_scan), [audio.num_frames(int((0.2 + 0.1 * i) * RATE), CFG)
                                  for i in range(12)])
  for batch in pipeline.make_dataset(cfg, CHARSET, "train").take(5):
    assert batch["inputs"].shape[1] in widths


# --- bad files ------------------------------------------------------------------------

@pytest.fixture
def bad_audio_set(tmp_path):
  manifest = make_audio_set(tmp_path, 3)
  (tmp_path / "empty.wav").write_bytes(b"")
  (tmp_path / "photo.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
  write_wav(tmp_path / "fast.wav", np.zeros(1600), rate=16000)
  with open(manifest, "a", encoding="utf-8") as f:
    f.write("empty.wav\t1\nphoto.wav\t2\nfast.wav\t3\n")
  return manifest


@pytest.mark.parametrize("name, line, found", [
    ("empty.wav", 4, "empty file"),
    ("photo.wav", 5, "not a WAV file"),
    ("fast.wav", 6, "a WAV of 16000 Hz"),
])
def test_bad_audio_is_an_error_naming_the_file(bad_audio_set, name, line, found):
  folder = os.path.dirname(bad_audio_set)
  with open(bad_audio_set, encoding="utf-8") as f:
    kept = [l for l in f if not l.startswith(("empty", "photo", "fast")) or
            l.startswith(name)]
  manifest = os.path.join(folder, f"only_{name}.tsv")
  with open(manifest, "w", encoding="utf-8") as f:
    f.writelines(kept)
  cfg = audio_config(manifest)
  samples = load_samples(cfg, "eval")
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    list(pipeline.make_dataset(cfg, CHARSET, "eval", samples=samples))
  error = str(failures.explain(raised.value, samples, cfg))
  path = os.path.join(folder, name)
  assert error.startswith(f"{manifest}:4: cannot use audio {path}, {found}")
  assert "expected a 16-bit PCM WAV of 8000 Hz" in error


def test_bad_audio_is_skipped_and_counted_by_policy(bad_audio_set, capfd):
  cfg = audio_config(bad_audio_set, bad_sample_policy="skip")
  batches = list(pipeline.make_dataset(cfg, CHARSET, "eval"))
  keys = [os.path.basename(k.decode()) for b in batches for k in b["key"].numpy()]
  assert keys == ["0.wav", "1.wav", "2.wav"]
  err = capfd.readouterr().err
  assert "skipping unreadable or undecodable audio" in err
  assert 'fast.wav" - skipped so far: 3' in err


def test_write_split_validates_wavs_and_the_shards_read_as_the_files(tmp_path):
  manifest = make_audio_set(tmp_path / "files", 4)
  (tmp_path / "files" / "photo.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
  with open(manifest, "a", encoding="utf-8") as f:
    f.write("photo.wav\t5\n")
  cfg = audio_config(manifest)
  result = tfrecord.write_split(load_samples(cfg, "eval"), cfg,
                                str(tmp_path / "shards"), "eval", num_shards=2)
  assert result.written == 4
  assert [(os.path.basename(k), r.split(";")[0]) for k, r in result.rejected] == [
      ("photo.wav", "cannot read or decode audio")]
  frames = [x["frames"] for x in map(tfrecord.parse_example,
                                     tf.data.TFRecordDataset(result.shards))]
  assert sorted(int(f) for f in frames) == [int((0.2 + 0.1 * i) * RATE) for i in range(4)]
  shards = dataclasses.replace(cfg, data_format="tfrecord",
                               eval_data=str(tmp_path / "shards" / "eval-*"))
  skip = dataclasses.replace(cfg, bad_sample_policy="skip")
  from_files = by_key(pipeline.make_dataset(skip, CHARSET, "eval"))
  from_shards = by_key(pipeline.make_dataset(shards, CHARSET, "eval"))
  assert set(from_shards) == set(from_files) - {str(tmp_path / "files" / "photo.wav")}
  for key, (x,) in from_shards.items():
    np.testing.assert_array_equal(x, from_files[key][0])
