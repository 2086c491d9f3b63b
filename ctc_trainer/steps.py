"""The inner loop: train_step and eval_step as tf.functions, traced once each.

Both take a whole (distributed) batch dict and run the per-replica work through
`strategy.run`; both have an input_signature from the dataset's element_spec, whose
batch, width and label dims are None, so no new image width or batch size retraces.
Nothing here touches the host: no .numpy(), no logging, no Python counters; what the
loop needs comes back as tensors, reduced across replicas with SUM.
"""

import dataclasses
from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf

from ctc_trainer import ctc, decoders, metrics
from ctc_trainer.charset import Charset
from ctc_trainer.decoders import DecoderConfig


@dataclasses.dataclass
class StepFns:
  # batch -> {loss_sum, loss_examples, examples, infeasible, grad_norm, skipped, infeasible_keys,
  #           nonfinite_keys}; a step with a non-finite loss or gradient leaves the
  #           weights and optimizer untouched and reports skipped = 1.
  train_step: Callable
  # batch -> ({"<decoder>/<sum>" per decoder and metrics.SUM_KEYS, loss_sum,
  #           loss_examples}, {decoder: its top-1 strings [B], "<decoder>/log_prob":
  #           their log probabilities float32 [B]}), for every decoder named to
  #           make_step_fns.
  eval_step: Callable
  # train_step with the layer groups named by make_step_fns' `frozen` left alone,
  # for the first frozen_steps steps; None when nothing is frozen.
  train_step_frozen: Optional[Callable] = None
  frozen_steps: int = 0
  # Host decoders (decoders.registry.HostDecoder) by name, built once: they decode
  # the logits eval_step returns when there are any; `evaluate` runs them.
  host_decoders: Dict[str, Callable] = dataclasses.field(default_factory=dict)
  charset: Optional[Charset] = None

  def train_step_for(self, done: int) -> Callable:
    """The train step function that runs after `done` steps."""
    return self.train_step_frozen if done < self.frozen_steps else self.train_step

  def evaluate(self, batch):
    """eval_step, then each host decoder on the logits it returned: its strings
    scored by the same metrics.batch_sums -> eval_step's (sums, samples) with the
    host decoders' entries added (in the order of --decoder, in-graph ones first).
    With host decoders this reads the logits back once per batch."""
    sums, samples = self.eval_step(batch)
    if not self.host_decoders:
      return sums, samples
    logits = samples.pop(HOST_LOGITS).numpy()
    lengths = samples.pop(HOST_LENGTHS).numpy()
    references = samples.pop(HOST_TEXT)
    first = int(samples.pop(HOST_FIRST_ROWS))
    for name, decode in self.host_decoders.items():
      paths, scores = decode(logits, lengths)
      texts = tf.constant([self.charset.decode_py(p) for p in paths[0]], tf.string)
      for key, value in metrics.batch_sums(texts, references).items():
        sums[f"{name}/{key}"] = value
      # Like the in-graph decoders' samples: the first replica's rows.
      samples[name] = texts[:first]
      samples[f"{name}/log_prob"] = tf.constant(scores[:first, 0], tf.float32)
    return sums, samples


# eval_step's extra samples when host decoders run: every local replica's logits
# float32 [B, T, C] (padded along T to the longest), lengths [B], references [B],
# and how many rows the first replica holds.
HOST_LOGITS, HOST_LENGTHS = "host/logits", "host/logit_length"
HOST_TEXT, HOST_FIRST_ROWS = "host/text", "host/first_rows"


def decoder_sums(sums: Dict[str, float], name: str) -> Dict[str, float]:
  """The metrics.SUM_KEYS sums of decoder `name` out of eval_step's sums."""
  return {k: sums[f"{name}/{k}"] for k in metrics.SUM_KEYS}


def _forward(model, batch, training, frozen=()):
  # frozen only when there is something to freeze: a model need not take it otherwise.
  extra = {"frozen": frozen} if frozen else {}
  logits = model(batch["inputs"], input_length=batch["input_length"], training=training,
                 **extra)
  logit_length = model.output_length(batch["input_length"])
  return logits, logit_length


def make_step_fns(model, optimizer, charset: Charset, strategy: tf.distribute.Strategy,
                  element_spec, global_batch_size: int, clip_norm: float,
                  beam_width: int, confidence_penalty: float = 0.0, jit_compile: bool = False,
                  decoder_names: Sequence[str] = ("beam", "greedy"),
                  frozen: Sequence[str] = (), frozen_steps: int = 0,
                  decoder_config: Optional[DecoderConfig] = None) -> StepFns:
  """Builds the step functions for one model, optimizer and dataset spec.

  element_spec: the batch signature, or for several replicas the distributed
  dataset's element_spec (PerReplicaSpec values). jit_compile: XLA-compile the
  forward and backward pass (the optimizer update stays outside XLA).
  decoder_names: registered decoders (ctc_trainer.decoders) that eval_step decodes
  with, each at beam_width, each scored on its best path; host decoders among them
  (lm, lexicon, pattern) are built here, with decoder_config (its beam width
  replaced by beam_width), and decode eval_step's logits in StepFns.evaluate.
  confidence_penalty: weight of the output entropy (ctc.frame_entropy) that
  train_step subtracts from the loss it differentiates; the logged loss stays the
  CTC loss. frozen: layer groups of the model (SequenceModel.layer_groups) that
  train_step_frozen runs as in inference and does not update, for the first
  frozen_steps steps; a second function, so that each is traced once.
  """
  loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  decoder_config = dataclasses.replace(decoder_config or DecoderConfig(),
                                      beam_width=beam_width, top_paths=1)
  eval_decoders = [decoders.get(n) for n in decoder_names if not decoders.get(n).host]
  host_decoders = {n: decoders.get(n).build(charset, decoder_config)
                   for n in decoder_names if decoders.get(n).host}
  num_replicas = strategy.num_replicas_in_sync
  # On CPU TensorFlow's CTC kernel (sparse labels) is many times faster than the
  # dense-label loss, which is built from ops (docs/benchmarks.md); GPUs, TPUs and
  # XLA take dense labels.
  cpu_only = not any(tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU"))

  def reduce_sum(values):
    return tf.nest.map_structure(
        lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None), values)

  def make_train_step(frozen: Sequence[str]):
    """train_step, with the layer groups `frozen` run as in inference and their
    weights left out of the gradient and the update."""
    groups = model.layer_groups() if frozen else {}
    fixed = {id(v) for group in frozen for layer in groups[group]
             for v in layer.trainable_weights}
    variables = [v for v in model.trainable_variables if id(v) not in fixed]

    def loss_and_grads(inputs, input_length, labels, label_length):
      """Forward and backward on one replica's batch -> (loss [B], feasible [B], grads).

      Takes the numeric batch entries only, so that XLA can compile it whole.
      """
      batch = {"inputs": inputs, "input_length": input_length}
      with tf.GradientTape() as tape:
        logits, logit_length = _forward(model, batch, training=True, frozen=frozen)
        loss, feasible = ctc.ctc_loss(labels, label_length, logits, logit_length,
                                      sparse_labels=cpu_only and not jit_compile)
        objective = tf.reduce_sum(loss)
        if confidence_penalty:
          objective -= confidence_penalty * tf.reduce_sum(
              ctc.frame_entropy(logits, logit_length))
        # Scaled by the global batch so that summing over replicas gives the mean.
        scaled = objective / global_batch_size
        if loss_scaling:
          scaled = optimizer.scale_loss(scaled)
      return loss, feasible, tape.gradient(scaled, variables)

    if jit_compile:
      # XLA compiles once per input shape: pair it with length bucketing.
      loss_and_grads = tf.function(loss_and_grads, jit_compile=True, autograph=False)

    def train_replica(batch):
      loss, feasible, grads = loss_and_grads(batch["inputs"], batch["input_length"],
                                             batch["labels"], batch["label_length"])
      # Sum the gradients over replicas here, not in the optimizer, so that the norm
      # and the clipping are of the global gradient, as on one device.
      context = tf.distribute.get_replica_context()
      if num_replicas > 1:
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
      scale = tf.cast(optimizer.dynamic_scale, tf.float32) if loss_scaling else 1.0
      grad_norm = tf.linalg.global_norm(grads) / scale
      bad = ~tf.math.is_finite(tf.reduce_sum(loss) + grad_norm)
      bad = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(bad, tf.float32)) > 0
      if clip_norm > 0:
        factor = clip_norm / tf.maximum(grad_norm, clip_norm)
        grads = [g * factor for g in grads]
      no_keys = tf.zeros([0], tf.string)
      examples = tf.reduce_sum(tf.cast(feasible, tf.float32))
      return grads, bad, {
          # A skipped step's loss is left out, and so are its examples: the logged
          # mean loss is over applied steps only.
          "loss_sum": tf.where(bad, 0.0, tf.reduce_sum(loss)),
          "loss_examples": tf.where(bad, 0.0, examples),
          "examples": examples,
          "infeasible": tf.reduce_sum(tf.cast(~feasible, tf.float32)),
          "grad_norm": tf.where(bad, 0.0, grad_norm),
          "infeasible_keys": tf.boolean_mask(batch["key"], ~feasible),
          "nonfinite_keys": tf.cond(bad, lambda: batch["key"], lambda: no_keys),
      }

    # No AutoGraph in the step functions: their control flow is tf.cond and the
    # models' tf.while_loops already; converting the code cost about 3 s of each
    # process's first trace (docs/architecture.md).
    @tf.function(input_signature=[element_spec], autograph=False)
    def train_step(batch):
      grads, bad, out = strategy.run(train_replica, args=(batch,))
      local = lambda v: strategy.experimental_local_results(v)
      # Replicas agree on skipping and on the (global) gradient norm.
      bad = local(bad)[0]

      # The skip (tf.cond) is decided here, in cross-replica context: a cond around
      # an update that synchronizes replicas is not allowed inside strategy.run. The
      # update itself runs per replica, where the optimizer sums the gradients once
      # more, so each replica hands it its share of the (already summed) gradient.
      def apply():
        def update(grads):
          shares = [g / num_replicas for g in grads]
          optimizer.apply_gradients(zip(shares, variables))
        with strategy.scope():
          strategy.extended.call_for_each_replica(update, args=(grads,))
        return tf.constant(0.0)

      if loss_scaling:
        # The loss-scale optimizer must see non-finite steps to lower its scale; it
        # leaves the weights alone on those steps itself.
        apply()
        skipped = tf.cast(bad, tf.float32)
      else:
        skipped = tf.cond(bad, lambda: tf.constant(1.0), apply)
      keys = {k: tf.concat(local(out.pop(k)), axis=0)
              for k in ("infeasible_keys", "nonfinite_keys")}
      grad_norm = local(out.pop("grad_norm"))[0]
      return {**reduce_sum(out), "grad_norm": grad_norm, "skipped": skipped, **keys}

    return train_step

  def eval_replica(batch):
    logits, logit_length = _forward(model, batch, training=False)
    loss, feasible = ctc.ctc_loss(batch["labels"], batch["label_length"], logits,
                                  logit_length, sparse_labels=cpu_only)
    sums = {"loss_sum": tf.reduce_sum(loss),
            "loss_examples": tf.reduce_sum(tf.cast(feasible, tf.float32))}
    samples = {}
    for decoder in eval_decoders:
      paths, log_probs = decoder(logits, logit_length, decoder_config)
      texts = charset.decode(paths[0])
      samples[decoder.name] = texts
      samples[f"{decoder.name}/log_prob"] = log_probs[:, 0]
      for key, value in metrics.batch_sums(texts, batch["text"]).items():
        sums[f"{decoder.name}/{key}"] = value
    host = {}
    if host_decoders:
      host = {HOST_LOGITS: tf.cast(logits, tf.float32), HOST_LENGTHS: logit_length,
              HOST_TEXT: batch["text"]}
    return sums, samples, host

  @tf.function(input_signature=[element_spec], autograph=False)
  def eval_step(batch):
    sums, samples, host = strategy.run(eval_replica, args=(batch,))
    local = strategy.experimental_local_results
    first_replica = tf.nest.map_structure(lambda v: local(v)[0], samples)
    if host_decoders:
      parts = local(host[HOST_LOGITS])
      frames = tf.reduce_max(tf.stack([tf.shape(p)[1] for p in parts]))
      first_replica[HOST_LOGITS] = tf.concat(
          [tf.pad(p, [[0, 0], [0, frames - tf.shape(p)[1]], [0, 0]]) for p in parts], 0)
      first_replica[HOST_LENGTHS] = tf.concat(local(host[HOST_LENGTHS]), 0)
      first_replica[HOST_TEXT] = tf.concat(local(host[HOST_TEXT]), 0)
      first_replica[HOST_FIRST_ROWS] = tf.shape(parts[0])[0]
    return reduce_sum(sums), first_replica

  extra = {"host_decoders": host_decoders, "charset": charset}
  if not (frozen and frozen_steps):
    return StepFns(train_step=make_train_step(()), eval_step=eval_step, **extra)
  return StepFns(train_step=make_train_step(()), eval_step=eval_step,
                 train_step_frozen=make_train_step(tuple(frozen)),
                 frozen_steps=frozen_steps, **extra)
