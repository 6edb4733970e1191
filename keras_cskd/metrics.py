"""Aesthetics metrics: SRCC, PLCC, threshold accuracy and EMD.

Each takes score distributions (batch, bins) or mean scores (batch,) for both
`y_true` and `y_pred`; distributions are turned into mean scores over the bin
values 1..N (or `bin_values`). SRCC and PLCC are computed over everything seen
since the last `reset_state()`, not averaged per batch.
"""

import keras
from keras import ops

from keras_cskd.layers import mean_score
from keras_cskd.losses import emd


def _pearson(x, y, weights):
    """Weighted Pearson correlation of 1-D x and y (weights are 0/1 masks)."""
    count = ops.maximum(ops.sum(weights), 1.0)
    x_centered = x - ops.sum(x * weights) / count
    y_centered = y - ops.sum(y * weights) / count
    covariance = ops.sum(weights * x_centered * y_centered)
    x_var = ops.sum(weights * ops.square(x_centered))
    y_var = ops.sum(weights * ops.square(y_centered))
    return covariance / ops.sqrt(ops.maximum(x_var * y_var, 1e-30))


def _average_ranks(values, valid):
    """1-based ranks of `values` among the valid ones, ties averaged (scipy)."""
    big = ops.convert_to_tensor(float("inf"), values.dtype)
    padded = ops.where(valid, values, big)
    ordered = ops.sort(padded)
    below = ops.searchsorted(ordered, padded, side="left")
    up_to = ops.searchsorted(ordered, padded, side="right")
    return (ops.cast(below + up_to, values.dtype) + 1.0) / 2.0


@keras.saving.register_keras_serializable(package="keras_cskd")
class SampleBufferMetric(keras.metrics.Metric):
    """Keeps the (true, predicted) mean scores of up to `max_samples` samples.

    Base of the correlation metrics: a rank correlation needs every sample, so
    the scores go into fixed-size buffers (fixed shape, so the update compiles
    with XLA on every backend). Samples past `max_samples` since the last reset
    are not counted; `dropped` tells how many were left out.

    Under data parallelism the strategy gives the metric a replica gather
    (`strategy.prepare(model)` calls `set_replica_gather`): every replica's
    scores then go into every replica's buffers, the buffer variables read the
    first replica's copy, and SRCC/PLCC equal the single-device values.

    Args:
        max_samples: int. Buffer capacity (AVA's test set has ~20k images).
        bin_values: list of floats, the score of each bin; 1..N by default.
    """

    def __init__(self, max_samples=100_000, bin_values=None, name=None, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.max_samples = max_samples
        self.bin_values = bin_values
        # Replicas hold identical buffers (scores are gathered): read one copy.
        first = "only_first_replica"
        self.true_scores = self.add_variable(
            shape=(max_samples + 1,), initializer="zeros", dtype="float32", name="true_scores", aggregation=first
        )
        self.pred_scores = self.add_variable(
            shape=(max_samples + 1,), initializer="zeros", dtype="float32", name="pred_scores", aggregation=first
        )
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="int32", name="count", aggregation=first)
        self.dropped = self.add_variable(
            shape=(), initializer="zeros", dtype="int32", name="dropped", aggregation=first
        )
        self._replica_gather = None

    @property
    def replica_gather(self):
        """The function that concatenates a batch over the replicas, or None."""
        return self._replica_gather

    def set_replica_gather(self, gather):
        """Gather each update's samples from every replica with `gather`.

        Args:
            gather: a function from a tensor of shape (batch, ...) on this
                replica to the concatenation over all replicas (every replica
                gets the same result), or None for this replica's samples only.
                It runs in `update_state`, so inside each train / test step.

        Example:
        >>> from keras import ops
        >>> metric = PLCC()
        >>> metric.set_replica_gather(lambda rows: ops.concatenate([rows, rows + 1.0]))
        >>> metric.update_state([1.0, 2.0], [1.0, 3.0])
        >>> int(metric.count)
        4
        """
        self._replica_gather = gather

    def update_state(self, y_true, y_pred, sample_weight=None):
        true = ops.cast(mean_score(y_true, self.bin_values), "float32")
        pred = ops.cast(mean_score(y_pred, self.bin_values), "float32")
        if sample_weight is not None:
            keep = ops.cast(ops.reshape(ops.cast(sample_weight, "float32"), (-1,)) > 0, "float32")
        else:
            keep = ops.ones_like(pred)
        if self._replica_gather is not None:  # One gather of (true, pred, keep) rows.
            rows = self._replica_gather(ops.stack([true, pred, keep], axis=1))
            true, pred, keep = rows[:, 0], rows[:, 1], rows[:, 2]
        keep = keep > 0
        # Each kept sample goes to the next free slot; the rest (and any
        # overflow) to the spare slot at index max_samples, never read.
        slots = self.count + ops.cumsum(ops.cast(keep, "int32")) - 1
        fits = ops.logical_and(keep, slots < self.max_samples)
        slots = ops.where(fits, slots, ops.full_like(slots, self.max_samples))
        self.true_scores.assign(ops.scatter_update(self.true_scores, slots[:, None], true))
        self.pred_scores.assign(ops.scatter_update(self.pred_scores, slots[:, None], pred))
        kept = ops.sum(ops.cast(keep, "int32"))
        written = ops.sum(ops.cast(fits, "int32"))
        self.count.assign(self.count + written)
        self.dropped.assign(self.dropped + kept - written)

    def _valid(self):
        return ops.arange(self.max_samples + 1) < self.count

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))

    def get_config(self):
        config = super().get_config()
        config.update({"max_samples": self.max_samples, "bin_values": self.bin_values})
        return config


@keras.saving.register_keras_serializable(package="keras_cskd")
class PLCC(SampleBufferMetric):
    """Pearson linear correlation of predicted and true mean scores.

    Example:
    >>> metric = PLCC()
    >>> metric.update_state([1.0, 2.0, 3.0], [2.0, 4.0, 6.5])
    >>> round(float(metric.result()), 3)
    0.998
    """

    def __init__(self, max_samples=100_000, bin_values=None, name="plcc", dtype=None, **kwargs):
        super().__init__(max_samples=max_samples, bin_values=bin_values, name=name, dtype=dtype, **kwargs)

    def result(self):
        true, pred = ops.convert_to_tensor(self.true_scores), ops.convert_to_tensor(self.pred_scores)
        return _pearson(true, pred, ops.cast(self._valid(), "float32"))


@keras.saving.register_keras_serializable(package="keras_cskd")
class SRCC(SampleBufferMetric):
    """Spearman rank correlation of predicted and true mean scores.

    Ties get average ranks, as `scipy.stats.spearmanr` does.

    Example:
    >>> metric = SRCC()
    >>> metric.update_state([1.0, 2.0, 3.0], [2.0, 4.0, 9.0])
    >>> float(metric.result())
    1.0
    """

    def __init__(self, max_samples=100_000, bin_values=None, name="srcc", dtype=None, **kwargs):
        super().__init__(max_samples=max_samples, bin_values=bin_values, name=name, dtype=dtype, **kwargs)

    def result(self):
        valid = self._valid()
        true_ranks = _average_ranks(ops.convert_to_tensor(self.true_scores), valid)
        pred_ranks = _average_ranks(ops.convert_to_tensor(self.pred_scores), valid)
        return _pearson(true_ranks, pred_ranks, ops.cast(valid, "float32"))


def threshold_agreement(y_true, y_pred, threshold=5.0, bin_values=None):
    """Per sample 1.0 where true and predicted mean scores fall on the same side."""
    true_high = mean_score(y_true, bin_values) > threshold
    pred_high = mean_score(y_pred, bin_values) > threshold
    return ops.cast(ops.equal(true_high, pred_high), "float32")


@keras.saving.register_keras_serializable(package="keras_cskd")
class ThresholdAccuracy(keras.metrics.MeanMetricWrapper):
    """Binary accuracy of mean score above/below `threshold` (5 on AVA).

    Example:
    >>> metric = ThresholdAccuracy(threshold=5.0)
    >>> metric.update_state([3.0, 7.0], [6.0, 8.0])
    >>> float(metric.result())
    0.5
    """

    def __init__(self, threshold=5.0, bin_values=None, name="accuracy", dtype=None):
        super().__init__(
            fn=threshold_agreement,
            name=name,
            dtype=dtype,
            threshold=threshold,
            bin_values=bin_values,
        )
        self.threshold = threshold
        self.bin_values = bin_values

    def get_config(self):
        return {
            "threshold": self.threshold,
            "bin_values": self.bin_values,
            "name": self.name,
            "dtype": self.dtype,
        }


@keras.saving.register_keras_serializable(package="keras_cskd")
class EMD(keras.metrics.MeanMetricWrapper):
    """Mean earth mover's distance (with the r-th root) between distributions.

    Example:
    >>> metric = EMD(r=2)
    >>> metric.update_state([[1.0, 0.0]], [[0.0, 1.0]])
    >>> round(float(metric.result()), 4)
    0.7071
    """

    def __init__(self, r=2, name="emd", dtype=None):
        super().__init__(fn=emd, name=name, dtype=dtype, r=r, squared=False)
        self.r = r

    def get_config(self):
        return {"r": self.r, "name": self.name, "dtype": self.dtype}
