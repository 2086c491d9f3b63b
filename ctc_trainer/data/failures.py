"""Naming the sample that broke the input pipeline.

tf.data cannot catch one element's error: an op error stops the iterator with a
message that names a graph node, not a file. So every stage that can fail on one
sample puts the sample's name into the message of a tf.debugging.Assert as
"[MARKER] [name] [...]" (policy 'error'), or drops it with one warning per distinct
sample on stderr (policy 'skip'). `explain` turns such a message into a DataError
naming the file, its manifest line or its record.

The markers below are that contract; the stages that raise them:
  decode        Cannot read or decode {image|audio}   (guarded_map, via `decode`)
  records       Cannot parse record, Truncated or corrupt TFRecord shard (tfrecord.py)
  labels        Label has characters not in the charset   (pipeline.py)
"""

import dataclasses
import re
import sys
from typing import Optional

import tensorflow as tf
from absl import logging

from ctc_trainer.config import DataConfig
from ctc_trainer.data import modalities
from ctc_trainer.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
BAD_SHARD = "Truncated or corrupt TFRecord shard"
BAD_LABEL = "Label has characters not in the charset"
BAD_RECORD = "Cannot parse record"
_BAD_DECODE = "Cannot read or decode "   # + the modality's name
# The errors a failing input pipeline raises, for the callers that catch them.
PIPELINE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                   tf.errors.DataLossError)
CHUNK = 64   # elements per small dataset in guarded_map
_FIX = "fix or remove it, or set --bad_sample_policy=skip"


def bad_decode(modality_name: str) -> str:
  return _BAD_DECODE + modality_name


# --- decoding ------------------------------------------------------------------------

def decode(source, modality, cfg: DataConfig, charset, shuffle_and_repeat: bool,
           input_context, keep_encoded: bool = False,
           named: bool = False, start: Optional[int] = None) -> tf.data.Dataset:
  """The source's examples, decoded in parallel and in order -> {inputs, input_length,
  text, key} (+ encoded, the bytes decoded, with keep_encoded).

  start: read the training stream by position from `start` (a ListedSource's
  positioned_examples, which replaces shuffle_and_repeat); the examples carry their
  `position` too.

  A sample that fails to read or decode is dropped and named as it happens (see
  guarded_map): a warning (policy 'skip') or an error. Except under policy 'error'
  without `named`, for a modality whose errors can be explained afterwards: there a
  plain parallel map does the work, since naming as it happens costs a good part of
  the throughput on small images and a failure stops the run anyway; `explain` then
  finds the failure with one named pass (the only second pass: the price of the fast
  path, paid only when the run has already failed).
  """
  skip = cfg.bad_sample_policy == "skip"
  if start is None:
    examples_of = lambda read: source.examples(cfg, charset, shuffle_and_repeat,
                                               input_context, read=read)
  else:
    examples_of = lambda read: source.positioned_examples(cfg, start, input_context,
                                                          read=read)

  # Graph code throughout, as every map function of the pipeline's hot path: built
  # without AutoGraph, which would convert its source (and its callees') each time
  # a dataset is built (docs/architecture.md).
  @tf.autograph.experimental.do_not_convert
  def example(x, encoded):
    inputs, length = modality.decode(encoded)
    out = {"inputs": inputs, "input_length": length, "text": x["text"], "key": x["key"]}
    if "position" in x:
      out["position"] = x["position"]
    return dict(out, encoded=encoded) if keep_encoded else out

  if not (named or skip or modality.names_every_failure):
    examples = examples_of(True)
    decoded = examples.map(tf.autograph.experimental.do_not_convert(
        lambda x: example(x, x["data"])), num_parallel_calls=AUTOTUNE)
  else:
    # Read inside the guarded map, so that a file that cannot be read is named too.
    examples = examples_of(False)
    decoded = guarded_map(
        examples, lambda x: example(x, source.read(x["data"])),
        name_of=lambda x: x["name"], failure=bad_decode(modality.name),
        hint=modality.expected,
        warning=f"skipping unreadable or undecodable {modality.name}", skip=skip)
  return modality.screen(decoded)


def guarded_map(ds: tf.data.Dataset, fn, name_of, failure: str, hint: str,
                warning: str, skip: bool) -> tf.data.Dataset:
  """ds.map(fn), in parallel and in order; an element whose fn fails is dropped and
  named: an error "[failure] [name] [hint]" (skip False) or, once per distinct name,
  "WARNING ctc_trainer: {warning} NAME - skipped so far: N distinct" on stderr.

  Elements are dicts. tf.data cannot catch one element's error, and ignore_errors
  drops it without a trace. So elements go in chunks of CHUNK, each numbered and
  named (name_of is applied to a whole chunk at once: it must work elementwise on
  vectors); fn runs with ignore_errors on each chunk as its own small dataset (so
  that errors from stages before this one still stop the pipeline instead of being
  ignored), chunks in parallel, in order. Every element that comes out carries the
  names of its own chunk and the one before, so a gap in the numbers, which is a
  failure, can be named by the next element to arrive. A finite stream gets an end
  marker, so that failures at its very end are found too.
  """
  finite = int(ds.cardinality()) != tf.data.INFINITE_CARDINALITY
  # (element, is_end) pairs; zip adds no function call per element, as a map would.
  tagged = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensors(False).repeat()))
  if finite:
    zeros = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype),
                                  ds.element_spec)
    tagged = tagged.concatenate(tf.data.Dataset.from_tensors((zeros, True)))

  def number(state, chunk):
    """Per chunk: its first element's number and the names of the previous chunk
    (always a full one) and its own, padded to 2 * CHUNK."""
    start, previous = state
    x, is_end = chunk
    names = name_of(x)
    names = tf.concat([names, tf.fill([CHUNK - tf.size(names)], "")], 0)
    count = tf.size(is_end, tf.int64)
    return (start + count, names), (start, tf.concat([previous, names], 0), x, is_end)

  def run_chunk(start, window, x, is_end):
    count = tf.size(is_end, tf.int64)
    elements = tf.data.Dataset.from_tensor_slices(
        (tf.range(start, start + count), x, is_end))
    shared = tf.data.Dataset.from_tensors((start, window)).repeat()

    def apply(item, context):
      index, x, is_end = item
      if not finite:   # no end marker to step over
        return index, is_end, context, fn(x)
      # The end marker skips fn and gets zeros of fn's output structure, which the
      # first branch's trace gives (tf.cond traces its branches in order): fn is
      # traced once.
      traced = []

      def real():
        traced.append(fn(x))
        return traced[0]

      def zeros():
        return tf.nest.map_structure(
            lambda t: tf.zeros([d or 0 for d in t.shape], t.dtype), traced[0])
      out = tf.cond(tf.logical_not(is_end), real, zeros)
      return index, is_end, context, out

    return tf.data.Dataset.zip((elements, shared)).map(apply).ignore_errors()

  def check(state, item):
    expected, seen = state
    index, is_end, (start, window), out = item
    # window[p] names element start - CHUNK + p; everything in [expected, index) is
    # missing, and the part from window_start on can be named.
    window_start = start - CHUNK
    named_from = tf.maximum(expected, window_start)
    if not skip:
      first = window[tf.clip_by_value(named_from - window_start, 0, 2 * CHUNK - 1)]
      tf.debugging.Assert(index <= expected, [failure, first, hint])
    elif index > expected:
      unnamed = named_from - expected
      if unnamed > 0:
        tf.print("WARNING ctc_trainer:", warning, "-", unnamed, "in a row, too many to "
                 "name", output_stream=sys.stderr)
      seen = note_skips(seen, window[named_from - window_start:index - window_start],
                        warning)
    return (index + 1, seen), ((is_end, out) if finite else out)

  zero = tf.constant(0, tf.int64)
  numbered = tagged.batch(CHUNK).scan((zero, tf.fill([CHUNK], "")), number)
  mapped = numbered.interleave(run_chunk, cycle_length=AUTOTUNE, block_length=CHUNK,
                               num_parallel_calls=AUTOTUNE, deterministic=True)
  checked = mapped.scan((zero, no_skips()), check)
  if not finite:
    return checked
  return checked.filter(lambda is_end, out: tf.logical_not(is_end)).map(
      lambda is_end, out: out)


# --- skipping --------------------------------------------------------------------------

def no_skips() -> tf.Tensor:
  """The initial `seen` of note_skips: string [0]."""
  return tf.zeros([0], tf.string)


def note_skips(seen: tf.Tensor, names: tf.Tensor, warning: str) -> tf.Tensor:
  """seen: string [n], the distinct names skipped so far (scan state); names: string
  [m], skipped now -> seen with the new names added.

  A name is warned about once, with the count of distinct names: a training set is
  read many times, and a count of skips would grow with every pass over one bad file.
  The state is part of the iterator, so a resumed run does not warn again either.
  """
  unique = tf.unique(names).y
  known = tf.reduce_any(tf.equal(unique[:, None], seen[None, :]), axis=1)
  new = tf.boolean_mask(unique, tf.logical_not(known))
  before = tf.size(seen)
  for i in tf.range(tf.size(new)):
    # stderr, not the C++ log: TF_CPP_MIN_LOG_LEVEL, often set to quiet TensorFlow,
    # would hide the warning.
    tf.print("WARNING ctc_trainer:", warning, new[i], "- skipped so far:",
             before + i + 1, "distinct", output_stream=sys.stderr)
  return tf.concat([seen, new], 0)


def drop_flagged(ds: tf.data.Dataset, warning: str) -> tf.data.Dataset:
  """Drops elements (dicts) whose "ok" is False, each named once by its "name"."""
  def count(seen, element):
    if not element["ok"]:
      seen = note_skips(seen, element["name"][None], warning)
    return seen, element

  ds = ds.scan(no_skips(), count).filter(lambda x: x["ok"])
  return ds.map(lambda x: {k: v for k, v in x.items() if k != "ok"})


# --- explaining -----------------------------------------------------------------------

def explain(error: Exception, source, cfg: DataConfig) -> DataError:
  """A DataError naming the sample (or shard) that failed to read or decode.

  Errors that name their sample (see the module docstring) are explained from their
  message. A decode error of the fast policy-'error' path names nothing: then one
  pass over the source in order, naming each failure as it happens, finds the first
  bad one. Call this only on the failure path.
  """
  modality = modalities.get(cfg)
  message = str(getattr(error, "message", error))
  named = re.search(re.escape(bad_decode(modality.name)) + r"\] \[(.*?)\] \[", message)
  if named:
    name = named.group(1)
    origin = source.origin(name)
    where, path = (origin, name) if origin else (name, None)  # a record: key (shard)
    return DataError(f"{where}: {modality.failure_text(path)}; {_FIX}")
  named = re.search(re.escape(BAD_RECORD) + r"\] \[(.*?)\] \[", message)
  if named:
    return DataError(f"{named.group(1)}: not a tf.train.Example of the schema in "
                     f"ctc_trainer/data/tfrecord.py; rewrite the shard, or set "
                     f"--bad_sample_policy=skip")
  named = re.search(re.escape(BAD_SHARD) + r"\] \[(.*?)\] \[", message)
  if named:
    return DataError(f"{named.group(1)}: truncated or corrupt TFRecord shard; "
                     f"rewrite it, or set --bad_sample_policy=skip to use the records "
                     f"before the damage")
  named = re.search(re.escape(BAD_LABEL) + r"\] \[(.*?)\] \[(.*?)\] \[", message)
  if named:
    return DataError(f"{named.group(1)}: label {named.group(2)!r} has characters not "
                     f"in the charset (--unknown_char_policy=skip drops such samples)")
  found = _find_failure(source, modality, cfg)
  if found is not None:
    return found
  return DataError(f"input pipeline failed, but every sample reads and decodes: "
                   f"{_first_line(error)}")


def _find_failure(source, modality, cfg: DataConfig) -> Optional[DataError]:
  """One pass over the source in order with every failure named; the DataError for
  the first one, or None when all read and decode."""
  logging.info("Input pipeline failed; finding the sample: one pass over %s",
               source.describe())
  checked = dataclasses.replace(cfg, bad_sample_policy="error",
                                unknown_char_policy="error")
  examples = decode(source, modality, checked, None, False, None, named=True)
  try:
    for _ in examples.map(lambda x: tf.constant(0)).batch(1024):
      pass
  except PIPELINE_ERRORS as e:
    message = str(getattr(e, "message", e))
    if any(m in message for m in (bad_decode(modality.name), BAD_RECORD, BAD_SHARD)):
      return explain(e, source, cfg)
    return DataError(f"input pipeline failed: {_first_line(e)}")
  return None


def _first_line(error: Exception) -> str:
  return str(getattr(error, "message", error)).strip().splitlines()[0]
