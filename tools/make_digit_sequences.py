"""Build spoken digit sequences from single-digit recordings, for CTC speech training.

  python tools/make_digit_sequences.py --source_dir=../shared/data/fsdd/recordings \
      --output_dir=/tmp/digits [--num_train=4000 --num_eval=500 --max_digits=5] \
      [--split=index | --split=speaker --eval_speakers=theo] [--noise_db=20] \
      [--output_format=wav | --output_format=tfrecord]

The source folder holds 16-bit PCM WAVs named {digit}_{speaker}_{index}.wav, as the
Free Spoken Digit Dataset does. Each utterance is one speaker saying --min_digits to
--max_digits random digits: that speaker's clips of those digits, concatenated, with
silences of --gap_ms (a random length in the range) before, between and after them,
and, with --noise_db, white noise at that signal-to-noise ratio over the whole
utterance. Its label is the digit string, e.g. "4071".

With --words=FILE an utterance says --min_words to --max_words words drawn from FILE
(one digit string per line; a line listed twice is drawn twice as often), with
pauses of --word_gap_ms between words; its label has a space between words, e.g.
"4071 229": a word-level task for language models and lexicons (docs/benchmarks.md).

Train and eval utterances never share a recording: --split=index puts recordings
with index <= --eval_max_index in eval (FSDD's own test split is index 0-4), and
--split=speaker puts the --eval_speakers in eval (unseen voices).

Writes OUTPUT_DIR/train and OUTPUT_DIR/eval, each holding either
  --output_format=wav       00000.wav ... and manifest.tsv ('00000.wav<TAB>4071'),
                            read with --data_format=tsv
                            --train_data=OUTPUT_DIR/train/manifest.tsv
  --output_format=tfrecord  SPLIT-0000k-of-0000n.tfrecord shards
                            (ctc_trainer/data/tfrecord.py, WAV bytes in `encoded`,
                            samples in `frames`), read with --data_format=tfrecord
                            --train_data='OUTPUT_DIR/train/*.tfrecord'
plus clips.tsv (which recordings each utterance is made of), spans.jsonl (where each
clip lies in its utterance: {"name", "text", "spans_ms": [[start, end], ...]}, one pair
per digit, milliseconds from the start of the WAV) and OUTPUT_DIR/params.json.
The same flags and --seed (the training flag of that name) give byte-identical
files. Each split is written to a temporary folder and renamed into place at the end.
"""

import collections
import contextlib
import io
import json
import os
import re
import shutil
import sys
import time
import wave
from typing import Dict, List, Optional, Tuple

import numpy as np
from absl import app, flags

# Defines the training flags, --seed among them, which this tool uses as well.
from ctc_trainer import config  # noqa: F401

flags.DEFINE_string("source_dir", None, "Folder of {digit}_{speaker}_{index}.wav clips.")
flags.DEFINE_string("output_dir", None, "Where the train/ and eval/ folders go.")
flags.DEFINE_integer("num_train", 4000, "Training utterances.", lower_bound=1)
flags.DEFINE_integer("num_eval", 500, "Evaluation utterances.", lower_bound=1)
flags.DEFINE_string("words", None, "Speak words from this file (digit strings, one a "
                    "line) instead of random digits; labels separate words by a space.")
flags.DEFINE_integer("min_words", 1, "--words: fewest words in an utterance.",
                     lower_bound=1)
flags.DEFINE_integer("max_words", 4, "--words: most words in an utterance.",
                     lower_bound=1)
flags.DEFINE_list("word_gap_ms", ["400", "700"], "--words: the pause between two "
                  "words: MIN,MAX milliseconds.")
flags.DEFINE_integer("min_digits", 1, "Fewest digits in an utterance.", lower_bound=1)
flags.DEFINE_integer("max_digits", 5, "Most digits in an utterance.", lower_bound=1)
flags.DEFINE_list("gap_ms", ["50", "300"], "Silence before, between and after the "
                  "digits: MIN,MAX milliseconds, drawn uniformly for each gap.")
flags.DEFINE_float("noise_db", None, "Add white noise at this signal-to-noise ratio "
                   "in dB (speech power over noise power); unset: no noise.")
flags.DEFINE_enum("split", "index", ("index", "speaker"), "How recordings are split "
                  "between train and eval: by recording index or by speaker.")
flags.DEFINE_integer("eval_max_index", 4, "--split=index: recordings with an index "
                     "up to this go to eval.", lower_bound=0)
flags.DEFINE_list("eval_speakers", [], "--split=speaker: the speakers held out for eval.")
flags.DEFINE_enum("output_format", "wav", ("wav", "tfrecord"), "WAV files and a manifest, or "
                  "TFRecord shards.")
flags.DEFINE_integer("num_shards", 4, "--output_format=tfrecord: shards per split.",
                     lower_bound=1)
flags.DEFINE_bool("overwrite", False, "Replace existing train/ and eval/ folders.")

FLAGS = flags.FLAGS
CLIP_NAME = re.compile(r"^(\d)_(.+)_(\d+)\.wav$", re.IGNORECASE)
SPLIT_SEEDS = {"train": 1, "eval": 2}
_PROGRESS_EVERY_S = 2.0


class ToolError(ValueError):
  """A problem with the flags or the source folder; printed as one line."""


Clip = collections.namedtuple("Clip", "digit speaker index path")


def list_clips(source_dir: str) -> List[Clip]:
  """The folder's {digit}_{speaker}_{index}.wav files, sorted by name."""
  if not os.path.isdir(source_dir):
    raise ToolError(f"--source_dir={source_dir} is not a folder")
  clips = []
  for name in sorted(os.listdir(source_dir)):
    match = CLIP_NAME.match(name)
    if match:
      digit, speaker, index = match.groups()
      clips.append(Clip(digit, speaker, int(index), os.path.join(source_dir, name)))
  if not clips:
    raise ToolError(f"{source_dir} holds no {{digit}}_{{speaker}}_{{index}}.wav files")
  return clips


def split_clips(clips: List[Clip], split: str, eval_max_index: int,
                eval_speakers: List[str]) -> Dict[str, List[Clip]]:
  """{'train': clips, 'eval': clips}, disjoint, by recording index or by speaker."""
  if split == "index":
    in_eval = lambda c: c.index <= eval_max_index
  else:
    speakers = {c.speaker for c in clips}
    if not eval_speakers:
      raise ToolError(f"--split=speaker needs --eval_speakers (speakers here: "
                      f"{', '.join(sorted(speakers))})")
    unknown = sorted(set(eval_speakers) - speakers)
    if unknown:
      raise ToolError(f"--eval_speakers {', '.join(unknown)} have no clips in the "
                      f"source folder (speakers: {', '.join(sorted(speakers))})")
    in_eval = lambda c: c.speaker in eval_speakers
  parts = {"train": [c for c in clips if not in_eval(c)],
           "eval": [c for c in clips if in_eval(c)]}
  for name, part in parts.items():
    if not part:
      raise ToolError(f"the {split} split leaves no clips for {name}")
  return parts


def read_clip(path: str) -> Tuple[np.ndarray, int]:
  """A 16-bit PCM WAV -> (mono float32 samples in [-1, 1), sample rate)."""
  try:
    with wave.open(path, "rb") as w:
      if w.getsampwidth() != 2:
        raise ToolError(f"{path}: {8 * w.getsampwidth()}-bit samples; only 16-bit "
                        f"PCM WAVs are supported")
      rate, channels = w.getframerate(), w.getnchannels()
      data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
  except (wave.Error, EOFError) as e:
    raise ToolError(f"{path}: not a readable PCM WAV ({e})") from None
  samples = data.reshape(-1, channels).mean(axis=1) / 32768.0
  return samples.astype(np.float32), rate


class Generator:
  """Makes utterances from one split's clips; clips are read once and kept."""

  def __init__(self, clips: List[Clip], rng: np.random.Generator,
               gap_ms: Tuple[int, int], noise_db: Optional[float],
               digits: Tuple[int, int], sample_rate: Optional[int] = None,
               words: Optional[List[str]] = None, num_words: Tuple[int, int] = (1, 1),
               word_gap_ms: Tuple[int, int] = (0, 0)):
    self.rng, self.gap_ms, self.noise_db, self.digits = rng, gap_ms, noise_db, digits
    self.words, self.num_words, self.word_gap_ms = words, num_words, word_gap_ms
    self.by_speaker: Dict[str, Dict[str, List[Clip]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for clip in clips:
      self.by_speaker[clip.speaker][clip.digit].append(clip)
    self.speakers = sorted(self.by_speaker)
    self.sample_rate = sample_rate
    self._audio: Dict[str, np.ndarray] = {}

  def _samples(self, clip: Clip) -> np.ndarray:
    if clip.path not in self._audio:
      samples, rate = read_clip(clip.path)
      if self.sample_rate is None:
        self.sample_rate = rate
      elif rate != self.sample_rate:
        raise ToolError(f"{clip.path}: {rate} Hz, but other clips are "
                        f"{self.sample_rate} Hz; resample the folder to one rate")
      self._audio[clip.path] = samples
    return self._audio[clip.path]

  def utterance(self) -> Tuple[np.ndarray, str, List[Clip], List[Tuple[float, float]]]:
    """-> (int16 samples, digit string, the clips used, each clip's (start, end) in
    ms from the utterance's start)."""
    rng = self.rng
    clips_by_digit = self.by_speaker[self.speakers[rng.integers(len(self.speakers))]]
    available = sorted(clips_by_digit)
    if self.words:
      count = int(rng.integers(self.num_words[0], self.num_words[1] + 1))
      text = " ".join(self.words[rng.integers(len(self.words))] for _ in range(count))
      chosen = [clips_by_digit[d][rng.integers(len(clips_by_digit[d]))]
                for d in text if d != " "]
      # The gap after each digit: a word pause where a space follows it.
      pauses = [self.word_gap_ms if after == " " else self.gap_ms
                for before, after in zip(text, text[1:] + "$") if before != " "]
    else:
      count = int(rng.integers(self.digits[0], self.digits[1] + 1))
      chosen = []
      for _ in range(count):
        options = clips_by_digit[available[rng.integers(len(available))]]
        chosen.append(options[rng.integers(len(options))])
      text = "".join(c.digit for c in chosen)
      pauses = [self.gap_ms] * count
    speech = [self._samples(c) for c in chosen]
    gaps = [np.zeros(int(rng.integers(low, high + 1)) * self.sample_rate // 1000,
                     np.float32) for low, high in [self.gap_ms] + pauses]
    parts = [gaps[0]]
    spans, at = [], len(gaps[0])
    for clip_samples, gap in zip(speech, gaps[1:]):
      parts += [clip_samples, gap]
      spans.append((at * 1000.0 / self.sample_rate,
                     (at + len(clip_samples)) * 1000.0 / self.sample_rate))
      at += len(clip_samples) + len(gap)
    signal = np.concatenate(parts)
    if self.noise_db is not None:
      speech_power = np.mean(np.square(np.concatenate(speech))) + 1e-12
      noise_power = speech_power / 10.0 ** (self.noise_db / 10.0)
      signal = signal + rng.normal(0.0, np.sqrt(noise_power), signal.shape)
    pcm = np.clip(np.round(signal * 32768.0), -32768, 32767).astype("<i2")
    return pcm, text, chosen, spans


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
  buffer = io.BytesIO()
  with wave.open(buffer, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sample_rate)
    w.writeframes(pcm.tobytes())
  return buffer.getvalue()


def write_utterances(generator: Generator, split: str, count: int, folder: str, fmt: str,
                     num_shards: int) -> float:
  """Writes `count` utterances into `folder`; returns their total seconds of audio."""
  os.makedirs(folder)
  shards = contextlib.nullcontext()
  if fmt == "tfrecord":
    # Late: only the TFRecord format needs TensorFlow.
    from ctc_trainer.data import tfrecord
    shards = tfrecord.ShardWriter(folder, split, min(num_shards, count))
  manifest, sources, span_lines = [], [], []
  seconds, start, last_report = 0.0, time.time(), time.time()
  with shards:
    for i in range(count):
      pcm, text, clips, spans = generator.utterance()
      name = f"{i:05d}.wav"
      blob = wav_bytes(pcm, generator.sample_rate)
      if fmt == "tfrecord":
        shards.write(tfrecord.make_example(blob, text, f"{split}/{name}",
                                           frames=len(pcm)))
      else:
        with open(os.path.join(folder, name), "wb") as f:
          f.write(blob)
        manifest.append(f"{name}\t{text}\n")
      sources.append(f"{name}\t{','.join(os.path.basename(c.path) for c in clips)}\n")
      span_lines.append(json.dumps({"name": name, "text": text, "spans_ms": [
          [round(a, 3), round(b, 3)] for a, b in spans]}) + "\n")
      seconds += len(pcm) / generator.sample_rate
      now = time.time()
      if now - last_report >= _PROGRESS_EVERY_S:
        print(f"{split}: {i + 1}/{count} utterances, {(i + 1) / (now - start):.0f}/s",
              file=sys.stderr, flush=True)
        last_report = now
  if manifest:
    _write_lines(os.path.join(folder, "manifest.tsv"), manifest)
  _write_lines(os.path.join(folder, "clips.tsv"), sources)
  _write_lines(os.path.join(folder, "spans.jsonl"), span_lines)
  elapsed = max(time.time() - start, 1e-9)
  print(f"{split}: {count} utterances, {seconds / 3600:.2f} h of audio, in "
        f"{elapsed:.1f} s ({count / elapsed:.0f}/s)", file=sys.stderr, flush=True)
  return seconds


def _write_lines(path: str, lines: List[str]) -> None:
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.writelines(lines)


def _gap_range(values: List[str], name: str = "gap_ms") -> Tuple[int, int]:
  try:
    low, high = (int(v) for v in values)
  except ValueError:
    raise ToolError(f"--{name}={','.join(values)} must be MIN,MAX milliseconds") from None
  if not 0 <= low <= high:
    raise ToolError(f"--{name}={low},{high} needs 0 <= MIN <= MAX")
  return low, high


def _read_words(path: str) -> List[str]:
  """--words: the file's non-empty lines, each a digit string."""
  try:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
      words = [line.strip() for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise ToolError(f"--words={path}: {getattr(e, 'strerror', None) or e}") from None
  bad = next((w for w in words if not w.isdigit()), None)
  if bad is not None or not words:
    raise ToolError(f"--words={path} must list digit strings, one a line"
                    + (f"; found {bad!r}" if bad is not None else ""))
  return words


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  fl = FLAGS
  try:
    for name in ("source_dir", "output_dir"):
      if not fl[name].value:
        raise ToolError(f"--{name} is required")
    if fl.max_digits < fl.min_digits:
      raise ToolError("--max_digits must be >= --min_digits")
    gap_ms = _gap_range(fl.gap_ms)
    words = _read_words(fl.words) if fl.words else None
    if fl.max_words < fl.min_words:
      raise ToolError("--max_words must be >= --min_words")
    word_gap_ms = _gap_range(fl.word_gap_ms, "word_gap_ms")
    source_dir = os.path.expanduser(fl.source_dir)
    output_dir = os.path.expanduser(fl.output_dir)
    parts = split_clips(list_clips(source_dir), fl.split, fl.eval_max_index,
                        fl.eval_speakers)
    targets = {split: os.path.join(output_dir, split) for split in parts}
    existing = [t for t in targets.values() if os.path.exists(t)]
    if existing and not fl.overwrite:
      raise ToolError(f"{existing[0]} exists; pass --overwrite to replace it")
    os.makedirs(output_dir, exist_ok=True)
    counts = {"train": fl.num_train, "eval": fl.num_eval}
    params = {"source_dir": os.path.abspath(source_dir), "split": fl.split,
              "eval_max_index": fl.eval_max_index, "eval_speakers": fl.eval_speakers,
              "min_digits": fl.min_digits, "max_digits": fl.max_digits,
              "gap_ms": list(gap_ms), "words": fl.words, "min_words": fl.min_words,
              "max_words": fl.max_words, "word_gap_ms": list(word_gap_ms),
              "noise_db": fl.noise_db, "output_format": fl.output_format,
              "seed": fl.seed, "splits": {}}
    sample_rate = None
    for split, clips in parts.items():
      # Separate streams per split: changing --num_train leaves eval unchanged.
      rng = np.random.default_rng([fl.seed, SPLIT_SEEDS[split]])
      generator = Generator(clips, rng, gap_ms, fl.noise_db,
                            (fl.min_digits, fl.max_digits), sample_rate, words,
                            (fl.min_words, fl.max_words), word_gap_ms)
      staging = targets[split] + ".tmp"
      shutil.rmtree(staging, ignore_errors=True)
      seconds = write_utterances(generator, split, counts[split], staging, fl.output_format,
                                 fl.num_shards)
      sample_rate = generator.sample_rate
      shutil.rmtree(targets[split], ignore_errors=True)
      os.replace(staging, targets[split])
      params["splits"][split] = {
          "utterances": counts[split], "clips": len(clips), "hours": seconds / 3600,
          "speakers": sorted({c.speaker for c in clips})}
    params["sample_rate"] = sample_rate
    with open(os.path.join(output_dir, "params.json"), "w", encoding="utf-8") as f:
      json.dump(params, f, indent=2, sort_keys=True)
  except ToolError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {output_dir}/train and {output_dir}/eval ({sample_rate} Hz)")
  return 0


if __name__ == "__main__":
  app.run(main)
