"""Aesthetics metrics: SRCC, PLCC, threshold accuracy and EMD.

Each takes score distributions (batch, bins) or mean scores (batch,) for both
`y_true` and `y_pred`; distributions are turned into mean scores over the bin
values 1..N (or `bin_values`). SRCC and PLCC are computed over everything seen
since the last `reset_state()`, not averaged per batch, and equal
`scipy.stats.spearmanr` / `pearsonr` on that whole set.

Cost per step does not grow with the samples seen: PLCC keeps streaming
moments (O(1) per step), SRCC writes each batch into its buffers in place
(O(batch)) and ranks them only when its exact value is read. Keras reads every
metric inside each train / test step to build the progress bar's logs; there
SRCC reports a cheap preview (the rank correlation of the latest
`PREVIEW_SAMPLES` samples). Everything read after the steps (`model.evaluate`,
`fit`'s History, CSV and epoch logs, callbacks' epoch logs, and
`metric.result()` called by a user) is the exact value over every sample.
"""

import sys

import keras
import numpy as np
from keras import ops

from keras_cskd.layers import mean_score
from keras_cskd.layers import score_weights
from keras_cskd.losses import emd

# SRCC's value in the per-step logs (the progress bar) covers the latest samples.
PREVIEW_SAMPLES = 64
# Mean scores within this distance of a threshold count as equal to it: a
# float32 mean of votes whose true mean is exactly 5 reads 5.0000005.
SCORE_TOLERANCE = 1e-4


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


def _average_ranks_pairwise(values, valid):
    """`_average_ranks` of a short vector from all pairwise comparisons, without a sort.

    Example:
    >>> from keras import ops
    >>> ranks = _average_ranks_pairwise(ops.convert_to_tensor([3.0, 1.0, 3.0, 0.0]), ops.convert_to_tensor([True] * 3 + [False]))
    >>> ops.convert_to_numpy(ranks)[:3].tolist()
    [2.5, 1.0, 2.5]
    """
    others = ops.cast(valid, values.dtype)[None, :]
    below = ops.sum(ops.cast(values[None, :] < values[:, None], values.dtype) * others, axis=1)
    equal = ops.sum(ops.cast(values[None, :] == values[:, None], values.dtype) * others, axis=1)
    return below + (equal + 1.0) / 2.0


def _centered_ranks_numpy(values):
    """Average ranks (ties averaged, as scipy's `rankdata`) minus their mean, in float64."""
    ordered = np.sort(values)
    below = np.searchsorted(ordered, values, side="left")
    up_to = np.searchsorted(ordered, values, side="right")
    return (below + up_to - len(values)) / 2.0


def _spearman_numpy(true, pred):
    """Spearman correlation in float64; 0 when undefined (constant), NaN for NaN scores.

    Example:
    >>> round(_spearman_numpy(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0])), 4)
    0.9487
    """
    if len(true) < 2:
        return 0.0
    if np.isnan(true).any() or np.isnan(pred).any():
        return float("nan")
    true_ranks, pred_ranks = _centered_ranks_numpy(true), _centered_ranks_numpy(pred)
    denominator = np.sqrt(np.sum(true_ranks**2) * np.sum(pred_ranks**2))
    return float(np.sum(true_ranks * pred_ranks) / denominator) if denominator > 0 else 0.0


# === Backend-specific helpers (the only ones of this module) ===


def _is_traced(tensor):
    """Whether `tensor` is symbolic (inside tf.function, jax.jit or torch.compile)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    if backend == "jax":
        import jax

        return isinstance(tensor, jax.core.Tracer)
    if backend == "torch":
        import torch

        return torch.compiler.is_compiling() or getattr(tensor, "device", None) == torch.device("meta")
    return False


def _host_views(*values):
    """numpy arrays of `values` (tensors share their memory) in an eager torch step on the CPU, else None.

    Run eagerly, each `keras.ops` call costs torch 10-15 us of dispatch, most
    of a metric's update; numpy does the same arithmetic in about 1 us per
    call. None (the caller uses `keras.ops`) on other backends, on another
    device, for bfloat16 tensors, inside `torch.compile` and in a stateless scope.
    """
    if keras.backend.backend() != "torch":
        return None
    import torch
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    if torch.compiler.is_compiling() or in_stateless_scope():
        return None
    views = []
    for value in values:
        if value is None or not torch.is_tensor(value):
            views.append(value if value is None else np.asarray(value))
        elif value.device.type != "cpu" or value.dtype == torch.bfloat16:  # numpy has no bfloat16
            return None
        else:
            views.append(value.detach().numpy())
    return views


def _write_slots(variable, slots, values):
    """`variable[slots] = values` for a 1-D variable, in place where the backend allows.

    tensorflow writes into the resource variable and torch into its tensor, so
    the cost is O(len(slots)) rather than a copy of the whole buffer. jax, any
    stateless scope and `tf.distribute` (whose sync-on-read variables have no
    scatter) assign the scattered value; under `jax.jit` with
    donated state, as Keras's jax trainer runs its steps, XLA updates it in place.
    """
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    backend = keras.backend.backend()
    values = ops.cast(values, variable.dtype)
    if not in_stateless_scope():
        if backend == "tensorflow":
            import tensorflow as tf

            if not tf.distribute.has_strategy():  # distributed (sync-on-read) variables do not scatter
                variable.value.scatter_nd_update(slots[:, None], values)
                return
        if backend == "torch":
            import torch

            with torch.no_grad():
                variable.value.index_put_((slots.to(torch.int64),), values)
            return
    variable.assign(ops.scatter_update(variable, slots[:, None], values))


def _in_step_logs():
    """Whether the caller is a model's `compute_metrics`: the per-step logs of a train / test step."""
    frame = sys._getframe(1)
    for _ in range(24):
        if frame is None:
            return False
        if frame.f_code.co_name == "compute_metrics" and isinstance(frame.f_locals.get("self"), keras.Model):
            return True
        frame = frame.f_back
    return False


# === Correlation metrics ===


@keras.saving.register_keras_serializable(package="keras_cskd")
class SampleBufferMetric(keras.metrics.Metric):
    """Base of the correlation metrics: the (true, predicted) mean scores of each batch.

    Under data parallelism the strategy gives the metric a replica gather
    (`strategy.prepare(model)` calls `set_replica_gather`): every replica's
    scores then go into every replica's state, the state variables read the
    first replica's copy, and SRCC/PLCC equal the single-device values.

    Args:
        bin_values: list of floats, the score of each bin; 1..N by default.
    """

    def __init__(self, bin_values=None, name=None, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.bin_values = bin_values
        self._replica_gather = None

    def _state(self, shape, dtype, name):
        # Replicas hold identical state (scores are gathered): read one copy.
        return self.add_variable(
            shape=shape, initializer="zeros", dtype=dtype, name=name, aggregation="only_first_replica"
        )

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
        >>> metric = SRCC()
        >>> metric.set_replica_gather(lambda rows: ops.concatenate([rows, rows + 1.0]))
        >>> metric.update_state([1.0, 2.0], [1.0, 3.0])
        >>> int(metric.count)
        4
        """
        self._replica_gather = gather

    def _samples(self, y_true, y_pred, sample_weight):
        """(true, pred, keep): the batch's mean scores over every replica; keep is bool, or None for all."""
        # Scores from the middle bin value: the same correlations, and a nearly constant predictor
        # keeps its differences in float32.
        true = ops.cast(mean_score(y_true, self.bin_values, centered=True), "float32")
        pred = ops.cast(mean_score(y_pred, self.bin_values, centered=True), "float32")
        keep = None  # every sample counts: the common case takes fewer ops
        if sample_weight is not None:
            keep = ops.reshape(ops.cast(sample_weight, "float32"), (-1,)) > 0
        if self._replica_gather is not None:  # One gather of (true, pred, keep) rows.
            keep = ops.ones_like(pred) if keep is None else ops.cast(keep, "float32")
            rows = self._replica_gather(ops.stack([true, pred, keep], axis=1))
            true, pred, keep = rows[:, 0], rows[:, 1], rows[:, 2] > 0
        return true, pred, keep

    def _samples_on_host(self, y_true, y_pred, sample_weight):
        """(true, pred) float32 numpy mean scores of the samples that count, or None off the host."""
        if self._replica_gather is not None:
            return None
        arrays = _host_views(y_true, y_pred, sample_weight)
        if arrays is None:
            return None
        true, pred = (self._host_mean_score(array) for array in arrays[:2])
        if arrays[2] is not None:
            keep = arrays[2].reshape(-1) > 0
            true, pred = true[keep], pred[keep]
        return true, pred

    def _host_mean_score(self, array):
        """`mean_score` (as `_samples` calls it) in numpy float32, as `keras.ops` computes elsewhere."""
        array = np.asarray(array, "float32")
        weights = score_weights(array.shape, self.bin_values, centered=True)
        if weights is None:
            return array.reshape(-1)
        return (array * weights).sum(axis=-1) / np.maximum(array.sum(axis=-1), 1e-12)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))

    def get_config(self):
        config = super().get_config()
        config.update({"bin_values": self.bin_values})
        return config


@keras.saving.register_keras_serializable(package="keras_cskd")
class PLCC(SampleBufferMetric):
    """Pearson linear correlation of predicted and true mean scores.

    Exact over any number of samples in O(1) state: each batch's count, means
    and centered sums of squares and products are merged into the running
    ones (Chan et al.'s pairwise update, stable in float32), so no sample is
    kept and no bound applies.

    Args:
        max_samples: ignored (PLCC keeps no samples); accepted so that
            configs saved by earlier versions load.
        bin_values: list of floats, the score of each bin; 1..N by default.

    Example:
    >>> metric = PLCC()
    >>> metric.update_state([1.0, 2.0, 3.0], [2.0, 4.0, 6.5])
    >>> round(float(metric.result()), 3)
    0.998
    """

    def __init__(self, max_samples=None, bin_values=None, name="plcc", dtype=None, **kwargs):
        super().__init__(bin_values=bin_values, name=name, dtype=dtype, **kwargs)
        self.max_samples = max_samples
        self.count = self._state((), "int32", "count")
        # mean_true, mean_pred, sum of squares (true, pred), sum of products
        self.moments = self._state((5,), "float32", "moments")

    def update_state(self, y_true, y_pred, sample_weight=None):
        samples = self._samples_on_host(y_true, y_pred, sample_weight)
        if samples is None:  # a few small ops: cheaper than an XLA cluster's launch on tensorflow
            self._update(y_true, y_pred, sample_weight)
        elif len(samples[0]):
            self._update_on_host(*samples)

    def _update_on_host(self, true, pred):
        """The update of `_update` in numpy, on the variables' own memory."""
        moments, count = _host_views(self.moments.value, self.count.value)
        n_a, n_b = np.float32(count), np.float32(len(true))
        mean_b = np.array([true.sum(), pred.sum()], "float32") / n_b  # 1-D sums: pairwise, as torch's
        true_c, pred_c = true - mean_b[0], pred - mean_b[1]
        second_b = np.array([np.sum(true_c * true_c), np.sum(pred_c * pred_c), np.sum(true_c * pred_c)], "float32")
        share = n_b / (n_a + n_b)
        delta = mean_b - moments[:2]
        second = second_b + delta[[0, 1, 0]] * delta[[0, 1, 1]] * (n_a * share)  # Chan et al.'s merge
        moments[:] = np.concatenate([moments[:2] + delta * share, moments[2:] + second])
        count[...] = count + len(true)

    def _update(self, y_true, y_pred, sample_weight=None):
        true, pred, keep = self._samples(y_true, y_pred, sample_weight)
        # Samples along the last axis: sums over it are pairwise on every backend (tensorflow adds
        # along a leading axis one row after another, losing digits on big batches).
        columns = ops.stack([true, pred])  # (2, batch)
        if keep is None and columns.shape[1] is not None:  # a static batch: its size is a Python number
            if columns.shape[1] == 0:
                return
            n_b = float(columns.shape[1])
            mean_b = ops.sum(columns, axis=1) / n_b
            centered = columns - mean_b[:, None]
        else:
            weights = ops.ones_like(columns[:1]) if keep is None else ops.cast(keep, "float32")[None]
            n_b = ops.sum(weights)
            mean_b = ops.sum(columns * weights, axis=1) / ops.maximum(n_b, 1.0)
            centered = (columns - mean_b[:, None]) * weights
        # [[true-true, true-pred], [., pred-pred]], not as a matmul (which loses digits on big batches)
        scatter_b = ops.sum(centered[:, None, :] * centered[None, :, :], axis=2)
        old = self.moments.value
        n_a = ops.cast(self.count.value, "float32")
        total = n_a + n_b
        share = n_b / (total if isinstance(n_b, float) else ops.maximum(total, 1.0))
        delta = mean_b - old[:2]
        scatter = scatter_b + delta[:, None] * delta[None, :] * (n_a * share)  # Chan et al.'s merge
        means = old[:2] + delta * share
        second = old[2:] + ops.stack([scatter[0, 0], scatter[1, 1], scatter[0, 1]])
        self.moments.assign(ops.concatenate([means, second]))
        self.count.assign(self.count.value + (int(n_b) if isinstance(n_b, float) else ops.cast(n_b, "int32")))

    def result(self):
        (moments,) = _host_views(self.moments.value) or (None,)
        if moments is not None:
            return ops.convert_to_tensor(moments[4] / np.sqrt(max(moments[2] * moments[3], 1e-30)), self.dtype)
        moments = ops.convert_to_tensor(self.moments)
        value = moments[4] / ops.sqrt(ops.maximum(moments[2] * moments[3], 1e-30))
        return ops.cast(value, self.dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"max_samples": self.max_samples})
        return config


@keras.saving.register_keras_serializable(package="keras_cskd")
class SRCC(SampleBufferMetric):
    """Spearman rank correlation of predicted and true mean scores.

    Ties get average ranks, as `scipy.stats.spearmanr` does. Every sample's
    pair of scores goes into two buffers of `max_samples` slots, written in
    place (O(batch) per step); the ranking runs when the value is read:

    - `result()` outside a compiled step (`model.evaluate`'s return value,
      `fit`'s History, CSV and epoch logs, a user's call): exact, in float64,
      over every sample since the last reset;
    - the per-step logs of a train / test step (Keras's `compute_metrics`,
      shown by the progress bar and per-batch callbacks): the SRCC of the
      latest `PREVIEW_SAMPLES` samples, which each update keeps apart
      (`latest`) and ranks (`preview`), cheap at any size;
    - inside a user's own compiled function: exact, in the graph.

    More than `max_samples` samples since the last reset is an error when the
    value is read (NaN inside a compiled function), never a value over part
    of the samples.

    Args:
        max_samples: int. Buffer capacity; 1,048,576 by default (8 MiB), AVA's
            whole training split is ~230k images.
        bin_values: list of floats, the score of each bin; 1..N by default.

    Example:
    >>> metric = SRCC()
    >>> metric.update_state([1.0, 2.0, 3.0], [2.0, 4.0, 9.0])
    >>> float(metric.result())
    1.0
    """

    def __init__(self, max_samples=2**20, bin_values=None, name="srcc", dtype=None, **kwargs):
        super().__init__(bin_values=bin_values, name=name, dtype=dtype, **kwargs)
        self.max_samples = max_samples
        # One spare slot at index max_samples takes what is not kept; never read.
        self.true_scores = self._state((max_samples + 1,), "float32", "true_scores")
        self.pred_scores = self._state((max_samples + 1,), "float32", "pred_scores")
        self.count = self._state((), "int32", "count")
        self.dropped = self._state((), "int32", "dropped")
        # The latest `PREVIEW_SAMPLES` (true, pred) pairs, oldest first, and their SRCC: the preview.
        self._window = min(PREVIEW_SAMPLES, max_samples)
        self.latest = self._state((2, self._window), "float32", "latest")
        self.preview = self._state((), "float32", "preview")

    def update_state(self, y_true, y_pred, sample_weight=None):
        samples = self._samples_on_host(y_true, y_pred, sample_weight)
        if samples is None:
            self._update(y_true, y_pred, sample_weight)
        else:
            self._update_on_host(*samples)

    def _update_on_host(self, true, pred):
        """The update of `_update` in numpy, on the variables' own memory."""
        true_scores, pred_scores, count, dropped, latest, preview = _host_views(
            self.true_scores.value,
            self.pred_scores.value,
            self.count.value,
            self.dropped.value,
            self.latest.value,
            self.preview.value,
        )
        start = int(count)
        written = min(max(self.max_samples - start, 0), len(true))
        true_scores[start : start + written] = true[:written]
        pred_scores[start : start + written] = pred[:written]
        count[...] = start + written
        dropped[...] = dropped + (len(true) - written)
        latest[...] = np.concatenate([latest, np.stack([true, pred])], axis=1)[:, -self._window :]
        shown = latest[:, self._window - min(start + written, self._window) :].astype("float64")
        preview[...] = _spearman_numpy(shown[0], shown[1])

    def _update(self, y_true, y_pred, sample_weight=None):
        true, pred, keep = self._samples(y_true, y_pred, sample_weight)
        count = self.count.value
        if keep is None:  # slots count, count + 1, ...; past the capacity, the spare slot
            kept = true.shape[0] if true.shape[0] is not None else ops.shape(true)[0]  # static where known
            slots = ops.minimum(count + ops.arange(kept, dtype="int32"), self.max_samples)
            written = ops.clip(self.max_samples - count, 0, kept)
        else:
            slots = count + ops.cumsum(ops.cast(keep, "int32")) - 1
            fits = ops.logical_and(keep, slots < self.max_samples)
            slots = ops.where(fits, slots, ops.full_like(slots, self.max_samples))
            kept = ops.sum(ops.cast(keep, "int32"))
            written = ops.sum(ops.cast(fits, "int32"))
        _write_slots(self.true_scores, slots, true)
        _write_slots(self.pred_scores, slots, pred)
        new_count = count + written  # before the assign: torch's assign writes into `count` itself
        self.count.assign(new_count)
        self.dropped.assign(self.dropped.value + (kept - written))
        latest = self._latest(true, pred, keep)
        self.latest.assign(latest)
        self.preview.assign(self._preview(latest, new_count))

    def _latest(self, true, pred, keep):
        """The `_window` latest (true, pred) pairs once this batch's kept samples follow the earlier ones."""
        joined = ops.concatenate([self.latest.value, ops.stack([true, pred])], axis=1)
        if keep is not None:  # the samples not kept first, then the kept ones in their order
            kept = ops.concatenate([ops.ones((self._window,), "bool"), keep])
            position = ops.arange(ops.shape(kept)[0], dtype="int32")
            joined = ops.take(joined, ops.argsort(ops.where(kept, position, -1)), axis=1)
        return joined[:, -self._window :]

    def _overflow_message(self, count, dropped):
        return (
            f"{self.name}: {count + dropped} samples since the last reset, more than max_samples="
            f"{self.max_samples}; the rank correlation of only the first {count} would be a "
            f"different number. Create the metric with SRCC(max_samples={count + dropped}) or more."
        )

    def result(self):
        if _in_step_logs():
            return ops.cast(self.preview, self.dtype)
        state = (self.true_scores.value, self.pred_scores.value, self.count.value, self.dropped.value)
        arrays = _host_views(*state)
        if arrays is None:
            count = ops.convert_to_tensor(self.count)
            if _is_traced(count):
                valid = ops.arange(self.max_samples + 1) < count
                true_ranks = _average_ranks(ops.convert_to_tensor(self.true_scores), valid)
                pred_ranks = _average_ranks(ops.convert_to_tensor(self.pred_scores), valid)
                value = _pearson(true_ranks, pred_ranks, ops.cast(valid, "float32"))
                return ops.cast(ops.where(self.dropped > 0, float("nan"), value), self.dtype)
            arrays = [ops.convert_to_numpy(value) for value in state]  # the exact read, once per epoch
        true, pred, count, dropped = arrays
        count, dropped = int(count), int(dropped)
        if dropped:
            raise ValueError(self._overflow_message(count, dropped))
        value = _spearman_numpy(true[:count].astype("float64"), pred[:count].astype("float64"))
        return ops.convert_to_tensor(value, dtype=self.dtype)

    def _preview(self, latest, count):
        """The SRCC of the latest pairs, of which the last `min(count, _window)` are samples."""
        valid = ops.arange(self._window, dtype="int32") >= self._window - ops.minimum(count, self._window)
        true_ranks = _average_ranks_pairwise(latest[0], valid)
        pred_ranks = _average_ranks_pairwise(latest[1], valid)
        return _pearson(true_ranks, pred_ranks, ops.cast(valid, "float32"))

    def get_config(self):
        config = super().get_config()
        config.update({"max_samples": self.max_samples})
        return config


def threshold_agreement(y_true, y_pred, threshold=5.0, bin_values=None):
    """Per sample 1.0 where true and predicted mean scores fall on the same side.

    "High" is a mean score above `threshold` by more than `SCORE_TOLERANCE`
    (1e-4), as AVA papers use mean > 5 high and mean <= 5 low: a float32 mean
    of votes whose true mean is exactly 5 (it may read 5.0000005) is low.
    Distinct AVA means are at least 1/votes apart, so the tolerance changes
    no other sample while an image has fewer than 10,000 votes.
    """
    true_high = mean_score(y_true, bin_values) > threshold + SCORE_TOLERANCE
    pred_high = mean_score(y_pred, bin_values) > threshold + SCORE_TOLERANCE
    return ops.cast(ops.equal(true_high, pred_high), "float32")


@keras.saving.register_keras_serializable(package="keras_cskd")
class ThresholdAccuracy(keras.metrics.MeanMetricWrapper):
    """Binary accuracy of mean score above/below `threshold` (5 on AVA).

    The AVA convention: mean > `threshold` is high, mean <= `threshold` low,
    robust to float32 rounding (see `threshold_agreement`), so an image whose
    votes average exactly 5 is low however its labels were normalised.

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
