import keras
import numpy as np
import pytest
from keras import ops

from keras_cskd.losses import CosineAlignmentLoss
from keras_cskd.losses import EMDLoss


def emd_reference(p, q, r=2, squared=False):
    p = p / p.sum(axis=1, keepdims=True)
    q = q / q.sum(axis=1, keepdims=True)
    gap = np.abs(np.cumsum(p, axis=1) - np.cumsum(q, axis=1)) ** r
    distance = gap.mean(axis=1)
    return distance if squared else distance ** (1.0 / r)


def gradient(fn, x):
    """d sum(fn(x)) / dx on the current backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: ops.sum(fn(v)))(x))
    if backend == "tensorflow":
        import tensorflow as tf

        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            total = ops.sum(fn(v))
        return tape.gradient(total, v).numpy()
    import torch

    v = torch.tensor(x, requires_grad=True)
    ops.sum(fn(v)).backward()
    return v.grad.numpy()


RNG = np.random.default_rng(0)
P = RNG.dirichlet(np.ones(10), 6).astype("float32")
Q = RNG.dirichlet(np.ones(10), 6).astype("float32")


@pytest.mark.parametrize("r", [1, 2, 3])
@pytest.mark.parametrize("squared", [False, True])
def test_emd_matches_numpy(r, squared):
    loss = EMDLoss(r=r, squared=squared, reduction=None)
    np.testing.assert_allclose(loss(P, Q), emd_reference(P, Q, r, squared), rtol=1e-5, atol=1e-7)


def test_emd_edge_cases():
    loss = EMDLoss(reduction=None)
    np.testing.assert_allclose(loss(P, P), np.zeros(6), atol=1e-7)
    one_hot_low = np.eye(10, dtype="float32")[[0]]
    one_hot_high = np.eye(10, dtype="float32")[[9]]
    # The CDFs differ in the first 9 of 10 bins by 1: sqrt(9 / 10).
    np.testing.assert_allclose(loss(one_hot_low, one_hot_high), [np.sqrt(0.9)], rtol=1e-6)
    counts = np.array([[0, 3, 10, 40, 70, 50, 20, 5, 1, 1]], dtype="float32")
    np.testing.assert_allclose(loss(counts, counts / counts.sum() * 7), [0.0], atol=1e-7)
    np.testing.assert_allclose(loss(counts, Q[:1]), emd_reference(counts, Q[:1]), rtol=1e-5)


def test_emd_sample_weight_and_reductions():
    weights = np.array([1, 0, 2, 1, 0, 1], dtype="float32")
    per_sample = emd_reference(P, Q, squared=True)
    np.testing.assert_allclose(
        EMDLoss(squared=True)(P, Q, sample_weight=weights),
        (per_sample * weights).sum() / len(weights),
        rtol=1e-5,
    )
    np.testing.assert_allclose(EMDLoss(squared=True, reduction="sum")(P, Q), per_sample.sum(), rtol=1e-5)


@pytest.mark.parametrize("squared", [False, True])
def test_emd_gradient_finite_at_zero_distance(squared):
    loss = EMDLoss(squared=squared, reduction=None)
    grad = gradient(lambda q: loss(P, q), P.copy())
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_emd_clear_errors():
    with pytest.raises(ValueError, match="10 bins but y_pred has 5"):
        EMDLoss()(P, P[:, :5])
    with pytest.raises(ValueError, match="rank 3"):
        EMDLoss()(P[:, :, None], P[:, :, None])


def test_cosine_matches_numpy_and_zero_vectors():
    a = RNG.normal(size=(5, 8)).astype("float32")
    b = RNG.normal(size=(5, 8)).astype("float32")
    expected = 1 - (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    loss = CosineAlignmentLoss(reduction=None)
    np.testing.assert_allclose(loss(a, b), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss(a, 3 * a), 0.0, atol=1e-6)
    zeros = np.zeros_like(b)
    np.testing.assert_allclose(loss(a, zeros), 1.0)
    assert np.all(np.isfinite(gradient(lambda v: loss(a, v), zeros)))
    with pytest.raises(ValueError, match="size 8 and 4"):
        loss(a, b[:, :4])


@pytest.mark.parametrize("loss", [EMDLoss(r=1, squared=True, name="emd1"), CosineAlignmentLoss()])
def test_losses_round_trip_config(loss):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs_never_give_a_finite_loss(bad):
    """A diverged model must show in its loss: NaN/Inf features or scores give NaN."""
    good = np.full((2, 4), 0.25, "float32")
    broken = good.copy()
    broken[0, 1] = bad
    for loss in (EMDLoss(), EMDLoss(squared=True), EMDLoss(r=1), CosineAlignmentLoss()):
        per_sample = ops.convert_to_numpy(loss.call(ops.convert_to_tensor(good), ops.convert_to_tensor(broken)))
        assert np.isnan(per_sample[0]) and np.isfinite(per_sample[1]), (loss.name, per_sample)
        assert np.isnan(float(loss(good, broken)))
    zeros = np.zeros((2, 4), "float32")  # zero features stay a finite loss of 1
    np.testing.assert_allclose(ops.convert_to_numpy(CosineAlignmentLoss().call(good, zeros)), 1.0)
