"""Export: the SavedModel transcribes as the checkpoint's eval does, loads in a process
that imports TensorFlow alone, survives bad input, and sits behind a parity gate that
fails when the exported preprocessing differs from training's."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import export, loop, metrics
from ctc_trainer.config import Config, DataConfig, LoopConfig
from ctc_trainer.errors import ConfigError
from ctc_trainer.data import pipeline
from ctc_trainer.data.sources import manifest
from tests.helpers import TINY_MODEL

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = [
    "--data_format=synthetic", "--synthetic_train_size=64", "--synthetic_eval_size=16",
    "--synthetic_min_length=2", "--synthetic_max_length=4", "--image_height=16",
    "--conv_filters=8,16", "--rnn_units=16", "--rnn_layers=1", "--dropout=0",
    "--batch_size=8", "--eval_batch_size=8", "--log_every=3", "--eval_every=6",
    "--checkpoint_every=6", "--beam_width=4",
]


@dataclasses.dataclass
class Run:
  root: pathlib.Path
  workdir: pathlib.Path
  export_dir: pathlib.Path
  cfg: Config

  def eval_images(self):
    """The eval set's (path, label) pairs, in manifest order."""
    return [(s.path, s.text) for s in
            manifest.read_tsv(str(self.root / "eval" / "manifest.tsv"))]


def run(*args, check=True):
  """Runs `python ARGS` from the repository root, as a user would."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True,
                        text=True, env=env, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args[:2]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
  """A tiny run trained for 6 steps and exported through the gate.

  Kept under the session's base temp folder and reused when present, so that
  test_predict.py, which imports this fixture, does not train again.
  """
  root = tmp_path_factory.getbasetemp() / "export_run"
  workdir, export_dir = root / "run", root / "export"
  data = [f"--train_data={root / 'train'}", f"--eval_data={root / 'eval'}"]
  if not (export_dir / "saved_model.pb").exists():
    run("-m", "ctc_trainer.train", f"--workdir={workdir}", "--train_steps=6", *TINY,
        *data)
    run("tools/export_savedmodel.py", f"--workdir={workdir}",
        f"--export_dir={export_dir}")
  cfg = Config(
      workdir=str(workdir),
      data=DataConfig(data_format="synthetic", train_data=str(root / "train"),
                      eval_data=str(root / "eval"), synthetic_train_size=64,
                      synthetic_eval_size=16, synthetic_min_length=2,
                      synthetic_max_length=4, image_height=16, batch_size=8,
                      eval_batch_size=8),
      model=TINY_MODEL, loop=LoopConfig(beam_width=4))
  return Run(root, workdir, export_dir, cfg)


@pytest.fixture(scope="module")
def trainer(exported):
  """The exported checkpoint, restored in this process."""
  trainer = loop.setup(exported.cfg, for_training=False)
  assert trainer.checkpoints.restore("latest", expect_partial=True) == 6
  return trainer


@pytest.fixture(scope="module")
def checkpoint_texts(trainer):
  """The eval set's beam transcriptions by the eval step: the strings that
  loop.evaluate, and so the evaluate CLI, scores."""
  texts = []
  for batch in pipeline.make_dataset(trainer.cfg.data, trainer.charset, "eval"):
    _, samples = trainer.steps.eval_step(batch)
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
def loaded(exported):
  paths = [p for p, _ in exported.eval_images()]
  proc = run("-c", LOAD_WITH_TF_ONLY, str(exported.export_dir), *paths)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_export_passed_the_gate_and_records_it(exported):
  assert tf.saved_model.contains_saved_model(str(exported.export_dir))
  info = json.loads((exported.export_dir / export.INFO_FILE).read_text())
  assert info["step"] == 6 and info["beam_width"] == 4 and info["top_k"] == 4
  assert info["decoder"] == "beam"
  parity = info["parity"]
  assert abs(parity["checkpoint_cer"] - parity["saved_model_cer"]) <= 1e-6
  assert parity["num_different"] == 0 and parity["num_samples"] == 16
  # No staging folders are left beside the export.
  assert sorted(os.listdir(exported.root)) == ["eval", "export", "run", "train"]


def test_export_transcribes_as_the_trained_model_did(exported, loaded):
  """The SavedModel gives the beam strings (the primary decoder's) that training's
  last eval wrote to TensorBoard: the checkpoint it was built from holds the whole
  trained model."""
  trained = {}
  for events in (exported.workdir / "eval").glob("*tfevents*"):
    for event in tf.compat.v1.train.summary_iterator(str(events)):
      for value in event.summary.value:
        if event.step == 6 and value.tag == "eval/samples":
          table = tf.make_ndarray(value.tensor).item().decode()
          assert table.splitlines()[0] == "| key | truth | beam | greedy |"
          for row in table.splitlines()[2:]:
            key, _, beam, _ = [cell.strip() for cell in row.strip("|").split("|")]
            trained[key] = "" if beam == "∅" else beam
  served = dict(zip([p for p, _ in exported.eval_images()], loaded["texts"]))
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


def test_saved_model_cer_equals_the_checkpoints_on_the_whole_eval_set(exported, loaded):
  """The gate's checkpoint CER sums the eval step's metrics over the whole eval set,
  as loop.evaluate (and so the evaluate CLI) does."""
  parity = json.loads((exported.export_dir / export.INFO_FILE).read_text())["parity"]
  labels = [text for _, text in exported.eval_images()]
  sums = metrics.batch_sums(tf.constant(loaded["texts"]), tf.constant(labels))
  assert metrics.results(sums)["cer"] == pytest.approx(parity["checkpoint_cer"], abs=1e-9)


def test_bad_bytes_give_clear_errors_and_the_process_keeps_serving(loaded):
  assert "empty input bytes at batch index" in loaded["errors"]["empty"]
  assert "Unknown image file format" in loaded["errors"]["not_image"]
  assert loaded["after_errors"] == loaded["texts"][0]
  assert loaded["empty_batch"] == [0, 4]


def test_preprocessing_is_the_training_pipelines(exported, trainer):
  """Inside the export, images become exactly the tensors training batches hold."""
  module = export.ServingModule.from_trainer(trainer)
  batch = next(iter(pipeline.make_dataset(trainer.cfg.data, trainer.charset, "eval")))
  images = [open(p, "rb").read() for p, _ in exported.eval_images()[:8]]
  inputs, input_length = module.preprocess(tf.constant(images))
  np.testing.assert_array_equal(input_length, batch["input_length"])
  np.testing.assert_array_equal(inputs, batch["inputs"])


def test_export_tool_gate_fails_and_writes_nothing_when_preprocessing_differs(exported):
  target = exported.root.parent / "perturbed_export"
  proc = run("tools/export_savedmodel.py", f"--workdir={exported.workdir}",
             f"--export_dir={target}", "--parity_test_perturb=10", "--parity_samples=8",
             check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "parity gate FAILED" in proc.stdout and "on 8 eval samples" in proc.stdout
  assert "transcriptions differ, first: " in proc.stdout
  assert "discarded" in proc.stderr
  assert not target.exists()
  assert not [n for n in os.listdir(exported.root.parent) if "perturbed" in n]


def test_export_tool_refuses_to_overwrite_a_non_savedmodel(exported, tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  proc = run("tools/export_savedmodel.py", f"--workdir={exported.workdir}",
             f"--export_dir={tmp_path}", check=False)
  assert proc.returncode == 2
  assert "is not a SavedModel; refusing to overwrite it" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert os.listdir(tmp_path) == ["notes.txt"]


def test_top_k_above_beam_width_is_a_config_error(trainer):
  with pytest.raises(ConfigError, match="--top_k=5 must be between 1 and --beam_width=4"):
    export.ServingModule.from_trainer(trainer, top_k=5)


def test_serving_fn_reads_older_exports_whose_input_is_named_image_bytes(tmp_path):
  class OldExport(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
      return {"text": tf.strings.upper(image_bytes)}

  module = OldExport()
  tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
  serve = export.serving_fn(export.load(str(tmp_path)))
  assert serve(tf.constant([b"ab"]))["text"].numpy().tolist() == [b"AB"]
