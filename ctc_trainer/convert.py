"""TFLite (float, int8) and ONNX exports of a run's model, run by ctc_trainer.host.

The converted graph is the model alone: inputs float32 [B, H, W, C] or [B, T, F] and
input_length int32 [B] -> logits float32 [B, T', classes] and logit_length int32 [B].
TFLite's graph has batch 1: Keras' recurrent loops keep per-step tensor lists whose
element shape holds the batch, and TFLite lowers those lists to built-in ops only
when that shape is static. ONNX keeps a free batch. Preprocessing and greedy decoding
run in NumPy (host.py; its module docstring says why they are not in the graph).

An export folder holds the model (model.tflite or model.onnx), host.INFO_FILE (the
format, charset, preprocessing settings, time stride and provenance) and
ctc_host.py, a copy of host.py, so it runs where ctc_trainer is not installed.
tf2onnx and ai-edge-litert / onnxruntime come with the `export` extra; training
imports none of them.
"""

import os
import shutil
from typing import Iterator, List, Optional

import tensorflow as tf

from ctc_trainer import host, loop
from ctc_trainer.data import modalities, pipeline

FORMATS = ("saved_model", "tflite", "tflite_int8", "onnx")
ONNX_OPSET = 17


def graph_function(run: loop.Run, batch: Optional[int] = None,
                   input_scale: float = 1.0):
  """The model as a tf.function (inputs, input_length) -> {logits, logit_length}.
  `input_scale` multiplies the inputs; only tests set it, to break parity."""
  model = run.model
  shape = pipeline.input_shape(run.cfg.data)

  # No AutoGraph: the model's Python branches are on static values, and its loops
  # are tf.while_loops already.
  @tf.function(input_signature=[
      tf.TensorSpec([batch, *shape], tf.float32, name="inputs"),
      tf.TensorSpec([batch], tf.int32, name="input_length")], autograph=False)
  def logits(inputs, input_length):
    return {"logits": model(inputs * input_scale, input_length=input_length,
                            training=False),
            "logit_length": model.output_length(input_length)}
  return logits


def _frozen(function) -> tf.types.experimental.ConcreteFunction:
  """Variables as constants, those read inside the RNNs' while loops too (the TFLite
  calibrator cannot read resource variables)."""
  from tensorflow.python.framework import convert_to_constants
  return convert_to_constants.convert_variables_to_constants_v2(
      function.get_concrete_function())


def calibration_inputs(run: loop.Run, num_examples: int) -> Iterator[List[tf.Tensor]]:
  """[inputs [1, ...], input_length [1]] of `num_examples` examples of the training
  pipeline (shuffled and augmented as training sees them), each cut to its length."""
  time_axis = modalities.get(run.cfg.data).time_axis
  count = 0
  for batch in pipeline.make_dataset(run.cfg.data, run.charset, "train"):
    for i, length in enumerate(batch["input_length"].numpy()):
      if count == num_examples:
        return
      example = tf.gather(batch["inputs"][i:i + 1], tf.range(length), axis=time_axis)
      yield [example, batch["input_length"][i:i + 1]]
      count += 1


def to_tflite(run: loop.Run, int8: bool, calibration_examples: int = 100,
              input_scale: float = 1.0) -> bytes:
  """The model as a TFLite flatbuffer of batch 1; with int8, post-training
  quantization calibrated on training inputs (weights and activations in int8 where
  the op has an int8 kernel, float elsewhere; inputs and outputs stay float32)."""
  function = _frozen(graph_function(run, batch=1, input_scale=input_scale))
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
  if int8:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: calibration_inputs(run,
                                                                  calibration_examples)
  return _stripped(converter.convert())


def _stripped(flatbuffer: bytes) -> bytes:
  """The model without its tensor names (host.py finds its inputs and outputs by
  rank): about 30 kB of a 1.2 MB float model, 8% of its int8 version."""
  from tensorflow.lite.tools import flatbuffer_utils
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
  flatbuffer_utils.strip_strings(model)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def to_onnx(run: loop.Run, path: str, input_scale: float = 1.0) -> None:
  """Writes the model as ONNX (opset ONNX_OPSET, free batch) to path."""
  import tf2onnx   # the export extra
  function = graph_function(run, input_scale=input_scale)
  tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                opset=ONNX_OPSET, output_path=path)


def sidecar(run: loop.Run, fmt: str) -> dict:
  """What host.Recognizer needs to run the model: format, charset, preprocessing."""
  modality = modalities.get(run.cfg.data)
  return {"format": fmt, "charset": list(run.charset.symbols), "blank": 0,
          "modality": modality.name, modality.name: modality.host_settings(),
          "time_stride": run.model.stride,
          "blank_penalty": run.cfg.decoding.blank_penalty,
          "batch": 1 if fmt.startswith("tflite") else None}


def write(run: loop.Run, fmt: str, folder: str, calibration_examples: int = 100,
          input_scale: float = 1.0) -> None:
  """Writes a TFLite or ONNX export of run into `folder` (which must exist): the model,
  host.INFO_FILE (without provenance; the caller adds it) and ctc_host.py."""
  model_path = os.path.join(folder, host.MODEL_FILES[fmt])
  if fmt == "onnx":
    to_onnx(run, model_path, input_scale)
  else:
    with open(model_path, "wb") as f:
      f.write(to_tflite(run, fmt == "tflite_int8", calibration_examples, input_scale))
  shutil.copy(host.__file__, os.path.join(folder, "ctc_host.py"))
