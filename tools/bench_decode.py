"""Decoding speed and accuracy per decoder on the same logits: pruned beam search vs
plain beam search, and the host decoders (lm, lexicon, pattern).

  python tools/bench_decode.py [--workdir=runs/demo] [--beam_width=100] \
      [--num_sequences=500] [--quick]
  python tools/bench_decode.py --workdir=RUN --checkpoint=best --nosynthetic \
      --beam_width=10 --lm_path=lm.arpa --lm_alpha=0.5 --lm_beta=1 \
      [--lexicon=words.txt] [--pattern='[0-9]+( [0-9]+)*']

Two cases, each decoded side by side by the decoders greedy, beam (plain beam:
ctc.beam_search_decode, i.e. tf.nn.ctc_beam_search_decoder) and beam_pruned
(decoders.beam_pruned.pruned_beam_search_decode) at the same beam width:
  synthetic  "trained-like" logits (trained_like_logits), 80 classes x 64 frames:
             the issue's case.
  model      with --workdir: the logits of the run's latest checkpoint on the first
             --num_sequences lines of its eval set.
With --lm_path, --lexicon or --pattern (the model case only: they need its
charset), the host decoders lm, lexicon and pattern at the same beam width join the
table; each is timed on the logits in NumPy, its frame pruning included.
Per decoder: sequences/sec and ms/sequence (best of --repeats passes over all
sequences, the decoders taking turns so that machine noise hits them alike), speedup
over the plain beam, top-1 agreement with the plain beam (ids, per sequence), CER and
WER against the references. Prints a markdown table for docs/benchmarks.md.
"""

import dataclasses
import os
import string
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from ctc_trainer import cli, config, ctc, decoders, loop, metrics, options  # noqa: E402
from ctc_trainer.charset import Charset  # noqa: E402
from ctc_trainer.data import pipeline, sources  # noqa: E402
from ctc_trainer.decoders import beam_pruned  # noqa: E402

flags.DEFINE_integer("num_sequences", 500, "Sequences per case (the eval set's first "
                     "N for the model case).", lower_bound=1)
flags.DEFINE_integer("synthetic_classes", 80,
                     "Synthetic case: classes, blank included.", lower_bound=3)
flags.DEFINE_integer("synthetic_frames", 64, "Synthetic case: frames per sequence.",
                     lower_bound=8)
flags.DEFINE_float("blank_threshold", 0.999, "Pruning: frames whose blank probability "
                   "is at least this are dropped (a run of them between two frames "
                   "that could repeat a class is shortened to one frame instead).")
flags.DEFINE_float("class_threshold", 1e-4, "Pruning: classes below this probability "
                   "on every kept frame of a sequence are dropped.")
flags.DEFINE_integer("repeats", 3, "Timed passes per decoder; the best one counts.",
                     lower_bound=1)
flags.DEFINE_bool("quick", False, "Smoke run: 64 sequences, one timed pass.")
flags.DEFINE_bool("synthetic", True, "Run the synthetic case.")
# --beam_width, --eval_batch_size and --workdir are ctc_trainer's own flags
# (config.py). Here the beam width defaults to the 100, not to the run's eval
# beam width; --eval_batch_size (default 64) batches the synthetic case, the model case
# uses the run's.
flags.FLAGS.set_default("beam_width", 100)

FLAGS = flags.FLAGS


# --- the logits of each case ------------------------------------------------------

def trained_like_logits(rng: np.random.Generator, num: int, frames: int,
                        num_classes: int):
  """Logits a trained CTC recognizer might give, with their true labels.

  -> (logits float32 [num, frames, num_classes], lengths int32 [num], labels: a list
  of id lists). Shaped after the demo model's eval logits: strings of 5 to 20
  characters (a sixth repeat their previous one), each peaking on one frame, where
  the runner-up has log probability about -6 to -14 (1 in 20 nearly tied with the
  character: the beam and greedy decoders then have something to disagree on); a
  third spill onto the next frame, which then sits between blank and character; on
  the other frames the blank is sure (best other class about -10 to -20).
  """
  logits = rng.normal(0.0, 2.0, (num, frames, num_classes)).astype(np.float32)
  logits[..., 0] = rng.uniform(14.0, 26.0, (num, frames))
  lengths = np.full(num, frames, np.int32)
  labels = []
  for row in range(num):
    size = int(rng.integers(5, min(20, (frames - 1) // 3) + 1))
    ids = [int(rng.integers(1, num_classes))]
    while len(ids) < size:
      repeat = rng.random() < 1 / 6
      ids.append(ids[-1] if repeat else int(rng.integers(1, num_classes)))
    labels.append(ids)
    slot = frames / (size + 1)
    for k, c in enumerate(ids):
      t = int((k + 1) * slot + rng.uniform(-0.25, 0.25) * slot)
      peak = rng.uniform(16.0, 26.0)
      logits[row, t, c] = peak
      logits[row, t, 0] = peak - rng.uniform(4.0, 14.0)
      tied = rng.random() < 0.05
      partner = 1 + (7 * c) % (num_classes - 1)  # a fixed confusable class
      logits[row, t, partner] = peak - rng.uniform(0.0, 3.0 if tied else 14.0)
      if rng.random() < 1 / 3 and t + 1 < frames:
        logits[row, t + 1, c] = logits[row, t + 1, 0] - rng.uniform(-2.0, 7.0)
  return logits, lengths, labels


def synthetic_case(num: int, batch_size: int, frames: int, num_classes: int):
  """-> (charset, [(logits, lengths, texts)] batches) of trained_like_logits."""
  symbols = (string.digits + string.ascii_letters + string.punctuation)
  if num_classes - 1 > len(symbols):
    raise app.UsageError(f"--synthetic_classes must be at most {len(symbols) + 1}")
  charset = Charset(symbols[:num_classes - 1])
  logits, lengths, labels = trained_like_logits(
      np.random.default_rng(0), num, frames, num_classes)
  texts = np.array([charset.decode_py(ids) for ids in labels], object)
  batches = [(tf.constant(logits[i:i + batch_size]),
              tf.constant(lengths[i:i + batch_size]),
              tf.constant(list(texts[i:i + batch_size])))
             for i in range(0, num, batch_size)]
  return charset, batches


def restore_run():
  """-> (loop.Run with --workdir's latest checkpoint restored, its step)."""
  return loop.restore_trained(config.from_flags(need_train=False), FLAGS.checkpoint)


def eval_logits(run: loop.Run, num: int):
  """-> [(logits float32 [B, T, C], lengths int32 [B], texts string [B])] of the
  model on the first `num` sequences of its eval set, in eval batches."""
  cfg = run.cfg
  samples = sources.load_samples(cfg.data, "eval", run.charset)
  model = run.model
  spec = pipeline.batch_signature(cfg.data.image_channels, cfg.data.image_height,
                                  pipeline.input_shape(cfg.data))

  @tf.function(input_signature=[spec["inputs"], spec["input_length"]])
  def forward(inputs, input_length):
    logits = model(inputs, input_length=input_length, training=False)
    return tf.cast(logits, tf.float32), model.output_length(input_length)

  batches = []
  for batch in pipeline.make_dataset(cfg.data, run.charset, "eval",
                                     samples=samples):
    logits, lengths = forward(batch["inputs"], batch["input_length"])
    left = num - sum(int(b[1].shape[0]) for b in batches)
    batches.append((logits[:left], lengths[:left], batch["text"][:left]))
    if left <= int(lengths.shape[0]):
      break
  return batches


# --- timing and scoring -----------------------------------------------------------

def make_decoders(num_classes: int, beam_width: int):
  """name -> tf.function(logits [B, T, C], lengths [B]) -> top-1 ids ragged [B, (L)]."""
  signature = [tf.TensorSpec([None, None, num_classes], tf.float32),
               tf.TensorSpec([None], tf.int32)]
  fns = {
      "greedy": lambda x, n: ctc.greedy_decode(x, n),
      f"plain beam {beam_width}": lambda x, n: ctc.beam_search_decode(
          x, n, beam_width)[0][0],
      f"pruned beam {beam_width}": lambda x, n: beam_pruned.pruned_beam_search_decode(
          x, n, beam_width, blank_threshold=FLAGS.blank_threshold,
          class_threshold=FLAGS.class_threshold)[0][0],
      f"pruned beam {beam_width}, every row searched": (
          lambda x, n: beam_pruned.pruned_beam_search_decode(
              x, n, beam_width, blank_threshold=FLAGS.blank_threshold,
              class_threshold=FLAGS.class_threshold, greedy_if_sure=False)[0][0]),
  }
  return {name: tf.function(fn, input_signature=signature) for name, fn in fns.items()}


def make_host_decoders(charset, beam_width: int):
  """name -> host decoder (numpy logits [B, T, C], lengths [B]) -> top-1 id lists,
  for each of lm, lexicon and pattern whose flag is set."""
  settings = dataclasses.replace(options.from_flags(decoders.DecoderConfig, FLAGS),
                                 beam_width=beam_width, top_paths=1)
  wanted = [name for name, value in (("lm", settings.lm_path),
                                     ("lexicon", settings.lexicon),
                                     ("pattern", settings.pattern)) if value]
  config.check_host_decoders(tuple(wanted), settings)
  built = {name: decoders.get(name).build(charset, settings) for name in wanted}
  return {f"{name} {beam_width}": (lambda fn: lambda x, n: fn(x, n)[0][0])(fn)
          for name, fn in built.items()}


def run_case(name, charset, batches, beam_width, repeats, host=False):
  """Times and scores every decoder on the batches (with host, the host decoders
  too); returns the table rows."""
  fns = make_decoders(charset.num_classes, beam_width)
  host_fns = make_host_decoders(charset, beam_width) if host else {}
  plain = list(fns)[1]
  numpy_batches = [(logits.numpy(), lengths.numpy()) for logits, lengths, _ in batches]
  for fn in fns.values():  # trace outside the timed passes
    fn(*batches[0][:2])
  for fn in host_fns.values():
    fn(*numpy_batches[0])
  num = sum(int(tf.shape(b[1])[0]) for b in batches)
  best = {d: float("inf") for d in (*fns, *host_fns)}
  outputs = {}
  for _ in range(repeats):
    for d, fn in fns.items():
      start = time.perf_counter()
      out = [fn(logits, lengths) for logits, lengths, _ in batches]
      # The calls return computed results; turning them into lists is off the clock.
      best[d] = min(best[d], time.perf_counter() - start)
      outputs[d] = [o.to_list() for o in out]
    for d, fn in host_fns.items():
      start = time.perf_counter()
      outputs[d] = [fn(logits, lengths) for logits, lengths in numpy_batches]
      best[d] = min(best[d], time.perf_counter() - start)

  ids = {d: [row for out in outs for row in out] for d, outs in outputs.items()}
  rows = []
  for d in best:
    sums = {}
    for out, (_, _, texts) in zip(outputs[d], batches):
      decoded = tf.constant([charset.decode_py(row) for row in out], tf.string)
      sums = metrics.add_sums(sums, metrics.batch_sums(decoded, texts))
    same = sum(a == b for a, b in zip(ids[d], ids[plain]))
    scores = metrics.results(sums)
    rows.append({
        "case": name, "decoder": d, "seq_per_sec": num / best[d],
        "ms_per_seq": 1e3 * best[d] / num, "speedup": best[plain] / best[d],
        "agreement": same / num, "disagree": num - same,
        "cer": scores["cer"], "wer": scores["wer"],
    })
  shrink = _shrinkage(batches)
  print(f"{name}: {num} sequences, {charset.num_classes} classes, mean {shrink[0]:.1f} "
        f"valid frames; pruned to {shrink[1]:.1f} frames ({100 * shrink[2]:.0f}%) and "
        f"{shrink[3]:.1f} classes ({100 * shrink[4]:.0f}%) per sequence; "
        f"{100 * shrink[5]:.0f}% sure enough to skip the search", flush=True)
  return rows


def _shrinkage(batches):
  """(mean valid frames, mean kept frames, kept fraction, mean kept classes, kept
  fraction, fraction of sure sequences) per sequence."""
  frames = kept = classes = sure = 0.0
  for logits, lengths, _ in batches:
    p = beam_pruned.prune(logits, lengths, FLAGS.blank_threshold, FLAGS.class_threshold)
    frames += float(tf.reduce_sum(lengths))
    kept += float(tf.reduce_sum(p.length))
    classes += float(tf.reduce_sum(p.num_classes))
    best_path = tf.reduce_sum(tf.where(
        tf.sequence_mask(lengths, tf.shape(logits)[1]),
        tf.reduce_max(tf.nn.log_softmax(logits), axis=2), 0.0), axis=1)
    sure += float(np.sum(best_path.numpy() > np.log(beam_pruned.SURE_PATH_PROB)))
  num = sum(int(tf.shape(b[1])[0]) for b in batches)
  c = int(batches[0][0].shape[2])
  return (frames / num, kept / num, kept / frames, classes / num, classes / num / c,
          sure / num)


def print_table(rows):
  print("\n| case | decoder | seq/s | ms/seq | speedup vs plain | top-1 = plain "
        "| CER | WER |")
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['case']} | {r['decoder']} | {r['seq_per_sec']:.0f} | "
          f"{r['ms_per_seq']:.3f} | {r['speedup']:.2f}x | "
          f"{100 * r['agreement']:.2f}% ({r['disagree']} differ) | {r['cer']:.4f} | "
          f"{r['wer']:.4f} |")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  num = 64 if FLAGS.quick else FLAGS.num_sequences
  repeats = 1 if FLAGS.quick else FLAGS.repeats
  beam_width = FLAGS.beam_width  # read before the run's flags.cfg replaces it
  print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; beam width {beam_width}, "
        f"blank_threshold {FLAGS.blank_threshold}, class_threshold "
        f"{FLAGS.class_threshold}, best of {repeats}", flush=True)
  rows = []
  if FLAGS.synthetic:
    charset, batches = synthetic_case(num, FLAGS.eval_batch_size,
                                      FLAGS.synthetic_frames, FLAGS.synthetic_classes)
    rows += run_case(f"synthetic {FLAGS.synthetic_classes} classes x "
                     f"{FLAGS.synthetic_frames} frames", charset, batches, beam_width,
                     repeats)
  if FLAGS.workdir:
    cli.apply_workdir_flags()
    run, step = restore_run()
    rows += run_case(f"{os.path.basename(os.path.normpath(FLAGS.workdir))} "
                     f"step {step} eval", run.charset, eval_logits(run, num),
                     beam_width, repeats, host=True)
  print_table(rows)


if __name__ == "__main__":
  app.run(cli.exit_on_user_error(main))
