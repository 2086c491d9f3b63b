"""The sidecar source (OCRopus/Calamari): NAME[.bin|.nrm].<ext> + NAME.gt.txt."""

import collections
import os
from typing import Dict, List, Tuple

from ctc_trainer.data.sources.base import (IMAGE_EXTENSIONS, Sample, checked,
                                           image_names, open_text, utf8_errors)

# Image variants, in order of preference when several share a name.
SIDECAR_VARIANTS = (".bin", ".nrm", "")


def load(cfg, split, location, charset):
  samples, no_transcript = list_sidecar(location)
  return checked(samples, cfg, charset, location,
                 [("no transcript", f"{p} has no .gt.txt", p) for p in no_transcript])


def list_sidecar(folder: str) -> Tuple[List[Sample], List[str]]:
  """Pairs NAME[.bin|.nrm].<ext> with NAME.gt.txt -> (samples, images without one).

  When several images share NAME, the first of .bin, .nrm, plain (then by extension
  order png, jpg, jpeg, bmp, gif) is used: the binarized line is what OCRopus and
  Calamari train on by default. The transcript is UTF-8 with trailing newlines removed.
  """
  by_name: Dict[str, List[Tuple[int, int, str]]] = collections.defaultdict(list)
  for name in image_names(folder):
    stem, ext = os.path.splitext(name)
    variant = os.path.splitext(stem)[1].lower()
    if variant in (".bin", ".nrm"):
      stem = stem[:-len(variant)]
    else:
      variant = ""
    rank = (SIDECAR_VARIANTS.index(variant), IMAGE_EXTENSIONS.index(ext.lower()))
    by_name[stem].append(rank + (name,))
  samples, no_transcript = [], []
  for stem in sorted(by_name):
    path = os.path.join(folder, min(by_name[stem])[2])
    gt = os.path.join(folder, stem + ".gt.txt")
    if not os.path.isfile(gt):
      no_transcript.append(path)
      continue
    with open_text(gt) as f, utf8_errors(gt):
      text = f.read().rstrip("\r\n")
    samples.append(Sample(path, text, gt))
  return samples, no_transcript
