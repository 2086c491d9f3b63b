"""The evaluation report: what `evaluate --report=DIR` writes beside the metrics.

One eval pass (loop.evaluate, the pass that gives the printed metrics) also collects,
per sample, the truth, the primary decoder's string and log probability, and the
character edits counted by metrics.py; the worst lines keep their inputs. DIR then
holds:
  samples.tsv      one row per eval sample: key, truth, prediction, edits,
                   reference chars, confidence (exp of the line's log probability)
  chars.jsonl      per eval sample (same order): {"key", "unit", "chars": [{"char",
                   "confidence", "start", "end"}]}, the prediction's characters
                   placed by ctc_trainer.positions: start/end in px of the model's
                   input (the line resized to --image_height, as the report's
                   images show it) or ms of audio
  confusions.tsv   substitutions, insertions and deletions from a Levenshtein
                   alignment of each truth with its prediction, most frequent first
  characters.tsv   per truth character: occurrences, correct, substituted, deleted,
                   and how often it was inserted
  report.html      self-contained: the totals, the worst lines with their inputs
                   (images/NNNN.png, the Modality's preview) and differences
                   highlighted, predicted characters of confidence below
                   LOW_CONFIDENCE underlined, the top confusions and characters
The totals are the pass's own: the rows' summed edits over reference characters are
checked to give exactly the CER that evaluate reports. The character detail costs
one more forward pass per eval batch (the eval step returns strings, not logits):
its logits align the very strings the eval step decoded.
"""

import collections
import dataclasses
import heapq
import html
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from ctc_trainer import loop, metrics, positions
from ctc_trainer.config import Config
from ctc_trainer.data import modalities
from ctc_trainer.data.modality import Modality
from ctc_trainer.data import sources
from ctc_trainer.errors import ConfigError

SAMPLES_FILE = "samples.tsv"
CHARS_FILE = "chars.jsonl"
# Predicted characters below this confidence are underlined in report.html.
LOW_CONFIDENCE = 0.5
CONFUSIONS_FILE = "confusions.tsv"
CHARACTERS_FILE = "characters.tsv"
HTML_FILE = "report.html"
IMAGES_DIR = "images"
TOP_TABLE_ROWS = 40   # confusions and characters shown in the HTML (the TSVs hold all)

# An aligned pair: (truth char, predicted char); None on the side that has none
# (a deletion: (t, None); an insertion: (None, p)).
Pair = Tuple[Optional[str], Optional[str]]


@dataclasses.dataclass(frozen=True)
class ReportConfig:
  folder: str        # created if missing; must not be a file
  worst: int = 50    # how many of the worst lines report.html shows


@dataclasses.dataclass(frozen=True)
class Sample:
  """One eval sample as the primary decoder read it."""
  key: str
  truth: str
  prediction: str
  edits: int          # character edits (metrics.sample_char_counts)
  ref_chars: int
  confidence: float   # exp of the decoder's log probability of its string
  # The prediction's characters: (char, confidence, start, end), or None.
  chars: Optional[Tuple[Tuple[str, float, float, float], ...]] = None

  @property
  def cer(self) -> float:
    # As metrics does: with no reference characters the ratio is the edit count.
    return self.edits / self.ref_chars if self.ref_chars else float(self.edits)


# --- alignment -----------------------------------------------------------------------

def align(truth: str, prediction: str) -> List[Pair]:
  """A minimal Levenshtein alignment of two strings, by code point, with backtrace.

  -> pairs in order: (t, p) a match (t == p) or a substitution, (t, None) a deletion,
  (None, p) an insertion. Its non-matching pairs number exactly the edit distance.
  """
  t_codes = np.array([ord(c) for c in truth], np.int64)
  p_codes = np.array([ord(c) for c in prediction], np.int64)
  cols = np.arange(len(prediction) + 1)
  dist = np.empty((len(truth) + 1, len(prediction) + 1), np.int64)
  dist[0] = cols
  for i in range(1, len(truth) + 1):
    row = np.empty_like(cols)
    row[0] = i
    row[1:] = np.minimum(dist[i - 1, 1:] + 1,
                         dist[i - 1, :-1] + (p_codes != t_codes[i - 1]))
    # An insertion from the left: row[j] = min over k <= j of row[k] + (j - k).
    dist[i] = np.minimum.accumulate(row - cols) + cols
  pairs = []
  i, j = len(truth), len(prediction)
  while i or j:
    if i and j and dist[i, j] == dist[i - 1, j - 1] + (truth[i - 1] != prediction[j - 1]):
      pairs.append((truth[i - 1], prediction[j - 1]))
      i, j = i - 1, j - 1
    elif i and dist[i, j] == dist[i - 1, j] + 1:
      pairs.append((truth[i - 1], None))
      i -= 1
    else:
      pairs.append((None, prediction[j - 1]))
      j -= 1
  return pairs[::-1]


@dataclasses.dataclass
class Confusions:
  """Counts over many alignments: substitutions (t, p), deletions t, insertions p,
  and per truth character its occurrences and correct reads."""
  substitutions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  deletions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  insertions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  occurrences: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  correct: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, pairs: Sequence[Pair]) -> None:
    for t, p in pairs:
      if t is not None:
        self.occurrences[t] += 1
      if t is None:
        self.insertions[p] += 1
      elif p is None:
        self.deletions[t] += 1
      elif t == p:
        self.correct[t] += 1
      else:
        self.substitutions[(t, p)] += 1

  @property
  def edits(self) -> int:
    return (sum(self.substitutions.values()) + sum(self.deletions.values())
            + sum(self.insertions.values()))

  def table(self) -> List[Tuple[str, str, str, int]]:
    """-> (kind, truth, predicted, count) rows, most frequent first ('' for the side
    an insertion or deletion lacks)."""
    rows = [("substitution", t, p, n) for (t, p), n in self.substitutions.items()]
    rows += [("deletion", t, "", n) for t, n in self.deletions.items()]
    rows += [("insertion", "", p, n) for p, n in self.insertions.items()]
    return sorted(rows, key=lambda r: (-r[3], r[0], r[1], r[2]))

  def characters(self) -> List[Tuple[str, int, int, int, int, int]]:
    """-> (char, in truth, correct, substituted, deleted, inserted) per character,
    most errors first."""
    substituted = collections.Counter()
    for (t, _), n in self.substitutions.items():
      substituted[t] += n
    chars = set(self.occurrences) | set(self.insertions)
    rows = [(c, self.occurrences[c], self.correct[c], substituted[c], self.deletions[c],
             self.insertions[c]) for c in chars]
    return sorted(rows, key=lambda r: (-(r[3] + r[4] + r[5]), -r[1], r[0]))


# --- collecting the rows during the eval pass ------------------------------------------

class _Collector:
  """loop.evaluate's on_batch: keeps every sample's row and the inputs of the `worst`
  worst lines seen so far (most edits, then highest CER, then the earliest)."""

  def __init__(self, decoder: str, modality: Modality, worst: int, detail=None):
    """detail: None, or char_detail_fn's function, to place each predicted char."""
    self.decoder, self.modality, self.worst = decoder, modality, worst
    self.detail = detail
    self.rows: List[Sample] = []
    self._heap: List[Tuple[Tuple[int, float, int], np.ndarray]] = []

  def add(self, batch: Mapping[str, tf.Tensor], decoded: Mapping[str, tf.Tensor]) -> None:
    predictions = decoded[self.decoder]
    counts = metrics.sample_char_counts(predictions, batch["text"])
    texts = lambda t: [s.decode("utf-8") for s in t.numpy()]
    # Keys are paths, whose bytes need not be UTF-8; texts are (the charset's).
    keys = [k.decode("utf-8", "replace") for k in batch["key"].numpy()]
    confidence = np.exp(decoded[f"{self.decoder}/log_prob"].numpy())
    columns = zip(keys, texts(batch["text"]), texts(predictions),
                  counts["char_edits"].numpy(), counts["ref_chars"].numpy(), confidence)
    inputs = None   # read from the device once per batch, and only if needed
    chars = self._chars(batch, predictions)
    for i, (key, truth, prediction, edits, ref_chars, conf) in enumerate(columns):
      sample = Sample(key, truth, prediction, int(edits), int(ref_chars), float(conf),
                      None if chars is None else chars[i])
      rank = (sample.edits, sample.cer, -len(self.rows))
      self.rows.append(sample)
      if sample.edits and self._is_kept(rank):
        inputs = batch["inputs"].numpy() if inputs is None else inputs
        entry = (rank, self._crop(inputs[i], int(batch["input_length"][i])))
        if len(self._heap) < self.worst:
          heapq.heappush(self._heap, entry)
        else:
          heapq.heapreplace(self._heap, entry)

  def _chars(self, batch, predictions):
    """Per row, its prediction's (char, confidence, start, end) tuples, or None."""
    if self.detail is None:
      return None
    confidence, start, end = self.detail(batch["inputs"], batch["input_length"],
                                         predictions)
    symbols = tf.strings.unicode_split(predictions, "UTF-8").to_list()
    return [tuple((c.decode("utf-8"), float(p), float(a), float(b))
                  for c, p, a, b in zip(*row))
            for row in zip(symbols, confidence.to_list(), start.to_list(),
                           end.to_list())]

  def _is_kept(self, rank: Tuple[int, float, int]) -> bool:
    """Whether a line of this rank is among the worst so far."""
    return len(self._heap) < self.worst or (self.worst > 0 and rank > self._heap[0][0])

  def _crop(self, example: np.ndarray, length: int) -> np.ndarray:
    """One example's inputs without the batch's padding along time."""
    index = [slice(None)] * example.ndim
    index[self.modality.time_axis - 1] = slice(0, max(int(length), 1))
    return example[tuple(index)]

  def worst_lines(self) -> List[Tuple[Sample, np.ndarray]]:
    """-> (sample, its unpadded inputs), worst first."""
    ranked = sorted(self._heap, key=lambda entry: entry[0], reverse=True)
    return [(self.rows[-rank[2]], inputs) for rank, inputs in ranked]


def char_detail_fn(run: loop.Run, modality: Modality):
  """(inputs, input_length, predicted strings [B]) -> (confidence, start, end),
  float32 ragged [B, (L)]: each predicted character placed over the run's logits
  (positions.py), in modality.position_unit of the model's inputs. A tf.function
  with an input signature: traced once."""
  model, charset = run.model, run.charset
  spec = tf.TensorSpec([None, *modality.example_shape], tf.float32)

  @tf.function(input_signature=[spec, tf.TensorSpec([None], tf.int32),
                                tf.TensorSpec([None], tf.string)], autograph=False)
  def detail(inputs, input_length, predictions):
    logits = model(inputs, input_length=input_length, training=False)
    spans = positions.char_spans(logits, model.output_length(input_length),
                                 charset.encode(predictions))
    start, end = positions.to_input_units(spans, model.stride, input_length,
                                          modality.step_size)
    return spans.confidence, start, end

  return detail


# --- writing --------------------------------------------------------------------------

def _tsv_field(value) -> str:
  text = str(value)
  return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
          .replace("\r", "\\r"))


def _write_tsv(path: str, header: Sequence[str], rows) -> None:
  with open(path, "w", encoding="utf-8", newline="") as f:
    for row in [header, *rows]:
      f.write("\t".join(_tsv_field(v) for v in row) + "\n")


def _png(modality: Modality, inputs: np.ndarray) -> bytes:
  """Unpadded inputs of one example -> the Modality's preview as PNG bytes."""
  image = modality.preview(tf.constant(inputs[None], tf.float32))[0]
  return tf.io.encode_png(tf.image.convert_image_dtype(image, tf.uint8,
                                                       saturate=True)).numpy()


def _shown(char: str) -> str:
  """A character as the HTML shows it: spaces and controls made visible."""
  names = {" ": "␣", "\t": "⇥", "\n": "⏎"}
  return html.escape(names.get(char, char))


def _highlighted(pairs: Sequence[Pair], chars=None) -> Tuple[str, str]:
  """An alignment -> (truth, prediction) as HTML, differing characters marked, and
  predicted characters below LOW_CONFIDENCE underlined (chars: the prediction's
  (char, confidence, start, end) tuples, or None)."""
  truth, prediction = [], []
  predicted = 0

  def low(text):
    """text of the next predicted character, marked if its confidence is low."""
    nonlocal predicted
    predicted += 1
    if not chars or predicted > len(chars) or chars[predicted - 1][1] >= LOW_CONFIDENCE:
      return text
    return (f'<span class="low" title="confidence {chars[predicted - 1][1]:.2f}">'
            f'{text}</span>')

  for t, p in pairs:
    if t is not None and p is not None and t == p:
      truth.append(html.escape(t))
      prediction.append(low(html.escape(p)))
      continue
    kind = "sub" if t is not None and p is not None else ("del" if p is None else "ins")
    if t is not None:
      truth.append(f'<span class="{kind}">{_shown(t)}</span>')
    if p is not None:
      prediction.append(low(f'<span class="{kind}">{_shown(p)}</span>'))
  return "".join(truth), "".join(prediction)


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.text { font-family: monospace; font-size: 1.1em; white-space: pre; }
.sub { background: #fde68a; }
.del { background: #fecaca; text-decoration: line-through; }
.ins { background: #bfdbfe; }
.key { color: #666; font-size: 0.85em; }
.low { text-decoration: underline dotted #b91c1c; text-decoration-thickness: 2px; }
img { max-width: 900px; image-rendering: pixelated; border: 1px solid #ddd; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  head = "".join(f"<th>{h}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def _totals_html(results: Mapping[str, float], rows: Sequence[Sample],
                 context: Mapping[str, str]) -> str:
  edits = sum(r.edits for r in rows)
  ref_chars = sum(r.ref_chars for r in rows)
  lines = [(html.escape(k), html.escape(str(v))) for k, v in context.items()]
  lines += [("CER", f"{results['cer']:.6f} ({edits} edits / {ref_chars} characters)"),
            ("WER", f"{results['wer']:.6f}"),
            ("sequence accuracy", f"{results['seq_accuracy']:.6f} "
                                  f"({sum(r.truth == r.prediction for r in rows)} of "
                                  f"{len(rows)} exact)"),
            ("loss", f"{results['loss']:.4f}")]
  others = [k[:-len("/cer")] for k in results if k.endswith("/cer")][1:]
  lines += [(html.escape(f"{name} (CER, WER, seq. accuracy)"),
             f"{results[f'{name}/cer']:.6f}, {results[f'{name}/wer']:.6f}, "
             f"{results[f'{name}/seq_accuracy']:.6f}") for name in others]
  return _table(["", "value"], lines)


def _worst_html(worst: Sequence[Tuple[Sample, str]], any_errors: bool) -> str:
  if not worst:
    return "<p>None shown (--report_worst=0).</p>" if any_errors else (
        "<p>No line has an error.</p>")
  rows = []
  for rank, (sample, image) in enumerate(worst, 1):
    truth, prediction = _highlighted(align(sample.truth, sample.prediction),
                                     sample.chars)
    rows.append((
        str(rank),
        f'<img src="{html.escape(image)}" alt="{html.escape(sample.key)}"><br>'
        f'<span class="key">{html.escape(sample.key)}</span>',
        f'<div class="text">{truth}</div><div class="text">{prediction}</div>',
        str(sample.edits), f"{sample.cer:.3f}", f"{sample.confidence:.3g}"))
  return _table(["#", "input and key", "truth / prediction", "edits", "CER",
                 "confidence"], rows)


def _html(results: Mapping[str, float], rows: Sequence[Sample],
          worst: Sequence[Tuple[Sample, str]], confusions: Confusions,
          context: Mapping[str, str]) -> str:
  shown = lambda c: f'<span class="text">{_shown(c)}</span>' if c else "∅"
  top = [(k, shown(t), shown(p), str(n))
         for k, t, p, n in confusions.table()[:TOP_TABLE_ROWS]]
  chars = [(shown(c), *map(str, counts))
           for c, *counts in confusions.characters()[:TOP_TABLE_ROWS]]
  legend = ('<p><span class="sub">substituted</span> <span class="del">deleted</span> '
            '<span class="ins">inserted</span> <span class="low">confidence below '
            f'{LOW_CONFIDENCE:g}</span></p>')
  return "\n".join([
      '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
      "<title>ctc_trainer evaluation report</title>",
      f"<style>{_STYLE}</style></head><body>",
      "<h1>Evaluation report</h1>", _totals_html(results, rows, context),
      f"<h2>The {len(worst)} worst lines (most edits, then highest CER)</h2>", legend,
      _worst_html(worst, any(r.edits for r in rows)),
      f"<h2>Most frequent confusions (all in {CONFUSIONS_FILE})</h2>",
      _table(["kind", "truth", "predicted", "count"], top),
      f"<h2>Characters with the most errors (all in {CHARACTERS_FILE})</h2>",
      _table(["char", "in truth", "correct", "substituted", "deleted", "inserted"],
             chars),
      "</body></html>", ""])


def prepare_folder(folder: str) -> str:
  """Creates the report folder if missing -> its path. A file there is a ConfigError."""
  folder = os.path.expanduser(folder)
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise ConfigError(f"--report={folder} is a file, not a folder: name a folder to "
                      "write the report into (it is created if missing)")
  os.makedirs(os.path.join(folder, IMAGES_DIR), exist_ok=True)
  return folder


def write_report(folder: str, rows: Sequence[Sample],
                 worst: Sequence[Tuple[Sample, np.ndarray]], results: Mapping[str, float],
                 modality: Modality, context: Mapping[str, str]) -> str:
  """Writes the report's files into `folder` (prepare_folder's) -> report.html's path.

  worst: (sample, its unpadded inputs) worst first; results: loop.evaluate's metrics
  of the pass the rows come from; context: name -> value lines for the page's head.
  """
  _write_tsv(os.path.join(folder, SAMPLES_FILE),
             ["key", "truth", "prediction", "edits", "ref_chars", "confidence"],
             [(r.key, r.truth, r.prediction, r.edits, r.ref_chars, f"{r.confidence:.6g}")
              for r in rows])
  if any(r.chars is not None for r in rows):
    with open(os.path.join(folder, CHARS_FILE), "w", encoding="utf-8") as f:
      for r in rows:
        f.write(json.dumps({"key": r.key, "unit": modality.position_unit, "chars": [
            {"char": c, "confidence": round(p, 4), "start": round(a, 1),
             "end": round(b, 1)} for c, p, a, b in r.chars or ()]},
            ensure_ascii=False) + "\n")
  confusions = Confusions()
  for r in rows:
    confusions.add(align(r.truth, r.prediction))
  _write_tsv(os.path.join(folder, CONFUSIONS_FILE),
             ["kind", "truth", "predicted", "count"], confusions.table())
  _write_tsv(os.path.join(folder, CHARACTERS_FILE),
             ["char", "in_truth", "correct", "substituted", "deleted", "inserted"],
             confusions.characters())
  images = []
  for rank, (sample, inputs) in enumerate(worst, 1):
    name = f"{IMAGES_DIR}/{rank:04d}.png"
    with open(os.path.join(folder, name), "wb") as f:
      f.write(_png(modality, inputs))
    images.append((sample, name))
  path = os.path.join(folder, HTML_FILE)
  with open(path, "w", encoding="utf-8") as f:
    f.write(_html(results, rows, images, confusions, context))
  return path


def _check_totals(rows: Sequence[Sample], results: Mapping[str, float]) -> None:
  """The rows must give exactly the pass's CER and sequence accuracy: they are the
  same strings scored by the same code, so a difference is a bug here."""
  sums = {"char_edits": sum(r.edits for r in rows),
          "ref_chars": sum(r.ref_chars for r in rows),
          "seq_correct": sum(r.truth == r.prediction for r in rows),
          "num_seqs": len(rows), "word_edits": 0.0, "ref_words": 0.0}
  totals = metrics.results(sums)
  for name in ("cer", "seq_accuracy", "num_seqs"):
    if totals[name] != results[name]:
      raise RuntimeError(f"the report's {name} {totals[name]!r} differs from the "
                         f"evaluation's {results[name]!r}")


def evaluate_with_report(cfg: Config, which: str, report: ReportConfig,
                         ) -> Tuple[Dict[str, float], str]:
  """Evaluates checkpoint `which` of cfg.workdir as loop.evaluate_checkpoint does and
  writes the report of that same pass into report.folder -> (the metrics, with
  "step"; report.html's path)."""
  folder = prepare_folder(report.folder)
  if cfg.loop.strategy != "default":
    # Eval step's strings are the first replica's; the report needs every sample.
    # One device gives the same metrics (a mirrored step equals a one-device step).
    logging.info("--report: evaluating on one device instead of --strategy=%s",
                 cfg.loop.strategy)
    cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, strategy="default"))
  modality = modalities.get(cfg.data)
  # loop.evaluate_checkpoint's steps, with the run at hand for the character detail.
  run, step = loop.restore_trained(cfg, which)
  collector = _Collector(cfg.loop.decoder[0], modality, report.worst,
                         detail=char_detail_fn(run, modality))
  results, _, _ = loop.evaluate(run, sources.load_samples(cfg.data, "eval", run.charset),
                                on_batch=collector.add)
  results["step"] = step
  _check_totals(collector.rows, results)
  context = {"workdir": cfg.workdir, "checkpoint": f"{which} (step {results['step']})",
             "eval data": cfg.data.eval_data, "decoder": cfg.loop.decoder[0]}
  path = write_report(folder, collector.rows, collector.worst_lines(), results,
                      modality, context)
  return results, path
