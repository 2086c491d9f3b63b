"""Deterministic synthetic text-line images for the demo and the tests.

Random strings over an alphabet are rendered with the FreeType font shipped inside
Pillow (no system fonts needed), with varied size, position, paper tone, noise and
blur. A set is generated once into a folder and reused while its parameters match.

Each glyph's horizontal box is recorded in boxes.jsonl beside the manifest (one
{"name", "text", "boxes": [[x0, x1], ...]} line per image, in pixels of the image
as written): a glyph spans its pen advance, from the pen position before it to the
one after it (kerning included). Character positions (ctc_trainer.positions) are
checked against them. glyph_boxes() reads them, and recomputes them for sets
written before the file existed (the rendering is deterministic).
"""

import copy
import json
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ctc_trainer.errors import DataError

MANIFEST = "manifest.tsv"
PARAMS = "params.json"
BOXES = "boxes.jsonl"
# Bump when the rendering changes, so old sets on disk are not silently reused.
GENERATOR_VERSION = 1
FONT_SIZES = range(20, 29)
_LOG_EVERY = 2000


def ensure_dataset(directory: str, size: int, seed: int, alphabet: str,
                   min_length: int, max_length: int) -> str:
  """Generates the set into `directory` unless it is there already -> manifest path.

  `directory` ends up holding 00000.png, 00001.png, ..., manifest.tsv ('NAME<TAB>label'
  lines, paths relative to the folder) and params.json. The same arguments always give
  byte-identical files. Raises DataError when `directory` holds something else.
  """
  if size <= 0 or not alphabet or not 0 < min_length <= max_length:
    raise DataError(f"synthetic set {directory}: need size > 0, a non-empty alphabet "
                    f"and 0 < min_length <= max_length")
  directory = os.path.abspath(directory)
  params = {"generator_version": GENERATOR_VERSION, "size": size, "seed": seed,
            "alphabet": alphabet, "min_length": min_length, "max_length": max_length}
  if _existing_matches(directory, params):
    return os.path.join(directory, MANIFEST)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  # Render into a sibling temp folder and rename it into place: an interrupted run
  # never leaves a half-written set that a later run would take as complete.
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
  try:
    _generate(tmp, params)
    _move_into_place(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if not _existing_matches(directory, params):
    raise DataError(f"synthetic set {directory} was replaced while being generated")
  return os.path.join(directory, MANIFEST)


def render_line(text: str, rng: np.random.Generator) -> Image.Image:
  """Renders `text` as a grayscale ('L') line image of height 32-40 and fitting width."""
  return render_line_with_boxes(text, rng)[0]


def render_line_with_boxes(text: str, rng: np.random.Generator,
                           draw: bool = True) -> Tuple[Optional[Image.Image],
                                                       List[Tuple[float, float]]]:
  """render_line, and each character's box (x0, x1) in the image's pixels: its pen
  advance. draw=False computes the boxes alone (the image is None) from the same
  random draws."""
  font = _font(int(rng.integers(FONT_SIZES.start, FONT_SIZES.stop)))
  left, top, right, bottom = font.getbbox(text)
  text_w, text_h = right - left, bottom - top
  height = max(int(rng.integers(32, 41)), text_h + 4)
  pad_left, pad_right = (int(p) for p in rng.integers(2, 13, size=2))
  y = int(rng.integers(0, height - text_h + 1)) - top
  origin = pad_left - left
  pens = [origin + font.getlength(text[:i]) for i in range(len(text) + 1)]
  boxes = [(float(a), float(b)) for a, b in zip(pens[:-1], pens[1:])]
  if not draw:
    return None, boxes
  paper = int(rng.integers(190, 256))
  ink = int(rng.integers(0, 90))
  image = Image.new("L", (pad_left + text_w + pad_right, height), paper)
  ImageDraw.Draw(image).text((origin, y), text, fill=ink, font=font)
  if rng.random() < 0.3:
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.0))))
  pixels = np.asarray(image, np.float32)
  pixels += rng.normal(0.0, float(rng.uniform(0.0, 12.0)), pixels.shape)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), boxes


def glyph_boxes(directory: str) -> Dict[str, List[Tuple[float, float]]]:
  """A generated set's glyph boxes: image name -> [(x0, x1) per character], from
  boxes.jsonl, or recomputed from params.json for a set written before it."""
  path = os.path.join(directory, BOXES)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return {row["name"]: [tuple(b) for b in row["boxes"]]
              for row in map(json.loads, f) if row}
  params = _read_params(directory)
  if params is None:
    raise DataError(f"{directory} is not a synthetic data set (no {PARAMS})")
  return {name: boxes for name, _, boxes in
          (_sample(params, i, draw=False)[:3] for i in range(params["size"]))}


def random_text(rng: np.random.Generator, alphabet: str, min_length: int,
                max_length: int) -> str:
  length = int(rng.integers(min_length, max_length + 1))
  return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=length))


# --- internals ---------------------------------------------------------------------

_FONTS: Dict[int, ImageFont.FreeTypeFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont:
  if size not in _FONTS:
    _FONTS[size] = ImageFont.load_default(size=size)
  return _FONTS[size]


def _generate(folder: str, params: dict) -> None:
  """Writes the images, manifest and params (last: it marks the set complete)."""
  start = time.monotonic()
  lines, box_lines = [], []
  size = params["size"]
  for i in range(size):
    name, text, boxes, image = _sample(params, i)
    image.save(os.path.join(folder, name), compress_level=1)
    lines.append(f"{name}\t{text}\n")
    box_lines.append(json.dumps({"name": name, "text": text,
                                 "boxes": [[round(a, 2), round(b, 2)] for a, b in boxes]})
                     + "\n")
    if (i + 1) % _LOG_EVERY == 0 or i + 1 == size:
      elapsed = time.monotonic() - start
      logging.info("synthetic: %d/%d images in %.1fs (%.0f images/s)", i + 1, size,
                   elapsed, (i + 1) / max(elapsed, 1e-9))
  with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8", newline="\n") as f:
    f.writelines(lines)
  with open(os.path.join(folder, BOXES), "w", encoding="utf-8", newline="\n") as f:
    f.writelines(box_lines)
  with open(os.path.join(folder, PARAMS), "w", encoding="utf-8") as f:
    json.dump(params, f, indent=2, sort_keys=True)


def _sample(params: dict, i: int, draw: bool = True):
  """Image i of a set -> (name, text, glyph boxes, image or None)."""
  # One generator per image, seeded by (seed, index): an image does not depend on
  # the ones before it, so output is reproducible however it is produced.
  rng = np.random.default_rng([params["seed"], i])
  text = random_text(rng, params["alphabet"], params["min_length"],
                     params["max_length"])
  # The boxes from a copy of the generator, so that the image is render_line's.
  boxes = render_line_with_boxes(text, copy.deepcopy(rng), draw=False)[1]
  return f"{i:05d}.png", text, boxes, render_line(text, rng) if draw else None


def _existing_matches(directory: str, params: dict) -> bool:
  """True if `directory` holds a complete set with these params; False if absent.

  Raises DataError when it holds anything else, rather than overwrite the user's files.
  """
  if not os.path.exists(directory) or (os.path.isdir(directory)
                                        and not os.listdir(directory)):
    return False
  stored = _read_params(directory)
  if stored == params and os.path.isfile(os.path.join(directory, MANIFEST)):
    return True
  if stored is None:
    raise DataError(f"{directory} exists but is not a synthetic data set (no "
                    f"{PARAMS}); choose another path or delete it")
  changed = sorted(k for k in set(stored) | set(params)
                   if stored.get(k) != params.get(k))
  raise DataError(f"synthetic set {directory} was generated with other parameters "
                  f"(differing: {', '.join(changed)}); delete the folder or choose "
                  f"another path")


def _read_params(directory: str):
  try:
    with open(os.path.join(directory, PARAMS), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _move_into_place(tmp: str, directory: str) -> None:
  if os.path.isdir(directory) and not os.listdir(directory):
    os.rmdir(directory)
  try:
    os.replace(tmp, directory)
  except OSError:
    # Another process (e.g. another worker) finished first; the check after us
    # decides whether its set is the one we wanted.
    if not os.path.isdir(directory):
      raise
