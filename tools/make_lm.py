"""Write an n-gram language model (ARPA) from training labels or any text, in pure
Python: for --decoder=lm (ctc_trainer/decoders/lm.py).

  python tools/make_lm.py --workdir=runs/demo --unit=char --order=6 --output=lm.arpa
  python tools/make_lm.py --text=corpus.txt --unit=word --order=3 --output=lm.arpa
  python tools/make_lm.py --label_manifest=train.tsv --unit=word --output=lm.arpa

The text: --workdir's training labels (its flags.cfg says where they are; any
--data_format), a --label_manifest (the second tab-separated column of each line), or a
--text file (one sentence per line). Lines are stripped; empty ones are skipped. Like
the training labels they are Unicode-normalized by --text_normalization (NFC by
default), so the model's tokens are the symbols the network emits.

--unit=char: the tokens are a line's characters, a space written "<sp>" (lm.py's
SPACE_TOKEN, in the vocabulary even when no line has a space, so that lm.py knows
the model for one of characters). --unit=word: the whitespace-separated words.

The model is interpolated Kneser-Ney (Chen and Goodman, 1998) with one absolute
discount per order, D = n1 / (n1 + 2 n2) from the counts of n-grams seen once and
twice; lower orders count distinct left contexts, except for n-grams that begin
with <s>; the unigrams are interpolated with a uniform distribution over the
vocabulary and <unk>. Written in ARPA's backoff form: each seen n-gram's
probability is its interpolated one, each context's backoff weight the mass its
discounts freed, so P(w | h) sums to 1 over the vocabulary for every context h.
KenLM loads it (tests/test_lm.py checks that, and the sums).
"""

import collections
import math
import os
import sys
import time
from typing import Dict, Iterable, List, Tuple

from absl import app, flags

from ctc_trainer import cli, config
from ctc_trainer.charset import normalize_text
from ctc_trainer.data import sources
from ctc_trainer.decoders.lm import SPACE_TOKEN
from ctc_trainer.errors import ConfigError

flags.DEFINE_string("text", None, "A text file, one sentence per line.")
flags.DEFINE_string("label_manifest", None, "A manifest: path<TAB>label lines; the labels.")
flags.DEFINE_enum("unit", "char", ("char", "word"), "Tokens: characters or words.")
flags.DEFINE_integer("order", 5, "The n of the n-grams (KenLM reads 2 and up).",
                     lower_bound=2)
flags.DEFINE_string("output", None, "Where to write the ARPA file.")

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_PROGRESS_EVERY_S = 5.0
Gram = Tuple[str, ...]


def tokens(line: str, unit: str) -> List[str]:
  if unit == "word":
    return line.split()
  return [SPACE_TOKEN if c == " " else c for c in line]


def count_ngrams(sentences: Iterable[List[str]], order: int
                 ) -> List[Dict[Gram, int]]:
  """counts[n - 1][gram]: how often each n-gram occurs, sentences padded with <s>
  and </s>."""
  counts = [collections.Counter() for _ in range(order)]
  for words in sentences:
    padded = [BOS] + words + [EOS]
    for n in range(1, order + 1):
      grams = counts[n - 1]
      for i in range(max(len(padded) - n + 1, 0)):
        grams[tuple(padded[i:i + n])] += 1
  counts[0].pop((BOS,), None)   # <s> is never predicted
  return counts


def kneser_ney(counts: List[Dict[Gram, int]], vocabulary: List[str]
               ) -> Tuple[List[Dict[Gram, float]], List[Dict[Gram, float]]]:
  """-> (probs[n - 1][gram] = interpolated P(last | rest), backoffs[n - 1][gram] =
  backoff weight of the context gram), natural probabilities, not logs."""
  order = len(counts)
  # The counts each order's estimate uses: raw for the highest order and for
  # n-grams that start a sentence, distinct left contexts otherwise.
  used = [dict() for _ in range(order)]
  used[order - 1] = dict(counts[order - 1])
  for n in range(order - 1, 0, -1):
    left = collections.Counter(gram[1:] for gram in counts[n])
    for gram, c in counts[n - 1].items():
      used[n - 1][gram] = c if gram[0] == BOS else left.get(gram, c)
  probs = [dict() for _ in range(order)]
  backoffs = [dict() for _ in range(order)]
  uniform = 1.0 / len(vocabulary)
  for n in range(1, order + 1):
    grams = used[n - 1]
    n1 = sum(1 for c in grams.values() if c == 1)
    n2 = sum(1 for c in grams.values() if c == 2)
    discount = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
    totals, types = collections.Counter(), collections.Counter()
    for gram, c in grams.items():
      totals[gram[:-1]] += c
      types[gram[:-1]] += 1
    for gram, c in grams.items():
      context = gram[:-1]
      gamma = discount * types[context] / totals[context]
      lower = uniform if n == 1 else _lower(probs, backoffs, gram[1:], uniform)
      probs[n - 1][gram] = max(c - discount, 0.0) / totals[context] + gamma * lower
    if n == 1:
      gamma = discount * types[()] / totals[()]
      for word in vocabulary:   # unseen words, <unk> among them
        if (word,) not in probs[0]:
          probs[0][(word,)] = gamma * uniform
    else:
      # An unseen word after `context` gets gamma times its lower-order
      # probability, as in the interpolation: gamma is the backoff weight.
      for context in totals:
        backoffs[n - 2][context] = discount * types[context] / totals[context]
  return probs, backoffs


def _lower(probs, backoffs, gram: Gram, uniform: float) -> float:
  """P(gram[-1] | gram[:-1]) by the model built so far (orders up to len(gram)),
  backing off from contexts it never saw."""
  p = probs[len(gram) - 1].get(gram)
  if p is not None:
    return p
  if len(gram) == 1:
    return uniform
  return backoffs[len(gram) - 2].get(gram[:-1], 1.0) * _lower(probs, backoffs,
                                                              gram[1:], uniform)


def write_arpa(path: str, probs, backoffs) -> None:
  order = len(probs)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w", encoding="utf-8", newline="\n") as f:
    f.write("\\data\\\n")
    # <s> is listed as a unigram (with no probability), as ARPA files do.
    for n in range(1, order + 1):
      f.write(f"ngram {n}={len(probs[n - 1]) + (n == 1)}\n")
    for n in range(1, order + 1):
      f.write(f"\n\\{n}-grams:\n")
      rows = sorted(probs[n - 1].items())
      if n == 1:
        rows = [((BOS,), None)] + rows
      for gram, p in rows:
        logp = -99.0 if p is None else math.log10(p)
        line = f"{logp:.6f}\t{' '.join(gram)}"
        if n < order:
          bow = backoffs[n - 1].get(gram)
          if bow is not None:
            line += f"\t{math.log10(bow):.6f}"
        f.write(line + "\n")
    f.write("\n\\end\\\n")
  os.replace(tmp, path)


def build(lines: Iterable[str], unit: str, order: int, output: str) -> dict:
  """Counts, estimates and writes the model -> a summary (sentences, tokens,
  n-grams per order)."""
  sentences = [tokens(line.strip(), unit) for line in lines if line.strip()]
  if not sentences:
    raise ConfigError("no text to build a language model from (all lines empty)")
  counts = count_ngrams(sentences, order)
  vocabulary = sorted({w for s in sentences for w in s} | {EOS, UNK} |
                      ({SPACE_TOKEN} if unit == "char" else set()))
  probs, backoffs = kneser_ney(counts, vocabulary)
  write_arpa(output, probs, backoffs)
  return {"sentences": len(sentences), "tokens": sum(map(len, sentences)),
          "vocabulary": len(vocabulary), "ngrams": [len(p) for p in probs]}


def training_labels(fl) -> List[str]:
  """The labels of the training set named by --workdir's flags (and the command
  line's)."""
  cli.apply_workdir_flags()
  cfg = config.from_flags(need_train=True, need_eval=False)
  return list(sources.load_samples(cfg.data, "train", None).label_texts())


def read_lines(fl) -> List[str]:
  given = [name for name in ("text", "label_manifest", "workdir") if fl[name].value]
  if len(given) != 1:
    raise ConfigError("give exactly one of --text, --label_manifest and --workdir")
  if fl.workdir:
    return training_labels(fl)
  path = os.path.expanduser(fl.text or fl.label_manifest)
  if not os.path.isfile(path):
    raise ConfigError(f"--{given[0]}={path} is not a file")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if fl.label_manifest:
    lines = [line.split("\t")[1] if "\t" in line else "" for line in lines]
  return [normalize_text(line, fl.text_normalization) for line in lines]


@cli.exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  fl = flags.FLAGS
  if not fl.output:
    raise ConfigError("--output is required")
  start = time.time()
  lines = read_lines(fl)
  print(f"{len(lines)} lines; counting {fl.unit} {fl.order}-grams", file=sys.stderr,
        flush=True)
  summary = build(lines, fl.unit, fl.order, os.path.expanduser(fl.output))
  print(f"wrote {fl.output}: {summary['sentences']} sentences, {summary['tokens']} "
        f"tokens, vocabulary {summary['vocabulary']}, n-grams per order "
        f"{summary['ngrams']} ({time.time() - start:.1f} s)")


if __name__ == "__main__":
  app.run(main)
