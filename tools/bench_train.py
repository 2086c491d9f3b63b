"""Training speed: ctc_trainer's train_step vs Keras model.fit, and model configs
against each other, side by side in one run; where a step's time goes (--parts).

  python tools/bench_train.py [--timed_steps=20] [--rounds=5] [--quick] [flags...]
  python tools/bench_train.py --variants=ctc_trainer \
      --configs=tools/baselines/base_ocr_2026-12-02.cfg,configs/base_ocr.cfg \
      --data_format=sidecar --train_data=../shared/data/gt4histcomment/bsb10234118
  python tools/bench_train.py --parts --configs=configs/base_ocr.cfg --data_format=...

The model, batch size, learning rate and clip norm are configs/demo_ocr.cfg's (read
first; flags given override it; the tool runs in the repository root, so relative
paths are taken from there). --configs names flagfiles to compare: each is read on
top of the demo's flags, then the command line's flags again, and makes its own rows
(its model and batch size; the data and the rest as given). Every variant trains a
freshly built copy of its CRNN (ctc_trainer.models.build) on the same data: the
first --num_batches batches of the training pipeline (augmentation off), decoded
once, padded to one width and held in memory, so that the input pipeline costs
nothing, every config gets the same batches, and no shape
changes between steps. The data is the demo's synthetic lines (a small set rendered
into a temporary folder), or with --data_format and --train_data given on the
command line, those files (e.g. real text lines; the charset from their labels).

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

--parts times, for each config, the pieces of one training step on the first
in-memory batch, each forward and backward as its own tf.function, in the same
rounds and turns: the conv stack as the model runs it (padding columns zeroed after
each block), without that masking, and without masking or batch norm; the RNN head
on fixed frames with and without the padding mask; the CTC loss on fixed logits with
dense labels (what steps.py uses) and with sparse labels; the whole train_step; and
the input pipeline alone (its examples/sec, --input_batches batches, decoding from
disk as training does).
"""

import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from absl.testing import flagsaver  # noqa: E402

from ctc_trainer import config, ctc, loop, models  # noqa: E402
from ctc_trainer.charset import Charset  # noqa: E402
from ctc_trainer.data import modalities, pipeline, sources, throughput  # noqa: E402

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
flags.DEFINE_list("configs", [], "Flagfiles to compare side by side (each on top of "
                  "the demo's flags, then the command line's); none: the demo's.")
flags.DEFINE_bool("parts", False, "Time the parts of a training step instead of the "
                  "variants (see the module docstring).")
flags.DEFINE_integer("input_batches", 30, "--parts: batches the input pipeline alone "
                     "is timed over.", lower_bound=2)

FLAGS = flags.FLAGS


# --- data ------------------------------------------------------------------------

def in_memory_batches(cfg: config.Config, charset: Charset, num: int):
  """-> (the first `num` batches of cfg.data's training pipeline without
  augmentation, padded to one width and label length and stacked along a new first
  axis; that width). Augmentation off: with it, configs that differ in nothing but
  the model would get different batches (width jitter and padding move lines into
  other length buckets), and the step is what is timed here."""
  samples = sources.load_samples(cfg.data, "train", charset)
  dataset = pipeline.make_dataset(dataclasses.replace(cfg.data, augment=False), charset,
                                  "train", samples=samples)
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


# --- parts of one step (--parts): each returns run(n), like the variants ------------

PARTS = ("conv (as the model: masked)", "conv, no masking", "conv, no masking, no BN",
         "RNN head, masked", "RNN head, no mask", "CTC, dense labels",
         "CTC, sparse labels", "train_step")


def part_runs(cfg, charset, stacked):
  """{part: run(n)}: forward and backward of each part of a CRNN training step on
  the first in-memory batch (inputs of the later parts held fixed as variables)."""
  keras.utils.set_random_seed(cfg.loop.seed)
  model = models.build(cfg.model, charset.num_classes,
                       (cfg.data.image_height, None, cfg.data.image_channels))
  if not hasattr(model, "features"):
    raise app.UsageError("--parts times the crnn model's parts only")
  batch = {k: stacked[k][0] for k in stacked}
  inputs, input_length = batch["inputs"], batch["input_length"]
  labels, label_length = batch["labels"], batch["label_length"]
  length = model.output_length(input_length)
  frames = tf.Variable(model.features(inputs, input_length, training=True))
  logits = tf.Variable(model(inputs, input_length=input_length, training=True))
  conv_vars = [v for block in model.blocks for layer in block
               for v in layer.trainable_variables]
  head_vars = [frames] + [v for layer in model.rnns + [model.classifier]
                          for v in layer.trainable_variables]

  def conv_unmasked(batch_norm):
    x = inputs
    for block in model.blocks:
      for layer in block:
        if batch_norm or not isinstance(layer, keras.layers.BatchNormalization):
          x = layer(x, training=True)
    return x

  def sparse_ctc():
    # Padding is id 0 and characters are ids >= 1, so from_dense keeps the labels.
    return tf.nn.ctc_loss(tf.sparse.from_dense(labels), logits, None, length,
                          logits_time_major=False, blank_index=0)

  pieces = {
      PARTS[0]: (lambda: model.features(inputs, input_length, training=True),
                 conv_vars),
      PARTS[1]: (lambda: model.features(inputs, None, training=True), conv_vars),
      PARTS[2]: (lambda: conv_unmasked(batch_norm=False), conv_vars),
      PARTS[3]: (lambda: model.sequence_head(frames, length, training=True), head_vars),
      PARTS[4]: (lambda: model.sequence_head(frames, None, training=True), head_vars),
      PARTS[5]: (lambda: ctc.ctc_loss(labels, label_length, logits, length)[0],
                 [logits]),
      PARTS[6]: (sparse_ctc, [logits]),
  }

  def timed(forward, variables):
    @tf.function
    def step():
      with tf.GradientTape() as tape:
        total = tf.reduce_sum(tf.cast(forward(), tf.float32))
      grads = tape.gradient(total, variables)
      return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])

    def run(n):
      for _ in range(n):
        out = step()
      float(out)
    return run

  runs = {name: timed(*piece) for name, piece in pieces.items()}
  runs[PARTS[7]] = ctc_trainer_variant(cfg, stacked)
  return runs


def input_rate(cfg, charset, num_batches):
  """Examples/sec of cfg's training input pipeline alone, decoding from disk."""
  samples = sources.load_samples(cfg.data, "train", charset)
  dataset = pipeline.make_dataset(cfg.data, charset, "train", samples=samples)
  stats = throughput.measure_input(dataset, num_batches,
                                   modalities.get(cfg.data).time_axis)
  return stats.examples_per_sec


def _reason(error: Exception) -> str:
  """The line of an error that says what failed, not the graph node's stack."""
  noise = ("Graph execution error", "Detected at node", "The op is created at")
  lines = [line.strip() for line in str(error).splitlines()]
  useful = [line for line in lines if line and not line.startswith(noise)]
  return (useful or [type(error).__name__])[0][:300]


# --- the run ---------------------------------------------------------------------

# The flags given on the command line (after the demo's flagfile), re-read on top of
# each --configs flagfile so that they win over it.
COMMAND_LINE = []


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


def config_from(flagfile, folder, real_data):
  """The benchmark's Config: the flags as parsed, or with a flagfile read on top
  and the command line again; the learning rate constant (model.fit gets no
  schedule); the demo's synthetic set in `folder` unless real data was given."""
  with flagsaver.flagsaver():
    if flagfile:
      FLAGS([sys.argv[0], f"--flagfile={flagfile}"] + COMMAND_LINE)
    FLAGS.workdir = folder
    cfg = config.from_flags(need_eval=False)
  cfg = dataclasses.replace(
      cfg, optim=dataclasses.replace(cfg.optim, lr_schedule="constant"))
  if not real_data:
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, data_format="synthetic", train_data=os.path.join(folder, "train"),
        synthetic_train_size=FLAGS.num_batches * cfg.data.batch_size))
  return cfg


def describe(cfg, charset, width):
  m = cfg.model
  stride = models.build(m, charset.num_classes, (cfg.data.image_height, None,
                                                 cfg.data.image_channels)).stride
  return (f"conv {list(m.conv_filters)} stride {stride} Bi{m.rnn_cell.upper()} {m.rnn_layers}x{m.rnn_units}, {charset.num_classes} "
          f"classes; batch {cfg.data.batch_size} of {cfg.data.image_height}x{width} images")


def main_in(folder, num_steps, rounds, warmup):
  """The benchmark, with `folder` as every variant's scratch workdir and data."""
  real_data = FLAGS["data_format"].present and FLAGS.data_format != "synthetic"
  named = [(re.sub(r"\.cfg$", "", os.path.basename(f)), f) for f in FLAGS.configs]
  configs = {name: config_from(f, folder, real_data)
             for name, f in named or [("flags", None)]}
  first = next(iter(configs.values()))
  if real_data:
    charset = Charset.from_texts(
        sources.load_samples(first.data, "train", None).label_texts())
  else:
    charset = Charset.from_texts([first.data.synthetic_alphabet])
  charset.save(os.path.join(folder, loop.CHARSET_FILE))
  print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} "
        f"CPUs, devices {[d.device_type for d in tf.config.list_logical_devices()]}; "
        f"{num_steps} steps x {rounds} rounds after {warmup} warmup steps", flush=True)

  runs, notes, batch = {}, {}, {}
  for name, cfg in configs.items():
    stacked, width = in_memory_batches(cfg, charset, FLAGS.num_batches)
    print(f"{name}: {describe(cfg, charset, width)}", flush=True)
    if FLAGS.parts:
      todo = {part: (lambda run=run: run)
              for part, run in part_runs(cfg, charset, stacked).items()}
    else:
      todo = {v: (lambda v=v: make_variant(v, cfg, charset, stacked))
              for v in FLAGS.variants}
    for variant, make in todo.items():
      key = (name, variant)
      batch[key] = cfg.data.batch_size
      start = time.perf_counter()
      try:
        runs[key] = make()
        runs[key](warmup)
      except (tf.errors.OpError, ValueError, TypeError, NotImplementedError) as e:
        runs.pop(key, None)
        notes[key] = f"failed: {type(e).__name__}: {_reason(e)}"
        print(f"{name} {variant}: {notes[key]}", flush=True)
        continue
      notes[key] = getattr(runs[key], "note", "")
      print(f"{name} {variant}: built and warmed up in "
            f"{time.perf_counter() - start:.1f}s {notes[key]}", flush=True)

  seconds = {key: [] for key in runs}
  for r in range(rounds):
    for key, run in runs.items():
      start = time.perf_counter()
      run(num_steps)
      seconds[key].append((time.perf_counter() - start) / num_steps)
    print(f"round {r + 1}: " + ", ".join(
        f"{' '.join(k)} {batch[k] / v[-1]:.0f}" for k, v in seconds.items())
        + " examples/sec", flush=True)
  best = {key: min(v) for key, v in seconds.items()}

  if FLAGS.parts:
    print("\n| config | part | ms per step | vs train_step |")
    print("|---|---|---:|---:|")
    for name, cfg in configs.items():
      step = best.get((name, PARTS[-1]))
      for part in PARTS:
        if (name, part) in best:
          ms = 1000 * best[(name, part)]
          share = f"{best[(name, part)] / step:.2f}" if step else "-"
          print(f"| {name} | {part} | {ms:.0f} | {share} |")
      rate = input_rate(cfg, charset, FLAGS.input_batches)
      print(f"| {name} | input pipeline alone ({rate:.0f} examples/s) | "
            f"{1000 * cfg.data.batch_size / rate:.0f} | "
            + (f"{cfg.data.batch_size / rate / step:.2f} |" if step else "- |"))
    return

  first_name = next(iter(configs))
  print("\n| config | variant | examples/sec | vs keras_fit | vs ctc_trainer | "
        f"vs {first_name} | note |")
  print("|---|---|---:|---:|---:|---:|---|")
  rate = {key: batch[key] / v for key, v in best.items()}
  for name in configs:
    for variant in FLAGS.variants:
      key = (name, variant)
      if key not in rate:
        print(f"| {name} | {variant} | - | - | - | - | {notes[key]} |")
        continue

      def ratio(other):
        return f"{rate[key] / rate[other]:.2f}x" if other in rate else "-"
      print(f"| {name} | {variant} | {rate[key]:.0f} | {ratio((name, 'keras_fit'))} | "
            f"{ratio((name, 'ctc_trainer'))} | {ratio((first_name, variant))} | "
            f"{notes[key]} |")


if __name__ == "__main__":
  # The demo's flagfile first, then the command line; its nested flagfile path is
  # relative to the repository root.
  os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  COMMAND_LINE = sys.argv[1:]
  app.run(main, argv=[sys.argv[0], f"--flagfile={DEMO_FLAGFILE}"] + sys.argv[1:])
