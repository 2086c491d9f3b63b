"""How well character positions (ctc_trainer.positions) land on the truth.

  # OCR: a run trained on the synthetic renderer, its eval set (which records each
  # glyph's box in boxes.jsonl):
  python tools/bench_positions.py --positions_task=synthetic --workdir=RUN \
      --positions_data=EVAL_FOLDER
  # Speech: a run trained on tools/make_digit_sequences.py output, its eval folder
  # (spans.jsonl records where each digit's clip lies):
  python tools/bench_positions.py --positions_task=digits --workdir=RUN \
      --positions_data=DIGITS/eval

Both transcribe the eval files through a ServingModule of the run's latest
checkpoint (the SavedModel's own code path: serving preprocessing, decoder, and
char_start/char_end in px of the original image or ms of the WAV), align each
prediction with its truth (report.align), and judge the correctly read characters:

  synthetic  centre inside its glyph's box (x0, x1) widened by one frame stride on
             each side (stride x the image's original/resized width); and, tighter,
             inside the box itself
  digits     span [start, end] inside the clip's [start - 100 ms, end + 100 ms];
             and centre inside the clip itself

Prints one line per decoder (--positions_decoders) with the counts and fractions;
docs/benchmarks.md records them. The issue's acceptance: >= 95% (synthetic), digit
spans within +-100 ms (digits).
"""

import dataclasses
import json
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ctc_trainer import config  # noqa: E402  (defines --workdir and the run's flags)

flags.DEFINE_enum("positions_task", "synthetic", ("synthetic", "digits"), "What the eval data is.")
flags.DEFINE_string("positions_data", None, "The eval folder: a synthetic set (manifest.tsv, "
                    "boxes.jsonl) or a make_digit_sequences split (manifest.tsv, "
                    "spans.jsonl).")
flags.DEFINE_list("positions_decoders", ["greedy", "beam"], "Decoders to measure.")
flags.DEFINE_float("positions_tolerance_ms", 100.0, "--positions_task=digits: how far a digit's span may "
                   "reach past its clip.")

SLACK_MS = 100.0


@dataclasses.dataclass
class Hits:
  truth_chars: int = 0   # characters in the truths
  matched: int = 0       # of them read correctly (an alignment match)
  inside: int = 0        # matched and placed within the criterion
  inside_tight: int = 0  # matched and placed within the tighter criterion

  def line(self, name: str) -> str:
    share = lambda n: f"{n / max(self.matched, 1):.4f}"
    return (f"{name}: {self.matched}/{self.truth_chars} characters read correctly; "
            f"placed right {self.inside} ({share(self.inside)}), tightly "
            f"{self.inside_tight} ({share(self.inside_tight)})")


def _read_manifest(folder: str) -> Dict[str, str]:
  with open(os.path.join(folder, "manifest.tsv"), encoding="utf-8") as f:
    return dict(line.rstrip("\n").split("\t") for line in f if line.strip())


def _transcriptions(workdir: str, folder: str, names: List[str],
                    decoders: Sequence[str]):
  """The latest checkpoint of workdir (restored once), served with each decoder, on
  folder's files -> (run, {decoder: transcriptions})."""
  from ctc_trainer import export, loop
  cfg = _run_config(workdir)
  run, _ = loop.restore_trained(cfg, "latest")
  paths = [os.path.join(folder, n) for n in names]
  results = {}
  for decoder in decoders:
    module = export.ServingModule(run.model, run.charset, cfg.data,
                                  cfg.loop.beam_width, top_k=1, decoder=decoder)
    results[decoder] = list(export.transcribe_files(export.serving_fn(module), paths,
                                                    32))
  return run, results


def _run_config(workdir: str):
  from absl.testing import flagsaver
  with flagsaver.flagsaver():
    flags.FLAGS(["bench", f"--flagfile={os.path.join(workdir, 'flags.cfg')}"])
    return config.from_flags(need_train=False)


def _matches(truth: str, prediction: str) -> List[Tuple[int, int]]:
  """(truth index, prediction index) of each correctly read character."""
  from ctc_trainer import report
  pairs, i, j = [], 0, 0
  for t, p in report.align(truth, prediction):
    if t is not None and t == p:
      pairs.append((i, j))
    i += t is not None
    j += p is not None
  return pairs


def _count_hits(names, truths, results, decoders, judge) -> Dict[str, Hits]:
  """Per decoder: each correctly read character of each line, judged by
  judge(name, truth index, its chars entry) -> (inside, inside_tight)."""
  found = {}
  for decoder in decoders:
    hits = found[decoder] = Hits()
    for name, result in zip(names, results[decoder]):
      if result.error is not None:
        raise RuntimeError(f"{name}: {result.error}")
      hits.truth_chars += len(truths[name])
      for i, j in _matches(truths[name], result.text):
        inside, inside_tight = judge(name, i, result.chars[j])
        hits.matched += 1
        hits.inside += inside
        hits.inside_tight += inside_tight
  return found


def glyph_box_hits(workdir: str, folder: str,
                   decoders: Sequence[str] = ("greedy",)) -> Dict[str, Hits]:
  """--positions_task=synthetic: decoded character centres against their glyph
  boxes, per decoder."""
  from PIL import Image
  from ctc_trainer.data import image, synthetic
  boxes = synthetic.glyph_boxes(folder)
  truths = _read_manifest(folder)
  names = sorted(truths)
  run, results = _transcriptions(workdir, folder, names, decoders)
  height, max_width = run.cfg.data.image_height, run.cfg.data.max_image_width
  slack = {}
  for name in names:
    with Image.open(os.path.join(folder, name)) as im:
      width, h = im.size
    resized = int(image.resized_width(h, width, height, max_width))
    slack[name] = run.model.stride * width / resized   # one frame, in original px
  def judge(name, i, char):
    centre = (char["start"] + char["end"]) / 2
    x0, x1 = boxes[name][i]
    return x0 - slack[name] <= centre <= x1 + slack[name], x0 <= centre <= x1
  return _count_hits(names, truths, results, decoders, judge)


def digit_span_hits(workdir: str, folder: str, decoders: Sequence[str] = ("greedy",),
                    tolerance_ms: float = SLACK_MS) -> Dict[str, Hits]:
  """--positions_task=digits: decoded digit spans against the clips' boundaries,
  per decoder."""
  with open(os.path.join(folder, "spans.jsonl"), encoding="utf-8") as f:
    spans = {row["name"]: row for row in map(json.loads, f)}
  truths = _read_manifest(folder)
  names = sorted(truths)
  _, results = _transcriptions(workdir, folder, names, decoders)
  def judge(name, i, char):
    start, end = spans[name]["spans_ms"][i]
    return (start - tolerance_ms <= char["start"] and char["end"] <= end + tolerance_ms,
            start <= (char["start"] + char["end"]) / 2 <= end)
  return _count_hits(names, truths, results, decoders, judge)


def main(argv):
  del argv
  fl = flags.FLAGS
  if not fl.workdir or not fl.positions_data:
    raise app.UsageError("give --workdir (a trained run) and --positions_data (its "
                         "eval folder)")
  start = time.time()
  if fl.positions_task == "synthetic":
    found = glyph_box_hits(fl.workdir, fl.positions_data, fl.positions_decoders)
  else:
    found = digit_span_hits(fl.workdir, fl.positions_data, fl.positions_decoders,
                            fl.positions_tolerance_ms)
  for decoder, hits in found.items():
    print(hits.line(f"{fl.positions_task} {decoder}"), flush=True)
  print(f"[{time.time() - start:.1f} s]", flush=True)
  return 0


if __name__ == "__main__":
  app.run(main)
