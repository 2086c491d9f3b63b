"""Input pipeline benchmark: ctc_trainer's pipelines against the common PyDataset approach.

  python tools/bench_input.py            # full run, about 10 minutes on 2 cores
  python tools/bench_input.py --quick    # smoke run, about 2 minutes
  python tools/bench_input.py --parts=service --sets=captcha   # (f) alone

Generates its own image sets into a fresh folder under --root (removed at the end
unless --keep): small captcha-like PNGs (synthetic.render_line) and long text-line
JPEGs 64 px high and up to 1200 px wide. Then, side by side in one run, on the same
files:
  (a) the common approach: a keras.utils.PyDataset that opens the files with Pillow
      in Python, fed as model.fit feeds it (Keras's PyDatasetAdapter), with the
      default workers=1 and with one thread per core;
  (b) ctc_trainer's file-manifest pipeline (pipeline.make_dataset on a tsv);
  (c) its TFRecord pipeline, on shards written by tfrecord.write_split.
  Each is timed over one pass right after the files' pages were dropped from the
  page cache (posix_fadvise DONTNEED: cold, so IO is in it) and over --warm_passes
  passes warm, in
  --rounds rounds that take the approaches in turn; medians are reported.
  Steady state: the clock starts when the first batch arrives.
  (d) demo-model train steps/sec fed by the real pipeline vs by the same batches
      held in memory, for (b) and (a); alternating timed blocks, each after a few
      untimed warm-up steps. On captchas by default (--training_sets): there the
      model is fastest, so the input pipeline has the least time to hide in.
  (e) peak RSS (VmHWM) of training runs, each in its own process, over
      --rss_images captchas and over a set --rss_scale times larger (copies of the
      files), with as many steps for both: one epoch of the larger set.
  Before them, the profile part: CPU time per image of each stage on one thread.
  (f) with --parts=service --sets=captcha (the training flag --data_service names
      a dispatcher; this part starts its own): the demo model's train steps on
      captchas fed by the local pipeline (0 service workers), and through the
      tf.data service (--data_service, dynamic sharding) from a dispatcher with 1
      and one with 2 worker processes on this machine; blocks alternate among
      the three; examples/s, the fraction of time spent waiting for a batch, and
      the workers' CPU time (from /proc) per example they served.
Prints markdown tables for docs/benchmarks.md. --batch_size and --image_height are the
training flags of the same names; the model is the demo's (configs/demo_ocr.cfg).
"""

import dataclasses
import json
import os
import shutil
import string
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
from PIL import Image

from ctc_trainer import config, loop, models
from ctc_trainer.charset import Charset
from ctc_trainer.config import DataConfig, LoopConfig, OptimConfig
from ctc_trainer.models.crnn import CRNNConfig
from ctc_trainer.data import image as image_lib
from ctc_trainer.data import (buckets, modalities, pipeline, sources, synthetic,
                              tfrecord, throughput)
from ctc_trainer.steps import make_step_fns

flags.DEFINE_string("root", os.path.join(tempfile.gettempdir(), "ctc_bench_input"),
                    "A fresh folder is made under it for each run's files.")
flags.DEFINE_bool("quick", False, "Smoke run: small sets and few steps.")
flags.DEFINE_list("sets", ["captcha", "lines"], "Image kinds: captcha, lines.")
flags.DEFINE_list("parts", ["profile", "throughput", "training", "rss"],
                  "profile: CPU per image by stage; throughput: (a)-(c); "
                  "training: (d); rss: (e); service: (f), the tf.data service "
                  "(not run by default; needs the captcha set).")
flags.DEFINE_integer("captcha_images", 3000, "Images in the captcha set.")
flags.DEFINE_integer("line_images", 1500, "Images in the text-line set.")
flags.DEFINE_list("training_sets", ["captcha"], "(d): image kinds to train on.")
flags.DEFINE_integer("warm_passes", 3, "(a)-(c): passes over the files timed warm "
                     "(the cold measurement is one pass).")
flags.DEFINE_integer("rounds", 3, "(a)-(c): rounds; each measures every approach "
                     "once cold and once warm, in turn, and the median is reported.")
flags.DEFINE_integer("train_blocks", 6, "(d): timed blocks per feed and source.")
flags.DEFINE_integer("rss_images", 600, "(e): captchas in the smaller set.")
flags.DEFINE_integer("rss_scale", 10, "(e): the large set is this many times the "
                     "smaller one.")
flags.DEFINE_list("rss_sources", ["files", "tfrecord"], "(e): pipelines to measure.")
flags.DEFINE_bool("keep", False, "Keep the generated files.")
flags.DEFINE_integer("service_steps", 30, "(f): timed steps per block.")
flags.DEFINE_string("rss_child", None, "Internal: run one (e) training job described "
                    "by this JSON, then exit.")
FLAGS = flags.FLAGS

# The demo model of configs/demo_ocr.cfg.
DEMO_MODEL = CRNNConfig(conv_filters=(16, 32, 64), rnn_units=96, rnn_layers=1,
                        dropout=0.1)
CAPTCHA_ALPHABET = string.ascii_lowercase + string.digits
LINE_ALPHABET = string.ascii_letters + string.digits + " .,"
LINE_HEIGHT, LINE_MAX_WIDTH = 64, 1200
WARMUP_STEPS = 3
# The benchmark's sets are images: padding is counted along their width.
IMAGE_TIME_AXIS = modalities.get(DataConfig()).time_axis


@dataclasses.dataclass
class ImageSet:
  name: str
  folder: str
  manifest: str
  samples: sources.ListedSource
  charset: Charset
  shards: List[str] = dataclasses.field(default_factory=list)


# --- data ---------------------------------------------------------------------------

def make_set(name: str, folder: str, count: int, seed: int) -> ImageSet:
  """Renders `count` images into `folder` with a manifest.tsv; deterministic."""
  os.makedirs(folder)
  lines = []
  for i in range(count):
    rng = np.random.default_rng([seed, i])
    if name == "captcha":
      text = synthetic.random_text(rng, CAPTCHA_ALPHABET, 4, 6)
      file_name = f"{i:06d}.png"
      synthetic.render_line(text, rng).save(os.path.join(folder, file_name))
    else:
      text = synthetic.random_text(rng, LINE_ALPHABET, 30, 50)
      line = synthetic.render_line(text, rng)
      width = round(line.width * LINE_HEIGHT / line.height)
      # Longer lines are squeezed to the maximum width, as scanned lines often are.
      line = line.resize((min(width, LINE_MAX_WIDTH), LINE_HEIGHT), Image.BILINEAR)
      file_name = f"{i:06d}.jpg"
      line.save(os.path.join(folder, file_name), quality=90)
    lines.append(f"{file_name}\t{text}\n")
  manifest = os.path.join(folder, "manifest.tsv")
  with open(manifest, "w", encoding="utf-8") as f:
    f.writelines(lines)
  samples = sources.load_samples(DataConfig(train_data=manifest), "train")
  return ImageSet(name, folder, manifest, samples, Charset.from_texts(samples.texts))


def copy_set(base: ImageSet, folder: str, times: int) -> str:
  """`times` copies of base's files, as distinct files -> manifest path."""
  os.makedirs(folder)
  lines = []
  for copy in range(times):
    for i, sample in enumerate(base.samples.samples):
      name = f"{copy:02d}-{os.path.basename(sample.path)}"
      shutil.copyfile(sample.path, os.path.join(folder, name))
      lines.append(f"{name}\t{sample.text}\n")
  manifest = os.path.join(folder, "manifest.tsv")
  with open(manifest, "w", encoding="utf-8") as f:
    f.writelines(lines)
  return manifest


def write_shards(samples: sources.ListedSource, folder: str, split: str,
                 num_shards: int) -> List[str]:
  cfg = DataConfig(image_height=FLAGS.image_height)
  return tfrecord.write_split(samples, cfg, folder, split, num_shards=num_shards).shards


def evict(paths: List[str]) -> None:
  """Drops the files' pages from the page cache, so the next read goes to the disk."""
  os.sync()
  for path in paths:
    fd = os.open(path, os.O_RDONLY)
    try:
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


# --- (a) the common approach ----------------------------------------------------------

class PillowSequence(keras.utils.PyDataset):
  """Batches made in Python: Pillow opens, grays and resizes each image to a fixed
  height; numpy pads the batch. What a Keras OCR example typically does."""

  def __init__(self, image_set: ImageSet, batch_size: int, height: int,
               passes: int = 1, **kwargs):
    super().__init__(**kwargs)
    order = np.random.default_rng(0).permutation(len(image_set.samples))
    self.samples = [image_set.samples.samples[i] for i in order]
    self.charset, self.batch_size, self.height = image_set.charset, batch_size, height
    self.passes = passes

  def __len__(self):
    return self.passes * (len(self.samples) // self.batch_size)

  def __getitem__(self, index):
    index %= len(self.samples) // self.batch_size
    chunk = self.samples[index * self.batch_size:(index + 1) * self.batch_size]
    images = []
    for sample in chunk:
      with Image.open(sample.path) as im:
        gray = im.convert("L")
        width = max(1, round(gray.width * self.height / gray.height))
        gray = gray.resize((width, self.height), Image.BILINEAR)
      images.append(1.0 - np.asarray(gray, np.float32) / 255.0)
    widest = max(im.shape[1] for im in images)
    inputs = np.zeros((len(chunk), self.height, widest, 1), np.float32)
    for row, im in enumerate(images):
      inputs[row, :, :im.shape[1], 0] = im
    ids = [self.charset.encode_py(s.text) for s in chunk]
    labels = np.zeros((len(chunk), max(len(i) for i in ids)), np.int32)
    for row, i in enumerate(ids):
      labels[row, :len(i)] = i
    return {"inputs": inputs,
            "input_length": np.array([im.shape[1] for im in images], np.int32),
            "labels": labels,
            "label_length": np.array([len(i) for i in ids], np.int32)}


def pydataset_feed(image_set: ImageSet, workers: int,
                   passes: int = 1) -> tf.data.Dataset:
  """The Sequence as model.fit feeds it with the TensorFlow backend, for `passes`
  passes over the files."""
  sequence = PillowSequence(image_set, FLAGS.batch_size, FLAGS.image_height,
                            passes=passes, workers=workers)
  adapter = PyDatasetAdapter(sequence)
  # Keras infers the signature from the first two batches and fixes every dim they
  # share (e.g. the widest line), failing on a later batch; give it the real one.
  spec = pipeline.batch_signature(1, FLAGS.image_height)
  adapter._output_signature = {k: spec[k] for k in ("inputs", "input_length",
                                                    "labels", "label_length")}
  return adapter.get_tf_dataset()


# --- (b), (c) ctc_trainer -----------------------------------------------------------------

def ctc_feed(image_set: ImageSet, source: str) -> Callable[[], tf.data.Dataset]:
  """A maker of the training pipeline over the files ('files') or the shards."""
  if source == "files":
    cfg = DataConfig(train_data=image_set.manifest, image_height=FLAGS.image_height,
                     batch_size=FLAGS.batch_size)
    samples = image_set.samples
  else:
    cfg = DataConfig(train_data=os.path.join(image_set.folder, "shards", "train-*"),
                     data_format="tfrecord", image_height=FLAGS.image_height,
                     batch_size=FLAGS.batch_size)
    samples = sources.load_samples(cfg, "train")
  # Scan the widths for the buckets now: the scan reads files and would warm the
  # page cache that the cold measurement has just emptied.
  buckets.bucket_widths(cfg, samples, modalities.get(cfg), cfg.batch_size)
  return lambda: pipeline.make_dataset(cfg, image_set.charset, "train", samples=samples)


# --- measurements ---------------------------------------------------------------------

def input_rates(make: Callable[[int], tf.data.Dataset], batches: int, files: List[str],
                warm_passes: int) -> Dict[str, throughput.InputStats]:
  """One pass cold (files evicted first), then warm_passes passes warm.
  make(passes) -> a dataset of at least that many passes."""
  evict(files)
  cold = throughput.measure_input(make(1), batches, IMAGE_TIME_AXIS)
  warm = throughput.measure_input(make(warm_passes), warm_passes * batches,
                                IMAGE_TIME_AXIS)
  return {"cold": cold, "warm": warm}


def _ignore_passes(make: Callable[[], tf.data.Dataset]):
  return lambda passes: make()


def median_rate(runs: List[Dict[str, throughput.InputStats]], kind: str) -> float:
  return float(np.median([r[kind].examples_per_sec for r in runs]))


def with_strings(batch):
  """The step's signature wants text and key; the Sequence has no strings (Keras
  cannot carry them), so they are filled in."""
  if "text" not in batch:
    size = tf.shape(batch["input_length"])[:1]
    batch = dict(batch, text=tf.fill(size, ""), key=tf.fill(size, ""))
  return batch


def train_rates(train_step, make: Callable[[], tf.data.Dataset], steps: int,
                blocks: int) -> Dict[str, float]:
  """Steps/sec fed by a fresh iterator of `make()` vs by the same batches in memory,
  and the fraction of the real feed's time spent waiting for its next batch.

  Alternating blocks; each starts WARMUP_STEPS untimed steps into its batches (the
  real pipeline fills its buffers meanwhile) and times the next `steps`. Eager
  execution is synchronous here (no accelerator queue), so the time in next() is
  time the step waits for its batch.
  """
  iterator = iter(make())
  memory = [with_strings(next(iterator)) for _ in range(WARMUP_STEPS + steps)]
  del iterator
  seconds = {"real": 0.0, "memory": 0.0}
  waiting = 0.0
  for _ in range(blocks):
    for feed in ("memory", "real"):
      batches = iter(memory) if feed == "memory" else iter(make())
      for _ in range(WARMUP_STEPS):
        train_step(with_strings(next(batches)))
      start = time.time()
      for _ in range(steps):
        before = time.time()
        batch = with_strings(next(batches))
        if feed == "real":
          waiting += time.time() - before
        out = train_step(batch)
      float(out["loss_sum"])   # the last step has finished
      seconds[feed] += time.time() - start
  rates = {feed: blocks * steps / s for feed, s in seconds.items()}
  rates["wait_fraction"] = waiting / seconds["real"]
  return rates


def build_train_step(charset: Charset):
  model = models.build(DEMO_MODEL, charset.num_classes, (FLAGS.image_height, None, 1))
  optimizer = loop.make_optimizer(OptimConfig(), 1000)
  optimizer.build(model.trainable_variables)
  spec = pipeline.batch_signature(1, FLAGS.image_height)
  return make_step_fns(model, optimizer, charset, tf.distribute.get_strategy(), spec,
                       global_batch_size=FLAGS.batch_size, clip_norm=5.0,
                       beam_width=10).train_step


def peak_rss(job: dict, log_path: str) -> float:
  """Runs one (e) training job in its own process -> its peak RSS in MiB.

  The child reports its VmHWM itself: getrusage's ru_maxrss of a child started by
  fork + exec starts from this (large) process's RSS at the fork.
  """
  with open(log_path, "w") as log:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__),
                           f"--rss_child={json.dumps(job)}"], stdout=log,
                          stderr=subprocess.STDOUT, check=False,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  if proc.returncode:
    with open(log_path) as log:
      raise RuntimeError(f"training job failed:\n{log.read()[-3000:]}")
  with open(job["workdir"] + ".vmhwm") as f:
    return int(f.read()) / 1024


def rss_child(job: dict) -> None:
  data = DataConfig(train_data=job["train"], eval_data=job["eval"],
                    data_format=job["format"], image_height=job["image_height"],
                    batch_size=job["batch_size"], eval_batch_size=32)
  cfg = config.Config(
      workdir=job["workdir"], charset=job["charset"], data=data, model=DEMO_MODEL,
      optim=OptimConfig(),
      loop=LoopConfig(train_steps=job["steps"], log_every=max(1, job["steps"] // 5),
                      eval_every=job["steps"], checkpoint_every=job["steps"],
                      eval_max_batches=2))
  loop.train_and_evaluate(cfg)
  with open("/proc/self/status") as status:
    peak_kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
  with open(job["workdir"] + ".vmhwm", "w") as f:
    f.write(peak_kib)


# --- the run -----------------------------------------------------------------------------

def main(argv):
  del argv
  if FLAGS.rss_child:
    rss_child(json.loads(FLAGS.rss_child))
    return
  cores = len(os.sched_getaffinity(0))
  sizes = {"captcha": 400, "lines": 200} if FLAGS.quick else {
      "captcha": FLAGS.captcha_images, "lines": FLAGS.line_images}
  train_steps = {"captcha": 6, "lines": 3} if FLAGS.quick else {"captcha": 40,
                                                                  "lines": 8}
  blocks = 1 if FLAGS.quick else FLAGS.train_blocks
  os.makedirs(FLAGS.root, exist_ok=True)
  root = tempfile.mkdtemp(prefix="run-", dir=FLAGS.root)   # a fresh path: cold files
  print(f"# bench_input: {cores} cores, TensorFlow {tf.__version__}, batch "
        f"{FLAGS.batch_size}, height {FLAGS.image_height}, files in {root}"
        f"{' (quick)' if FLAGS.quick else ''}\n")
  try:
    image_sets = {}
    for name in FLAGS.sets:
      start = time.time()
      image_sets[name] = make_set(name, os.path.join(root, name), sizes[name], seed=7)
      logging.info("%s: %d images in %.1fs", name, sizes[name], time.time() - start)
      if "throughput" in FLAGS.parts:
        start = time.time()
        image_sets[name].shards = write_shards(
            image_sets[name].samples, os.path.join(root, name, "shards"), "train", 8)
        logging.info("%s: make_tfrecords %.0f images/s", name,
                     sizes[name] / (time.time() - start))
    # Each table is printed when done, so a failure later keeps the earlier ones.
    if "profile" in FLAGS.parts:
      print(profile_table(image_sets) + "\n", flush=True)
    if "throughput" in FLAGS.parts:
      print(throughput_table(image_sets, cores) + "\n", flush=True)
    if "training" in FLAGS.parts:
      chosen = {n: image_sets[n] for n in FLAGS.training_sets if n in image_sets}
      print(training_table(chosen, train_steps, blocks) + "\n", flush=True)
    if "rss" in FLAGS.parts:
      print(rss_table(root), flush=True)
    if "service" in FLAGS.parts:
      print(service_table(image_sets["captcha"], root, blocks, cores), flush=True)
  finally:
    if not FLAGS.keep:
      shutil.rmtree(root, ignore_errors=True)


def profile_table(image_sets: Dict[str, ImageSet]) -> str:
  """CPU ms per image of each stage on one thread, files warm: where the time goes."""
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  height = FLAGS.image_height

  def cpu_ms(dataset: tf.data.Dataset, images: int) -> float:
    # A scalar per element, summed in the graph: no Python per element.
    dataset = dataset.map(lambda *x: tf.constant(1, tf.int64)).with_options(options)
    start = time.process_time()
    dataset.reduce(tf.constant(0, tf.int64), lambda total, one: total + one)
    return 1e3 * (time.process_time() - start) / images

  rows = ["| set | stage | CPU ms per image |", "|---|---|---:|"]
  for name, image_set in image_sets.items():
    paths = [s.path for s in image_set.samples.samples]
    encoded = tf.data.Dataset.from_tensor_slices([open(p, "rb").read() for p in paths])
    count = len(paths)
    pillow = PillowSequence(image_set, FLAGS.batch_size, height)
    start = time.process_time()
    for index in range(len(pillow)):
      pillow[index]
    pillow_ms = 1e3 * (time.process_time() - start) / (len(pillow) * FLAGS.batch_size)
    files = ctc_feed(image_set, "files")().take(count // FLAGS.batch_size)
    stages = [
        ("tf.data, one map per element, nothing in it", cpu_ms(encoded, count)),
        ("tf.io.read_file", cpu_ms(tf.data.Dataset.from_tensor_slices(paths).map(
            tf.io.read_file), count)),
        ("tf.io.decode_image (float32)", cpu_ms(encoded.map(
            lambda e: tf.io.decode_image(e, dtype=tf.float32, expand_animations=False)),
            count)),
        ("image.decode_and_resize", cpu_ms(encoded.map(
            lambda e: image_lib.decode_and_resize(e, height, 1, 2048)), count)),
        ("(b) the whole file pipeline (read, decode, buckets, labels; default "
         "policies)", cpu_ms(files, count // FLAGS.batch_size * FLAGS.batch_size)),
        ("(a) PillowSequence.__getitem__ (open, gray, resize, pad, labels)",
         pillow_ms),
    ]
    rows += [f"| {name} | {stage} | {ms:.3f} |" for stage, ms in stages]
  return ("### Where the time goes: CPU per image, one thread, files warm\n\n" +
          "\n".join(rows))


def throughput_table(image_sets: Dict[str, ImageSet], cores: int) -> str:
  rows = ["| set | approach | cold ex/s | warm ex/s | warm ex/s per core | "
          "cold, warm vs (a) | cold, warm vs (a) threads | padding eff. |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
  rounds = 1 if FLAGS.quick else FLAGS.rounds
  warm_passes = 1 if FLAGS.quick else FLAGS.warm_passes
  for name, image_set in image_sets.items():
    batches = len(image_set.samples) // FLAGS.batch_size
    files = [s.path for s in image_set.samples.samples]
    # approach -> (maker of its dataset, the files it reads)
    approaches = {
        "(a) PyDataset + Pillow, workers=1": (
            lambda passes: pydataset_feed(image_set, 1, passes), files),
        f"(a) PyDataset + Pillow, workers={cores} threads": (
            lambda passes: pydataset_feed(image_set, cores, passes), files),
        # ctc_trainer's training pipeline repeats forever.
        "(b) ctc_trainer files": (_ignore_passes(ctc_feed(image_set, "files")), files),
        "(c) ctc_trainer TFRecord": (_ignore_passes(ctc_feed(image_set, "tfrecord")),
                                     image_set.shards),
    }
    # Rounds in turn, so that a change in the machine's load hits every approach.
    runs = {approach: [] for approach in approaches}
    for _ in range(rounds):
      for approach, (make, read) in approaches.items():
        runs[approach].append(input_rates(make, batches, read, warm_passes))
    rates = {a: {k: median_rate(r, k) for k in ("cold", "warm")}
             for a, r in runs.items()}
    base, threads = list(rates.values())[:2]
    for approach, r in rates.items():
      ratio = lambda ref: "{:.2f}x, {:.2f}x".format(
          *(r[k] / ref[k] for k in ("cold", "warm")))
      efficiency = runs[approach][-1]["warm"].padding_efficiency
      rows.append(
          f"| {name} | {approach} | {r['cold']:,.0f} | {r['warm']:,.0f} | "
          f"{r['warm'] / cores:,.0f} | {ratio(base)} | {ratio(threads)} | "
          f"{100 * efficiency:.0f}% |")
      logging.info("%s %s: warm runs %s", name, approach,
                   [f"{x['warm'].examples_per_sec:,.0f}" for x in runs[approach]])
  return (f"### (a)-(c) Input pipeline alone, examples/sec (median of {rounds} "
          "rounds)\n\n" + "\n".join(rows))


def training_table(image_sets: Dict[str, ImageSet], train_steps: Dict[str, int],
                   blocks: int) -> str:
  rows = ["| set | fed by | real steps/s | in-memory steps/s | real / in-memory | "
          "time in next() |", "|---|---|---:|---:|---:|---:|"]
  for name, image_set in image_sets.items():
    train_step = build_train_step(image_set.charset)
    feeds = {"(b) ctc_trainer files": ctc_feed(image_set, "files"),
             "(a) PyDataset + Pillow, workers=1": lambda: pydataset_feed(image_set, 1)}
    for feed, make in feeds.items():
      rates = train_rates(train_step, make, train_steps[name], blocks)
      rows.append(f"| {name} | {feed} | {rates['real']:.2f} | {rates['memory']:.2f} | "
                  f"{rates['real'] / rates['memory']:.3f} | "
                  f"{100 * rates['wait_fraction']:.1f}% |")
      logging.info("%s %s: %s", name, feed, rates)
  return ("### (d) Demo-model training, steps/sec: real pipeline vs the same batches "
          "from memory\n\n" + "\n".join(rows))


# --- (f) the tf.data service -------------------------------------------------------

def process_cpu_seconds(pid: int) -> float:
  """User + system CPU seconds of a process so far (/proc/PID/stat)."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LocalService:
  """A dispatcher and `workers` worker processes of tools/data_service.py."""

  def __init__(self, workers: int, log_dir: str):
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_service.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    self.procs, self.logs = [], []

    def start(*args):
      log = open(os.path.join(log_dir, f"service{workers}-{len(self.procs)}.log"), "w")
      self.logs.append(log)
      self.procs.append(subprocess.Popen([sys.executable, tool, "--host=127.0.0.1",
                                          *args], stdout=log, stderr=log, env=env))
      return log.name

    dispatcher_log = start("--role=dispatcher")
    self.address = self._wait(dispatcher_log, "dispatcher listening on ").split()[0]
    for _ in range(workers):
      start("--role=worker", f"--dispatcher_address={self.address}")
    self._wait(dispatcher_log, f"data service: {workers} worker(s) registered")
    self.workers = self.procs[1:]

  @staticmethod
  def _wait(path: str, marker: str, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
      with open(path) as f:
        for line in f:
          if marker in line:
            return line.split(marker, 1)[1]
      time.sleep(0.5)
    raise RuntimeError(f"no {marker!r} in {path} after {timeout}s")

  def worker_cpu(self) -> float:
    return sum(process_cpu_seconds(p.pid) for p in self.workers)

  def stop(self):
    for proc in self.procs:
      proc.terminate()
    for proc in self.procs:
      proc.wait(timeout=60)
    for log in self.logs:
      log.close()


def service_table(image_set: ImageSet, root: str, blocks: int, cores: int) -> str:
  """(f): blocks alternate among the local pipeline and the services with 1 and 2
  workers; each block a fresh iterator (for the service: a new job), WARMUP_STEPS
  untimed steps, then --service_steps timed."""
  train_step = build_train_step(image_set.charset)
  base = DataConfig(train_data=image_set.manifest, image_height=FLAGS.image_height,
                    batch_size=FLAGS.batch_size)
  buckets.bucket_widths(base, image_set.samples, modalities.get(base), base.batch_size)
  services = {n: LocalService(n, root) for n in (1, 2)}
  load_before = os.getloadavg()
  feeds = {0: (base, None)}
  feeds.update({n: (dataclasses.replace(base, data_service=svc.address), 0)
                for n, svc in services.items()})
  totals = {n: {"seconds": 0.0, "wait": 0.0, "examples": 0, "cpu": 0.0,
                "served": 0} for n in feeds}
  steps = FLAGS.service_steps
  try:
    for _ in range(blocks):
      for n, (cfg, start) in feeds.items():
        cpu = services[n].worker_cpu() if n else 0.0
        batches = iter(pipeline.make_dataset(cfg, image_set.charset, "train",
                                             samples=image_set.samples,
                                             start_position=start))
        for _ in range(WARMUP_STEPS):
          train_step(_without_position(next(batches)))
        highest = -1
        wait, begin = 0.0, time.time()
        for _ in range(steps):
          before = time.time()
          batch = next(batches)
          wait += time.time() - before
          if "position" in batch:
            highest = max(highest, int(tf.reduce_max(batch["position"])))
          out = train_step(_without_position(batch))
        float(out["loss_sum"])
        total = totals[n]
        total["seconds"] += time.time() - begin
        total["wait"] += wait
        total["examples"] += steps * FLAGS.batch_size
        if n:
          del batches   # ends the job, so its workers stop producing
          # Every block starts at position 0: the workers made at least
          # positions 0..highest for it (warm-up included). Read-ahead they made
          # but the block did not take counts in the CPU only, so this errs high.
          total["cpu"] += services[n].worker_cpu() - cpu
          total["served"] += highest + 1
  finally:
    for svc in services.values():
      svc.stop()
  load_after = os.getloadavg()
  rows = ["| feed | examples/s | vs local | input wait | worker CPU ms / example |",
          "|---|---:|---:|---:|---:|"]
  local_rate = totals[0]["examples"] / totals[0]["seconds"]
  for n, total in totals.items():
    rate = total["examples"] / total["seconds"]
    cpu = (f"{1000 * total['cpu'] / total['served']:.2f}" if n else "(in the trainer)")
    name = f"data service, {n} worker{'s' if n > 1 else ''}" if n else (
        "local pipeline (0 workers)")
    rows.append(f"| {name} "
                f"| {rate:.1f} | {rate / local_rate:.2f} | "
                f"{100 * total['wait'] / total['seconds']:.1f}% | {cpu} |")
    logging.info("service %d: %s", n, total)
  return (f"### (f) Demo-model training on captchas through the tf.data service\n\n"
          f"{cores} cores; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after; {blocks} blocks of {steps} steps per feed, "
          f"alternating\n\n" + "\n".join(rows))


def _without_position(batch):
  return {k: v for k, v in batch.items() if k != "position"}


def rss_table(root: str) -> str:
  base = make_set("captcha", os.path.join(root, "rss-base"),
                  100 if FLAGS.quick else FLAGS.rss_images, seed=8)
  large = copy_set(base, os.path.join(root, "large"), FLAGS.rss_scale)
  large_samples = sources.load_samples(DataConfig(train_data=large), "train")
  eval_samples = sources.ListedSource(base.samples.samples[:64])
  charset = os.path.join(root, "charset.txt")
  base.charset.save(charset)
  steps = len(large_samples) // FLAGS.batch_size   # one epoch of the large set
  rows = ["| pipeline | images | steps | peak RSS 1x (MiB) | peak RSS "
          f"{FLAGS.rss_scale}x (MiB) | {FLAGS.rss_scale}x / 1x |", "|---|---:|---:|---:|---:|---:|"]
  for source in FLAGS.rss_sources:
    peaks = []
    for label, samples, manifest in (("1x", base.samples, base.manifest),
                                     ("large", large_samples, large)):
      job = {"format": "tsv", "train": manifest, "eval": base.manifest,
             "charset": charset, "steps": steps, "batch_size": FLAGS.batch_size,
             "image_height": FLAGS.image_height,
             "workdir": os.path.join(root, f"rss-{source}-{label}")}
      if source == "tfrecord":
        folder = os.path.join(root, f"rss-shards-{label}")
        write_shards(samples, folder, "train", 16)
        write_shards(eval_samples, folder, "eval", 1)
        job.update(format="tfrecord", train=os.path.join(folder, "train-*"),
                   eval=os.path.join(folder, "eval-*"))
      peaks.append(peak_rss(job, job["workdir"] + ".log"))
      logging.info("(e) %s %s: peak RSS %.0f MiB", source, label, peaks[-1])
    rows.append(f"| {source} | {len(base.samples)} vs {len(large_samples)} | {steps} | "
                f"{peaks[0]:.0f} | {peaks[1]:.0f} | {peaks[1] / peaks[0]:.3f} |")
  return ("### (e) Peak RSS of training, same steps over the set and a "
          f"{FLAGS.rss_scale}x larger one\n\n" + "\n".join(rows))


if __name__ == "__main__":
  app.run(main)
