"""Export: the SavedModel transcribes as the checkpoint's eval does, loads in a process
that imports TensorFlow alone, survives bad input, and sits behind a parity gate that
fails when the exported preprocessing differs from training's."""

import json
import os
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import export, metrics
from ctc_trainer.errors import ConfigError
from ctc_trainer.data import pipeline, sources
from tests.helpers import load_tool, once, run_main, run_process


def export_cli(*args):
  return run_main(load_tool("export_savedmodel").main, *args,
                  prog="tools/export_savedmodel.py")


@pytest.fixture(scope="module")
def trainer(restored):
  """The exported (latest) checkpoint, restored in this process."""
  trainer, step = restored
  assert step == 6
  return trainer


@pytest.fixture(scope="module")
def checkpoint_texts(trainer):
  """The eval set's beam transcriptions by the eval step: the strings that
  loop.evaluate, and so the evaluate CLI, scores."""
  texts = []
  for batch in pipeline.make_dataset(trainer.cfg.data, trainer.charset, "eval"):
    _, samples = trainer.step_fns.eval_step(batch)
    texts.extend(t.decode() for t in samples["beam"].numpy())
  return texts


# A fresh process that imports TensorFlow and nothing of ctc_trainer, as a user's
# server would: transcribe the eval images in eval-sized batches, through both
# signatures, then send bad bytes and check that the process still serves.
LOAD_WITH_TF_ONLY = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    export_dir, paths = sys.argv[1], sys.argv[2:]
    model = tf.saved_model.load(export_dir)
    serve = model.signatures["serving_default"]
    features = model.signatures["features"]
    images = [open(p, "rb").read() for p in paths]
    result = {"texts": [], "features_texts": [], "confidence": [], "top_k": [],
              "errors": {}}
    for i in range(0, len(images), 8):
      out = serve(encoded=tf.constant(images[i:i + 8]))
      result["texts"] += [t.decode() for t in out["text"].numpy()]
      result["confidence"] += out["confidence"].numpy().tolist()
      result["top_k"] += [[t.decode() for t in row] for row in out["top_k_texts"].numpy()]
      inputs, input_length = model.preprocess(tf.constant(images[i:i + 8]))
      out = features(inputs=inputs, input_length=input_length)
      result["features_texts"] += [t.decode() for t in out["text"].numpy()]
    for name, blob in [("empty", b""), ("not_image", b"hello, not an image")]:
      try:
        serve(encoded=tf.constant([images[0], blob]))
      except tf.errors.InvalidArgumentError as e:
        result["errors"][name] = e.message
    result["after_errors"] = serve(encoded=tf.constant(images[:1]))["text"][0].numpy().decode()
    result["empty_batch"] = serve(encoded=tf.constant([], tf.string))["top_k_texts"].shape.as_list()
    result["ctc_trainer_imported"] = any(m.startswith("ctc_trainer") for m in sys.modules)
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def loaded(tiny_run, exported, tmp_path_factory):
  """What LOAD_WITH_TF_ONLY printed, run once per session."""
  def make(_):
    paths = [p for p, _ in tiny_run.eval_images()]
    ran = run_process("-c", LOAD_WITH_TF_ONLY, exported, *paths)
    return json.loads(ran.out.strip().splitlines()[-1])
  return once(tmp_path_factory, "loaded", make)


def test_export_passed_the_gate_and_records_it(exported):
  assert tf.saved_model.contains_saved_model(str(exported))
  info = json.loads((exported / export.INFO_FILE).read_text())
  assert info["step"] == 6 and info["beam_width"] == 4 and info["top_k"] == 4
  assert info["decoder"] == "beam"
  parity = info["parity"]
  assert abs(parity["checkpoint_cer"] - parity["exported_cer"]) <= 1e-6
  assert parity["num_different"] == 0 and parity["num_samples"] == 16
  # No staging folders are left beside the export.
  assert os.listdir(exported.parent) == ["export"]


def test_export_transcribes_as_the_trained_model_did(tiny_run, loaded):
  """The SavedModel gives the beam strings (the primary decoder's) that training's
  last eval wrote to TensorBoard: the checkpoint it was built from holds the whole
  trained model."""
  trained = {}
  for events in (tiny_run.workdir / "eval").glob("*tfevents*"):
    for event in tf.compat.v1.train.summary_iterator(str(events)):
      for value in event.summary.value:
        if event.step == 6 and value.tag == "eval/samples":
          table = tf.make_ndarray(value.tensor).item().decode()
          assert table.splitlines()[0] == "| key | truth | beam | greedy |"
          for row in table.splitlines()[2:]:
            key, _, beam, _ = [cell.strip() for cell in row.strip("|").split("|")]
            trained[key] = "" if beam == "∅" else beam
  served = dict(zip([p for p, _ in tiny_run.eval_images()], loaded["texts"]))
  assert trained and {k: served[k] for k in trained} == trained


def test_loads_with_tensorflow_alone_and_matches_the_eval_step(loaded,
                                                               checkpoint_texts):
  assert not loaded["ctc_trainer_imported"]
  assert loaded["texts"] == checkpoint_texts
  assert loaded["features_texts"] == checkpoint_texts
  assert any(loaded["texts"]), "an all-empty output would make this test vacuous"
  assert all(0.0 <= c <= 1.0 for c in loaded["confidence"])
  assert [k[0] for k in loaded["top_k"]] == loaded["texts"]
  assert all(len(k) == 4 for k in loaded["top_k"])


def test_saved_model_cer_equals_the_checkpoints_on_the_whole_eval_set(tiny_run, exported,
                                                                      loaded):
  """The gate's checkpoint CER sums the eval step's metrics over the whole eval set,
  as loop.evaluate (and so the evaluate CLI) does."""
  parity = json.loads((exported / export.INFO_FILE).read_text())["parity"]
  labels = [text for _, text in tiny_run.eval_images()]
  sums = metrics.batch_sums(tf.constant(loaded["texts"]), tf.constant(labels))
  assert metrics.results(sums)["cer"] == pytest.approx(parity["checkpoint_cer"], abs=1e-9)


def test_bad_bytes_give_clear_errors_and_the_process_keeps_serving(loaded):
  assert "empty input bytes at batch index" in loaded["errors"]["empty"]
  assert "Unknown image file format" in loaded["errors"]["not_image"]
  assert loaded["after_errors"] == loaded["texts"][0]
  assert loaded["empty_batch"] == [0, 4]


def test_preprocessing_is_the_training_pipelines(tiny_run, trainer):
  """Inside the export, images become exactly the tensors training batches hold."""
  module = export.ServingModule.from_run(trainer)
  batch = next(iter(pipeline.make_dataset(trainer.cfg.data, trainer.charset, "eval")))
  images = [open(p, "rb").read() for p, _ in tiny_run.eval_images()[:8]]
  inputs, input_length = module.preprocess(tf.constant(images))
  np.testing.assert_array_equal(input_length, batch["input_length"])
  np.testing.assert_array_equal(inputs, batch["inputs"])


def test_gate_fails_when_the_served_preprocessing_differs(tiny_run, trainer):
  """The SavedModel's serving module with its inputs scaled tenfold fails the gate
  (that a failed gate writes nothing is tested with the export tool in
  test_export_formats: the staging logic is the same for every format)."""
  module = export.ServingModule.from_run(trainer, input_scale=10.0)
  samples = sources.load_samples(trainer.cfg.data, "eval", trainer.charset)
  parity = export.check_parity(trainer, export.serving_fn(module), samples, limit=8)
  assert not parity.ok and parity.num_samples == 8 and parity.num_different > 0
  assert "parity gate FAILED" in parity.describe()
  assert "transcriptions differ, first: " in parity.describe()


def test_export_tool_refuses_to_overwrite_a_non_savedmodel(tiny_run, tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  ran = export_cli(f"--workdir={tiny_run.workdir}", f"--export_dir={tmp_path}")
  assert ran.code == 2
  assert "is not an export (SavedModel, TFLite or ONNX); refusing to overwrite it" in ran.err
  assert os.listdir(tmp_path) == ["notes.txt"]


def test_top_k_above_beam_width_is_a_config_error(trainer):
  with pytest.raises(ConfigError, match="--top_k=5 must be between 1 and --beam_width=4"):
    export.ServingModule.from_run(trainer, top_k=5)


def test_serving_fn_reads_older_exports_whose_input_is_named_image_bytes(tmp_path):
  class OldExport(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
      return {"text": tf.strings.upper(image_bytes)}

  module = OldExport()
  tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
  serve = export.serving_fn(export.load(str(tmp_path)))
  assert serve(tf.constant([b"ab"]))["text"].numpy().tolist() == [b"AB"]
