"""Transcribe image (or WAV) files with an export of any format or a run's checkpoint.

  python -m ctc_trainer.predict --model_path=runs/demo/export images/ line.png
  python -m ctc_trainer.predict --model_path=runs/demo/export_tflite images/
  python -m ctc_trainer.predict --workdir=runs/demo --checkpoint=best --manifest=m.tsv
  python -m ctc_trainer.predict --model_path=runs/demo/export --json images/

--model_path is an export folder (or its .tflite/.onnx file); its format is detected.
TFLite and ONNX exports decode greedily and give one path (top_k of 1).
--decoder=lm|lexicon|pattern (with --lm_path, --lexicon or --pattern) decodes a
SavedModel's (or the checkpoint's) logits on the host instead of the exported
decoder; see docs/export.md.

Arguments are image files and folders (their .png/.jpg/.jpeg/.bmp/.gif files, sorted);
--manifest adds the first column of each line of a TSV (a training manifest works).
Prints one `path<TAB>text<TAB>confidence` line per image, or with --json one JSON
object per line with the top-k beams too, and each character of the text with its
confidence and span ({char, confidence, start, end}; "unit": px of the original image,
or ms of audio). An image that cannot be read or decoded is
reported on stderr and skipped; the exit status is then 1. See docs/export.md.
"""

import dataclasses
import json
import os
import sys
import time

from absl import app, flags

from ctc_trainer import cli, config, decoders, export, loop, options
from ctc_trainer.errors import ConfigError

flags.DEFINE_string("model_path", None, "An export written by tools/export_savedmodel.py, "
                    "of any --format: its folder, or its .tflite/.onnx file. Or give "
                    "--workdir instead.")
flags.DEFINE_string("saved_model", None, "Deprecated: the same as --model_path.")
flags.DEFINE_string("manifest", None, "A text file listing images: the first "
                    "tab-separated column of each non-empty line; relative paths "
                    "resolve against the file's folder.")
flags.DEFINE_integer("predict_batch_size", 32, "Images per model call.", lower_bound=1)


def _serving_fn(fl):
  """The bytes-in function of --model_path, or of --workdir's checkpoint; with a
  host decoder first in --decoder, that decoder on their logits."""
  model = fl.model_path or fl.saved_model
  if decoders.get(fl.decoder[0]).host:
    return _host_serving_fn(fl, model)
  if model:
    return export.load_serving(os.path.expanduser(model))
  cfg = config.from_flags(need_train=False, need_eval=False)
  run, _ = loop.restore_trained(cfg, fl.checkpoint)
  return export.serving_fn(export.ServingModule.from_run(run))


def _host_serving_fn(fl, model):
  name = fl.decoder[0]
  decoding = options.from_flags(decoders.DecoderConfig, fl)
  if model:
    config.check_host_decoders((name,), decoding)
    logits_fn, charset = export.load_logits(os.path.expanduser(model))
  else:
    cfg = config.from_flags(need_train=False, need_eval=False)
    run, _ = loop.restore_trained(cfg, fl.checkpoint)
    logits_fn, charset = export.run_logits(run)
  top_k = min(export.DEFAULT_TOP_K, decoding.beam_width)
  decode = decoders.get(name).build(charset, dataclasses.replace(decoding,
                                                                 top_paths=top_k))
  return export.host_decoding_fn(logits_fn, charset, decode)


@cli.exit_on_user_error
def main(argv):
  fl = flags.FLAGS
  if bool(fl.model_path or fl.saved_model) == bool(fl.workdir):
    raise ConfigError("give exactly one of --model_path and --workdir")
  if fl.workdir:
    cli.apply_workdir_flags()
  paths = export.image_paths(argv[1:], fl.manifest)
  if not paths:
    raise app.UsageError("no images given: pass files, folders or --manifest")
  serve = _serving_fn(fl)
  start, failed = time.time(), 0
  for result in export.transcribe_files(serve, paths, fl.predict_batch_size,
                                        progress=True):
    if result.error is not None:
      failed += 1
      print(f"error: {result.path}: {result.error} (skipped)", file=sys.stderr,
            flush=True)
    elif fl.json:
      print(json.dumps(result.as_dict(), ensure_ascii=False), flush=True)
    else:
      print(f"{result.path}\t{result.text}\t{result.confidence:.4g}", flush=True)
  elapsed = max(time.time() - start, 1e-9)
  print(f"transcribed {len(paths) - failed} of {len(paths)} images "
        f"({len(paths) / elapsed:.1f}/s); {failed} failed", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  app.run(main)
