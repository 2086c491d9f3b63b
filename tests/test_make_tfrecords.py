"""tools/make_tfrecords.py end to end, and the writer's determinism and shard sizing."""

import io
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig
from ctc_trainer.data import pipeline, sources, tfrecord

TOOL = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "make_tfrecords.py")


def image_bytes(width, fmt="PNG"):
  pixels = np.full((16, width), 255, np.uint8)
  pixels[4:12, 2:width - 2] = 0
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, fmt)
  return buf.getvalue()


def write_set(folder, count=12):
  """A tsv set of `count` good images plus four bad samples -> manifest path."""
  folder.mkdir(parents=True, exist_ok=True)
  lines = []
  for i in range(count):
    fmt = "JPEG" if i % 2 else "PNG"
    name = f"{i:02d}.{fmt.lower()}"
    (folder / name).write_bytes(image_bytes(40 + 4 * i, fmt))
    lines.append(f"{name}\t{'abc'[i % 3] * (1 + i % 2)}\n")
  (folder / "garbage.png").write_bytes(b"this is not an image")
  lines += ["garbage.png\tab\n", "missing.png\tab\n",
            "12.png\tabz\n",          # 'z' is not in the charset
            "13.png\tabcabcabcabc\n"]   # needs 12 frames; 6 px wide gives 2
  (folder / "13.png").write_bytes(image_bytes(6))
  (folder / "12.png").write_bytes(image_bytes(20))
  (folder / "m.tsv").write_text("".join(lines), encoding="utf-8")
  return folder / "m.tsv"


def test_cli_converts_validates_and_reports(tmp_path):
  manifest = write_set(tmp_path / "files")
  (tmp_path / "charset.txt").write_text("a\nb\nc\n", encoding="utf-8")
  out = tmp_path / "shards"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, TOOL, "--data_format=tsv", f"--train_data={manifest}",
       f"--output_dir={out}", "--num_shards=3", "--image_height=16",
       f"--charset={tmp_path / 'charset.txt'}", "--conv_filters=8,16"],
      capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "train: 12 examples in 3 shards" in proc.stdout
  assert "4 left out" in proc.stdout and "--data_format=tfrecord" in proc.stdout
  assert "samples/s" in proc.stderr and "ETA" in proc.stderr
  assert sorted(os.listdir(out)) == [
      "charset.txt", "report-train.tsv", "train-00000-of-00003.tfrecord",
      "train-00001-of-00003.tfrecord", "train-00002-of-00003.tfrecord"]
  report = (out / "report-train.tsv").read_text(encoding="utf-8").splitlines()
  assert report[0] == "key\treason"
  reasons = dict(line.split("\t", 1) for line in report[1:])
  files = tmp_path / "files"
  assert set(reasons) == {str(files / n) for n in
                          ("garbage.png", "missing.png", "12.png", "13.png")}
  assert reasons[str(files / "garbage.png")].startswith("cannot read or decode image")
  assert reasons[str(files / "missing.png")].startswith("missing file")
  assert "'z'" in reasons[str(files / "12.png")]
  assert reasons[str(files / "13.png")].startswith("label needs 12 frames, the model "
                                                   "gives 2")
  # The shards train: the reader takes them as they are.
  cfg = DataConfig(eval_data=str(out / "train-*.tfrecord"), data_format="tfrecord",
                   image_height=16, eval_batch_size=64)
  charset = Charset.from_file(str(out / "charset.txt"))
  (batch,) = list(pipeline.make_dataset(cfg, charset, "eval"))
  assert len(batch["key"]) == 12


def test_rewriting_gives_identical_shards_and_replaces_old_ones(tmp_path):
  manifest = write_set(tmp_path / "files", count=30)
  cfg = DataConfig(train_data=str(manifest), image_height=16,
                   bad_sample_policy="skip", unknown_char_policy="skip")
  samples = sources.load_samples(cfg, "train")
  out = str(tmp_path / "out")
  first = tfrecord.write_split(samples, cfg, out, "train", num_shards=4,
                               compression="GZIP")
  blobs = [open(p, "rb").read() for p in first.shards]
  assert all(p.endswith(".tfrecord.gz") for p in first.shards)
  again = tfrecord.write_split(samples, cfg, out, "train", num_shards=4,
                               compression="GZIP")
  assert [open(p, "rb").read() for p in again.shards] == blobs
  # A target size instead of a count; the 4-shard set from before is removed.
  total = sum(os.path.getsize(s.path) for s in samples.samples)
  sized = tfrecord.write_split(samples, cfg, out, "train", shard_bytes=total // 2 + 1,
                               compression="GZIP")
  assert len(sized.shards) == 2
  assert sorted(os.listdir(out)) == ["report-train.tsv", "train-00000-of-00002.tfrecord.gz",
                                     "train-00001-of-00002.tfrecord.gz"]
  records = tf.data.TFRecordDataset(sized.shards, compression_type="GZIP")
  assert sum(1 for _ in records) == sized.written == 32   # 30 + '12.png' and '13.png'
