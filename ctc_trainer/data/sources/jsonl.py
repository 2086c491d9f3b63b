"""The jsonl source: one JSON object per line, NeMo's manifest convention.

  {"path": "clips/0001.wav", "text": "four two", "duration": 1.23}

"path" (or NeMo's "audio_filepath") is the encoded file, relative paths against the
manifest's folder; "text" the label; "duration" (seconds, optional) stands in for the
WAV header in the length scan behind audio buckets. Other keys are ignored; empty
lines too.
"""

import json
import numbers
import os
from typing import Iterator

from ctc_trainer.data.sources.base import Sample, checked, read_lines, resolve
from ctc_trainer.errors import DataError

PATH_KEYS = ("path", "audio_filepath")


def load(cfg, split, location, charset):
  return checked(read_jsonl(location), cfg, charset, location)


def read_jsonl(manifest: str) -> Iterator[Sample]:
  """The manifest's samples; a line that is not such an object is a DataError naming
  manifest:line."""
  base = os.path.dirname(os.path.abspath(manifest))
  for lineno, line in read_lines(manifest):
    if not line.strip():
      continue
    origin = f"{manifest}:{lineno}"
    try:
      record = json.loads(line)
    except ValueError as e:
      raise DataError(f"{origin}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
      raise DataError(f"{origin}: expected a JSON object, found {line.strip()[:80]!r}")
    path = next((record[k] for k in PATH_KEYS if k in record), None)
    if not isinstance(path, str) or not path.strip():
      raise DataError(f'{origin}: expected a "path" (or "audio_filepath") string, '
                      f"found {path!r}")
    text = record.get("text")
    if not isinstance(text, str):
      raise DataError(f'{origin}: expected a "text" string, found {text!r}')
    duration = record.get("duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(
        duration, numbers.Real) or not duration >= 0):
      raise DataError(f'{origin}: "duration" must be a number of seconds >= 0, '
                      f"found {duration!r}")
    yield Sample(resolve(base, path), text, origin,
                 None if duration is None else float(duration))
