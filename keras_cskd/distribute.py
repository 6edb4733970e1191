"""One door to data-parallel training on TensorFlow, JAX and PyTorch.

`data_parallel()` picks the backend's own engine for the devices and processes
present and returns a `DataParallel` object. Build and compile the models in
its `scope()`, pass each tf.data input through `distribute_dataset()`, then
call `fit` / `evaluate` as on one device:

    strategy = keras_cskd.distribute.data_parallel()   # first thing in the program
    with strategy.scope():
        model = AestheticScorer(...)
        model.compile()
    model.fit(strategy.distribute_dataset(train_ds), epochs=10)

The dataset is batched with the *global* batch size B; each of the N replicas
sees B / N of it and the update equals the one-device update on B.

| backend | engine | processes |
| --- | --- | --- |
| tensorflow | `tf.distribute.MirroredStrategy` over the local GPUs (or logical CPUs); `MultiWorkerMirroredStrategy` when `TF_CONFIG` names several workers | one per host |
| jax | `keras.distribution.DataParallel` over `keras.distribution.list_devices()`; several processes join through `keras.distribution.initialize` (`KERAS_DISTRIBUTION_*` variables, or SLURM) | one per host |
| torch | `torch.distributed` (NCCL on GPUs, gloo on CPUs) from the `torchrun` variables; gradients averaged with one all-reduce before each optimizer step | one per GPU |

What each engine synchronises:

- trainable weights: identical on every replica after every step (TF mirrored
  variables; JAX replicated arrays; torch: rank 0's weights broadcast in
  `prepare`, then every rank applies the same all-reduced mean gradient).
- losses: the library's losses are `keras.losses.Loss` objects, which Keras
  scales by 1/N under `tf.distribute`, so the summed replica gradients are the
  mean gradient over the global batch; JAX computes on the global batch as one
  array; torch averages gradients over ranks (DDP semantics).
- metrics: SRCC / PLCC gather every replica's (process's) scores, so a
  distributed `evaluate` gives the single-device values; mean metrics (loss,
  EMD, accuracy) are averaged over replicas (exact when B divides by N).
- batch normalisation: JAX normalises over the global batch (the whole batch is
  one sharded array). TensorFlow and torch normalise each replica's B / N
  samples (use `BatchNormalization(synchronized=True)` on TF for global
  statistics); torch averages the moving mean / variance of trainable
  `BatchNormalization` layers over ranks after each step, so they stay equal.
- frozen models (the CLIP teacher, the SKD teacher) are replicated and never
  updated; their forward runs on each replica's share of the batch.
"""

import contextlib
import json
import os

import keras

_MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16", "float32", "bfloat16", "float16")


class DataParallel:
    """Data parallelism on the current backend; made by `data_parallel()`.

    Attributes:
        backend: str. The Keras backend.
        engine: str. What runs it, e.g. `"tf.distribute.MirroredStrategy"`.
        num_replicas: int. Replicas that share the global batch (devices on
            TF / JAX, processes on torch).
        num_processes: int. Processes in the job.
        process_index: int. This process's index (0 is the chief).
        is_chief: bool. Whether this process should write checkpoints and logs.
        mixed_precision: str or None. The global dtype policy that was set.
        jit_compile: bool or None. Default `jit_compile` for `compile()` in scope.
        tf_strategy: the `tf.distribute.Strategy` (TensorFlow only).
        distribution: the `keras.distribution.DataParallel` (JAX only).
    """

    def __init__(self, backend, engine, num_replicas, num_processes=1, process_index=0,
                 mixed_precision=None, jit_compile=None, tf_strategy=None, distribution=None):
        self.backend = backend
        self.engine = engine
        self.num_replicas = num_replicas
        self.num_processes = num_processes
        self.process_index = process_index
        self.mixed_precision = mixed_precision
        self.jit_compile = jit_compile
        self.tf_strategy = tf_strategy
        self.distribution = distribution

    @property
    def is_chief(self):
        return self.process_index == 0

    def __repr__(self):
        return (
            f"DataParallel(engine={self.engine!r}, num_replicas={self.num_replicas}, "
            f"num_processes={self.num_processes}, process_index={self.process_index})"
        )

    @contextlib.contextmanager
    def scope(self):
        """Build and compile the models in here.

        TF: the strategy's scope (variables become mirrored). JAX: the
        `DataParallel` distribution (also set globally, so `fit` may run
        outside). Torch: every model compiled in here gets `prepare(model)`.
        Everywhere: `compile()` defaults to this object's `jit_compile`.
        """
        original = keras.Model.compile
        owned = "compile" in vars(keras.Model)
        door = self

        def compile(model, *args, **kwargs):
            if door.jit_compile is not None:
                kwargs.setdefault("jit_compile", door.jit_compile)
            result = original(model, *args, **kwargs)
            door.prepare(model)
            return result

        keras.Model.compile = compile
        try:
            if self.tf_strategy is not None:
                with self.tf_strategy.scope():
                    yield self
            elif self.distribution is not None:
                with self.distribution.scope():
                    yield self
            else:
                yield self
        finally:
            if owned:
                keras.Model.compile = original
            else:
                del keras.Model.compile

    def distribute_dataset(self, dataset):
        """This process's share of a tf.data dataset batched with the global batch.

        TF: unchanged (Keras hands it to `tf.distribute`, which splits each
        global batch over the local replicas and, multi-worker, auto-shards
        it). JAX with one process: unchanged (Keras splits each batch over the
        devices). JAX multi-process and torch: every process reads the same
        global batches and keeps its contiguous slice of each (rows
        `[i * n // P, (i + 1) * n // P)` of every tensor, `n` that tensor's
        batch size), so the P slices make up exactly the global batch.
        """
        if self.backend == "tensorflow" or self.num_processes == 1:
            return dataset
        return shard_batches(dataset, self.num_processes, self.process_index)

    def prepare(self, model):
        """Make a compiled model train data-parallel (torch); a no-op elsewhere.

        `scope()` calls it for every model compiled inside. On torch it
        broadcasts rank 0's variables, makes the optimizer average gradients
        over ranks before each step (one all-reduce of all gradients, as DDP),
        averages trainable BatchNormalization moving statistics after each
        step, gathers SRCC/PLCC samples across ranks during `train_step` /
        `test_step`, and averages the logged metric values over ranks. Idempotent.
        """
        if self.backend != "torch" or self.num_processes == 1:
            return model
        if getattr(model, "_cskd_data_parallel", False):
            return model
        _torch_prepare(model)
        object.__setattr__(model, "_cskd_data_parallel", True)
        return model


def shard_batches(dataset, num_shards, index):
    """Keep slice `index` of `num_shards` of every batch (all tensors, nested)."""
    import tensorflow as tf

    def take(tensor):
        size = tf.shape(tensor)[0]
        start = index * size // num_shards
        end = (index + 1) * size // num_shards
        return tensor[start:end]

    def slice_all(*element):
        sliced = tf.nest.map_structure(take, element)
        return sliced if len(sliced) > 1 else sliced[0]

    return dataset.map(slice_all, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def data_parallel(enabled=True, mixed_precision=None, jit_compile=None, devices=None):
    """Return the `DataParallel` door for this backend, devices and processes.

    Call it first in the program (before building models; on TF before any
    other TensorFlow op, which `MultiWorkerMirroredStrategy` requires).

    Args:
        enabled: bool. False gives a one-device `DataParallel` (same API).
        mixed_precision: None, `"mixed_bfloat16"` or `"mixed_float16"`: set as
            Keras's global dtype policy. `mixed_float16` wraps the optimizer
            in a `LossScaleOptimizer` (Keras does that at compile).
        jit_compile: None (the backend's default), True or False: the default
            `jit_compile` for `compile()` inside `scope()` (XLA on TF / JAX,
            `torch.compile` on torch).
        devices: JAX / TF only: device names to use (default: all of them,
            GPUs if any, else CPUs).

    Example:
    >>> import keras
    >>> strategy = data_parallel()
    >>> with strategy.scope():
    ...     model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    ...     model.compile(optimizer="sgd", loss="mse")
    >>> strategy.num_replicas >= 1
    True
    """
    if mixed_precision is not None:
        if mixed_precision not in _MIXED_POLICIES:
            raise ValueError(f"mixed_precision must be one of {_MIXED_POLICIES}, got {mixed_precision!r}.")
        keras.config.set_dtype_policy(mixed_precision)
    backend = keras.config.backend()
    options = {"mixed_precision": mixed_precision, "jit_compile": jit_compile}
    if not enabled:
        return DataParallel(backend, "single device", 1, **options)
    if backend == "tensorflow":
        return _tensorflow(devices, options)
    if backend == "jax":
        return _jax(devices, options)
    if backend == "torch":
        return _torch(options)
    raise ValueError(f"keras_cskd.distribute does not support the {backend!r} backend.")


# === TensorFlow ===


def _tensorflow(devices, options):
    import tensorflow as tf

    cluster = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("cluster", {})
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if num_workers > 1:
        gpus = tf.config.list_physical_devices("GPU")
        implementation = (
            tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
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
        return DataParallel(
            "tensorflow", "tf.distribute.MultiWorkerMirroredStrategy", strategy.num_replicas_in_sync,
            num_processes=num_workers, process_index=task_index, tf_strategy=strategy, **options,
        )
    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) <= 1:
        return DataParallel("tensorflow", "single device", 1, tf_strategy=tf.distribute.get_strategy(), **options)
    strategy = tf.distribute.MirroredStrategy(devices)
    return DataParallel(
        "tensorflow", "tf.distribute.MirroredStrategy", strategy.num_replicas_in_sync,
        tf_strategy=strategy, **options,
    )


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
    import tensorflow as tf

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


# === JAX ===


def _jax_multi_process_requested():
    if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") or int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1:
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def _jax(devices, options):
    import jax

    if _jax_multi_process_requested() and not jax.distributed.is_initialized():
        # CPU processes need a collectives implementation; GPUs use NCCL.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize()  # KERAS_DISTRIBUTION_* variables, or SLURM
    if devices is None:
        devices = keras.distribution.list_devices()
    num_processes = jax.process_count()
    if len(devices) <= 1:
        return DataParallel("jax", "single device", 1, **options)
    # Our `distribute_dataset` slices each global batch per process (any
    # nesting, inputs of different batch sizes), so Keras's own rebatch+shard
    # of tf.data (which needs one static batch size) stays off.
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    return DataParallel(
        "jax", "keras.distribution.DataParallel", len(devices), num_processes=num_processes,
        process_index=jax.process_index(), distribution=distribution, **options,
    )


# === PyTorch ===


def _torch(options):
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not dist.is_initialized():
        return DataParallel("torch", "single device", 1, **options)
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    engine = f"torch.distributed ({dist.get_backend()})"
    return DataParallel(
        "torch", engine, dist.get_world_size(), num_processes=dist.get_world_size(),
        process_index=dist.get_rank(), **options,
    )


def _all_reduce_mean(tensors):
    """Average a list of torch tensors over ranks in place, one all-reduce."""
    import torch
    import torch.distributed as dist

    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].reshape(t.shape).to(t.dtype))
        offset += n


def _torch_gather(tensor):
    """Concatenate a 1-D torch tensor from every rank (sizes may differ)."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def _batch_norm_statistics(model):
    variables = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            variables += [layer.moving_mean, layer.moving_variance]
    return variables


def _torch_prepare(model):
    import torch
    import torch.distributed as dist

    from keras_cskd import metrics as cskd_metrics

    with torch.no_grad():
        for variable in model.variables:
            dist.broadcast(variable.value.data, src=0)

    optimizer = model.optimizer
    apply = optimizer.apply
    statistics = _batch_norm_statistics(model)

    def averaged_apply(grads, trainable_variables=None):
        present = [g for g in grads if g is not None]
        with torch.no_grad():
            _all_reduce_mean(present)
        result = apply(grads, trainable_variables) if trainable_variables is not None else apply(grads)
        with torch.no_grad():
            _all_reduce_mean([v.value.data for v in statistics])
        return result

    object.__setattr__(optimizer, "apply", averaged_apply)

    def synced(step):
        def run(data):
            previous = cskd_metrics._cross_process_gather
            cskd_metrics._cross_process_gather = _torch_gather
            try:
                return step(data)
            finally:
                cskd_metrics._cross_process_gather = previous
        return run

    object.__setattr__(model, "train_step", synced(model.train_step))
    object.__setattr__(model, "test_step", synced(model.test_step))

    get_metrics_result = model.get_metrics_result

    def averaged_metrics_result():
        results = get_metrics_result()
        names = [n for n, v in results.items() if _is_scalar(v)]
        if names:
            values = torch.stack([torch.as_tensor(results[n], dtype=torch.float32).reshape(()).cpu() for n in names])
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            values = values.to(device)
            dist.all_reduce(values)
            values = (values / dist.get_world_size()).cpu()
            results = dict(results)
            for name, value in zip(names, values):
                results[name] = value
        return results

    object.__setattr__(model, "get_metrics_result", averaged_metrics_result)


def _is_scalar(value):
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.numel() == 1
    except ImportError:  # pragma: no cover
        pass
    return isinstance(value, (int, float))
