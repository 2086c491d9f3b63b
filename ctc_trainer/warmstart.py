"""Warm starts: a new run's weights from a trained run, with a changed charset.

    --init_from=WORKDIR|CHECKPOINT|SAVEDMODEL --charset_mode=union|new|keep

The source is a training workdir (its best/ checkpoint if it has one, else its latest),
a checkpoint prefix inside one, or a SavedModel written by tools/export_savedmodel.py.
Every weight is copied exactly, except the output layer's class dimension, which
follows the new charset: the blank (id 0) and every symbol the two charsets share keep
their column of the kernel and their bias entry bit for bit, under their new ids;
symbols new to the source start as the layer's initializer made them, or as a copy of
a source symbol named by --init_new_chars_from; symbols the new charset drops go.

Only a fresh run warm-starts: a workdir that already holds a checkpoint resumes from it
(loop.build_run). --freeze names layer groups (models/base.py: conv, rnn) that the
first --freeze_steps steps leave untouched (steps.make_step_fns).
"""

import dataclasses
import os
from typing import Callable, Dict, List, NamedTuple, Tuple

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

from ctc_trainer.charset import Charset
from ctc_trainer.errors import CheckpointError, ConfigError
from ctc_trainer.options import option

CHARSET_MODES = ("union", "new", "keep")
FREEZABLE = ("conv", "rnn")
# Where the model's weights sit, in model.weights order, in the object graph of a
# training checkpoint (checkpoints.Checkpoints) and of a SavedModel (export.ServingModule).
CHECKPOINT_WEIGHTS = ("model", "weights")
SAVEDMODEL_WEIGHTS = ("model_weights",)


def _char_pairs(value: str) -> bool:
  return not value or all(len(p) == 3 and p[1] == ":" for p in value.split(","))


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
  """Where a fresh run takes its first weights from, and what it freezes."""
  init_from: str = option(
      "", "Start from a trained model: a training workdir (its best/ checkpoint, else "
      "its latest), a checkpoint prefix, or a SavedModel folder from "
      "tools/export_savedmodel.py. The model flags must match the source's, except "
      "for the charset. Ignored when --workdir already holds a checkpoint (it resumes).",
      path=True)
  charset_mode: str = option(
      "union", "With --init_from: union: the source's charset plus the new data's "
      "symbols it lacks, appended; new: the new data's charset (--charset or built from "
      "the labels), symbols only the source knew are dropped; keep: the source's "
      "charset as is (new characters count as unknown: --unknown_char_policy).",
      choices=CHARSET_MODES)
  init_new_chars_from: str = option(
      "", "With --init_from: output weights of new symbols copied from source symbols, "
      "e.g. 'ä:a,ſ:s' (new:source); other new symbols start freshly initialized.",
      check=(_char_pairs, "--init_new_chars_from must be comma-separated NEW:SOURCE "
             "character pairs, e.g. 'ä:a,ſ:s'"))
  freeze: Tuple[str, ...] = option(
      (), f"Layer groups ({', '.join(FREEZABLE)}) left untouched for the first "
      "--freeze_steps steps: no weight update, batch norm statistics kept.",
      check=(lambda v: all(g in FREEZABLE for g in v),
             f"--freeze takes layer groups out of {', '.join(FREEZABLE)}"))
  freeze_steps: int = option(0, "Steps that --freeze lasts.", minimum=0)

  def new_char_sources(self) -> Dict[str, str]:
    """--init_new_chars_from as {new symbol: source symbol}."""
    return dict(p.split(":") for p in self.init_new_chars_from.split(",") if p)


class Source(NamedTuple):
  """A trained model to start from: its charset and its weights in model.weights order."""
  path: str            # the checkpoint prefix or SavedModel folder read
  charset: Charset
  weights: List[np.ndarray]


# --- reading the source ----------------------------------------------------------

def open_source(init_from: str) -> Source:
  """Reads --init_from (a workdir, checkpoint prefix or SavedModel folder)."""
  if tf.saved_model.contains_saved_model(init_from):
    return _read_savedmodel(init_from)
  if os.path.isdir(init_from):
    for sub in ("best", "checkpoints"):
      prefix = tf.train.latest_checkpoint(os.path.join(init_from, sub))
      if prefix:
        return _read_checkpoint(prefix, init_from)
    raise CheckpointError(f"--init_from={init_from} holds no checkpoint (best/ or "
                          "checkpoints/) and no SavedModel")
  if tf.io.gfile.exists(init_from + ".index"):
    # WORKDIR/checkpoints/ckpt-N or WORKDIR/best/ckpt-N
    return _read_checkpoint(init_from, os.path.dirname(os.path.dirname(init_from)))
  raise ConfigError(f"--init_from={init_from} is neither a training workdir, a "
                    "checkpoint prefix nor a SavedModel folder")


def _read_checkpoint(prefix: str, workdir: str) -> Source:
  charset_file = os.path.join(workdir, "charset.txt")
  if not os.path.isfile(charset_file):
    raise CheckpointError(f"--init_from: no charset.txt in {workdir}, the workdir of "
                          f"checkpoint {prefix}")
  logging.info("Warm start from checkpoint %s", prefix)
  return Source(prefix, Charset.from_file(charset_file),
                _weights_in_order(prefix, CHECKPOINT_WEIGHTS))


def _read_savedmodel(folder: str) -> Source:
  variables = os.path.join(folder, "variables", "variables")
  loaded = tf.saved_model.load(folder)
  _, decode_table = loaded.charset_tables
  ids, symbols = tf.raw_ops.LookupTableExportV2(
      table_handle=decode_table.resource_handle, Tkeys=tf.int32, Tvalues=tf.string)
  order = np.argsort(ids.numpy())
  charset = Charset([symbols.numpy()[i].decode("utf-8") for i in order])
  logging.info("Warm start from SavedModel %s", folder)
  return Source(folder, charset, _weights_in_order(variables, SAVEDMODEL_WEIGHTS,
                                                   what="SavedModel " + folder))


def _weights_in_order(prefix: str, path: Tuple[str, ...], what: str = "") -> List[np.ndarray]:
  """The values of the list of variables at `path` in a checkpoint's object graph.

  Looked up through the object graph, as a restore would: a variable is stored under
  the first path that reaches it, not necessarily this one.
  """
  reader = tf.train.load_checkpoint(prefix)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  node = graph.nodes[0]
  for name in path:
    children = {c.local_name: c.node_id for c in node.children}
    if name not in children:
      raise CheckpointError(
          f"--init_from: {what or prefix} holds no model weights in order (an export "
          "written before warm starts were supported: export it again)")
    node = graph.nodes[children[name]]
  values = []
  for child in sorted(node.children, key=lambda c: int(c.local_name)):
    attribute = graph.nodes[child.node_id].attributes[0]
    values.append(reader.get_tensor(attribute.checkpoint_key))
  return values


# --- the new run's charset -------------------------------------------------------

def combine_charsets(mode: str, source: Charset, data: Callable[[], Charset]) -> Charset:
  """The warm-started run's charset. data: the new data's charset (called unless
  mode is keep)."""
  if mode == "keep":
    return source
  new = data()
  if mode == "new":
    charset = new
  else:
    known = set(source.symbols)
    charset = Charset(source.symbols + tuple(s for s in new.symbols if s not in known))
  kept = set(source.symbols) & set(charset.symbols)
  logging.info("--charset_mode=%s: %d symbols, %d shared with the source, %d new, %d "
               "of the source's dropped", mode, charset.size, len(kept),
               charset.size - len(kept), source.size - len(kept))
  return charset


# --- copying the weights ---------------------------------------------------------

def initialize(model, source: Source, charset: Charset, cfg: WarmStartConfig) -> None:
  """Copies the source's weights into `model` (a SequenceModel freshly built for
  `charset`); its classifier's class dimension follows the charset.

  Raises CheckpointError naming the first layer, in forward order (feature layers
  first), whose weight shape differs from the source's otherwise.
  """
  output = model.classifier
  resized = {id(output.kernel): 1, id(output.bias): 0}   # the class axis
  weights = model.weights
  forward = {id(v) for layer in model.feature_layers() for v in layer.weights}
  misfits = []
  for index, (variable, value) in enumerate(zip(weights, source.weights)):
    axis = resized.get(id(variable))
    here, there = tuple(variable.shape), value.shape
    if axis is not None:
      here, there = here[:axis] + here[axis + 1:], there[:axis] + there[axis + 1:]
    if here != there:
      misfits.append((id(variable) not in forward, index))
  if misfits:
    index = min(misfits)[1]
    layer, name = weights[index].path.rsplit("/", 1)
    raise CheckpointError(
        f"--init_from={source.path}: layer {layer} has a {name} of shape "
        f"{tuple(weights[index].shape)} here but {source.weights[index].shape} in the "
        "source; use the source's model and image flags")
  if len(weights) != len(source.weights):
    extra = weights[len(source.weights)].path if len(weights) > len(source.weights) \
        else "none"
    raise CheckpointError(
        f"--init_from={source.path}: the source has {len(source.weights)} weights, "
        f"this model {len(weights)} (the first without a counterpart here: {extra}); "
        "use the source's model flags")
  columns = _column_sources(source.charset, charset, cfg.new_char_sources())
  for variable, value in zip(weights, source.weights):
    axis = resized.get(id(variable))
    if axis is not None:
      fresh = variable.numpy()   # the layer's initializer: kept for new symbols
      index = [slice(None)] * value.ndim
      index[axis] = list(columns)
      fresh[tuple(index)] = np.take(value, list(columns.values()), axis=axis)
      value = fresh
    variable.assign(value)
  logging.info("Initialized from %s: %d of %d output classes carried over",
               source.path, len(columns), charset.num_classes)


def _column_sources(source: Charset, charset: Charset,
                    new_from: Dict[str, str]) -> Dict[int, int]:
  """{new class id: source class id} for the blank, the shared symbols and the new
  symbols copied from a source symbol. Raises ConfigError for a copy from a symbol
  the source does not have."""
  old = {s: i + 1 for i, s in enumerate(source.symbols)}
  columns = {0: 0}
  for new_id, symbol in enumerate(charset.symbols, 1):
    if symbol in old:
      columns[new_id] = old[symbol]
  for symbol, origin in new_from.items():
    if origin not in old:
      raise ConfigError(f"--init_new_chars_from: {origin!r} (for {symbol!r}) is not in "
                        f"the source's charset")
    if symbol in old or symbol not in charset.symbols:
      logging.warning("--init_new_chars_from: %r is not a new symbol of this run's "
                      "charset; ignored", symbol)
      continue
    columns[charset.symbols.index(symbol) + 1] = old[origin]
  return columns
