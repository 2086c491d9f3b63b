"""The inner loop: train_step and eval_step as tf.functions, traced once each.

Both take a whole (distributed) batch dict and run the per-replica work through
`strategy.run`; both have an input_signature from the dataset's element_spec, whose
batch, width and label dims are None, so no new image width or batch size retraces.
Nothing here touches the host: no .numpy(), no logging, no Python counters; what the
loop needs comes back as tensors, reduced across replicas with SUM.
"""

import dataclasses
from typing import Callable

import tensorflow as tf

from ctc_trainer import ctc, metrics
from ctc_trainer.charset import Charset


@dataclasses.dataclass
class Steps:
  train_step: Callable  # batch -> {loss_sum, examples, infeasible, grad_norm}
  eval_step: Callable   # batch -> {metric sums..., loss_sum}, samples (greedy, beam)


def _forward(model, batch, training):
  logits = model(batch["inputs"], input_length=batch["input_length"], training=training)
  logit_length = model.output_length(batch["input_length"])
  return logits, logit_length


def make_steps(model, optimizer, charset: Charset, strategy: tf.distribute.Strategy,
               element_spec, global_batch_size: int, clip_norm: float,
               beam_width: int) -> Steps:
  """Builds the two step functions for one model, optimizer and dataset spec."""

  def train_replica(batch):
    with tf.GradientTape() as tape:
      logits, logit_length = _forward(model, batch, training=True)
      loss, feasible = ctc.ctc_loss(batch["labels"], batch["label_length"], logits,
                                    logit_length)
      # Scaled by the global batch so that summing over replicas gives the mean.
      scaled = tf.reduce_sum(loss) / global_batch_size
    variables = model.trainable_variables
    grads = tape.gradient(scaled, variables)
    grad_norm = tf.linalg.global_norm(grads)
    if clip_norm > 0:
      grads, _ = tf.clip_by_global_norm(grads, clip_norm, use_norm=grad_norm)
    optimizer.apply_gradients(zip(grads, variables))
    return {
        "loss_sum": tf.reduce_sum(loss),
        "examples": tf.reduce_sum(tf.cast(feasible, tf.float32)),
        "infeasible": tf.reduce_sum(tf.cast(~feasible, tf.float32)),
        "grad_norm": grad_norm,
    }

  def eval_replica(batch):
    logits, logit_length = _forward(model, batch, training=False)
    loss, feasible = ctc.ctc_loss(batch["labels"], batch["label_length"], logits,
                                  logit_length)
    greedy = charset.decode(ctc.greedy_decode(logits, logit_length))
    beam_ids, _ = ctc.beam_search_decode(logits, logit_length, beam_width)
    beam = charset.decode(beam_ids[0])
    sums = metrics.batch_sums(beam, batch["text"])
    greedy_sums = metrics.batch_sums(greedy, batch["text"])
    sums["greedy_char_edits"] = greedy_sums["char_edits"]
    sums["greedy_seq_correct"] = greedy_sums["seq_correct"]
    sums["loss_sum"] = tf.reduce_sum(loss)
    sums["loss_examples"] = tf.reduce_sum(tf.cast(feasible, tf.float32))
    return sums, {"greedy": greedy, "beam": beam}

  def reduce_sum(values):
    return tf.nest.map_structure(
        lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None), values)

  @tf.function(input_signature=[element_spec])
  def train_step(batch):
    out = strategy.run(train_replica, args=(batch,))
    grad_norm = strategy.experimental_local_results(out.pop("grad_norm"))[0]
    out = reduce_sum(out)
    out["grad_norm"] = grad_norm
    return out

  @tf.function(input_signature=[element_spec])
  def eval_step(batch):
    sums, samples = strategy.run(eval_replica, args=(batch,))
    first_replica = tf.nest.map_structure(
        lambda v: strategy.experimental_local_results(v)[0], samples)
    return reduce_sum(sums), first_replica

  return Steps(train_step=train_step, eval_step=eval_step)
