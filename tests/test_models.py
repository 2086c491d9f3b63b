import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import models
from ctc_trainer.models.speech import DS2Config
from tests.helpers import TINY_MODEL

TINY_DS2 = DS2Config(conv_filters=(8, 8), rnn_units=8, rnn_layers=1, dropout=0.0)


def test_registry_knows_each_model_with_its_config_and_modality():
  assert models.names() == ["crnn", "ds2"]
  assert models.config_class("ds2") is DS2Config
  assert models.name_of(TINY_MODEL) == "crnn" and models.modality_of(TINY_MODEL) == "image"
  assert models.modality_of("ds2") == "audio"
  with pytest.raises(ValueError, match="unknown model 'nope'"):
    models.config_class("nope")


def test_a_new_model_is_one_registration():
  @dataclasses.dataclass(frozen=True)
  class LinearConfig:
    pass

  @models.register("linear_for_test", config=LinearConfig, modality="image")
  def build(cfg, num_classes, input_shape):
    del cfg, input_shape
    return keras.layers.Dense(num_classes)

  try:
    assert models.name_of(LinearConfig()) == "linear_for_test"
    layer = models.build(LinearConfig(), 7, (16, None, 1))
    assert layer(tf.zeros([1, 3, 4])).shape == (1, 3, 7)
  finally:
    models.registry._MODELS.pop("linear_for_test")  # pylint: disable=protected-access


# Three conv blocks pooling the width (one frame per 8 columns), with GRU cells.
STRIDE_8 = dataclasses.replace(TINY_MODEL, conv_filters=(8, 8, 16), width_pools=3,
                               rnn_cell="gru")
# Calamari's kind of conv stack: a bias after each conv, no batch norm.
NO_NORM = dataclasses.replace(TINY_MODEL, conv_norm="none")


@pytest.mark.parametrize("cfg, stride", [(TINY_MODEL, 4), (STRIDE_8, 8)])
def test_output_frames_cover_output_length(cfg, stride):
  model = models.build(cfg, 9, (16, None, 1))
  assert model.stride == stride
  for width in (1, 7, 32, 33):
    logits = model(tf.zeros([2, 16, width, 1]))
    assert logits.shape[0] == 2 and logits.shape[2] == 9
    length = model.output_length(tf.constant([width, 1]))
    assert int(length[0]) == logits.shape[1] == -(-width // stride)
    assert int(length[1]) == 1


@pytest.mark.parametrize("cfg", [TINY_MODEL, STRIDE_8, NO_NORM])
def test_logits_do_not_depend_on_batch_padding(cfg):
  """An image's logits are the same alone and padded in a wider batch, also when its
  width is not a multiple of the stride (a pool window then straddles its end)."""
  model = models.build(cfg, 9, (16, None, 1))
  for width in (20, 21):
    image = tf.random.uniform([1, 16, width, 1], seed=3)
    alone = model(image, input_length=tf.constant([width]))
    padded = tf.pad(image, [[0, 0], [0, 0], [0, 44 - width], [0, 0]])
    batched = model(tf.concat([padded, tf.random.uniform([1, 16, 44, 1])], 0),
                    input_length=tf.constant([width, 44]))
    frames = int(model.output_length(tf.constant([width]))[0])
    np.testing.assert_allclose(alone[0, :frames], batched[0, :frames], atol=1e-5)


@pytest.mark.parametrize("cfg, input_shape", [(TINY_MODEL, (16, None, 1)),
                                              (TINY_DS2, (None, 16))])
def test_conv_norm_chooses_batch_norm_or_a_conv_bias(cfg, input_shape):
  for norm, bias, norms in (("batch", False, len(cfg.conv_filters)), ("none", True, 0)):
    model = models.build(dataclasses.replace(cfg, conv_norm=norm), 9, input_shape)
    layers = model.feature_layers()
    convs = [l for l in layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == len(cfg.conv_filters)
    assert all(conv.use_bias == bias for conv in convs)
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in layers) == norms


@pytest.mark.parametrize("name, cfg, input_shape", [
    ("crnn", TINY_MODEL, (16, None, 1)), ("ds2", TINY_DS2, (None, 16))])
def test_mixed_precision_keeps_logits_float32_and_batch_norm_synchronized(
    name, cfg, input_shape):
  """What docs/architecture.md promises of every model: CTC gets float32 logits under
  a mixed policy, and batch norm uses global-batch statistics under replicas."""
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model = models.build(cfg, 6, input_shape)
    shape = [2] + [d or 24 for d in input_shape]
    logits = model(tf.zeros(shape), input_length=tf.constant([24, 12]))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert models.name_of(cfg) == name
  assert logits.dtype == tf.float32
  norms = [l for l in model._flatten_layers()  # pylint: disable=protected-access
           if isinstance(l, keras.layers.BatchNormalization)]
  assert norms and all(l.synchronized for l in norms)


@pytest.mark.parametrize("cfg, input_shape", [(TINY_MODEL, (16, None, 1)),
                                              (TINY_DS2, (None, 8))])
def test_inference_outputs_match_training_soon_after_the_start(cfg, input_shape):
  """Evaluations early in a run use batch norm's moving statistics. On text-like
  inputs (sparse ink on a zero background) the batch variance is far below the
  moving variance's start value of 1; after 100 training batches the moving
  statistics must have caught up, or the eval CER says nothing about what training
  has learned (it stayed near 1 for hundreds of steps on gt4histcomment)."""
  model = models.build(dataclasses.replace(cfg, dropout=0.0), 6, input_shape)
  shape = [8] + [d or 48 for d in input_shape]
  inputs = tf.cast(tf.random.stateless_uniform(shape, [1, 2]) > 0.9, tf.float32) * 0.8
  for _ in range(100):
    model(inputs, training=True)
  trained, inferred = (model(inputs, training=t).numpy() for t in (True, False))
  assert np.abs(inferred - trained).mean() < 0.05 * np.abs(trained).mean()
