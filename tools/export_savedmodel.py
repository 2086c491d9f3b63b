"""Export a trained run as a SavedModel that needs only TensorFlow, behind a parity gate.

  python tools/export_savedmodel.py --workdir=runs/demo --export_dir=runs/demo/export \
      [--checkpoint=best] [--top_k=5] [--parity_samples=N]

The run's WORKDIR/flags.cfg supplies every setting (image size, charset, decoder).
Before export_dir is written, the SavedModel is loaded back and run on the eval set
(or its first --parity_samples); if its CER differs from the checkpoint's on the same
samples by more than 1e-6, or any transcription differs, the export is discarded and
the exit status is 1.
See docs/export.md.
"""

import sys

from absl import app, flags

from ctc_trainer import cli, config, export
from ctc_trainer.errors import ConfigError

flags.DEFINE_string("export_dir", None, "Where to write the SavedModel (replaced if it "
                    "holds an older export).")
flags.DEFINE_integer("top_k", None, "Paths returned per image as top_k_texts / "
                     "top_k_scores, at most what the primary --decoder gives "
                     "(--beam_width, or 1 for greedy); default "
                     f"{export.DEFAULT_TOP_K} or that, if smaller.", lower_bound=1)
flags.DEFINE_integer("parity_samples", 0, "Check parity on the first N eval samples; "
                     "0 = the whole eval set.", lower_bound=0)
flags.DEFINE_float("parity_test_perturb", 1.0, "Testing only: scales the exported "
                   "preprocessing's output, so that the parity gate must fail.")


@cli.exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in ("workdir", "export_dir"):
    if not flags.FLAGS[name].value:
      raise ConfigError(f"--{name} is required")
  cli.apply_workdir_flags()
  cfg = config.from_flags(need_train=False)
  fl = flags.FLAGS
  parity = export.export_checkpoint(
      cfg, fl.export_dir, which=fl.checkpoint, top_k=fl.top_k,
      parity_samples=fl.parity_samples, input_scale=fl.parity_test_perturb)
  print(parity.describe())
  if not parity.ok:
    print(f"error: the SavedModel does not transcribe as the checkpoint does, so it "
          f"was discarded; {fl.export_dir} is unchanged", file=sys.stderr)
    return 1
  print(f"exported {fl.checkpoint} checkpoint of {cfg.workdir} to {fl.export_dir}")


if __name__ == "__main__":
  app.run(main)
