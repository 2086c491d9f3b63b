"""TFLite (float, int8) and ONNX exports of the tiny OCR run: each passes its parity
gate, transcribes the eval set in a process that imports its runtime and NumPy but
no TensorFlow exactly as the checkpoint's greedy decoder does (int8: within its CER
tolerance), is read by predict --model_path, and a failed gate writes nothing. The host's
preprocessing is the training pipeline's. Skipped without the `export` extra."""

import io
import json
import os
import shutil
import textwrap

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

from ctc_trainer import export, host, metrics, predict, steps  # noqa: E402
from ctc_trainer.data import image, pipeline  # noqa: E402
from tests.helpers import REPO, load_tool, once, run_main, start_process  # noqa: E402

FORMATS = ("tflite", "tflite_int8", "onnx")
# The int8 gate's bound for the tiny run. Its 6-step model has nearly flat logits,
# so int8 rounding flips a few of its argmaxes: one character in its 16 eval lines
# is 1.8 points of CER. export.INT8_CER_TOLERANCE (0.1 point) is for trained models.
TINY_INT8_TOLERANCE = 0.05
RUNTIMES = {"tflite": "ai_edge_litert", "tflite_int8": "ai_edge_litert",
            "onnx": "onnxruntime"}


def export_cli(*args):
  return run_main(load_tool("export_savedmodel").main, *args,
                  prog="tools/export_savedmodel.py")


@pytest.fixture(scope="session")
def exports(request, tmp_path_factory):
  """Each format converted once per session (also across pytest-xdist workers) from
  the restored tiny run (the export tool's export_run), through its gate -> {format:
  export folder}."""
  def make(root):
    run, step = request.getfixturevalue("restored")
    folders = {}
    for fmt in FORMATS:
      folder = root / fmt / "export"
      parity = export.export_run(run, step, str(folder), fmt=fmt, calibration_examples=16,
                                 int8_cer_tolerance=TINY_INT8_TOLERANCE)
      assert parity.ok, parity.describe()
      folders[fmt] = folder
    return folders
  return once(tmp_path_factory, "format_exports", make)


@pytest.fixture(scope="module")
def checkpoint_greedy(restored):
  """The eval set's greedy transcriptions by the checkpoint's eval step, and its CER
  -> ({path: text}, cer)."""
  run, _ = restored
  texts, sums = {}, {}
  for batch in pipeline.make_dataset(run.cfg.data, run.charset, "eval"):
    batch_sums, decoded = run.step_fns.eval_step(batch)
    sums = metrics.add_sums(sums, batch_sums)
    texts.update(zip([k.decode() for k in batch["key"].numpy()],
                     [t.decode() for t in decoded["greedy"].numpy()]))
  return texts, metrics.results(steps.decoder_sums(sums, "greedy"))["cer"]


# A process with the export's folder and nothing of ctc_trainer or TensorFlow: it
# imports the ctc_host.py shipped beside the model, transcribes, and reports which
# runtimes it imported; then it imports ctc_trainer.host, from the repository.
RUN_WITHOUT_TF = textwrap.dedent("""
    import json, sys
    folder, repo, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    sys.path.insert(0, folder)
    import ctc_host
    model = ctc_host.load(folder)
    texts = [text for text, _ in model.transcribe([open(p, "rb").read() for p in paths])]
    loaded = lambda: sorted(m for m in ("tensorflow", "ctc_trainer", "onnxruntime",
                                        "ai_edge_litert") if m in sys.modules)
    modules = loaded()
    sys.path.insert(0, repo)
    import ctc_trainer.host
    print(json.dumps({"texts": texts, "modules": modules, "after_package": loaded()}))
""")


@pytest.fixture(scope="module")
def served(tiny_run, exports, tmp_path_factory):
  """Each export run in its own child process (all at once, once per session)
  -> {format: its report}."""
  def make(_):
    paths = [p for p, _ in tiny_run.eval_images()]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    procs = {fmt: start_process("-c", RUN_WITHOUT_TF, exports[fmt], REPO, *paths,
                                env=env, stdout=-1, stderr=-1) for fmt in FORMATS}
    reports = {}
    for fmt, proc in procs.items():
      out, err = proc.communicate(timeout=120)
      assert proc.returncode == 0, err[-3000:]
      report = json.loads(out.strip().splitlines()[-1])
      report["texts"] = dict(zip(paths, report["texts"]))
      reports[fmt] = report
    return reports
  return once(tmp_path_factory, "served", make)


@pytest.mark.parametrize("fmt", FORMATS)
def test_loads_without_tensorflow_with_its_runtime_alone(served, fmt):
  assert served[fmt]["modules"] == [RUNTIMES[fmt]]
  # The package's own copy imports no TensorFlow either.
  assert served[fmt]["after_package"] == sorted([RUNTIMES[fmt], "ctc_trainer"])


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_float_formats_transcribe_as_the_checkpoint(served, checkpoint_greedy, exports,
                                                    fmt):
  texts, _ = checkpoint_greedy
  assert len(texts) == 16 and any(texts.values()), "all-empty texts prove nothing"
  assert served[fmt]["texts"] == texts
  parity = json.loads((exports[fmt] / host.INFO_FILE).read_text())["parity"]
  assert parity["num_samples"] == 16 and parity["num_different"] == 0
  assert parity["exact"] and parity["format"] == fmt


def test_int8_is_within_its_cer_tolerance(served, checkpoint_greedy, tiny_run, exports):
  _, checkpoint_cer = checkpoint_greedy
  texts = served["tflite_int8"]["texts"]
  labels = dict(tiny_run.eval_images())
  sums = metrics.batch_sums(tf.constant([texts[p] for p in labels]),
                            tf.constant(list(labels.values())))
  assert abs(metrics.results(sums)["cer"] - checkpoint_cer) <= TINY_INT8_TOLERANCE
  info = json.loads((exports["tflite_int8"] / host.INFO_FILE).read_text())
  assert info["parity"]["tolerance"] == TINY_INT8_TOLERANCE
  assert not info["parity"]["exact"]


def test_exports_carry_their_charset_and_host(exports, tiny_run):
  charset = (tiny_run.workdir / "charset.txt").read_text(encoding="utf-8").split("\n")
  for fmt, folder in exports.items():
    info = json.loads((folder / host.INFO_FILE).read_text())
    assert info["charset"] == [s for s in charset if s]
    assert info["image"] == {"height": 16, "channels": 1, "max_width": 2048}
    assert info["time_stride"] == 4 and info["format"] == fmt
    assert info["blank_penalty"] == 0.0   # the run's --blank_penalty
    assert (folder / "ctc_host.py").read_text() == open(host.__file__).read()
    assert host.detect_format(str(folder / host.MODEL_FILES[fmt])) == fmt


def test_host_decodes_with_the_blank_penalty_its_info_gives(exports, tiny_run, tmp_path):
  folder = tmp_path / "export"
  shutil.copytree(exports["onnx"], folder)
  blobs = [open(p, "rb").read() for p, _ in tiny_run.eval_images()[:8]]
  plain = host.load(str(folder))
  logits = plain.logits([plain.features(b) for b in blobs])
  info = json.loads((folder / host.INFO_FILE).read_text())
  # Below zero: the tiny run's blank is never its best class, so only favouring it
  # changes the output.
  (folder / host.INFO_FILE).write_text(json.dumps(dict(info, blank_penalty=-12.0)))
  penalized = host.load(str(folder))
  shift = np.eye(1, logits[0].shape[-1], 0, dtype=np.float32) * -12.0
  expected = [host.greedy_decode((x - shift)[None], [len(x)], plain.symbols)[0][0]
              for x in logits]
  assert [text for text, _ in penalized.transcribe(blobs)] == expected
  assert expected != [text for text, _ in plain.transcribe(blobs)]


def test_predict_reads_any_format(exports, served, tiny_run):
  paths = [p for p, _ in tiny_run.eval_images()[:4]]
  for fmt in ("tflite", "onnx"):
    ran = run_main(predict.main, f"--model_path={exports[fmt] / host.MODEL_FILES[fmt]}",
                   *paths, prog="ctc_trainer.predict")
    assert ran.code == 0, ran.err[-2000:]
    lines = [line.split("\t") for line in ran.out.splitlines()]
    assert [(p, t) for p, t, _ in lines] == [(p, served[fmt]["texts"][p]) for p in paths]


def test_failed_gate_writes_nothing(tiny_run, tmp_path):
  """The export tool with the converted graph's inputs scaled tenfold: the gate
  fails, the tool says so and exits 1, and nothing is written."""
  ran = export_cli(f"--workdir={tiny_run.workdir}", f"--export_dir={tmp_path / 'out'}",
                   "--format=tflite", "--parity_test_perturb=10", "--parity_samples=8")
  assert ran.code == 1, ran.err[-2000:]
  assert "parity gate FAILED" in ran.out and "on 8 eval samples" in ran.out
  assert "TFLite CER" in ran.out and "transcriptions differ, first: " in ran.out
  assert "discarded" in ran.err
  assert os.listdir(tmp_path) == []   # neither the export nor its staging folder


def test_export_tool_takes_the_format_and_its_options(tiny_run, tmp_path):
  ran = export_cli(f"--workdir={tiny_run.workdir}", f"--export_dir={tmp_path / 'out'}",
                   "--format=onnx", "--top_k=3")
  assert ran.code == 2
  assert "--top_k=3: --format=onnx decodes greedily, one path" in ran.err
  ran = export_cli(f"--workdir={tiny_run.workdir}", f"--export_dir={tmp_path / 'out'}",
                   "--format=tflite_int8", "--int8_cer_tolerance=-1")
  assert ran.code == 1 and "int8_cer_tolerance" in ran.err
  assert os.listdir(tmp_path) == []


def test_host_reports_undecodable_bytes(exports):
  model = host.load(str(exports["onnx"]))
  for blob, message in ((b"", "empty input bytes"), (b"not an image", "cannot decode")):
    with pytest.raises(host.InputError, match=message):
      model.transcribe([blob])


def _png(array, mode):
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(array, mode).save(buffer, "PNG")
  return buffer.getvalue()


@pytest.mark.parametrize("shape,mode", [((10, 37), "L"), ((16, 50), "L"),
                                        ((80, 300, 4), "RGBA"), ((28, 90, 3), "RGB"),
                                        ((40, 60, 2), "LA")])
@pytest.mark.parametrize("channels", [1, 3])
def test_host_image_preprocessing_is_the_pipelines(shape, mode, channels):
  """Upscaled, unscaled, shrunk past half (antialiased), RGB and alpha images give
  the training pipeline's tensors."""
  blob = _png(np.random.default_rng(0).integers(0, 256, shape, np.uint8), mode)
  expected, _ = image.decode_and_resize(tf.constant(blob), 16, channels, 2048)
  got = host.preprocess_image(blob, 16, channels, 2048)
  assert got.shape == tuple(expected.shape)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_host_greedy_decoding_is_tensorflows():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 12, 4)).astype(np.float32)
  logits[:, ::3, 0] += 3.0   # blanks between repeats
  lengths = np.array([12, 7, 1, 0, 9])
  decoded, _ = tf.nn.ctc_greedy_decoder(tf.transpose(logits, [1, 0, 2]), lengths,
                                        blank_index=0)
  dense = tf.sparse.to_dense(decoded[0], default_value=-1).numpy()
  expected = ["".join("abc"[i - 1] for i in row if i > 0) for row in dense]
  assert [t for t, _ in host.greedy_decode(logits, lengths, "abc")] == expected
