"""Losses of CSKD: the EMD between score distributions and the cosine
alignment loss of phase 1.

Both are `keras.losses.Loss` subclasses, so Keras applies `sample_weight` and
the reduction, and under `tf.distribute` scales the loss by the number of
replicas (a loss averaged by hand with `ops.mean` would not be).
"""

import keras
from keras import ops

_EPSILON = 1e-12


def unscaled_for_logging(loss):
    """A `Loss` value as one device would log it.

    Under `tf.distribute`, Keras scales each replica's loss by 1/N so that
    summed gradients are right; per-term loss trackers must undo that, as
    Keras's own `loss` tracker does. Elsewhere the value is returned as is.
    """
    from keras.src.losses.loss import unscale_loss_for_distribution

    return unscale_loss_for_distribution(loss)


def check_distributions(y_true, y_pred, where):
    """Raise a clear `ValueError` unless both are (batch, bins) with equal bins."""
    for role, tensor in (("y_true", y_true), ("y_pred", y_pred)):
        if len(tensor.shape) != 2:
            raise ValueError(
                f"{where} expects score distributions of shape (batch, bins); "
                f"{role} has rank {len(tensor.shape)} (shape {tensor.shape})."
            )
    true_bins, pred_bins = y_true.shape[-1], y_pred.shape[-1]
    if true_bins is not None and pred_bins is not None and true_bins != pred_bins:
        raise ValueError(
            f"{where}: y_true has {true_bins} bins but y_pred has {pred_bins}. "
            "Labels and the model's ScoreHead(num_bins=...) must agree."
        )


def normalize_distribution(x):
    """Scale non-negative scores (or vote counts) along the last axis to sum 1."""
    total = ops.sum(x, axis=-1, keepdims=True)
    return x / ops.maximum(total, _EPSILON)


def emd(y_true, y_pred, r=2, squared=False):
    """Per-sample earth mover's distance between two (batch, bins) histograms.

    `(mean_k |CDF_true(k) - CDF_pred(k)|^r)^(1/r)`, without the root when
    `squared=True`. Both inputs are normalized to sum 1 first.

    Example:
    >>> float(emd([[1.0, 0.0]], [[0.0, 1.0]], r=2)[0])
    0.7071067...
    """
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = keras.backend.result_type(y_pred.dtype, "float32")
    y_true = ops.cast(y_true, dtype)
    y_pred = ops.cast(y_pred, dtype)
    check_distributions(y_true, y_pred, "EMD")
    cdf_gap = ops.cumsum(normalize_distribution(y_true) - normalize_distribution(y_pred), axis=-1)
    if r == 2:
        powered = ops.square(cdf_gap)
    elif r == 1:
        powered = ops.abs(cdf_gap)
    else:
        powered = ops.power(ops.abs(cdf_gap), r)
    distance = ops.mean(powered, axis=-1)
    if squared:
        return distance
    # The r-th root has an infinite slope at 0: route the gradient of exact
    # zeros through a constant so identical distributions give gradient 0.
    # `distance * 0` keeps a NaN distance NaN (a zeros_like would hide it).
    positive = distance > 0
    safe = ops.where(positive, distance, ops.ones_like(distance))
    return ops.where(positive, ops.power(safe, 1.0 / r), distance * 0.0)


@keras.saving.register_keras_serializable(package="keras_cskd")
class EMDLoss(keras.losses.Loss):
    """Earth mover's distance between score distributions (batch, bins).

    Per sample: `(mean_k |CDF_true(k) - CDF_pred(k)|^r)^(1/r)`; with
    `squared=True` the root is dropped (`mean_k |...|^r`), the form CSKD trains
    with (r=2). Both inputs are normalized to sum 1, so raw vote counts work.

    Args:
        r: int. The norm of the CDF gap, 2 in CSKD and NIMA.
        squared: bool. Drop the r-th root (the training form).
        reduction: as for any `keras.losses.Loss`.
        name: str. The loss name.
        dtype: the dtype of the loss computation.

    Example:
    >>> loss = EMDLoss(squared=True)
    >>> votes = [[0, 1, 3, 1, 0]]
    >>> float(loss(votes, [[0.0, 0.2, 0.6, 0.2, 0.0]]))
    0.0
    """

    def __init__(
        self,
        r=2,
        squared=False,
        reduction="sum_over_batch_size",
        name="emd_loss",
        dtype=None,
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype, **kwargs)
        if r <= 0:
            raise ValueError(f"EMDLoss needs r > 0, got r={r}.")
        self.r = r
        self.squared = squared

    def call(self, y_true, y_pred):
        return emd(y_true, y_pred, r=self.r, squared=self.squared)

    def get_config(self):
        config = super().get_config()
        config.update({"r": self.r, "squared": self.squared})
        return config


def cosine_distance(a, b):
    """Per-sample `1 - cos(a, b)` over the last axis; 1 where a vector is 0, NaN where one is not finite."""
    a = ops.convert_to_tensor(a)
    b = ops.convert_to_tensor(b)
    dtype = keras.backend.result_type(a.dtype, b.dtype, "float32")
    a = ops.cast(a, dtype)
    b = ops.cast(b, dtype)
    if a.shape[-1] is not None and b.shape[-1] is not None and a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"CosineAlignmentLoss: features of size {a.shape[-1]} and "
            f"{b.shape[-1]} cannot be compared; size the projector to the "
            "CLIP embedding."
        )
    # maximum() keeps the gradient finite for zero vectors (sqrt'(0) = inf).
    norm_a = ops.sqrt(ops.maximum(ops.sum(ops.square(a), axis=-1), _EPSILON))
    norm_b = ops.sqrt(ops.maximum(ops.sum(ops.square(b), axis=-1), _EPSILON))
    distance = 1.0 - ops.sum(a * b, axis=-1) / (norm_a * norm_b)
    # A NaN or Inf feature is a diverged model, never a finite loss: maximum()
    # may return its other operand for NaN, and Inf / Inf must not become 0.
    finite = ops.logical_and(ops.all(ops.isfinite(a), axis=-1), ops.all(ops.isfinite(b), axis=-1))
    return ops.where(finite, distance, ops.full_like(distance, float("nan")))


@keras.saving.register_keras_serializable(package="keras_cskd")
class CosineAlignmentLoss(keras.losses.Loss):
    """Phase-1 alignment loss: per sample `1 - cos(y_true, y_pred)`.

    `y_true` is the frozen CLIP embedding, `y_pred` the learner's projected
    feature. Zero vectors are safe (loss 1, finite gradient); a NaN or Inf
    feature gives a NaN loss, so divergence is never logged as a finite value.

    Example:
    >>> float(CosineAlignmentLoss()([[1.0, 0.0]], [[2.0, 0.0]]))
    0.0
    """

    def __init__(
        self,
        reduction="sum_over_batch_size",
        name="cosine_alignment_loss",
        dtype=None,
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype, **kwargs)

    def call(self, y_true, y_pred):
        return cosine_distance(y_true, y_pred)


@keras.saving.register_keras_serializable(package="keras_cskd")
class EMDDistillation(keras.distillation.DistillationLoss):
    """`keras.distillation` loss: EMD from the teacher's to the student's scores.

    The teacher's prediction is the pseudo-label (`y_true`), so no gradient
    flows into it.

    Args:
        r: int. As for `EMDLoss`.
        squared: bool. As for `EMDLoss`; CSKD trains with `True`.
    """

    def __init__(self, r=2, squared=True):
        self.r = r
        self.squared = squared
        self.loss = EMDLoss(r=r, squared=squared)

    def compute_loss(self, teacher_outputs, student_outputs, sample_weight=None, **kwargs):
        teacher_outputs = ops.stop_gradient(teacher_outputs)
        return self.loss(teacher_outputs, student_outputs, sample_weight=sample_weight)

    def validate_outputs(self, teacher_outputs, student_outputs):
        check_distributions(teacher_outputs, student_outputs, "EMDDistillation")

    def get_config(self):
        return {"r": self.r, "squared": self.squared}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
