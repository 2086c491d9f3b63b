"""The jsonl Source: NeMo-style manifests listed, their errors, a pipeline run, and
the audio length scan from "duration"."""

import json
import os
import wave

import numpy as np
import pytest

from ctc_trainer.charset import Charset
from ctc_trainer.config import AudioConfig, DataConfig
from ctc_trainer.data import audio, modalities, pipeline, sources
from ctc_trainer.errors import DataError
from tests.test_pipeline import png_bytes

RATE = 8000
AUDIO = AudioConfig(sample_rate=RATE, num_mel_bins=20, max_audio_seconds=5.0)


def write_jsonl(path, records, extra_lines=()):
  lines = [json.dumps(r) for r in records] + list(extra_lines)
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def write_png(path, width):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  path.write_bytes(png_bytes(width))


def write_wav(path, seconds):
  with wave.open(str(path), "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(RATE)
    w.writeframes(np.zeros(int(seconds * RATE), np.int16).tobytes())


def test_lists_path_or_audio_filepath_relative_to_the_manifest(tmp_path):
  write_png(tmp_path / "img" / "a.png", 20)
  absolute = tmp_path / "elsewhere" / "b.png"
  write_png(absolute, 24)
  manifest = write_jsonl(tmp_path / "m.jsonl", [
      {"path": "img/a.png", "text": "ab c", "speaker": 3},
      {"audio_filepath": str(absolute), "text": "dd", "duration": 1.5}],
      extra_lines=[""])
  result = sources.load_samples(DataConfig(train_data=manifest, data_format="jsonl"),
                                "train")
  assert [s.path for s in result.samples] == [str(tmp_path / "img" / "a.png"),
                                              str(absolute)]
  assert [s.text for s in result.samples] == ["ab c", "dd"]
  assert [s.duration for s in result.samples] == [None, 1.5]
  assert result.samples[1].origin == f"{manifest}:2"


@pytest.mark.parametrize("line, problem", [
    ('{"path": "a.png", "text": "x"', "not valid JSON"),
    ('["a.png", "x"]', "expected a JSON object"),
    ('{"file": "a.png", "text": "x"}', 'expected a "path" (or "audio_filepath")'),
    ('{"path": "a.png"}', 'expected a "text" string'),
    ('{"path": "a.png", "text": 7}', 'expected a "text" string'),
    ('{"path": "a.png", "text": "x", "duration": "long"}', '"duration" must be'),
    ('{"path": "a.png", "text": "x", "duration": -1}', '"duration" must be'),
])
def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path, line, problem):
  write_png(tmp_path / "a.png", 20)
  manifest = write_jsonl(tmp_path / "m.jsonl", [{"path": "a.png", "text": "ok"}],
                         extra_lines=[line])
  with pytest.raises(DataError) as raised:
    sources.load_samples(DataConfig(train_data=manifest, data_format="jsonl"), "train")
  assert str(raised.value).startswith(f"{manifest}:2: ")
  assert problem in str(raised.value)


def test_missing_file_follows_the_policy(tmp_path):
  write_png(tmp_path / "a.png", 20)
  manifest = write_jsonl(tmp_path / "m.jsonl", [
      {"path": "a.png", "text": "ab"}, {"path": "gone.png", "text": "cd"}])
  cfg = DataConfig(train_data=manifest, data_format="jsonl")
  with pytest.raises(DataError, match=f"{manifest}:2: image file .*gone.png does not"):
    sources.load_samples(cfg, "train")
  cfg = DataConfig(train_data=manifest, data_format="jsonl", bad_sample_policy="skip")
  assert sources.load_samples(cfg, "train").skipped == {"missing file": 1}


def test_make_dataset_reads_a_jsonl_manifest(tmp_path):
  for i, width in enumerate((20, 28, 24)):
    write_png(tmp_path / f"{i}.png", width)
  manifest = write_jsonl(tmp_path / "m.jsonl", [
      {"path": f"{i}.png", "text": text} for i, text in enumerate(["ab", "cd", "ef"])])
  cfg = DataConfig(train_data=manifest, eval_data=manifest, data_format="jsonl",
                   eval_batch_size=4, bucket_boundaries="none")
  (batch,) = list(pipeline.make_dataset(cfg, Charset("abcdef"), "eval"))
  assert [t.decode() for t in batch["text"].numpy()] == ["ab", "cd", "ef"]
  assert batch["input_length"].numpy().tolist() == [40, 56, 48]   # 16 px high -> 32
  assert batch["inputs"].shape == (3, 32, 56, 1)


def test_audio_length_scan_uses_duration_when_given(tmp_path):
  for i in range(3):
    write_wav(tmp_path / f"{i}.wav", 0.5)
  # Durations that differ from the files' (0.5 s) show which one the scan used; the
  # last line has none, so its WAV header is read.
  manifest = write_jsonl(tmp_path / "m.jsonl", [
      {"audio_filepath": "0.wav", "text": "1", "duration": 1.0},
      {"audio_filepath": "1.wav", "text": "2", "duration": 2.0},
      {"audio_filepath": "2.wav", "text": "3"}])
  cfg = DataConfig(train_data=manifest, data_format="jsonl", modality="audio",
                   audio=AUDIO, batch_size=1)
  source = sources.load_samples(cfg, "train")
  modality = modalities.get(cfg)
  want = [audio.num_frames(int(s * RATE), AUDIO) for s in (1.0, 2.0, 0.5)]
  np.testing.assert_array_equal(source.scan_lengths(modality, 10), want)
