"""tf.distribute strategies, numeric precision, and who writes a run's files.

  default       one device (the default strategy)
  mirrored      all local GPUs (or the logical CPU devices), in-process all-reduce
  multi_worker  MultiWorkerMirroredStrategy over the machines in TF_CONFIG
  tpu           TPUStrategy on the TPU named by TPU_NAME (not tested here: no TPU)

Data is fed with `distribute_datasets_from_function`, so each worker reads its own
shard (InputContext) and batches at the per-replica size. Only the chief writes
checkpoints and summaries where the others would collide with it; the others save
their (identical) checkpoints under WORKDIR/workers/<index> because saving in a
multi-worker run is a collective that every worker must join.
"""

import json
import os

import keras
import tensorflow as tf

from ctc_trainer.errors import DistributeError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

# What a collective raises when a peer died or stopped answering.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.CancelledError, tf.errors.AbortedError)


def peer_lost(error: tf.errors.OpError, step: int) -> DistributeError:
  first = str(error.message).strip().splitlines()[0]
  return DistributeError(f"lost contact with another worker during step {step}: {first}."
                         " Restart all workers; they resume from the last checkpoint")


def make_strategy(name: str, worker_timeout_s: int = 120) -> tf.distribute.Strategy:
  """worker_timeout_s: multi_worker collectives fail after waiting this long for a
  peer, so a dead worker becomes a clear error instead of a silent hang."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise DistributeError("--strategy=multi_worker needs TF_CONFIG (cluster and task) "
                            "in the environment of every worker")
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=worker_timeout_s)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=os.environ.get("TPU_NAME", ""))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise DistributeError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")


def set_precision(name: str) -> None:
  """Sets the Keras dtype policy. Models keep their logits in float32 and the CTC
  loss casts to float32, so only the bulk of the network runs in 16 bits."""
  if name not in PRECISIONS:
    raise DistributeError(f"unknown precision {name!r}; known: {', '.join(PRECISIONS)}")
  keras.mixed_precision.set_global_policy(name)


def task() -> tuple:
  """(task type, index) from TF_CONFIG; ('chief', 0) without one."""
  config = json.loads(os.environ.get("TF_CONFIG", "{}"))
  t = config.get("task", {})
  return t.get("type", "chief"), int(t.get("index", 0))


def is_chief() -> bool:
  """The chief, or worker 0 when the cluster has no chief, writes the run's files."""
  task_type, index = task()
  cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
  if task_type == "chief":
    return True
  return task_type == "worker" and index == 0 and "chief" not in cluster


def checkpoint_dir(workdir: str) -> str:
  if is_chief():
    return workdir
  return os.path.join(workdir, "workers", "-".join(map(str, task())))


def is_distributed(strategy: tf.distribute.Strategy) -> bool:
  """False for the default strategy, which feeds plain (checkpointable) iterators."""
  return strategy is not tf.distribute.get_strategy()


def distributed_spec(strategy: tf.distribute.Strategy, signature):
  """The element_spec that step functions take for batches of `signature` under
  `strategy`: the signature itself on the default strategy, else the distributed
  dataset's (PerReplicaSpecs where a worker has several replicas)."""
  if not is_distributed(strategy):
    return signature
  empty = lambda _: tf.data.Dataset.from_generator(lambda: iter(()),
                                                   output_signature=signature)
  return strategy.distribute_datasets_from_function(empty).element_spec
