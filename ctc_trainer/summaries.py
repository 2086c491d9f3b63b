"""TensorBoard output: scalars, text tables of eval samples, input images."""

from typing import Mapping, Sequence

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
                  names: Sequence[str], num_text: int, num_images: int) -> None:
  """batch: the host-side eval batch dict; samples: decoder name -> string [B];
  names: the decoders to show, the primary first (it captions the images)."""
  strings = lambda t, n: [s.decode("utf-8", "replace") for s in t.numpy()[:n]]
  with writer.as_default(step=step):
    if num_text:
      tf.summary.text(f"{prefix}/samples", samples_table(
          strings(batch["key"], num_text), strings(batch["text"], num_text),
          {name: strings(samples[name], num_text) for name in names}))
    if num_images:
      inputs = batch["inputs"][:num_images]
      if inputs.shape.rank == 3:
        images = spectrogram_images(inputs)
      else:
        # Inputs are ink-bright on zero; flip back to dark ink on light paper.
        images = 1.0 - inputs
      primary = strings(samples[names[0]], num_images)
      tf.summary.image(f"{prefix}/inputs", images, max_outputs=num_images,
                       description=f"{names[0]}: " + " · ".join(primary))


def spectrogram_images(features: tf.Tensor) -> tf.Tensor:
  """Audio features [B, T, F] -> images [B, F, T, 1] in [0, 1]: time to the right,
  low frequencies at the bottom, each utterance scaled to its own range."""
  images = tf.reverse(tf.transpose(features, [0, 2, 1]), axis=[1])[..., None]
  low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
  return (images - low) / tf.maximum(high - low, 1e-6)


def format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
