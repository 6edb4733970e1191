import keras
import numpy as np
import pytest
from scipy import stats

from keras_cskd import metrics
from keras_cskd.layers import mean_score
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


def test_buffer_overflow_is_an_error_not_a_partial_value():
    srcc = metrics.SRCC(max_samples=8)
    true = RNG.normal(size=12).astype("float32")
    srcc.update_state(true, true)
    assert int(srcc.count) == 8 and int(srcc.dropped) == 4
    with pytest.raises(ValueError, match=r"12 samples .* max_samples=8"):
        srcc.result()


def test_correlations_are_exact_over_avas_size():
    """255,530 samples, the first 100k easier than the rest (AVA in file order)."""
    n = 255_530
    true = RNG.normal(5.0, 0.7, n).astype("float32")
    noise = np.where(np.arange(n) < 100_000, 0.2, 1.5)
    pred = (true + RNG.normal(size=n) * noise).astype("float32")
    srcc, plcc = metrics.SRCC(), metrics.PLCC()
    for t, p in batches(true, pred, 32_768):
        srcc.update_state(t, p)
        plcc.update_state(t, p)
    assert int(srcc.count) == n and int(srcc.dropped) == 0
    np.testing.assert_allclose(float(srcc.result()), stats.spearmanr(true, pred)[0], atol=1e-6)
    np.testing.assert_allclose(float(plcc.result()), stats.pearsonr(true, pred)[0], atol=1e-6)


def test_plcc_moments_stay_exact_over_many_small_batches():
    true = RNG.normal(5.0, 0.5, 20_000).astype("float32")
    pred = (true + RNG.normal(size=20_000)).astype("float32")
    plcc = metrics.PLCC()
    update = plcc.update_state
    for t, p in batches(true, pred, 16):
        update(t, p)
    np.testing.assert_allclose(float(plcc.result()), stats.pearsonr(true, pred)[0], atol=1e-5)


@pytest.mark.parametrize("name", ["SRCC", "PLCC"])
def test_eager_host_update_equals_the_tensor_update(name):
    """torch's eager CPU steps update in numpy; the state equals the `keras.ops` update's."""
    true = RNG.dirichlet(np.ones(10), 40).astype("float32")
    pred = RNG.dirichlet(np.ones(10), 40).astype("float32")
    weights = (RNG.random(40) > 0.3).astype("float32")
    host, tensor = getattr(metrics, name)(max_samples=24), getattr(metrics, name)(max_samples=24)
    for start in range(0, 40, 16):
        rows = slice(start, start + 16)
        host.update_state(true[rows], pred[rows], weights[rows])
        tensor._update(*(keras.ops.convert_to_tensor(a[rows]) for a in (true, pred, weights)))
    for kept, reference in zip(host.variables, tensor.variables):
        used = slice(0, 24) if kept.shape == (25,) else ...  # SRCC's spare slot 24 is never read
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(kept)[used], keras.ops.convert_to_numpy(reference)[used], atol=1e-5
        )


def test_bfloat16_scores_are_accepted():
    """Mixed precision: numpy has no bfloat16, so torch's eager CPU path hands them to `keras.ops`."""
    scores = keras.ops.cast(RNG.dirichlet(np.ones(10), 16).astype("float32"), "bfloat16")
    srcc, plcc = metrics.SRCC(), metrics.PLCC()
    srcc.update_state(scores, scores)
    plcc.update_state(scores, scores)
    assert int(srcc.count) == 16 and float(srcc.result()) == pytest.approx(1.0)
    assert float(plcc.result()) == pytest.approx(1.0, abs=1e-3)


def test_step_logs_preview_and_epoch_logs_are_exact(monkeypatch):
    """Per-batch logs show the latest samples' SRCC; History and evaluate the exact one."""
    monkeypatch.setattr(metrics, "PREVIEW_SAMPLES", 8)
    x = RNG.normal(size=(64, 3)).astype("float32")
    y = (x[:, 0] + RNG.normal(size=64)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1), keras.layers.Reshape(())])
    model.compile(keras.optimizers.SGD(0.0), "mse", metrics=[metrics.SRCC(), metrics.PLCC()])
    batch_logs = []
    logger = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batch_logs.append(dict(logs)))
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    pred = model.predict(x, verbose=0)
    exact = stats.spearmanr(y, pred)[0]
    np.testing.assert_allclose(history.history["srcc"][0], exact, atol=1e-5)
    np.testing.assert_allclose(history.history["plcc"][0], stats.pearsonr(y, pred)[0], atol=1e-5)
    np.testing.assert_allclose(batch_logs[-1]["srcc"], stats.spearmanr(y[-8:], pred[-8:])[0], atol=1e-5)
    assert abs(batch_logs[-1]["srcc"] - exact) > 1e-3  # the preview is what the step logs show
    results = model.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    np.testing.assert_allclose(results["srcc"], exact, atol=1e-5)
    np.testing.assert_allclose(float(model.metrics[-1].metrics[0].result()), exact, atol=1e-5)


@pytest.mark.parametrize("path", ["update_state", "_update"])
def test_preview_is_the_srcc_of_the_latest_kept_samples(monkeypatch, path):
    """With sample weights the preview skips the samples not kept, on every update path."""
    monkeypatch.setattr(metrics, "PREVIEW_SAMPLES", 8)
    true, pred = RNG.normal(size=(2, 40)).astype("float32")
    weights = (RNG.random(40) > 0.4).astype("float32")
    srcc = metrics.SRCC()
    for start in range(0, 40, 12):
        rows = slice(start, start + 12)
        getattr(srcc, path)(*(keras.ops.convert_to_tensor(a[rows]) for a in (true, pred, weights)))
    kept = weights > 0
    expected = stats.spearmanr(true[kept][-8:], pred[kept][-8:])[0]
    np.testing.assert_allclose(float(srcc.preview), expected, atol=1e-5)
    np.testing.assert_allclose(float(srcc.result()), stats.spearmanr(true[kept], pred[kept])[0], atol=1e-6)


def test_threshold_accuracy_counts_a_mean_of_exactly_5_as_low():
    """Vote histograms whose mean is exactly 5, normalised in float32 (AVA labels)."""
    votes = []
    for _ in range(41):
        counts = RNG.integers(0, 30, size=10)
        gap = int(counts @ np.arange(1, 11)) - 5 * int(counts.sum())  # sum_k (k - 5) c_k
        while gap != 0:  # a vote for 10 adds 5, a vote for 1 takes 4
            if gap < 0:
                counts[9], gap = counts[9] + 1, gap + 5
            else:
                counts[0], gap = counts[0] + 1, gap - 4
        votes.append(counts)
    votes = np.array(votes, "float32")
    labels = votes / votes.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(labels.astype("float64") @ np.arange(1, 11), 5.0, atol=1e-5)
    assert np.any(keras.ops.convert_to_numpy(mean_score(labels)) > 5.0)  # float32 rounding above 5
    low = np.zeros_like(labels)
    low[:, 3] = 1.0  # mean 4
    high = np.zeros_like(labels)
    high[:, 5] = 1.0  # mean 6
    accuracy = metrics.ThresholdAccuracy(threshold=5.0)
    accuracy.update_state(labels, low)
    assert float(accuracy.result()) == 1.0
    accuracy.reset_state()
    accuracy.update_state(labels, high)
    assert float(accuracy.result()) == 0.0
    accuracy.reset_state()
    accuracy.update_state(labels, labels)
    assert float(accuracy.result()) == 1.0


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
