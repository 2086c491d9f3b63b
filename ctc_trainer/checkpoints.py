"""Checkpoints under WORKDIR: the latest N in checkpoints/, the best by eval CER in
best/. Each holds the step, the best CER so far, the model and the optimizer."""

import math
import os
from typing import Optional

import tensorflow as tf
from absl import logging


class CheckpointError(RuntimeError):
  pass


class Checkpoints:

  def __init__(self, workdir: str, model, optimizer, keep: int):
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self.best_cer = tf.Variable(math.inf, dtype=tf.float64, trainable=False,
                                name="best_cer")
    kwargs = {"model": model}
    if optimizer is not None:
      kwargs["optimizer"] = optimizer
    self._checkpoint = tf.train.Checkpoint(step=self.step, best_cer=self.best_cer,
                                           **kwargs)
    self.latest = tf.train.CheckpointManager(
        self._checkpoint, os.path.join(workdir, "checkpoints"), max_to_keep=keep)
    self.best = tf.train.CheckpointManager(
        self._checkpoint, os.path.join(workdir, "best"), max_to_keep=1)

  def path_for(self, which: str) -> Optional[str]:
    """'latest', 'best' or an explicit checkpoint prefix -> prefix or None."""
    if which == "latest":
      return self.latest.latest_checkpoint
    if which == "best":
      return self.best.latest_checkpoint
    return which

  def restore(self, which: str = "latest", expect_partial: bool = False) -> int:
    """Restores and returns the step; 0 when there is nothing to restore."""
    path = self.path_for(which)
    if path is None:
      if which == "best":
        raise CheckpointError("no best checkpoint yet: none was saved after an eval")
      return 0
    try:
      status = self._checkpoint.restore(path)
      if expect_partial:
        status.expect_partial()
      else:
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
      raise CheckpointError(f"cannot restore checkpoint {path}: {e}") from None
    logging.info("Restored %s at step %d", path, int(self.step))
    return int(self.step)

  def save(self, step: int) -> str:
    self.step.assign(step)
    return self.latest.save(checkpoint_number=step)

  def save_if_best(self, step: int, cer: float) -> bool:
    if cer >= float(self.best_cer):
      return False
    self.best_cer.assign(cer)
    self.step.assign(step)
    self.best.save(checkpoint_number=step)
    return True
