"""The training input through the tf.data service (--data_service=grpc://HOST:PORT).

The whole training pipeline (read, decode, augment, batch, labels) is registered with
the service's dispatcher and runs on its workers (tools/data_service.py starts both);
the trainer only receives finished batches. Eval is never sent there.

Sharding (--data_service_sharding):
  dynamic  ShardingPolicy.DYNAMIC, the processing mode "distributed_epoch": the
           pipeline's one source is a Dataset.range of stream positions
           (ListedSource.positioned_examples), which the dispatcher splits among
           the workers, so each position is produced once, by one worker. A
           worker's death loses what it had in flight (those positions are
           skipped, never produced twice: at-most-once), and the batches carry
           their positions, so a resumed run starts after the highest one seen.
  off      ShardingPolicy.OFF, "parallel_epochs": each worker runs the whole
           pipeline, so every example comes once per worker and epoch; resume
           is not exact. For pipelines without positions.
"""

import tensorflow as tf

from ctc_trainer.config import DataConfig

SHARDING = {"dynamic": tf.data.experimental.service.ShardingPolicy.DYNAMIC,
            "off": tf.data.experimental.service.ShardingPolicy.OFF}


def distribute(ds: tf.data.Dataset, cfg: DataConfig) -> tf.data.Dataset:
  """ds, produced by the service at cfg.data_service. Each call (each trainer
  process, each resume) registers its own job, so a trainer reads its own stream."""
  return ds.apply(tf.data.experimental.service.distribute(
      processing_mode=SHARDING[cfg.data_service_sharding], service=cfg.data_service))
