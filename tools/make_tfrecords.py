"""Convert a data set in any listed format into TFRecord shards, validating every sample.

  python tools/make_tfrecords.py --data_format=tsv --train_data=train.tsv \
      --eval_data=val.tsv --output_dir=data/shards [--num_shards=16 | --shard_size_mb=200] \
      [--compression=gzip] [--charset=charset.txt] [--flagfile=configs/base_ocr.cfg]

Reads the same data flags as training (--data_format, --train_data, --eval_data, the
csv and synthetic flags, --image_height, --max_image_width, --charset). Writes
OUTPUT_DIR/train-00000-of-00016.tfrecord ... (and eval-*), the schema of
ctc_trainer/data/tfrecord.py, plus:
  report-SPLIT.tsv   every sample left out, 'key<TAB>reason': missing, unreadable or
                     undecodable file (image, or WAV with --modality=audio), label
                     characters outside --charset, or a label longer than the
                     model's output frames for its input
  charset.txt        --charset, or the characters of the training labels written
Bad samples never stop the run. The frame check runs when a model is configured (any
of --model, --conv_filters, --rnn_units, --rnn_layers given, e.g. by the training
flagfile). The same inputs give byte-identical shards. See docs/data_formats.md.
"""

import os
import sys
import time

from absl import app, flags, logging

from ctc_trainer import cli, config, models, options, summaries
from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig
from ctc_trainer.data import pipeline, sources, tfrecord
from ctc_trainer.errors import ConfigError

flags.DEFINE_string("output_dir", None, "Folder for the shards, reports and charset.")
flags.DEFINE_integer("num_shards", 0, "Shards per split; 0: from --shard_size_mb.",
                     lower_bound=0)
flags.DEFINE_integer("shard_size_mb", 200, "Target shard size in MB (of image files) "
                     "when --num_shards is 0.", lower_bound=1)
flags.DEFINE_integer("num_workers", 0, "Threads reading and decoding images to "
                     "validate them; 0: one per CPU.", lower_bound=0)
flags.DEFINE_enum("compression", "none", ("none", "gzip"), "Shard compression. "
                  "Images are already compressed, so GZIP mostly pays off for audio.")

FLAGS = flags.FLAGS
_MODEL_FLAGS = ("model", "conv_filters", "rnn_units", "rnn_layers")


def data_config(fl: flags.FlagValues) -> DataConfig:
  """DataConfig from the training flags, as training builds it; bad samples are
  skipped (and reported) whatever the policies say."""
  return options.from_flags(DataConfig, fl, bad_sample_policy="skip",
                            unknown_char_policy="skip")


def model_frames(fl: flags.FlagValues, num_classes: int, data: DataConfig):
  """lengths along time (image widths, audio frames) int [n] -> the configured
  model's output frames int [n]."""
  import tensorflow as tf  # late: only the frame check needs a model
  model = models.build(config.model_from_flags(fl), num_classes,
                       pipeline.input_shape(data))
  return lambda widths: model.output_length(tf.constant(widths, tf.int32)).numpy()


class Progress:
  """A one-line progress bar on stderr with rate and ETA, redrawn at most 4x a second."""

  def __init__(self, label: str, width: int = 30):
    self.label, self.width = label, width
    self.start = self.last = time.time()

  def __call__(self, done: int, total: int) -> None:
    now = time.time()
    if done < total and now - self.last < 0.25:
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    filled = self.width * done // max(total, 1)
    eta = summaries.format_duration((total - done) / rate) if rate else "?"
    sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                     f"{done}/{total} {100 * done / max(total, 1):5.1f}%  "
                     f"{rate:,.0f} samples/s  ETA {eta} ")
    if done == total:
      sys.stderr.write("\n")
    sys.stderr.flush()


@cli.exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.output_dir:
    raise ConfigError("--output_dir is required")
  cfg = data_config(FLAGS)
  if cfg.data_format == "tfrecord":
    raise ConfigError("--data_format names the source format; it cannot be "
                             "tfrecord here")
  if not cfg.train_data and not cfg.eval_data:
    raise ConfigError("give --train_data and/or --eval_data")
  output_dir = os.path.expanduser(FLAGS.output_dir)
  charset = Charset.from_file(os.path.expanduser(FLAGS.charset)) if FLAGS.charset else None
  frames_fn = None
  if any(FLAGS[name].present for name in _MODEL_FLAGS):
    # Any class count will do: output frames do not depend on it.
    frames_fn = model_frames(FLAGS, charset.num_classes if charset else 2, cfg)
    logging.info("Checking that labels fit the frames of model %s", FLAGS.model)
  else:
    logging.info("No model flags given: label lengths are not checked against frames")
  compression = "GZIP" if FLAGS.compression == "gzip" else ""

  train_texts = None
  for split, location in (("train", cfg.train_data), ("eval", cfg.eval_data)):
    if not location:
      continue
    samples = sources.load_samples(cfg, split, charset)
    result = tfrecord.write_split(
        samples, cfg, output_dir, split, num_shards=FLAGS.num_shards,
        shard_bytes=FLAGS.shard_size_mb << 20, compression=compression,
        workers=FLAGS.num_workers, frames_fn=frames_fn, on_progress=Progress(split))
    size_mb = sum(os.path.getsize(p) for p in result.shards) / 2**20
    print(f"{split}: {result.written} examples in {len(result.shards)} shards "
          f"({size_mb:.1f} MB) in {result.seconds:.1f}s; {len(result.rejected)} left "
          f"out, listed in {result.report}")
    if split == "train":
      left_out = {key for key, _ in result.rejected}
      train_texts = [s.text for s in samples.samples if s.path not in left_out]
  if charset is None and train_texts is not None:
    charset = Charset.from_texts(train_texts)
  if charset is not None:
    charset.save(os.path.join(output_dir, "charset.txt"))
  suffix = tfrecord.shard_name("x", 0, 1, compression).split(".", 1)[1]
  print(f"train with: --data_format=tfrecord "
        f"--train_data={os.path.join(output_dir, 'train-*.' + suffix)} "
        f"--eval_data={os.path.join(output_dir, 'eval-*.' + suffix)}"
        + (f" --charset={os.path.join(output_dir, 'charset.txt')}" if charset else ""))


if __name__ == "__main__":
  app.run(main)
