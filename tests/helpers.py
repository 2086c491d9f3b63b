"""Small builders shared by the tests: tiny configs, models and hand-made batches."""

import keras
import numpy as np
import tensorflow as tf

from ctc_trainer import models, steps
from ctc_trainer.charset import Charset
from ctc_trainer.config import OptimConfig
from ctc_trainer.data import pipeline
from ctc_trainer.loop import make_optimizer
from ctc_trainer.models.crnn import CRNNConfig

TINY_MODEL = CRNNConfig(conv_filters=(8, 16), rnn_units=16, rnn_layers=1, dropout=0.0)
CHARSET = Charset(list("abcdefgh"))
HEIGHT = 16


def make_batch(texts, width, seed=0):
  """A batch dict per the contract, with random images of the given padded width."""
  rng = np.random.default_rng(seed)
  ids = [CHARSET.encode_py(t) for t in texts]
  max_len = max(1, max(len(i) for i in ids))
  labels = np.zeros((len(texts), max_len), np.int32)
  for row, i in enumerate(ids):
    labels[row, :len(i)] = i
  input_length = np.full(len(texts), width, np.int32)
  input_length[0] = max(4, width - 5)  # one shorter example: padding is real
  return {
      "inputs": tf.constant(rng.random((len(texts), HEIGHT, width, 1), np.float32)),
      "input_length": tf.constant(input_length),
      "labels": tf.constant(labels),
      "label_length": tf.constant([len(i) for i in ids], tf.int32),
      "text": tf.constant(texts),
      "key": tf.constant([f"k{i}" for i in range(len(texts))]),
  }


def build_steps(batch_size=4, beam_width=4, learning_rate=3e-3, jit_compile=False,
                loss_scale=False, decoder_names=("beam", "greedy")):
  model = models.build(TINY_MODEL, CHARSET.num_classes, (HEIGHT, None, 1))
  optimizer = make_optimizer(OptimConfig(learning_rate=learning_rate), 1000)
  if loss_scale:
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  optimizer.build(model.trainable_variables)
  spec = pipeline.batch_signature(channels=1, height=HEIGHT)
  fns = steps.make_steps(model, optimizer, CHARSET, tf.distribute.get_strategy(), spec,
                         global_batch_size=batch_size, clip_norm=5.0,
                         beam_width=beam_width, jit_compile=jit_compile,
                         decoder_names=decoder_names)
  return model, fns
