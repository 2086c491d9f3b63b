import numpy as np
import pytest
import tensorflow as tf

from ctc_trainer import models
from ctc_trainer.config import ModelConfig
from tests.helpers import TINY_MODEL


def test_registry_knows_crnn_and_rejects_unknown():
  assert "crnn" in models.names()
  with pytest.raises(ValueError, match="unknown model"):
    models.build(ModelConfig(name="nope"), 5, (16, None, 1))


@pytest.mark.parametrize("width", [1, 7, 32, 33])
def test_output_frames_cover_output_length(width):
  model = models.build(TINY_MODEL, 9, (16, None, 1))
  logits = model(tf.zeros([2, 16, width, 1]))
  assert logits.shape[0] == 2 and logits.shape[2] == 9
  length = model.output_length(tf.constant([width, 1]))
  assert int(length[0]) == logits.shape[1] and int(length[1]) == 1


def test_logits_do_not_depend_on_batch_padding():
  """An image's logits are the same alone and padded in a wider batch."""
  model = models.build(TINY_MODEL, 9, (16, None, 1))
  image = tf.random.uniform([1, 16, 20, 1], seed=3)
  alone = model(image, input_length=tf.constant([20]))
  padded = tf.pad(image, [[0, 0], [0, 0], [0, 24], [0, 0]])
  batched = model(tf.concat([padded, tf.random.uniform([1, 16, 44, 1])], 0),
                  input_length=tf.constant([20, 44]))
  frames = int(model.output_length(tf.constant([20]))[0])
  np.testing.assert_allclose(alone[0, :frames], batched[0, :frames], atol=1e-5)
