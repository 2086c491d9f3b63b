"""TFRecord shards: schema round trip, reader order and sharding, damaged records and shards."""

import dataclasses
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ctc_trainer import export, loop
from ctc_trainer.charset import Charset
from ctc_trainer.config import Config, DataConfig, LoopConfig
from ctc_trainer.data import failures, pipeline, sources, tfrecord
from ctc_trainer.errors import DataError
from tests.helpers import TINY_MODEL

CHARSET = Charset("abcdefgh ü")


def image_bytes(width, fmt="PNG", height=16):
  pixels = np.full((height, width), 255, np.uint8)
  pixels[4:12, 2:width - 2] = 0
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, fmt)
  return buf.getvalue()


def write_files(folder, items):
  """items: (file name, bytes, label) -> a tsv manifest over them."""
  os.makedirs(folder, exist_ok=True)
  lines = []
  for name, blob, text in items:
    with open(os.path.join(folder, name), "wb") as f:
      f.write(blob)
    lines.append(f"{name}\t{text}\n")
  manifest = os.path.join(folder, "m.tsv")
  with open(manifest, "w", encoding="utf-8") as f:
    f.writelines(lines)
  return manifest


def write_records(path, records, compression=""):
  """records: (encoded, text, key) -> one shard written with make_example."""
  options = tf.io.TFRecordOptions(compression_type=compression)
  with tf.io.TFRecordWriter(str(path), options) as writer:
    for encoded, text, key in records:
      writer.write(tfrecord.make_example(encoded, text, key, height=16, width=10))


def shard_config(pattern, **kwargs):
  return DataConfig(train_data=str(pattern), eval_data=str(pattern),
                    data_format="tfrecord", **kwargs)


def keys_of(dataset):
  return [k.decode() for b in dataset for k in b["key"].numpy()]


ITEMS = [(f"{i:02d}.{'jpg' if i % 3 == 0 else 'png'}",
          image_bytes(10 + 3 * i, "JPEG" if i % 3 == 0 else "PNG"), text)
         for i, text in enumerate(["ab", "h g", "ü", "  h", "aab", "cdef", "gg", "b"])]


@pytest.fixture
def converted(tmp_path):
  """ITEMS as files + manifest, and written to 3 shards by tfrecord.write_split."""
  manifest = write_files(tmp_path / "files", ITEMS)
  cfg = DataConfig(train_data=manifest, eval_data=manifest, image_height=16)
  samples = sources.load_samples(cfg, "eval", CHARSET)
  result = tfrecord.write_split(samples, cfg, str(tmp_path / "shards"), "eval",
                                num_shards=3)
  return cfg, result


def test_round_trip_is_exact(converted, tmp_path):
  cfg, result = converted
  assert [os.path.basename(p) for p in result.shards] == [
      "eval-00000-of-00003.tfrecord", "eval-00001-of-00003.tfrecord",
      "eval-00002-of-00003.tfrecord"]
  assert result.written == len(ITEMS) and not result.rejected
  # Raw records: the bytes are the files' bytes; sample k is in shard k % 3.
  by_key = {}
  for shard in result.shards:
    for record in tf.data.TFRecordDataset(shard):
      x = tfrecord.parse_example(record)
      by_key[x["key"].numpy().decode()] = x
  for name, blob, text in ITEMS:
    x = by_key[str(tmp_path / "files" / name)]
    assert x["encoded"].numpy() == blob
    assert x["text"].numpy().decode("utf-8") == text
    assert (int(x["height"]), int(x["width"])) == Image.open(io.BytesIO(blob)).size[::-1]
  # Through the reader: the same batches as the file pipeline, keys and labels exact.
  record_cfg = shard_config(os.path.join(os.path.dirname(result.shards[0]), "eval-*"),
                            image_height=16, eval_batch_size=100,
                            bucket_boundaries="none")
  (from_records,) = list(pipeline.make_dataset(record_cfg, CHARSET, "eval"))
  (from_files,) = list(pipeline.make_dataset(
      DataConfig(eval_data=cfg.eval_data, image_height=16, eval_batch_size=100),
      CHARSET, "eval"))
  order = np.argsort(from_records["key"].numpy())
  for name in ("key", "text", "input_length", "labels", "label_length", "inputs"):
    np.testing.assert_array_equal(from_records[name].numpy()[order],
                                  from_files[name].numpy(), err_msg=name)


def test_listing_compression_and_labels(converted, tmp_path):
  _, result = converted
  folder = os.path.dirname(result.shards[0])
  listed = sources.load_samples(shard_config(os.path.join(folder, "eval-*.tfrecord")),
                                "eval")
  assert listed.shards == result.shards and listed.compression == ""
  assert sorted(listed.label_texts()) == sorted(text for _, _, text in ITEMS)
  with pytest.raises(DataError, match="no TFRecord shard matches"):
    sources.load_samples(shard_config(tmp_path / "nothing-*"), "train")
  assert tfrecord.compression_of(["a.tfrecord.gz", "b.tfrecord.gz"], "auto") == "GZIP"
  assert tfrecord.compression_of(["a.tfrecord.gz"], "none") == ""
  with pytest.raises(DataError, match="some shards end in .gz"):
    tfrecord.compression_of(["a.tfrecord.gz", "b.tfrecord"], "auto")


def test_training_order_is_seeded_and_covers_every_record(tmp_path):
  for s in range(4):
    write_records(tmp_path / f"train-{s}.tfrecord",
                  [(image_bytes(12), "a", f"s{s}r{r}") for r in range(5)])
  cfg = shard_config(tmp_path / "train-*.tfrecord", batch_size=4, shuffle_buffer=8,
                     seed=3, image_height=16)
  def stream(c):
    return keys_of(pipeline.make_dataset(c, CHARSET, "train").take(10))
  keys = stream(cfg)
  assert stream(cfg) == keys                                 # same seed, same order
  # The record buffer mixes neighbouring epochs, so count over two of them.
  assert set(keys) == {f"s{s}r{r}" for s in range(4) for r in range(5)}
  assert keys[:20] != keys[20:40]                            # reshuffled each epoch
  shuffled = stream(shard_config(tmp_path / "train-*.tfrecord", batch_size=4,
                                 shuffle_buffer=8, seed=4, image_height=16))
  assert shuffled != keys


@pytest.mark.parametrize("num_shards, by", [(4, "file"), (1, "record")])
def test_input_context_gives_each_worker_its_share(tmp_path, num_shards, by):
  keys = [f"k{i}" for i in range(8)]
  for s in range(num_shards):
    write_records(tmp_path / f"eval-{s}.tfrecord",
                  [(image_bytes(12), "a", k) for k in keys[s::num_shards]])
  cfg = shard_config(tmp_path / "eval-*.tfrecord", eval_batch_size=4, image_height=16)
  seen = []
  for worker in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2,
                                         input_pipeline_id=worker,
                                         num_replicas_in_sync=2)
    seen.append(keys_of(pipeline.make_dataset(cfg, CHARSET, "eval",
                                              input_context=context)))
  assert sorted(seen[0] + seen[1]) == keys and not set(seen[0]) & set(seen[1])
  if by == "file":   # whole shards per worker: shards 0 and 2 go to worker 0
    assert sorted(seen[0]) == ["k0", "k2", "k4", "k6"]


@pytest.fixture
def corrupt_shard(tmp_path):
  write_records(tmp_path / "eval-0.tfrecord", [
      (image_bytes(12), "ab", "good-1"), (b"not an image", "cd", "broken-key"),
      (image_bytes(14)[:40], "ef", "cut-key"), (image_bytes(10), "gh", "good-2")])
  return shard_config(tmp_path / "eval-*.tfrecord", eval_batch_size=8, image_height=16)


def test_corrupt_records_are_skipped_counted_and_logged(corrupt_shard, capfd):
  cfg = dataclasses.replace(corrupt_shard, bad_sample_policy="skip")
  assert keys_of(pipeline.make_dataset(cfg, CHARSET, "eval")) == ["good-1", "good-2"]
  log = capfd.readouterr().err
  assert "broken-key" in log and "cut-key" in log and "skipped so far: 2" in log
  assert "eval-0.tfrecord record 1" in log                  # where it is, too


def test_corrupt_record_error_names_its_key(corrupt_shard):
  samples = sources.load_samples(corrupt_shard, "eval")
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    list(pipeline.make_dataset(corrupt_shard, CHARSET, "eval", samples=samples))
  error = failures.explain(raised.value, samples, corrupt_shard)
  assert str(error).startswith("broken-key (")
  assert "cannot read or decode image" in str(error)


def test_unparsable_record_is_named_by_shard_and_index(tmp_path, capfd):
  with tf.io.TFRecordWriter(str(tmp_path / "eval-0.tfrecord")) as writer:
    writer.write(tfrecord.make_example(image_bytes(12), "a", "fine"))
    writer.write(b"\x0a\x03abc")                              # not an Example
  cfg = shard_config(tmp_path / "eval-*.tfrecord", bad_sample_policy="skip",
                     image_height=16)
  assert keys_of(pipeline.make_dataset(cfg, CHARSET, "eval")) == ["fine"]
  assert "eval-0.tfrecord record 1" in capfd.readouterr().err


@pytest.fixture
def truncated_shard(tmp_path):
  write_records(tmp_path / "train-0.tfrecord",
                [(image_bytes(12), "a", f"a{i}") for i in range(4)])
  write_records(tmp_path / "train-1.tfrecord",
                [(image_bytes(12), "b", f"b{i}") for i in range(4)])
  blob = (tmp_path / "train-1.tfrecord").read_bytes()
  (tmp_path / "train-1.tfrecord").write_bytes(blob[:-30])    # cut into the last record
  return tmp_path


def test_truncated_shard_is_reported_by_name(truncated_shard, capfd):
  cfg = shard_config(truncated_shard / "train-*.tfrecord", eval_batch_size=16,
                     image_height=16)
  samples = sources.load_samples(cfg, "eval")
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    list(pipeline.make_dataset(cfg, CHARSET, "eval", samples=samples))
  error = failures.explain(raised.value, samples, cfg)
  assert str(error).startswith(str(truncated_shard / "train-1.tfrecord"))
  assert "truncated or corrupt" in str(error)
  # skip: the records before the damage are used, and the shard is named.
  cfg = dataclasses.replace(cfg, bad_sample_policy="skip")
  keys = keys_of(pipeline.make_dataset(cfg, CHARSET, "eval"))
  assert sorted(keys) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2"]
  assert "train-1.tfrecord" in capfd.readouterr().err


@pytest.mark.parametrize("damage", ["flipped byte", "cut tail"])
def test_damaged_gzip_shard_is_reported_by_name(tmp_path, damage):
  write_records(tmp_path / "x-0.tfrecord.gz", [(image_bytes(12), "a", "ok")], "GZIP")
  write_records(tmp_path / "x-1.tfrecord.gz",
                [(image_bytes(20 + i), "a", f"k{i}") for i in range(20)], "GZIP")
  blob = bytearray((tmp_path / "x-1.tfrecord.gz").read_bytes())
  if damage == "flipped byte":
    blob[len(blob) // 2] ^= 0xFF                            # a read error mid-stream
  else:
    blob = blob[:-200]       # TensorFlow reads this without any error
  (tmp_path / "x-1.tfrecord.gz").write_bytes(bytes(blob))
  cfg = shard_config(tmp_path / "x-*", eval_batch_size=64, image_height=16)
  samples = sources.load_samples(cfg, "eval")
  assert samples.compression == "GZIP"
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    list(pipeline.make_dataset(cfg, CHARSET, "eval", samples=samples))
  error = failures.explain(raised.value, samples, cfg)
  assert str(error).startswith(str(tmp_path / "x-1.tfrecord.gz"))
  assert "truncated or corrupt TFRecord shard" in str(error)


def test_unknown_label_characters_follow_the_policy(tmp_path, capfd):
  write_records(tmp_path / "eval-0.tfrecord", [
      (image_bytes(12), "ab", "fine"), (image_bytes(12), "aXb", "stranger")])
  cfg = shard_config(tmp_path / "eval-*.tfrecord", image_height=16)
  samples = sources.load_samples(cfg, "eval")
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    list(pipeline.make_dataset(cfg, CHARSET, "eval", samples=samples))
  error = failures.explain(raised.value, samples, cfg)
  assert str(error).startswith("stranger: label 'aXb' has characters not in the charset")
  cfg = dataclasses.replace(cfg, unknown_char_policy="skip")
  assert keys_of(pipeline.make_dataset(cfg, CHARSET, "eval")) == ["fine"]
  assert "stranger" in capfd.readouterr().err


# --- export from shards ------------------------------------------------------------

@pytest.fixture
def shards_of_gone_files(tmp_path):
  """A tfrecord Config whose keys are relative paths of files that no longer exist,
  as the speech tool writes them; a checkpoint of the untrained model (parity holds
  for any weights)."""
  records = [(image_bytes(10 + 2 * i), text, f"gone/{i}.png")
             for i, text in enumerate(["ab", "cd", "ef", "gh", "ba"])]
  write_records(tmp_path / "train-0.tfrecord", records)
  write_records(tmp_path / "eval-0.tfrecord", records)
  cfg = Config(
      workdir=str(tmp_path / "run"),
      data=DataConfig(data_format="tfrecord", train_data=str(tmp_path / "train-*"),
                      eval_data=str(tmp_path / "eval-*"), image_height=16,
                      batch_size=2, eval_batch_size=2),
      model=TINY_MODEL, loop=LoopConfig(beam_width=4))
  loop.build_run(cfg).checkpoints.save(1)
  return cfg


def test_parity_gate_serves_the_bytes_read_not_reopened_keys(shards_of_gone_files):
  """The gate serves the bytes the eval pipeline read (the keys name files that are
  gone), all of them or the first `limit` (the export tool's --parity_samples)."""
  trainer, _ = loop.restore_trained(shards_of_gone_files)
  serve = export.serving_fn(export.ServingModule.from_run(trainer))
  samples = sources.load_samples(shards_of_gone_files.data, "eval", trainer.charset)
  parity = export.check_parity(trainer, serve, samples)
  assert parity.ok and parity.num_samples == 5, parity.describe()
  parity = export.check_parity(trainer, serve, samples, limit=3)
  assert parity.ok and parity.num_samples == 3, parity.describe()
