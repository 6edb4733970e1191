import keras
import numpy as np
import pytest
from scipy import stats

from keras_cskd import metrics
from keras_cskd.models import AestheticScorer
from tests import tiny

RNG = np.random.default_rng(1)


def batches(true, pred, size):
    for start in range(0, len(true), size):
        yield true[start : start + size], pred[start : start + size]


@pytest.mark.parametrize("tied", [False, True])
def test_correlations_equal_scipy_over_batches(tied):
    true = RNG.normal(size=70).astype("float32")
    pred = (true + RNG.normal(size=70)).astype("float32")
    if tied:
        true, pred = np.round(true), np.round(pred * 2) / 2
    srcc, plcc = metrics.SRCC(), metrics.PLCC()
    for t, p in batches(true, pred, 16):
        srcc.update_state(t, p)
        plcc.update_state(t, p)
    np.testing.assert_allclose(float(srcc.result()), stats.spearmanr(true, pred)[0], rtol=1e-4)
    np.testing.assert_allclose(float(plcc.result()), stats.pearsonr(true, pred)[0], rtol=1e-4)
    srcc.reset_state()
    srcc.update_state(true[:10], pred[:10])
    np.testing.assert_allclose(float(srcc.result()), stats.spearmanr(true[:10], pred[:10])[0], rtol=1e-4)


def test_correlations_of_distributions_use_mean_scores():
    true = RNG.dirichlet(np.ones(10), 40).astype("float32")
    pred = RNG.dirichlet(np.ones(10), 40).astype("float32")
    bins = np.arange(1, 11)
    srcc = metrics.SRCC()
    srcc.update_state(true, pred)
    np.testing.assert_allclose(float(srcc.result()), stats.spearmanr(true @ bins, pred @ bins)[0], rtol=1e-4)


def test_buffer_overflow_is_counted_not_wrapped():
    srcc = metrics.SRCC(max_samples=8)
    true = RNG.normal(size=12).astype("float32")
    srcc.update_state(true, true)
    assert int(srcc.count) == 8 and int(srcc.dropped) == 4
    assert float(srcc.result()) == pytest.approx(1.0)


def test_threshold_accuracy_and_emd():
    accuracy = metrics.ThresholdAccuracy(threshold=5.0)
    accuracy.update_state([3.0, 7.0, 6.0, 4.0], [6.0, 8.0, 5.5, 1.0])
    assert float(accuracy.result()) == pytest.approx(0.75)
    emd = metrics.EMD(r=2)
    emd.update_state([[1.0, 0.0]], [[0.0, 1.0]])
    emd.update_state([[1.0, 0.0]], [[1.0, 0.0]])
    assert float(emd.result()) == pytest.approx(np.sqrt(0.5) / 2, rel=1e-5)


def test_metrics_inside_evaluate_equal_scipy():
    x = tiny.images(24)
    y = tiny.learnable_scores(x)
    scorer = AestheticScorer(tiny.conv_backbone())
    scorer.compile()
    results = scorer.evaluate(x, y, batch_size=5, return_dict=True, verbose=0)
    pred = scorer.predict(x, verbose=0) @ np.arange(1, 11)
    true = y @ np.arange(1, 11)
    np.testing.assert_allclose(results["srcc"], stats.spearmanr(true, pred)[0], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(results["plcc"], stats.pearsonr(true, pred)[0], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "metric",
    [
        metrics.SRCC(max_samples=50),
        metrics.PLCC(bin_values=[1.0, 2.0]),
        metrics.ThresholdAccuracy(3.0),
        metrics.EMD(r=1),
    ],
)
def test_metrics_round_trip_config(metric):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert type(restored) is type(metric)
    assert restored.get_config() == metric.get_config()


def _mirror_gather(rows):
    """A stand-in for a two-replica gather: the batch, then the batch with predictions + 1."""
    return keras.ops.concatenate([rows, rows + keras.ops.convert_to_tensor([[0.0, 1.0, 0.0]])], axis=0)


def test_replica_gather_feeds_the_buffers():
    true = RNG.normal(size=20).astype("float32")
    pred = (true + RNG.normal(size=20)).astype("float32")
    weight = (np.arange(20) % 4 != 0).astype("float32")
    srcc = metrics.SRCC(max_samples=64)
    assert srcc.replica_gather is None
    srcc.set_replica_gather(_mirror_gather)
    assert srcc.replica_gather is _mirror_gather
    srcc.update_state(true, pred, sample_weight=weight)
    kept = weight > 0
    all_true = np.concatenate([true[kept], true[kept]])
    all_pred = np.concatenate([pred[kept], pred[kept] + 1.0])
    assert int(srcc.count) == 2 * kept.sum()
    np.testing.assert_allclose(float(srcc.result()), stats.spearmanr(all_true, all_pred)[0], rtol=1e-4)
    srcc.set_replica_gather(None)
    srcc.reset_state()
    srcc.update_state(true, pred)
    assert int(srcc.count) == 20


def test_replica_gather_runs_inside_the_test_step():
    x = tiny.images(12)
    y = tiny.learnable_scores(x)
    srcc, plcc = metrics.SRCC(max_samples=64), metrics.PLCC(max_samples=64)
    scorer = AestheticScorer(tiny.conv_backbone())
    scorer.compile(metrics=[srcc, plcc])
    for metric in (srcc, plcc):
        metric.set_replica_gather(_mirror_gather)
    results = scorer.evaluate(x, y, batch_size=4, return_dict=True, verbose=0)
    pred = scorer.predict(x, verbose=0) @ np.arange(1, 11)
    true = y @ np.arange(1, 11)
    all_true, all_pred = [], []
    for start in range(0, 12, 4):  # each step gathers its own batch
        all_true += [true[start : start + 4]] * 2
        all_pred += [pred[start : start + 4], pred[start : start + 4] + 1.0]
    all_true, all_pred = np.concatenate(all_true), np.concatenate(all_pred)
    assert int(srcc.count) == 24
    np.testing.assert_allclose(results["srcc"], stats.spearmanr(all_true, all_pred)[0], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(results["plcc"], stats.pearsonr(all_true, all_pred)[0], rtol=1e-3, atol=1e-5)
