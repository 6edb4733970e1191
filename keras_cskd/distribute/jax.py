"""The JAX engine: `keras.distribution.DataParallel`, several processes through `jax.distributed`."""

import os

import jax
import keras


def _multi_process_requested():
    if (
        os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES")
        or int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1
    ):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def setup(devices=None):
    """The `DataParallel` fields for every device of every process; sets the distribution.

    A model needs no preparation on JAX: each batch is one global array sharded
    over the devices, so gradients, BatchNormalization and SRCC / PLCC see the
    whole batch.
    """
    if _multi_process_requested() and not jax.distributed.is_initialized():
        # CPU processes need a collectives implementation; GPUs use NCCL.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize()  # KERAS_DISTRIBUTION_* variables, or SLURM
    if devices is None:
        devices = keras.distribution.list_devices()
    if len(devices) <= 1:
        return {"engine": "single device", "num_replicas": 1}
    # Each process's slice of every global batch comes from our pipelines
    # (`shard=strategy.shard`) or our `distribute_dataset` (any nesting, inputs
    # of different batch sizes), so Keras's own rebatch+shard of tf.data
    # (which needs one static batch size) stays off.
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    return {
        "engine": "keras.distribution.DataParallel",
        "num_replicas": len(devices),
        "num_processes": jax.process_count(),
        "process_index": jax.process_index(),
        "distribution": distribution,
    }
