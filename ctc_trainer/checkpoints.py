"""Checkpoints under WORKDIR: the latest N in checkpoints/, the best by eval CER in
best/. Each holds the step, the best CER so far, the model (with its dropout RNG
state), the step of the best CER and the number of evaluations since (early
stopping and the plateau cuts count them), and for training runs the optimizer, the
input's position (the tf.data iterator on one device; under a strategy or the data
service the highest stream position trained on) and, with the plateau cuts, the
learning rate's multiplier.
A checkpoint written before those counters (or before the cuts were turned on) lacks
them: they are restored when present and start afresh otherwise.

Crash safety comes from tf.train.CheckpointManager's order of work: a checkpoint's
files are written first and the `checkpoint` index file is replaced after, so a kill
mid-save leaves the index naming the previous, complete checkpoint. A checkpoint that
cannot be read (corrupted, truncated) is reported and the next older one is tried.
"""

import math
import os
import tensorflow as tf
from absl import logging

from ctc_trainer.errors import CheckpointError


def rng_states(model) -> list:
  """The model's RNG state variables (Keras seed generators, e.g. dropout's).

  Object-based checkpointing does not reach them through the model, so they are
  tracked here, by position (their names carry a process-wide counter); without
  them a resumed run would draw other dropout masks.
  """
  return [v for v in model.non_trainable_variables if "seed_generator" in v.path]


# Where tf.train.Checkpoint stores the best_cer variable (attribute name best_cer).
_BEST_CER_KEY = "best_cer/.ATTRIBUTES/VARIABLE_VALUE"

# Objects a checkpoint may lack (see the module docstring).
OPTIONAL = ("best_step", "stale_evals", "lr_scale", "input_position")


class Checkpoints:

  def __init__(self, workdir: str, keep: int, model, **objects):
    """objects: further trackables to save (optimizer=, iterator=, lr_scale=); None
    is skipped."""
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self.best_cer = tf.Variable(math.inf, dtype=tf.float64, trainable=False,
                                name="best_cer")
    # The step of the best CER and the evaluations since, kept across a resume.
    self.best_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_step")
    self.stale_evals = tf.Variable(0, dtype=tf.int64, trainable=False,
                                   name="stale_evals")
    objects = {k: v for k, v in objects.items() if v is not None}
    # Keras 3 keeps layers held in Python lists (the models' conv blocks and RNN
    # stacks) out of TensorFlow's object graph, so through the model alone a
    # checkpoint reaches only the layers assigned directly (the classifier). Its
    # weights, by position like rng, reach them all.
    model_state = tf.train.Checkpoint(net=model, weights=list(model.weights))
    self._objects = dict(step=self.step, best_cer=self.best_cer,
                         best_step=self.best_step, stale_evals=self.stale_evals,
                         model=model_state, rng=rng_states(model), **objects)
    self._checkpoint = tf.train.Checkpoint(**self._objects)
    self.latest = tf.train.CheckpointManager(
        self._checkpoint, os.path.join(workdir, "checkpoints"), max_to_keep=keep)
    self.best = tf.train.CheckpointManager(
        self._checkpoint, os.path.join(workdir, "best"), max_to_keep=1)

  def track(self, **objects) -> None:
    """Adds trackables made after construction (the training input iterator)."""
    for name, obj in objects.items():
      setattr(self._checkpoint, name, obj)
      self._objects[name] = obj

  def _restorer(self, path: str) -> tf.train.Checkpoint:
    """The checkpoint to restore `path` with: every object, less the optional ones
    that `path` lacks (those keep their initial values)."""
    names = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
    lacking = [k for k in OPTIONAL if k in self._objects and k not in names]
    if not lacking:
      return self._checkpoint
    logging.info("%s holds no %s: starting from their initial values", path,
                 ", ".join(lacking))
    return tf.train.Checkpoint(
        **{k: v for k, v in self._objects.items() if k not in lacking})

  def _candidates(self, which: str):
    if which == "latest":
      return list(reversed(self.latest.checkpoints))
    if which == "best":
      if not self.best.latest_checkpoint:
        raise CheckpointError("no best checkpoint yet: none was saved after an eval")
      return [self.best.latest_checkpoint]
    return [which]

  def restore(self, which: str = "latest", expect_partial: bool = False) -> int:
    """Restores 'latest', 'best' or a path prefix and returns its step (0: none).

    For 'latest', an unreadable checkpoint is logged and the next older one tried.
    """
    errors = []
    for path in self._candidates(which):
      try:
        status = self._restorer(path).restore(path)
        if expect_partial:
          status.expect_partial()
        else:
          status.assert_existing_objects_matched()
      except Exception as e:  # pylint: disable=broad-except
        # A damaged file surfaces as OpError, IndexError, ValueError, ... depending
        # on which byte is bad; all of them mean "try the previous checkpoint".
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        logging.error("Cannot restore checkpoint %s: %s", path, message)
        errors.append(f"{path}: {message}")
        continue
      logging.info("Restored %s at step %d", path, int(self.step))
      if which == "latest":
        self._keep_best_cer()
      return int(self.step)
    if errors:
      raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
    return 0

  def _keep_best_cer(self) -> None:
    """best_cer from best/ when it is lower than the latest checkpoint's.

    A run can save a new best and then die before its next regular checkpoint; the
    latest checkpoint then holds an older, higher best_cer, and a resumed run would
    replace best/ with a worse model.
    """
    best = self.best.latest_checkpoint
    if not best:
      return
    try:
      saved = tf.train.load_variable(best, _BEST_CER_KEY)
    except (tf.errors.OpError, ValueError) as e:
      logging.warning("Cannot read best_cer from %s (%s); keeping %g", best, e,
                      float(self.best_cer))
      return
    if saved < float(self.best_cer):
      logging.info("best/ holds CER %.4f, better than the latest checkpoint knew "
                   "(%.4f)", saved, float(self.best_cer))
      self.best_cer.assign(saved)
      # That best came at the run's last eval: none since.
      self.stale_evals.assign(0)

  def save(self, step: int) -> str:
    self.step.assign(step)
    return self._save(self.latest, step)

  def save_if_best(self, step: int, cer: float) -> bool:
    """Saves best/ when `cer` beats the best so far; either way counts the eval in
    stale_evals (0 after a new best)."""
    if cer >= float(self.best_cer):
      self.stale_evals.assign_add(1)
      return False
    self.best_cer.assign(cer)
    self.best_step.assign(step)
    self.stale_evals.assign(0)
    self.step.assign(step)
    self._save(self.best, step)
    return True

  @staticmethod
  def _save(manager: tf.train.CheckpointManager, step: int) -> str:
    try:
      return manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as e:
      kept = manager.latest_checkpoint or "none"
      raise CheckpointError(
          f"saving the step {step} checkpoint in {manager.directory} failed ({e}); "
          f"the previous one ({kept}) is intact") from None