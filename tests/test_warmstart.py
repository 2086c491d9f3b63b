"""Warm starts (warmstart.py): a fresh run takes a trained run's weights, bit for bit,
with its output layer resized to a new charset; --freeze holds layer groups still for
the first steps; a model that does not fit is one error naming the layer."""

import dataclasses
import logging
import shutil

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from ctc_trainer import config, loop, warmstart
from ctc_trainer.charset import Charset
from ctc_trainer.errors import CheckpointError, ConfigError
from ctc_trainer.warmstart import WarmStartConfig
from tests.helpers import make_batch


@pytest.fixture(scope="module")
def source(tiny_run):
  """The tiny run as --init_from=WORKDIR reads it (its best/ checkpoint)."""
  return warmstart.open_source(str(tiny_run.workdir))


def warm_config(tiny_run, tmp_path, symbols=None, **warm):
  """The tiny run's config in a fresh workdir, warm-started from the tiny run;
  symbols: the new data's charset (a --charset file)."""
  cfg = tiny_run.config()
  charset_file = ""
  if symbols is not None:
    charset_file = str(tmp_path / "new_charset.txt")
    Charset(symbols).save(charset_file)
  warm.setdefault("init_from", str(tiny_run.workdir))
  return dataclasses.replace(cfg, workdir=str(tmp_path / "warm"), charset=charset_file,
                             warm_start=WarmStartConfig(**warm))


def bits(array):
  return np.ascontiguousarray(array).view(np.uint32)


def assert_class_copied(model, source, new_id, old_id):
  """The new model's class new_id has the source's class old_id weights, bit for bit."""
  kernel, bias = model.classifier.kernel.numpy(), model.classifier.bias.numpy()
  old_kernel, old_bias = source.weights[6], source.weights[7]   # the tiny CRNN's order
  np.testing.assert_array_equal(bits(kernel[:, new_id]), bits(old_kernel[:, old_id]))
  assert bits(bias[new_id]) == bits(old_bias[old_id])


def assert_other_layers_copied(model, source):
  output = {id(model.classifier.kernel), id(model.classifier.bias)}
  for variable, value in zip(model.weights, source.weights):
    if id(variable) not in output:
      np.testing.assert_array_equal(bits(variable.numpy()), bits(value), variable.path)


def test_union_keeps_shared_classes_and_appends_new_ones(tiny_run, tmp_path, source):
  old = source.charset.symbols
  # The new data: some of the source's symbols, in another order, and two new ones.
  cfg = warm_config(tiny_run, tmp_path, ["ä", *reversed(old[:5]), "ſ"],
                    charset_mode="union")
  run = loop.build_run(cfg)
  assert run.charset.symbols == old + ("ä", "ſ")
  assert Charset.from_file(f"{cfg.workdir}/charset.txt").symbols == run.charset.symbols
  for old_id in range(len(old) + 1):   # the blank and every source symbol
    assert_class_copied(run.model, source, old_id, old_id)
  assert_other_layers_copied(run.model, source)


def test_new_drops_the_symbols_the_new_data_lacks(tiny_run, tmp_path, source):
  old = source.charset.symbols
  symbols = ["ä", old[3], old[0], "ſ", old[7]]
  run = loop.build_run(warm_config(tiny_run, tmp_path, symbols, charset_mode="new"))
  assert run.charset.symbols == tuple(symbols)
  assert run.model.classifier.kernel.shape[1] == len(symbols) + 1
  assert_class_copied(run.model, source, 0, 0)
  for new_id, symbol in enumerate(symbols, 1):
    if symbol in old:
      assert_class_copied(run.model, source, new_id, old.index(symbol) + 1)
  assert_other_layers_copied(run.model, source)


def test_keep_uses_the_source_model_as_it_is(tiny_run, tmp_path, source):
  run = loop.build_run(warm_config(tiny_run, tmp_path, charset_mode="keep"))
  assert run.charset.symbols == source.charset.symbols
  for variable, value in zip(run.model.weights, source.weights):
    np.testing.assert_array_equal(bits(variable.numpy()), bits(value))


def test_init_new_chars_from_copies_the_named_class(tiny_run, tmp_path, source):
  old = source.charset.symbols
  a, s = old[0], old[1]
  cfg = warm_config(tiny_run, tmp_path, [a, "ä", "ſ", "ß"], charset_mode="union",
                    init_new_chars_from=f"ä:{a},ſ:{s}")
  run = loop.build_run(cfg)
  ids = {symbol: i for i, symbol in enumerate(run.charset.symbols, 1)}
  assert_class_copied(run.model, source, ids["ä"], old.index(a) + 1)
  assert_class_copied(run.model, source, ids["ſ"], old.index(s) + 1)
  # ß was named by nobody: freshly initialized, no copy of a source class.
  fresh = run.model.classifier.kernel.numpy()[:, ids["ß"]]
  assert not any(np.array_equal(fresh, column) for column in source.weights[6].T)


def test_a_copy_from_a_symbol_the_source_lacks_is_an_error(tiny_run, tmp_path):
  cfg = warm_config(tiny_run, tmp_path, ["ä"], init_new_chars_from="ä:Ω")
  with pytest.raises(ConfigError, match="'Ω'.*not in the source's charset"):
    loop.build_run(cfg)


def test_a_layer_shape_mismatch_names_the_layer_and_both_shapes(tiny_run, tmp_path):
  cfg = warm_config(tiny_run, tmp_path, charset_mode="keep")
  cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                           conv_filters=(8, 32)))
  with pytest.raises(CheckpointError) as error:
    loop.build_run(cfg)
  message = str(error.value)
  assert "layer crnn/conv2d" in message
  assert "(3, 3, 8, 32)" in message and "(3, 3, 8, 16)" in message
  assert "\n" not in message


def test_init_from_a_savedmodel_equals_init_from_its_checkpoint(tiny_run, exported,
                                                                 tmp_path):
  # The export holds the latest checkpoint (step 6).
  from_export = loop.build_run(warm_config(tiny_run, tmp_path / "a",
                                           init_from=str(exported)))
  prefix = str(tiny_run.workdir / "checkpoints" / "ckpt-6")
  from_checkpoint = loop.build_run(warm_config(tiny_run, tmp_path / "b",
                                               init_from=prefix))
  assert from_export.charset.symbols == from_checkpoint.charset.symbols
  for a, b in zip(from_export.model.weights, from_checkpoint.model.weights):
    np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()))


def test_freeze_holds_the_conv_layers_for_freeze_steps(tiny_run, tmp_path):
  cfg = warm_config(tiny_run, tmp_path, charset_mode="keep", freeze=("conv",),
                    freeze_steps=2)
  run = loop.build_run(cfg)
  conv = [v for layer in run.model.feature_layers() for v in layer.weights]
  rnn = [v for layer in run.model.rnns for v in layer.weights]
  assert len(conv) == 10   # 2 x (kernel, gamma, beta, moving mean, moving variance)
  start = [v.numpy() for v in conv + rnn]
  batch = make_batch(["abc", "de", "fgh", "ab"], width=32)
  for done in range(3):
    run.step_fns.train_step_for(done)(batch)
    now = [v.numpy() for v in conv]
    if done < 2:   # conv weights and batch norm statistics as they were, bit for bit
      for a, b in zip(now, start):
        np.testing.assert_array_equal(bits(a), bits(b))
      assert not np.array_equal(rnn[0].numpy(), start[len(conv)])   # rnn trains
    else:
      assert not all(np.array_equal(a, b) for a, b in zip(now, start))
  fns = run.step_fns
  assert fns.train_step_frozen.experimental_get_tracing_count() == 1
  assert fns.train_step.experimental_get_tracing_count() == 1


def test_a_workdir_with_a_checkpoint_resumes_and_ignores_init_from(tiny_run, source,
                                                                   tmp_path, caplog):
  cfg = warm_config(tiny_run, tmp_path, charset_mode="keep")
  shutil.copytree(tiny_run.workdir, cfg.workdir)
  caplog.set_level(logging.INFO, logger="absl")  # whatever verbosity an earlier test left
  run = loop.build_run(cfg)
  assert "--init_from=" in caplog.text and "ignored" in caplog.text
  assert not all(np.array_equal(v.numpy(), value)
                 for v, value in zip(run.model.weights, source.weights))
  assert run.checkpoints.restore("latest") == 6


@pytest.mark.parametrize("flag, message", [
    ("--freeze=conv,dense", "--freeze takes layer groups out of conv, rnn"),
    ("--init_new_chars_from=äa", "--init_new_chars_from must be comma-separated"),
    ("--charset_mode=merge", "--charset_mode"),
])
def test_bad_warm_start_flags_are_refused_naming_the_flag(flag, message):
  with flagsaver.flagsaver(), pytest.raises(flags.Error, match=message):
    flags.FLAGS(["prog", "--workdir=unused", flag])


def test_keep_with_a_charset_file_is_one_config_error(tiny_run, tmp_path):
  cfg = warm_config(tiny_run, tmp_path, ["a"], charset_mode="keep")
  with pytest.raises(ConfigError, match="--charset_mode=keep"):
    config.validate(cfg, need_train=False)
  parsed = dataclasses.replace(cfg, warm_start=WarmStartConfig(
      init_new_chars_from="ä:a,ſ:s"))
  assert parsed.warm_start.new_char_sources() == {"ä": "a", "ſ": "s"}
