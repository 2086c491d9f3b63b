"""Config spelled once: flags derived from dataclass fields, and old runs' flags."""

import dataclasses
import os
from typing import Tuple

import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from ctc_trainer import config, loop, models, options
from ctc_trainer.config import DataConfig, LoopConfig, OptimConfig
from ctc_trainer.errors import ConfigError
from ctc_trainer.models.crnn import CRNNConfig
from ctc_trainer.models.speech import DS2Config
from ctc_trainer.options import option

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse(*args) -> flags.FlagValues:
  """The global flags with only `args` given (restored after each test)."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["prog", *args])
  return flags.FLAGS


@pytest.fixture(autouse=True)
def restore_global_flags():
  with flagsaver.flagsaver():
    yield


def test_every_field_is_a_flag_with_its_default_and_help():
  for cls in (DataConfig, config.AudioConfig, OptimConfig, LoopConfig, CRNNConfig,
              DS2Config):
    for field in options.options_of(cls):
      flag = flags.FLAGS[options.flag_name(field)]
      default = field.default
      expected = [str(v) for v in default] if isinstance(default, tuple) else default
      if field.type in ("int",) and flag.__class__.__name__ == "EnumFlag":
        expected = str(default)
      assert flag.default in (expected, str(expected)), field.name
      assert flag.help


def test_from_flags_builds_nested_and_shared_options(tmp_path):
  cfg = config.from_flags(parse(
      f"--workdir={tmp_path}", "--model=ds2", "--modality=audio", "--rnn_cell=gru",
      "--conv_filters=8,8", "--seed=5", "--spec_augment_time_masks=2",
      f"--train_data={tmp_path}", f"--eval_data={tmp_path}"))
  assert cfg.model == DS2Config(conv_filters=(8, 8), rnn_cell="gru")
  assert cfg.data.seed == cfg.loop.seed == 5       # one --seed, two fields
  assert cfg.data.audio.time_masks == 2             # flag named apart from the field
  assert cfg.data.image_channels == 1 and isinstance(cfg.data.image_channels, int)


@pytest.mark.parametrize("flag, message", [
    ("--batch_size=0", "--batch_size must be > 0"),
    ("--warmup_steps=-1", "--warmup_steps must be >= 0"),
    ("--dropout=1.0", "--dropout must be < 1"),
    ("--conv_filters=8,x", "--conv_filters must be a comma-separated list"),
    ("--bucket_boundaries=64,abc", "--bucket_boundaries must be auto, none"),
    ("--learning_rate=0", "--learning_rate must be > 0"),
])
def test_bounds_from_field_metadata_name_the_flag(flag, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    parse(flag)


def test_unknown_model_is_one_config_error(tmp_path):
  with pytest.raises(ConfigError, match="--model='nope' is unknown; known models: "
                     "crnn, ds2"):
    config.from_flags(parse(f"--workdir={tmp_path}", "--model=nope"),
                      need_train=False, need_eval=False)


def test_a_flag_declared_twice_differently_is_refused():
  @dataclasses.dataclass(frozen=True)
  class Clash:
    batch_size: int = option(7, "Another default for an existing flag.")

  with pytest.raises(ValueError, match="--batch_size is declared twice"):
    options.define_flags(Clash)   # the global flags, where --batch_size is 32


def test_tuple_options_round_trip(tmp_path):
  @dataclasses.dataclass(frozen=True)
  class Widths:
    test_widths: Tuple[int, ...] = option((4, 8), "Widths for this test.")

  fl = flags.FlagValues()
  options.define_flags(Widths, fl)
  fl(["prog", "--test_widths=16,32,64"])
  assert options.from_flags(Widths, fl) == Widths((16, 32, 64))


def test_flags_cfg_of_a_run_from_before_the_rewrite_still_parses(tmp_path):
  """tests/data/flags_v0.cfg was written by the code before config was derived from
  the dataclasses (demo flags, --beam_prune on): a resumed run must read it the same."""
  fl = parse(f"--flagfile={os.path.join(HERE, 'data', 'flags_v0.cfg')}",
             f"--workdir={tmp_path}")
  cfg = config.from_flags(fl, need_train=False, need_eval=False)
  assert cfg.model == CRNNConfig(conv_filters=(16, 32, 64), rnn_units=96, rnn_layers=1,
                                 dropout=0.1)
  assert cfg.loop.train_steps == 4000 and cfg.optim.warmup_steps == 200
  assert cfg.loop.decoder == ("beam_pruned", "greedy")   # its --beam_prune
  assert cfg.data.data_format == "synthetic" and cfg.data.image_height == 32
  assert cfg.data.train_data == os.path.expanduser("~/.cache/ctc_trainer/demo_ocr/train")


def test_short_run_from_the_demo_flagfile_starts(tmp_path):
  """--warmup_steps=200 from the demo config with --train_steps=20 (a smoke test, or
  --input_only) starts, warming up over a tenth of the run."""
  os.chdir(ROOT)
  fl = parse("--flagfile=configs/demo_ocr.cfg", f"--workdir={tmp_path}",
             "--train_steps=20", "--input_only")
  cfg = config.from_flags(fl, need_train=False, need_eval=False)
  assert loop.warmup_steps(cfg.optim, cfg.loop.train_steps) == 2
  schedule = loop.make_optimizer(cfg.optim, cfg.loop.train_steps)._learning_rate  # pylint: disable=protected-access
  peak = cfg.optim.learning_rate
  assert float(schedule(0)) == 0.0 and float(schedule(2)) == pytest.approx(peak)
  assert float(schedule(11)) < peak and float(schedule(20)) == pytest.approx(0.0)


def test_models_register_their_config_and_modality():
  assert models.config_class("crnn") is CRNNConfig
  assert models.modality_of(DS2Config()) == "audio"


@pytest.mark.parametrize("preset", ["base_ocr", "printed_lines", "printed_lines_deep",
                                    "handwriting_lines", "short_codes", "demo_ocr"])
def test_each_ocr_preset_is_a_valid_config_whose_model_builds(preset, tmp_path):
  """A preset with only data flags added parses to a valid config, carries the header
  a user reads (purpose, run command, expected result), and its model turns an
  image of the preset's height into one frame per stride columns."""
  os.chdir(ROOT)
  path = os.path.join("configs", f"{preset}.cfg")
  with open(path, encoding="utf-8") as f:
    header = f.read().split("\n--", 1)[0]
  assert header.startswith(f"# {preset}.cfg: ")
  for part in ("# Purpose:", "# Run", "python -m ctc_trainer.train", "# Expected result:"):
    assert part in header, part
  cfg = config.from_flags(parse(f"--flagfile={path}", f"--workdir={tmp_path}",
                                "--data_format=tsv", "--train_data=train.tsv",
                                "--eval_data=val.tsv"),
                          need_train=False, need_eval=False)
  assert models.name_of(cfg.model) == "crnn" and cfg.data.modality == "image"
  shape = (cfg.data.image_height, None, cfg.data.image_channels)
  model = models.build(cfg.model, 12, shape)
  logits = model(tf.zeros((1, shape[0], 3 * model.stride, shape[2])))
  assert logits.shape == (1, 3, 12)
