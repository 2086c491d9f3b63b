"""Export a trained run for serving, behind a parity gate.

  python tools/export_savedmodel.py --workdir=runs/demo --export_dir=runs/demo/export \
      [--format=saved_model|tflite|tflite_int8|onnx] [--checkpoint=best] [--top_k=5] \
      [--parity_samples=N] [--int8_cer_tolerance=0.001]

The run's WORKDIR/flags.cfg supplies every setting (image size, charset, decoder).
--format=saved_model (the default) writes a SavedModel that needs only TensorFlow;
tflite, tflite_int8 and onnx write the model alone, run by ctc_trainer.host (NumPy,
no TensorFlow) with the `export` extra installed. Before export_dir is written, the
export is loaded back and run on the eval set (or its first --parity_samples); if
its CER differs from the checkpoint's on the same samples by more than 1e-6 (int8:
--int8_cer_tolerance), or any transcription differs (float formats), the export is
discarded and the exit status is 1.
See docs/export.md.
"""

import sys

from absl import app, flags

from ctc_trainer import cli, config, convert, export
from ctc_trainer.errors import ConfigError

flags.DEFINE_string("export_dir", None, "Where to write the SavedModel (replaced if it "
                    "holds an older export).")
flags.DEFINE_integer("top_k", None, "Paths returned per image as top_k_texts / "
                     "top_k_scores, at most what the primary --decoder gives "
                     "(--beam_width, or 1 for greedy); default "
                     f"{export.DEFAULT_TOP_K} or that, if smaller.", lower_bound=1)
flags.DEFINE_integer("parity_samples", 0, "Check parity on the first N eval samples; "
                     "0 = the whole eval set.", lower_bound=0)
flags.DEFINE_enum("format", "saved_model", list(convert.FORMATS), "What to write: a "
                  "SavedModel, a TFLite model (float or int8-quantized) or an ONNX model.")
flags.DEFINE_float("int8_cer_tolerance", export.INT8_CER_TOLERANCE, "--format="
                   "tflite_int8: the largest |checkpoint CER - int8 CER| the gate "
                   "passes, as a fraction (0.001 = 0.1 percentage point).", lower_bound=0)
flags.DEFINE_integer("calibration_examples", 100, "--format=tflite_int8: training "
                     "inputs that calibrate the quantization ranges.", lower_bound=1)
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
      parity_samples=fl.parity_samples, input_scale=fl.parity_test_perturb,
      fmt=fl.format, int8_cer_tolerance=fl.int8_cer_tolerance,
      calibration_examples=fl.calibration_examples)
  print(parity.describe())
  if not parity.ok:
    print(f"error: the {export.FORMAT_NAMES[fl.format]} export does not transcribe as "
          f"the checkpoint does, so it was discarded; {fl.export_dir} is unchanged",
          file=sys.stderr)
    return 1
  print(f"exported {fl.checkpoint} checkpoint of {cfg.workdir} as {fl.format} to "
        f"{fl.export_dir}")


if __name__ == "__main__":
  app.run(main)
