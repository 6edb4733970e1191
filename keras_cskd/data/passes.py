"""Numbered passes: the randomness of each epoch fixed by (seed, epoch).

tf.data's `reshuffle_each_iteration` draws each pass's seed from a hidden
counter that starts over in a new process, so a run resumed at epoch 5 would
shuffle and augment epoch 5 like epoch 1. The pipelines of this package
instead derive every random choice of a pass (file order, crops, flips,
source mixing) with stateless ops from `(seed, pass number)`, and number
the passes with a `PassClock` that the caller owns: give it to a pipeline as
`passes=clock` (`seed=s` is short for `passes=PassClock(s)`), and keep it.

The clock counts the passes of its dataset 0, 1, 2, ... (each `fit` epoch
iterates once, so plain `fit` reshuffles every epoch). `clock.pin(epoch)`
sets the number of the next pass; `keras_cskd.callbacks.PassesFollowEpochs`
does so at the start of every epoch, so a resumed `fit` (`initial_epoch=k`)
reads exactly the data of an uninterrupted one. The clock is a plain Python
object, so it keeps working whatever the dataset goes through afterwards
(`map`, `distribute_dataset`, ...):

    clock = PassClock(seed=0)
    ds = labeled_dataset(records, "train", passes=clock)
    model.fit(ds, epochs=10, callbacks=[PassesFollowEpochs(clock), CheckpointEachEpoch(backup_dir)])

Example:

>>> clock = PassClock(seed=0)
>>> ds = clock.start(clock.each_pass(0, lambda seed: tf.data.Dataset.from_tensors(seed)))
>>> first, second = next(iter(ds)), next(iter(ds))  # two passes differ
>>> bool((first != second).numpy().any())
True
>>> clock.pin(0)
>>> bool((next(iter(ds)) == first).numpy().all())  # pass 0 again
True
"""

import random
import threading
import typing
import weakref

import tensorflow as tf


class PassClock:
    """Numbers the passes over a dataset; see the module docstring.

    Args:
        seed: base seed of every pass; `None` draws one at random (the
            passes still differ from each other, but not from run to run).
            A clock with a seed also makes the parallel stages of its
            pipelines keep their order (`seeded`), so passes are reproducible.
    """

    def __init__(self, seed=None):
        self.seeded = seed is not None
        self.seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
        self.current = 0
        self._next = 0
        self._lock = threading.Lock()

    def pin(self, number):
        """Make the next pass number `number` (e.g. the epoch about to start)."""
        with self._lock:
            self._next = int(number)

    def _start_pass(self):
        with self._lock:
            self.current, self._next = self._next, self._next + 1
        return True

    def start(self, ds):
        """`ds`, starting a new pass each time it is iterated (before anything reads the clock)."""
        start = side_step(lambda: tf.py_function(self._start_pass, [], tf.bool), ds.element_spec)
        return start.concatenate(ds)

    def _pass_seed(self):
        return tf.constant([self.seed, self.current], tf.int64)

    def each_pass(self, salt, make):
        """The dataset `make(seed)` for this pass's seed, a (2,) int64 tensor.

        `salt` (an int) tells apart the random streams of one pass (file
        order, augmentation, mixing, each source). `make` builds a dataset
        from the seed with stateless ops (`fold_in`, `stateless_shuffle`, ...).
        """
        seed = tf.data.Dataset.from_tensors(tf.constant(salt, tf.int64))

        def pass_seed(salt):
            current = tf.ensure_shape(tf.py_function(self._pass_seed, [], tf.int64), [2])
            return tf.random.experimental.stateless_fold_in(current, salt)

        return seed.map(pass_seed).flat_map(make)

    def element_seeds(self, salt, shard=None, batch_size=None):
        """An endless dataset of (2,) seeds for this pass, one per element (see `element_seeds`).

        With a `Shard`, the seeds of that shard's elements of the global
        stream batched by `batch_size` (`Shard.position`): element `t` of the
        shard gets the seed of global element `shard.position(t, batch_size)`,
        so every sample keeps the seed it has in the unsharded stream.
        """
        if shard is None:
            seeds = self.each_pass(salt, element_seeds)
        else:

            def shard_seeds(seed):
                positions = tf.data.Dataset.counter().map(lambda t: shard.position(t, batch_size))
                return positions.map(lambda j: tf.random.experimental.stateless_fold_in(seed, j))

            seeds = self.each_pass(salt, shard_seeds)
        return seeds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))


class Shard(typing.NamedTuple):
    """Process `index` of `count`: the rows of every global batch that it reads and decodes.

    Of a global batch of `batch_size` rows, shard `index` owns rows
    `[index * batch_size // count, (index + 1) * batch_size // count)`, the
    slice `keras_cskd.distribute.shard_batches` keeps. The pipelines take it
    as `shard=(index, count)` (`strategy.shard`): every process computes the
    same order of the pass from `(seed, pass)` and decodes only the samples of
    its rows, so the union of the processes' batches is the global batch.

    Example:

    >>> shard = Shard(1, 2)
    >>> shard.rows(8), shard.size(8), shard.count_in(10, 8)
    ((4, 8), 4, 4)
    >>> [int(shard.position(t, 8)) for t in range(6)]
    [4, 5, 6, 7, 12, 13]
    """

    index: int
    count: int

    def rows(self, batch_size):
        """`(start, end)`: the rows of a global batch of `batch_size` that this shard owns."""
        if batch_size < self.count:
            raise ValueError(f"a global batch of {batch_size} cannot be split over {self.count} processes")
        return self.index * batch_size // self.count, (self.index + 1) * batch_size // self.count

    def size(self, batch_size):
        """Rows of a global batch of `batch_size` that this shard owns: its batch size."""
        start, end = self.rows(batch_size)
        return end - start

    def owns(self, positions, batch_size):
        """Whether this shard owns each global stream position (a tensor) batched by `batch_size`."""
        start, end = self.rows(batch_size)
        row = tf.math.floormod(positions, batch_size)
        return (row >= start) & (row < end)

    def position(self, t, batch_size):
        """The global stream position of this shard's element `t` (a tensor or int)."""
        start, _ = self.rows(batch_size)
        size = self.size(batch_size)
        return (t // size) * batch_size + start + t % size

    def count_in(self, n, batch_size):
        """How many of the first `n` global positions this shard owns."""
        start, end = self.rows(batch_size)
        full, rest = divmod(int(n), batch_size)
        return full * (end - start) + min(max(rest - start, 0), end - start)


def as_shard(shard):
    """A `Shard` from `(index, count)` (or a `Shard`), or None for `None` and one process.

    Example:

    >>> as_shard((1, 4))
    Shard(index=1, count=4)
    >>> as_shard((0, 1)) is None
    True
    """
    if shard is None:
        return None
    try:
        index, count = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise TypeError(f"shard= takes (index, count), e.g. strategy.shard, got {shard!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard=(index, count) needs 0 <= index < count, got {shard!r}")
    return None if count == 1 else Shard(index, count)


_SHARDED = weakref.WeakKeyDictionary()


def mark_sharded(ds, shard):
    """`ds`, recorded as the `shard`'s share (see `shard_of`); auto-sharding turned off.

    The recorded dataset object itself is known to `shard_of`; datasets made
    from it keep `AutoShardPolicy.OFF` in their options, which
    `strategy.distribute_dataset` reads as "already sharded".
    """
    if shard is None:
        return ds
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    ds = ds.with_options(options)
    _SHARDED[ds] = shard
    return ds


def shard_of(ds):
    """The `Shard` a pipeline built `ds` for; `None` if unknown (not sharded, or transformed since)."""
    try:
        return _SHARDED.get(ds)
    except TypeError:
        return None


def pass_clock(passes=None, seed=None):
    """The clock a pipeline follows: `passes` (a `PassClock`), or a new `PassClock(seed)`.

    Example:

    >>> pass_clock(seed=3).seed
    3
    >>> clock = PassClock(1)
    >>> pass_clock(passes=clock) is clock
    True
    """
    if passes is None:
        return PassClock(seed)
    if seed is not None:
        raise ValueError("give passes= (a PassClock) or seed= (the seed of a new one), not both")
    if not isinstance(passes, PassClock):
        raise TypeError(f"passes= takes a keras_cskd.data.PassClock, got {type(passes).__name__}")
    return passes


def element_seeds(seed):
    """An endless dataset of (2,) seeds, one per element of a pass: `fold_in(seed, i)`."""
    return tf.data.Dataset.counter().map(lambda i: tf.random.experimental.stateless_fold_in(seed, i))


def first(ds, n):
    """The first `n` elements of an endless stream, with `n` as known cardinality.

    Through `repeat`, so a stream that runs dry (every file unreadable) ends
    the dataset early instead of failing a cardinality check.
    """
    return ds.repeat().take(n)


def keep_cardinality(ds, like):
    """`ds`, declaring the known number of elements of `like` (lost through `filter` and `flat_map`)."""
    cardinality = int(like.cardinality())
    return ds.apply(tf.data.experimental.assert_cardinality(cardinality)) if cardinality >= 0 else ds


def side_step(fn, element_spec):
    """A dataset that runs `fn` once when iterated and yields nothing, typed like `element_spec`."""

    def placeholder(spec):
        shape = [1 if d is None else d for d in spec.shape]
        return tf.zeros(shape, spec.dtype) if spec.dtype != tf.string else tf.fill(shape, "")

    def run(_):
        with tf.control_dependencies([fn()]):
            return tf.nest.map_structure(placeholder, element_spec)

    return tf.data.Dataset.range(1).map(run).skip(1)  # skip runs it; cardinality stays known (0)
