"""Data-parallel training on TensorFlow, JAX and PyTorch through one strategy.

`data_parallel()` picks the backend's own engine for the devices and processes
present and returns a `DataParallel` strategy. Build and compile the models in
its `scope()`, call `prepare(model)` on each compiled model, pass each tf.data
input through `distribute_dataset()`, then call `fit` / `evaluate` as on one
device:

    strategy = keras_cskd.distribute.data_parallel()   # first thing in the program
    with strategy.scope():
        model = AestheticScorer(...)
        model.compile(jit_compile=False)
    strategy.prepare(model)
    model.fit(strategy.distribute_dataset(train_ds), epochs=10)

The dataset is batched with the *global* batch size B; each of the N replicas
sees B / N of it and the update equals the one-device update on B. With
several processes (JAX, torch), give the training pipelines `shard=strategy.shard`
so that each process reads and decodes only its own rows of every global
batch instead of decoding the whole batch and keeping its slice:

    train_ds = labeled_dataset(records, "train", batch_size=64, passes=clock, shard=strategy.shard)
    model.fit(strategy.distribute_dataset(train_ds))   # already this process's share: unchanged

Each backend's engine lives in its own module: `keras_cskd.distribute.tensorflow`,
`.jax` and `.torch`. Nothing here rebinds Keras methods: `scope()` is the
engine's own scope, and `prepare(model)` changes only the model it is given.

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
- metrics: `prepare` gives the SRCC / PLCC metrics of the model the
  engine's gather of every replica's (process's) scores, so a distributed
  `evaluate` gives the single-device values; mean metrics (loss, EMD,
  accuracy) are averaged over replicas (exact when B divides by N).
- batch normalisation: JAX normalises over the global batch (the whole batch is
  one sharded array). TensorFlow and torch normalise each replica's B / N
  samples (use `BatchNormalization(synchronized=True)` on TF for global
  statistics); torch averages the moving mean / variance of trainable
  `BatchNormalization` layers over ranks after each step, so they stay equal.
- frozen models (the CLIP teacher, the SKD teacher) are replicated and never
  updated; their forward runs on each replica's share of the batch.
"""

import contextlib

import keras

from keras_cskd.data.passes import Shard
from keras_cskd.data.passes import shard_of
from keras_cskd.metrics import SampleBufferMetric

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
        shard: `Shard(process_index, num_processes)`, or None where each
            process reads the global batches (one process, or TensorFlow).
        mixed_precision: str or None. The global dtype policy that was set.
        tf_strategy: the `tf.distribute.Strategy` (TensorFlow only).
        distribution: the `keras.distribution.DataParallel` (JAX only).
    """

    def __init__(
        self,
        backend,
        engine,
        num_replicas,
        num_processes=1,
        process_index=0,
        mixed_precision=None,
        tf_strategy=None,
        distribution=None,
    ):
        self.backend = backend
        self.engine = engine
        self.num_replicas = num_replicas
        self.num_processes = num_processes
        self.process_index = process_index
        self.mixed_precision = mixed_precision
        self.tf_strategy = tf_strategy
        self.distribution = distribution

    @property
    def is_chief(self):
        return self.process_index == 0

    @property
    def shard(self):
        """`shard=` for the training pipelines: this process's `Shard`, or None.

        None where the pipelines should build the global batches: one process,
        or TensorFlow, whose `tf.distribute` splits (and, multi-worker,
        auto-shards) the global batches itself.

        Example:
        >>> DataParallel("torch", "torch.distributed (gloo)", 4, num_processes=4, process_index=1).shard
        Shard(index=1, count=4)
        """
        if self.backend == "tensorflow" or self.num_processes == 1:
            return None
        return Shard(self.process_index, self.num_processes)

    def __repr__(self):
        return (
            f"DataParallel(engine={self.engine!r}, num_replicas={self.num_replicas}, "
            f"num_processes={self.num_processes}, process_index={self.process_index})"
        )

    def scope(self):
        """Build and compile the models in here.

        TF: the `tf.distribute` strategy's scope (variables become mirrored).
        JAX: the `keras.distribution.DataParallel` scope (also set globally,
        so `fit` may run outside). Otherwise nothing. It changes nothing
        else: call `prepare(model)` after `compile()`.
        """
        if self.tf_strategy is not None:
            return self.tf_strategy.scope()
        if self.distribution is not None:
            return self.distribution.scope()
        return contextlib.nullcontext(self)

    def distribute_dataset(self, dataset, sharded=None):
        """This process's share of a tf.data dataset batched with the global batch.

        TF: unchanged (Keras hands it to `tf.distribute`, which splits each
        global batch over the local replicas and, multi-worker, auto-shards
        it). JAX with one process: unchanged (Keras splits each batch over the
        devices). JAX multi-process and torch: every process reads the same
        global batches and keeps its contiguous slice of each (rows
        `[i * n // P, (i + 1) * n // P)` of every tensor, `n` that tensor's
        batch size), so the P slices make up exactly the global batch.

        A pipeline built with `shard=self.shard` is already this process's
        share (it decoded only its rows) and comes back unchanged; one built
        for another shard raises. `sharded` says it outright: `True` (the
        dataset is this process's share: unchanged), `False` (it holds the
        global batches: sliced). By default (`None`) the pipeline's own mark
        decides; a dataset derived from a sharded pipeline (`map` and the
        like after it) keeps only `AutoShardPolicy.OFF` in its options, and
        then `sharded` must be given rather than guessed.
        """
        shard = shard_of(dataset)
        if shard is not None and (sharded is False or shard != self.shard):
            expected = "the global batches (shard=None)" if self.shard is None else f"shard={tuple(self.shard)}"
            raise ValueError(
                f"this dataset was built as shard={tuple(shard)}, but this {self.engine} process reads {expected}; "
                "build the pipeline with shard=strategy.shard"
            )
        if self.backend == "tensorflow" or self.num_processes == 1:
            if sharded:
                raise ValueError("sharded=True, but this strategy reads the global batches (strategy.shard is None)")
            return dataset
        if sharded is None:
            if shard is not None:
                return dataset
            if _auto_shard_off(dataset):
                raise ValueError(
                    "this dataset has auto-sharding turned off, as datasets derived from a pipeline built "
                    "with shard= do: pass sharded=True if it is already this process's share, sharded=False "
                    "to slice its global batches"
                )
        if sharded:
            return dataset
        return shard_batches(dataset, self.num_processes, self.process_index)

    def prepare(self, model):
        """Make a compiled model train and evaluate data-parallel; returns it.

        Call it after `model.compile(...)` (again after each new `compile`),
        for every model that is trained or evaluated, loaded ones included.
        Idempotent, and a no-op where nothing is needed (one replica, JAX).

        - TF with several replicas: the model's SRCC / PLCC metrics get the
          strategy's all-gather (`metric.set_replica_gather`), so every
          replica's buffers hold every replica's scores.
        - torch with several processes: broadcasts rank 0's variables; wraps
          this model's `optimizer.apply` (on the instance) so that it first
          averages the gradients over ranks (one all-reduce, as DDP) and
          afterwards the moving statistics of trainable BatchNormalization
          layers; gives the SRCC / PLCC metrics the cross-process gather; and
          wraps this model's `get_metrics_result` (on the instance) so that the
          logged scalar values are averaged over ranks. The gather then runs
          in `update_state`, inside each train / test step, on every rank.
        """
        if self.backend == "tensorflow" and self.num_replicas > 1:
            from keras_cskd.distribute import tensorflow as engine
        elif self.backend == "torch" and self.num_processes > 1:
            from keras_cskd.distribute import torch as engine
        else:
            return model
        engine.prepare(model)
        for metric in replica_metrics(model):
            metric.set_replica_gather(engine.gather_replicas)
        return model


def _auto_shard_off(dataset):
    import tensorflow as tf

    try:
        policy = dataset.options().experimental_distribute.auto_shard_policy
    except AttributeError:
        return False
    return policy == tf.data.experimental.AutoShardPolicy.OFF


def replica_metrics(model):
    """The `SampleBufferMetric`s (SRCC, PLCC) that a compiled `model` updates.

    Looks at `model.metrics` (nested `CompileMetrics` once built) and at the
    metrics given to `compile()` (before the first step builds them). Metric
    identifiers that are not yet objects (a class, a config dict) and name a
    `SampleBufferMetric` are made into the object Keras would make at build,
    so that the object seen here is the one that runs.
    """
    found = []

    def add(metric):
        if isinstance(metric, SampleBufferMetric) and all(metric is not m for m in found):
            found.append(metric)
        for inner in getattr(metric, "metrics", None) or ():
            add(inner)

    for metric in model.metrics:
        add(metric)
    compiled = getattr(model, "_compile_metrics", None)
    if compiled is not None and not compiled.built:
        for name in ("_user_metrics", "_user_weighted_metrics"):
            user = getattr(compiled, name)
            resolved = _resolve_identifiers(user)
            if any(a is not b for a, b in zip(keras.tree.flatten(user), keras.tree.flatten(resolved))):
                object.__setattr__(compiled, name, resolved)
            for metric in keras.tree.flatten(resolved):
                add(metric)
    return found


def _resolve_identifiers(user):
    """`user` (compile's metrics nest) with `SampleBufferMetric` identifiers made objects."""
    if isinstance(user, dict):
        return {key: _resolve_identifiers(value) for key, value in user.items()}
    if isinstance(user, (list, tuple)):
        return type(user)(_resolve_identifiers(value) for value in user)
    if user is None or isinstance(user, (str, keras.metrics.Metric)):
        return user  # Keras names (strings) never resolve to SRCC / PLCC.
    try:
        metric = keras.metrics.get(user)
    except (ValueError, TypeError):
        return user
    return metric if isinstance(metric, SampleBufferMetric) else user


def shard_batches(dataset, num_shards, index):
    """Keep slice `index` of `num_shards` of every batch (all tensors, nested).

    Example:
    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.range(6).batch(3)
    >>> [b.tolist() for b in shard_batches(ds, 2, 1).as_numpy_iterator()]
    [[1, 2], [4, 5]]
    """
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


def data_parallel(enabled=True, mixed_precision=None, devices=None):
    """Return the `DataParallel` strategy for this backend, devices and processes.

    Call it first in the program (before building models; on TF before any
    other TensorFlow op, which `MultiWorkerMirroredStrategy` requires). Pass
    `jit_compile` to each model's `compile()`; call `strategy.prepare(model)`
    after it.

    Args:
        enabled: bool. False gives a one-device `DataParallel` (same API).
        mixed_precision: None, `"mixed_bfloat16"` or `"mixed_float16"`: set as
            Keras's global dtype policy. `mixed_float16` wraps the optimizer
            in a `LossScaleOptimizer` (Keras does that at compile).
        devices: JAX / TF only: device names to use (default: all of them,
            GPUs if any, else CPUs).

    Example:
    >>> import keras
    >>> strategy = data_parallel()
    >>> with strategy.scope():
    ...     model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    ...     model.compile(optimizer="sgd", loss="mse", jit_compile=False)
    >>> strategy.prepare(model) is model
    True
    >>> strategy.num_replicas >= 1
    True
    """
    if mixed_precision is not None:
        if mixed_precision not in _MIXED_POLICIES:
            raise ValueError(f"mixed_precision must be one of {_MIXED_POLICIES}, got {mixed_precision!r}.")
        keras.config.set_dtype_policy(mixed_precision)
    backend = keras.config.backend()
    if not enabled:
        return DataParallel(backend, "single device", 1, mixed_precision=mixed_precision)
    if backend == "tensorflow":
        from keras_cskd.distribute import tensorflow as engine

        found = engine.setup(devices)
    elif backend == "jax":
        from keras_cskd.distribute import jax as engine

        found = engine.setup(devices)
    elif backend == "torch":
        from keras_cskd.distribute import torch as engine

        found = engine.setup()
    else:
        raise ValueError(f"keras_cskd.distribute does not support the {backend!r} backend.")
    return DataParallel(backend, mixed_precision=mixed_precision, **found)
