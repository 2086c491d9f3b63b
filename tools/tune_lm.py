"""Grid-search --lm_alpha, --lm_beta and --blank_penalty of the lm decoder on a
run's eval set, and write the best setting into a flagfile.

  python tools/tune_lm.py --workdir=runs/demo --lm_path=lm.arpa \\
      [--alphas=0,0.25,0.5,0.75,1,1.5,2] [--betas=-1,0,1,2,3] [--blank_penalties=0] \\
      [--metric=cer] [--eval_data=dev.tsv] [--checkpoint=best] \\
      [--lm_flagfile=WORKDIR/lm.cfg]

The model runs over the eval set once (through the eval step, as evaluate does) and
its logits are kept; for each blank penalty they are pruned once
(search.HostSearch.reduce), and each (alpha, beta) pair decodes them again with
--beam_width, scored by --metric (cer or wer, the same sums as evaluate). Tune on
data you do not report on: give a held-out --eval_data. A line per setting shows
progress; the output flagfile holds --decoder=lm, --lm_path, --lm_alpha, --lm_beta,
--blank_penalty and --beam_width, for
`python -m ctc_trainer.evaluate --workdir=... --flagfile=WORKDIR/lm.cfg`.
"""

import dataclasses
import itertools
import os
import sys
import time

import tensorflow as tf
from absl import app, flags

from ctc_trainer import cli, config, decoders, loop, metrics
from ctc_trainer.data import sources
from ctc_trainer.errors import ConfigError
from ctc_trainer.steps import HOST_LENGTHS, HOST_LOGITS, HOST_TEXT

flags.DEFINE_list("alphas", ["0", "0.25", "0.5", "0.75", "1", "1.5", "2"],
                  "--lm_alpha values to try.")
flags.DEFINE_list("betas", ["-1", "0", "1", "2", "3"], "--lm_beta values to try.")
flags.DEFINE_list("blank_penalties", ["0"], "--blank_penalty values to try (e.g. "
                  "0,0.5,1,1.5,2 when the model deletes much on the held-out lines).")
flags.DEFINE_enum("metric", "cer", ("cer", "wer"), "What the best pair minimizes.")
flags.DEFINE_string("lm_flagfile", None, "The flagfile to write; default WORKDIR/lm.cfg.")

FLAGS = flags.FLAGS


def eval_logits(run: loop.Run):
  """[(logits [B, T, C], logit_length [B], references string [B])] (NumPy, but the
  references) of the run's eval set, each batch through eval_step's host outputs."""
  cfg = run.cfg
  samples = sources.load_samples(cfg.data, "eval", run.charset)
  batches = []
  for index, batch in enumerate(loop.make_iterator(run, "eval", samples)):
    if index == cfg.loop.eval_max_batches > 0:
      break
    _, out = run.step_fns.eval_step(batch)
    batches.append((out[HOST_LOGITS].numpy(), out[HOST_LENGTHS].numpy(), out[HOST_TEXT]))
    print(f"eval batch {index + 1}: {sum(len(n) for _, n, _ in batches)} sequences",
          file=sys.stderr, flush=True)
  if not batches:
    raise ConfigError(f"the eval set {cfg.data.eval_data} yielded no batch")
  return batches


def settings(run: loop.Run, alpha: float, beta: float, penalty: float):
  return dataclasses.replace(run.cfg.decoding, lm_alpha=alpha, lm_beta=beta,
                             blank_penalty=penalty, beam_width=run.cfg.loop.beam_width,
                             top_paths=1)


def reduce(run: loop.Run, batches, penalty: float):
  """[(reduced problem, references)]: each batch pruned with the blank penalty."""
  search = decoders.get("lm").build(run.charset, settings(run, 0.0, 0.0, penalty))
  return [(search.reduce(logits, lengths), references)
          for logits, lengths, references in batches]


def score(run: loop.Run, batches, alpha: float, beta: float) -> dict:
  """Metrics of the lm decoder at (alpha, beta) on reduce()'s problems."""
  # The model is cached; the penalty is already in the reduced problems.
  search = decoders.get("lm").build(run.charset, settings(run, alpha, beta, 0.0))
  sums = {}
  for reduced, references in batches:
    paths, _ = search.decode_reduced(reduced)
    texts = tf.constant([run.charset.decode_py(p) for p in paths[0]], tf.string)
    sums = metrics.add_sums(sums, metrics.batch_sums(texts, references))
  return metrics.results(sums)


@cli.exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdir:
    raise ConfigError("--workdir is required")
  try:
    alphas = [float(a) for a in FLAGS.alphas]
    betas = [float(b) for b in FLAGS.betas]
    penalties = [float(p) for p in FLAGS.blank_penalties]
  except ValueError:
    raise ConfigError("--alphas, --betas and --blank_penalties must be "
                      "comma-separated numbers") from None
  if not (alphas and betas and penalties):
    raise ConfigError("--alphas, --betas and --blank_penalties each need a value")
  cli.apply_workdir_flags()
  cfg = config.from_flags(need_train=False)
  cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, decoder=("lm",)))
  config.check_host_decoders(("lm",), cfg.decoding)
  run, step = loop.restore_trained(cfg, FLAGS.checkpoint)
  batches = eval_logits(run)
  grid = list(itertools.product(penalties, alphas, betas))
  start, results, reduced_for = time.time(), [], None
  for i, (penalty, alpha, beta) in enumerate(grid, 1):
    if penalty != reduced_for:   # the grid is in penalty order: one set at a time
      reduced_for, reduced = penalty, reduce(run, batches, penalty)
    found = score(run, reduced, alpha, beta)
    results.append((found[FLAGS.metric], alpha, beta, penalty, found))
    elapsed = time.time() - start
    print(f"[{i}/{len(grid)}] alpha {alpha:g} beta {beta:g} blank_penalty {penalty:g}: "
          f"cer {found['cer']:.4f} wer {found['wer']:.4f} "
          f"(ETA {elapsed / i * (len(grid) - i):.0f} s)", flush=True)
  # The first of equals wins: the grid's order (penalties, then alphas, then betas).
  best, alpha, beta, penalty, found = min(results, key=lambda r: r[0])
  output = FLAGS.lm_flagfile or os.path.join(cfg.workdir, "lm.cfg")
  with open(output, "w", encoding="utf-8") as f:
    f.write(f"# tools/tune_lm.py on {cfg.data.eval_data} (step {step}, "
            f"{int(found['num_seqs'])} sequences): {FLAGS.metric} {best:.4f}, "
            f"cer {found['cer']:.4f}, wer {found['wer']:.4f}\n"
            f"--decoder=lm\n--lm_path={os.path.abspath(cfg.decoding.lm_path)}\n"
            f"--lm_alpha={alpha:g}\n--lm_beta={beta:g}\n--blank_penalty={penalty:g}\n"
            f"--beam_width={cfg.loop.beam_width}\n")
  print(f"best: alpha {alpha:g} beta {beta:g} blank_penalty {penalty:g} "
        f"({FLAGS.metric} {best:.4f}); wrote {output}")


if __name__ == "__main__":
  app.run(main)
