"""Training speed: ctc_trainer's train_step vs Keras model.fit, side by side in one run.

  python tools/bench_train.py [--timed_steps=20] [--rounds=5] [--quick] [flags...]

The model, batch size, learning rate and clip norm are configs/demo_ocr.cfg's (read
first; flags given override it; the tool runs in the repository root, so relative
paths are taken from there). Every variant trains a
freshly built copy of the same CRNN (ctc_trainer.models.build) on the same data: the
first --num_batches batches of the demo's synthetic training pipeline (a small set
rendered into a temporary folder), decoded once, padded to one width and held in
memory, so that the input pipeline costs nothing and no shape changes between steps.

Variants (--variants picks some):
  ctc_trainer        loop.build_run's train_step (steps.make_step_fns) as a run with these
                     flags builds it: float32, no XLA.
  keras_fit          model.compile(Adam(global_clipnorm), keras.losses.CTC()) and
                     model.fit: the usual Keras way (CTC over all frames, no lengths),
                     jit_compile left to Keras ("auto").
  keras_fit_xla      the same with jit_compile=True.
  ctc_trainer_xla    --jit_compile: forward and backward pass under XLA.
  ctc_trainer_bf16   --precision=mixed_bfloat16 (logits and CTC stay float32).
  ctc_trainer_fp16   --precision=mixed_float16 (with loss scaling); on CPU float16
                     math is emulated, so this is for comparison with a GPU run.
Each variant is warmed up (tracing, XLA compiles), then timed for --timed_steps steps
once per round; the variants take turns within a round so that machine noise hits
them alike, and each variant's fastest round counts (the least disturbed one).
Prints a markdown table for docs/benchmarks.md.
"""

import dataclasses
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from ctc_trainer import config, loop, models  # noqa: E402
from ctc_trainer.charset import Charset  # noqa: E402
from ctc_trainer.data import pipeline, sources  # noqa: E402

DEMO_FLAGFILE = "configs/demo_ocr.cfg"
VARIANTS = ("ctc_trainer", "keras_fit", "keras_fit_xla", "ctc_trainer_xla",
            "ctc_trainer_bf16", "ctc_trainer_fp16")
PRECISIONS = {"ctc_trainer_bf16": "mixed_bfloat16", "ctc_trainer_fp16": "mixed_float16"}

flags.DEFINE_integer("timed_steps", 20, "Timed steps per variant and round.",
                     lower_bound=1)
flags.DEFINE_integer("rounds", 5, "Timed rounds; the fastest counts.", lower_bound=1)
flags.DEFINE_integer("warmup", 5, "Untimed steps per variant before timing.",
                     lower_bound=1)
flags.DEFINE_integer("num_batches", 16, "Distinct in-memory batches, cycled.",
                     lower_bound=1)
flags.DEFINE_list("variants", list(VARIANTS), f"Which of {', '.join(VARIANTS)}.")
flags.DEFINE_bool("quick", False, "Smoke run: 3 timed steps, 1 round, 2 warmup steps.")

FLAGS = flags.FLAGS


# --- data ------------------------------------------------------------------------

def in_memory_batches(cfg: config.Config, charset: Charset, num: int):
  """-> (the first `num` batches of cfg.data's training pipeline, padded to one width
  and label length and stacked along a new first axis; that width)."""
  samples = sources.load_samples(cfg.data, "train", charset)
  dataset = pipeline.make_dataset(cfg.data, charset, "train", samples=samples)
  batches = list(dataset.take(num))
  width = max(int(b["inputs"].shape[2]) for b in batches)
  label_len = max(int(b["labels"].shape[1]) for b in batches)

  def pad(b):
    extra_width = width - b["inputs"].shape[2]
    extra_labels = label_len - b["labels"].shape[1]
    return dict(
        b, inputs=tf.pad(b["inputs"], [[0, 0], [0, 0], [0, extra_width], [0, 0]]),
        labels=tf.pad(b["labels"], [[0, 0], [0, extra_labels]]))

  padded = [pad(b) for b in batches]
  stacked = {k: tf.stack([b[k] for b in padded]) for k in padded[0]}
  return stacked, width


def repeat_batches(stacked, keys=None):
  """An endless tf.data.Dataset of the stacked batches (whole dicts, or a tuple of
  the given keys), prefetched as ctc_trainer's pipeline is."""
  elements = stacked if keys is None else tuple(stacked[k] for k in keys)
  return tf.data.Dataset.from_tensor_slices(elements).repeat().prefetch(
      tf.data.AUTOTUNE)


# --- variants: each returns run(n), which trains n steps and waits for them --------

def ctc_trainer_variant(cfg, stacked, jit_compile=False, precision="float32"):
  """The run as loop.build_run builds it for these flags, stepping train_step."""
  cfg = dataclasses.replace(cfg, loop=dataclasses.replace(
      cfg.loop, jit_compile=jit_compile, precision=precision))
  parts = loop.build_run(cfg)
  iterator = iter(repeat_batches(stacked))

  def run(n):
    for _ in range(n):
      out = parts.step_fns.train_step(next(iterator))
    float(out["loss_sum"])
  return run


def keras_fit_variant(cfg, charset, stacked, jit_compile="auto"):
  """The same CRNN compiled with keras.losses.CTC and trained with model.fit."""
  keras.mixed_precision.set_dtype_policy("float32")
  keras.utils.set_random_seed(cfg.loop.seed)
  model = models.build(cfg.model, charset.num_classes,
                       (cfg.data.image_height, None, cfg.data.image_channels))
  model.compile(
      optimizer=keras.optimizers.Adam(cfg.optim.learning_rate,
                                      global_clipnorm=cfg.optim.clip_norm),
      loss=keras.losses.CTC(), jit_compile=jit_compile)
  dataset = repeat_batches(stacked, keys=("inputs", "labels"))

  def run(n):
    model.fit(dataset, epochs=1, steps_per_epoch=n, verbose=0, shuffle=False)
  run.note = f"jit_compile={model.jit_compile}"
  return run


def make_variant(name, cfg, charset, stacked):
  if name == "keras_fit":
    return keras_fit_variant(cfg, charset, stacked)
  if name == "keras_fit_xla":
    return keras_fit_variant(cfg, charset, stacked, jit_compile=True)
  return ctc_trainer_variant(cfg, stacked, jit_compile=name == "ctc_trainer_xla",
                             precision=PRECISIONS.get(name, "float32"))


def _reason(error: Exception) -> str:
  """The line of an error that says what failed, not the graph node's stack."""
  noise = ("Graph execution error", "Detected at node", "The op is created at")
  lines = [line.strip() for line in str(error).splitlines()]
  useful = [line for line in lines if line and not line.startswith(noise)]
  return (useful or [type(error).__name__])[0][:300]


# --- the run ---------------------------------------------------------------------

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  unknown = set(FLAGS.variants) - set(VARIANTS)
  if unknown:
    raise app.UsageError(f"unknown --variants {sorted(unknown)}; known: {VARIANTS}")
  num_steps, rounds, warmup = ((3, 1, 2) if FLAGS.quick else
                               (FLAGS.timed_steps, FLAGS.rounds, FLAGS.warmup))
  folder = tempfile.mkdtemp(prefix="bench_train-")
  try:
    main_in(folder, num_steps, rounds, warmup)
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def main_in(folder, num_steps, rounds, warmup):
  """The benchmark, with `folder` as every variant's scratch workdir and data."""
  FLAGS.workdir = folder
  cfg = config.from_flags()
  charset = Charset.from_texts([cfg.data.synthetic_alphabet])
  # Constant learning rate: model.fit gets no schedule either.
  cfg = dataclasses.replace(
      cfg, optim=dataclasses.replace(cfg.optim, lr_schedule="constant"),
      data=dataclasses.replace(
          cfg.data, data_format="synthetic", train_data=os.path.join(folder, "train"),
          synthetic_train_size=FLAGS.num_batches * cfg.data.batch_size))
  charset.save(os.path.join(folder, loop.CHARSET_FILE))
  stacked, width = in_memory_batches(cfg, charset, FLAGS.num_batches)
  batch = cfg.data.batch_size
  print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} "
        f"CPUs, devices {[d.device_type for d in tf.config.list_logical_devices()]}; "
        f"CRNN conv {list(cfg.model.conv_filters)} BiLSTM {cfg.model.rnn_layers}x"
        f"{cfg.model.rnn_units}, {charset.num_classes} classes; batch {batch} of "
        f"{cfg.data.image_height}x{width} images; {num_steps} steps x {rounds} "
        f"rounds after {warmup} warmup steps", flush=True)

  runs, notes = {}, {}
  for name in FLAGS.variants:
    start = time.perf_counter()
    try:
      runs[name] = make_variant(name, cfg, charset, stacked)
      runs[name](warmup)
    except (tf.errors.OpError, ValueError, TypeError, NotImplementedError) as e:
      runs.pop(name, None)
      notes[name] = f"failed: {type(e).__name__}: {_reason(e)}"
      print(f"{name}: {notes[name]}", flush=True)
      continue
    notes[name] = getattr(runs[name], "note", "")
    print(f"{name}: built and warmed up in {time.perf_counter() - start:.1f}s "
          f"{notes[name]}", flush=True)

  rates = {name: [] for name in runs}
  for r in range(rounds):
    for name, run in runs.items():
      start = time.perf_counter()
      run(num_steps)
      rates[name].append(batch * num_steps / (time.perf_counter() - start))
    print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items())
          + " examples/sec", flush=True)

  best = {name: max(v) for name, v in rates.items()}
  baseline = best.get("keras_fit")
  print("\n| variant | examples/sec | vs keras_fit | vs ctc_trainer | note |")
  print("|---|---:|---:|---:|---|")
  for name in FLAGS.variants:
    if name not in best:
      print(f"| {name} | - | - | - | {notes[name]} |")
      continue
    vs_keras = f"{best[name] / baseline:.2f}x" if baseline else "-"
    vs_ours = (f"{best[name] / best['ctc_trainer']:.2f}x" if "ctc_trainer" in best
               else "-")
    print(f"| {name} | {best[name]:.0f} | {vs_keras} | {vs_ours} | {notes[name]} |")


if __name__ == "__main__":
  # The demo's flagfile first, then the command line; its nested flagfile path is
  # relative to the repository root.
  os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  app.run(main, argv=[sys.argv[0], f"--flagfile={DEMO_FLAGFILE}"] + sys.argv[1:])
