"""CPU cost of image augmentation (--augment) per example, part by part.

  python tools/bench_augment.py [--images=512] [--passes=4]

Renders --images synthetic demo lines (synthetic.render_line), decodes them once
into memory, then maps augment.augment_dataset over --passes passes, batched as
training batches them, and prints the process's CPU time per example: with every
example augmented at the default strengths, with each part alone, and with
augmentation drawn for none (the map's own cost). Decoding is left out. The
end-to-end comparison (--input_only and training, on and off) is in
docs/benchmarks.md, Part 4.
"""

import dataclasses
import io
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from ctc_trainer.config import DataConfig
from ctc_trainer.data import augment, image, synthetic

flags.DEFINE_integer("images", 512, "Lines to render.", lower_bound=1)
flags.DEFINE_integer("passes", 4, "Passes over them per measurement.", lower_bound=1)
FLAGS = flags.FLAGS

PARTS = ("augment_rotate_deg", "augment_shear", "augment_scale", "augment_warp",
         "augment_width_jitter", "augment_pad", "augment_morph", "augment_blur",
         "augment_contrast", "augment_brightness", "augment_noise")


def rendered(count: int) -> tf.data.Dataset:
  """Decoded demo lines {inputs [32, W, 1], input_length, key}, in memory."""
  rng = np.random.default_rng(0)
  blobs = []
  for _ in range(count):
    buffer = io.BytesIO()
    synthetic.render_line(synthetic.random_text(rng, "abcdefgh0123", 3, 8),
                          rng).save(buffer, "PNG")
    blobs.append(buffer.getvalue())
  keys = [f"{i}" for i in range(count)]

  def decode(blob, key):
    inputs, width = image.decode_and_resize(blob, 32, 1, 2048)
    return {"inputs": inputs, "input_length": width, "key": key}

  return tf.data.Dataset.from_tensor_slices((blobs, keys)).map(decode).cache()


def cpu_per_example(examples: tf.data.Dataset, cfg: DataConfig, passes: int) -> float:
  """Process CPU seconds per example of augmenting and batching `examples`."""
  ds = augment.augment_dataset(examples.repeat(passes), cfg, 0).padded_batch(32)
  start, count = time.process_time(), 0
  for batch in ds:
    count += int(batch["input_length"].shape[0])
  return (time.process_time() - start) / count


def main(argv):
  del argv
  examples = rendered(FLAGS.images)
  for _ in examples:   # fill the cache: decoding stays out of the measurements
    pass
  every = DataConfig(augment=True, augment_probability=1.0)
  none = {part: 0.0 for part in PARTS}
  runs = {"--noaugment": DataConfig(),
          "drawn for no example": dataclasses.replace(every, augment_probability=0.0),
          "every part at 0": dataclasses.replace(every, **none),
          "every example, default strengths": every}
  runs.update({f"only --{part}": dataclasses.replace(
      every, **dict(none, **{part: getattr(every, part)})) for part in PARTS})
  print("| augmentation | CPU ms per example |\n|---|---:|")
  for name, cfg in runs.items():
    print(f"| {name} | {1000 * cpu_per_example(examples, cfg, FLAGS.passes):.3f} |")


if __name__ == "__main__":
  app.run(main)
