"""Serving speed of one trained run in every export format, on this machine's CPU.

  python tools/bench_serve.py --workdir=runs/demo --out_dir=/tmp/bench_serve \
      [--lines=64] [--rounds=3] [--parity_samples=0]

Exports the run's latest checkpoint as a SavedModel, TFLite (float and int8) and ONNX
with tools/export_savedmodel.py's code, each through its parity gate (the SavedModel
decodes greedily here, as the others do), then transcribes the first --lines eval
files, encoded bytes in and text out (preprocessing and decoding included):

  latency      one line per call (batch 1): median and 90th percentile, ms
  throughput   32 lines per call: lines per second (TFLite graphs have batch 1, so a
               call of 32 runs the model 32 times)

The formats take turns for --rounds rounds and the median round is printed, so a
change in the machine's load hits them alike. Also printed: the model file's size
(a SavedModel's whole folder) and the gate's CERs. Needs the `export` extra.
docs/export.md records runs.
"""

import dataclasses
import os
import statistics
import time

from absl import app, flags

from ctc_trainer import cli, config, export, host
from ctc_trainer.charset import Charset
from ctc_trainer.data import pipeline

flags.DEFINE_string("out_dir", None, "Where the exports are written (one folder per "
                    "format, replaced).")
flags.DEFINE_integer("lines", 64, "Eval files transcribed per measurement.",
                     lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Measurements per format, taken in turns.",
                     lower_bound=1)
flags.DEFINE_integer("parity_samples", 0, "The gates' eval samples; 0 = all.",
                     lower_bound=0)
FORMATS = ("saved_model", "tflite", "tflite_int8", "onnx")
BATCH = 32


def eval_blobs(cfg: config.Config, lines: int):
  """The first `lines` eval files' encoded bytes, as the eval pipeline reads them."""
  charset = Charset.from_file(os.path.join(cfg.workdir, "charset.txt"))
  blobs = []
  for batch in pipeline.make_dataset(cfg.data, charset, "eval", limit=lines,
                                     keep_encoded=True):
    blobs += list(batch["encoded"].numpy())
  return blobs


def size_mb(folder: str, fmt: str) -> float:
  if fmt == "saved_model":
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(folder) for name in names) / 2**20
  return os.path.getsize(os.path.join(folder, host.MODEL_FILES[fmt])) / 2**20


def measure(serve, blobs) -> dict:
  for blob in blobs[:3]:   # warm up: first calls allocate and trace
    export.transcribe(serve, [blob])
  latencies = []
  for blob in blobs:
    start = time.perf_counter()
    export.transcribe(serve, [blob])
    latencies.append(time.perf_counter() - start)
  start = time.perf_counter()
  for first in range(0, len(blobs), BATCH):
    export.transcribe(serve, blobs[first:first + BATCH])
  elapsed = time.perf_counter() - start
  latencies.sort()
  return {"median_ms": 1e3 * statistics.median(latencies),
          "p90_ms": 1e3 * latencies[int(0.9 * (len(latencies) - 1))],
          "lines_per_s": len(blobs) / elapsed}


@cli.exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  fl = flags.FLAGS
  for name in ("workdir", "out_dir"):
    if not fl[name].value:
      raise config.ConfigError(f"--{name} is required")
  cli.apply_workdir_flags()
  cfg = config.from_flags(need_train=False)
  # Every format decodes greedily: the SavedModel too, so that only the runtimes differ.
  cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, decoder=("greedy",)))
  serves, rows = {}, {}
  for fmt in FORMATS:
    folder = os.path.join(fl.out_dir, fmt)
    parity = export.export_checkpoint(cfg, folder, fmt=fmt,
                                      parity_samples=fl.parity_samples)
    print(parity.describe(), flush=True)
    if not parity.ok:
      return 1
    serves[fmt] = export.load_serving(folder)
    rows[fmt] = {"size_mb": size_mb(folder, fmt), "cer": parity.exported_cer,
                 "checkpoint_cer": parity.checkpoint_cer, "rounds": []}
  blobs = eval_blobs(cfg, fl.lines)
  for _ in range(fl.rounds):
    for fmt in FORMATS:
      rows[fmt]["rounds"].append(measure(serves[fmt], blobs))
  float_size = rows["tflite"]["size_mb"]
  print(f"\n{len(blobs)} eval lines of {cfg.workdir}, {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.1f}; median of {fl.rounds} rounds\n")
  print("| format | model size (MB) | size / TFLite float | latency, batch 1 "
        "(median / p90 ms) | throughput, batch 32 (lines/s) | CER (checkpoint's) |")
  print("|---|---|---|---|---|---|")
  for fmt, row in rows.items():
    mid = sorted(row["rounds"], key=lambda r: r["median_ms"])[len(row["rounds"]) // 2]
    best = statistics.median(r["lines_per_s"] for r in row["rounds"])
    print(f"| {export.FORMAT_NAMES[fmt]} | {row['size_mb']:.2f} | "
          f"{row['size_mb'] / float_size:.2f} | {mid['median_ms']:.1f} / "
          f"{mid['p90_ms']:.1f} | {best:.0f} | {row['cer']:.4f} "
          f"({row['checkpoint_cer']:.4f}) |")


if __name__ == "__main__":
  app.run(main)
