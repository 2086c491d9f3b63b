"""TensorBoard output: scalars, text tables of eval samples, input previews."""

from typing import Callable, Mapping, Sequence

import tensorflow as tf


def write_scalars(writer, step: int, prefix: str, values: Mapping[str, float]) -> None:
  with writer.as_default(step=step):
    for name, value in values.items():
      tf.summary.scalar(f"{prefix}/{name}", value)


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ") or "∅"


def samples_table(keys: Sequence[str], truths: Sequence[str],
                  decoded: Mapping[str, Sequence[str]]) -> str:
  """A markdown table: key | truth | one column per decoder (in `decoded`'s order),
  one row per sample."""
  header = ["key", "truth", *decoded]
  rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in zip(keys, truths, *decoded.values()):
    rows.append("| " + " | ".join(_cell(c) for c in row) + " |")
  return "\n".join(rows)


def write_samples(writer, step: int, prefix: str, batch, samples,
                  names: Sequence[str], num_text: int, num_images: int,
                  preview: Callable[[tf.Tensor], tf.Tensor]) -> None:
  """batch: the host-side eval batch dict; samples: decoder name -> string [B];
  names: the decoders to show, the primary first (it captions the images);
  preview: the Modality's, inputs -> images [n, h, w, c] in [0, 1]."""
  strings = lambda t, n: [s.decode("utf-8", "replace") for s in t.numpy()[:n]]
  with writer.as_default(step=step):
    if num_text:
      tf.summary.text(f"{prefix}/samples", samples_table(
          strings(batch["key"], num_text), strings(batch["text"], num_text),
          {name: strings(samples[name], num_text) for name in names}))
    if num_images:
      images = preview(batch["inputs"][:num_images])
      primary = strings(samples[names[0]], num_images)
      tf.summary.image(f"{prefix}/inputs", images, max_outputs=num_images,
                       description=f"{names[0]}: " + " · ".join(primary))


def format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
