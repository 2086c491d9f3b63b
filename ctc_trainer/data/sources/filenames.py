"""The filenames source: a folder of images named by their labels."""

import os
import re
from typing import Iterator

from ctc_trainer.data.sources.base import Sample, checked, image_names

_DUPLICATE_SUFFIX = re.compile(r"_\d+$")


def load(cfg, split, location, charset):
  return checked(list_filenames(location), cfg, charset, location)


def list_filenames(folder: str) -> Iterator[Sample]:
  """Images in `folder` labelled by their names: 'ab12c.png' and 'ab12c_3.png' -> 'ab12c'.

  A trailing '_<digits>' is always stripped, so a label that itself ends in
  '_<digits>' cannot be written this way; use a manifest for such labels.
  """
  for name in image_names(folder):
    stem = os.path.splitext(name)[0]
    path = os.path.join(folder, name)
    yield Sample(path, _DUPLICATE_SUFFIX.sub("", stem), path)
