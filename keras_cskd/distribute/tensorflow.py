"""The TensorFlow engine: `tf.distribute` Mirrored / MultiWorkerMirrored strategies."""

import json
import os

import tensorflow as tf


def setup(devices=None):
    """The `DataParallel` fields for the GPUs (or logical CPUs) and `TF_CONFIG` workers."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("cluster", {})
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if num_workers > 1:
        gpus = tf.config.list_physical_devices("GPU")
        implementation = (
            tf.distribute.experimental.CommunicationImplementation.NCCL
            if gpus
            else tf.distribute.experimental.CommunicationImplementation.RING
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation)
        )
        _reduce_nested_structures(strategy)
        resolver = strategy.cluster_resolver
        task_index = resolver.task_id if resolver.task_type in ("worker", None) else 0
        if "chief" in cluster and resolver.task_type == "worker":
            task_index += 1
        return {
            "engine": "tf.distribute.MultiWorkerMirroredStrategy",
            "num_replicas": strategy.num_replicas_in_sync,
            "num_processes": num_workers,
            "process_index": task_index,
            "tf_strategy": strategy,
        }
    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) <= 1:
        return {"engine": "single device", "num_replicas": 1, "tf_strategy": tf.distribute.get_strategy()}
    strategy = tf.distribute.MirroredStrategy(devices)
    return {
        "engine": "tf.distribute.MirroredStrategy",
        "num_replicas": strategy.num_replicas_in_sync,
        "tf_strategy": strategy,
    }


def prepare(model):
    """Nothing to do on the model itself: mirrored variables and Keras's loss scaling do it."""
    return model


def gather_replicas(tensor):
    """Concatenate `tensor` (batch axis first) over the replicas, in replica context.

    In cross-replica context (outside `strategy.run`, e.g. when Keras builds
    the metrics symbolically) or with one replica it returns `tensor` as is.
    """
    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return context.all_gather(tensor, axis=0)
    return tensor


def _reduce_nested_structures(strategy):
    """Let `strategy.reduce` take a nest of per-replica values, leaf by leaf.

    Keras's TF trainer reduces the first (x, y) batch with one
    `strategy.reduce` call to build the model symbolically; MirroredStrategy
    accepts the nest, MultiWorkerMirroredStrategy does not (keras-team/keras
    #20329, #20585). Reducing each leaf is what the nest means. Keras then
    reduces the scalar metric results with `axis=0`, which the multi-worker
    strategy rejects for rank-0 values; for a scalar, `axis=None` is the
    same mean.
    """
    reduce = strategy.reduce

    def rank(value):
        if isinstance(value, tf.distribute.DistributedValues):
            value = strategy.experimental_local_results(value)[0]
        return tf.convert_to_tensor(value).shape.rank

    def reduce_leaf(reduce_op, value, axis):
        if axis is not None and rank(value) == 0:
            axis = None
        return reduce(reduce_op, value, axis)

    def reduce_each(reduce_op, value, axis):
        return tf.nest.map_structure(lambda v: reduce_leaf(reduce_op, v, axis), value)

    strategy.reduce = reduce_each
