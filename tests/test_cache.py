"""FrozenOutputCache: keys, crash safety, invalidation, and training equivalence."""

import os
import shutil

import keras
import numpy as np
import pytest

from keras_cskd import CLIPImageTeacher
from keras_cskd.data import FrozenOutputCache
from keras_cskd.data import PassClock
from keras_cskd.data import SkipCounter
from keras_cskd.data import fingerprint
from keras_cskd.data import labeled_dataset
from keras_cskd.data import read_ava
from keras_cskd.data import synthetic
from keras_cskd.data import unlabeled_dataset
from keras_cskd.data.cache import _shard_key
from keras_cskd.keys import LABELED_IMAGES
from keras_cskd.keys import PSEUDO_LABELS
from keras_cskd.keys import UNLABELED_IMAGES
from keras_cskd.models import AestheticScorer
from keras_cskd.models import CLIPFeatureAligner
from keras_cskd.models import SemiSupervisedDistiller
from tests import tiny

S = tiny.IMAGE_SIZE


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return synthetic.make_world(
        tmp_path_factory.mktemp("world"), num_labeled=16, num_unlabeled=20, image_size=S, seed=3
    )


@pytest.fixture()
def files(world, tmp_path):
    """A private copy of the unlabeled images (tests modify them)."""
    folder = tmp_path / "unlabeled"
    shutil.copytree(world.unlabeled_dir, folder)
    return str(folder)


@pytest.fixture(scope="module")
def clip():
    keras.utils.set_random_seed(0)
    return CLIPImageTeacher.from_backbone(tiny.clip_backbone(), image_size=S)


def center_images_and_outputs(model, folder):
    ds = unlabeled_dataset(folder, image_size=S, batch_size=64, training=False, return_paths=True)
    images, paths = zip(*[(x.numpy(), p.numpy()) for x, p in ds])
    images = np.concatenate(images)
    paths = [os.path.abspath(p.decode()) for p in np.concatenate(paths)]
    return images, paths, np.asarray(model.predict(images.astype("float32"), verbose=0))


def test_fingerprint_follows_weights(clip):
    model = tiny.conv_backbone()
    before = fingerprint(model)
    assert fingerprint(model) == before
    weights = model.get_weights()
    model.set_weights([w + 1e-3 for w in weights])
    assert fingerprint(model) != before
    model.set_weights(weights)
    assert fingerprint(model) == before
    assert fingerprint(clip) != before


def test_center_view_matches_model_and_is_reused(clip, files, tmp_path):
    cache = FrozenOutputCache(clip, tmp_path / "cache", image_size=S, shard_size=8, batch_size=5)
    report = cache.compute(files)
    assert report["files"] == 20 and report["computed_shards"] == 3 and report["reused_shards"] == 0
    images, paths, expected = center_images_and_outputs(clip, files)
    cached = cache.load(files)
    assert cached.paths == sorted(paths)
    order = [paths.index(p) for p in cached.paths]
    np.testing.assert_allclose(cached.outputs[:, 0], expected[order], atol=1e-5)
    # A second run (a new cache object, as in a later process) reads everything.
    again = FrozenOutputCache(clip, tmp_path / "cache", image_size=S, shard_size=8)
    assert again.compute(files)["computed_shards"] == 0
    # The images of the dataset are the data layer's evaluation images, in sorted order.
    x, y = zip(*[(a.numpy(), b.numpy()) for a, b in again.dataset(files, batch_size=6, training=False)])
    np.testing.assert_array_equal(np.concatenate(x), images[order])
    np.testing.assert_allclose(np.concatenate(y), expected[order], atol=1e-5)
    manifest = os.path.join(cache.root, "center", "manifest.json")
    assert os.path.isfile(manifest)


def test_changed_model_does_not_read_old_entries(files, tmp_path):
    model = tiny.conv_backbone()
    FrozenOutputCache(model, tmp_path, image_size=S, shard_size=8).compute(files)
    model.set_weights([w * 0.5 for w in model.get_weights()])
    cache = FrozenOutputCache(model, tmp_path, image_size=S, shard_size=8)
    assert cache.compute(files)["computed_shards"] == 3
    _, paths, expected = center_images_and_outputs(model, files)
    cached = cache.load(files)
    np.testing.assert_allclose(cached.outputs[:, 0], expected[[paths.index(p) for p in cached.paths]], atol=1e-5)


def test_killed_run_resumes_and_ignores_partial_files(files, tmp_path):
    model = tiny.conv_backbone()
    cache = FrozenOutputCache(model, tmp_path, image_size=S, shard_size=8, batch_size=8)
    calls = {"n": 0}
    real = cache._predict

    def dies_on_second_shard(images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(images)

    cache._predict = dies_on_second_shard
    with pytest.raises(KeyboardInterrupt):
        cache.compute(files)
    view_dir = os.path.join(cache.root, "center")
    shards = sorted(n for n in os.listdir(view_dir) if n.startswith("shard-") and n.endswith(".npz"))
    assert len(shards) == 1  # only the finished shard is under a final name
    # What a hard kill can leave: a temporary file, and (disk trouble) a truncated final shard.
    with open(os.path.join(view_dir, shards[0] + ".tmp-999-dead"), "wb") as f:
        f.write(b"PK\x03\x04 half a zip")
    cache._predict = real
    report = cache.compute(files)
    assert report == {**report, "computed_shards": 2, "reused_shards": 1}
    entries, _ = cache._files(files)
    victim = cache._shard_path(0, _shard_key(entries[8:16]))
    with open(victim, "r+b") as f:
        f.truncate(100)
    report = cache.compute(files)
    assert report["computed_shards"] == 1 and report["reused_shards"] == 2
    _, paths, expected = center_images_and_outputs(model, files)
    cached = cache.load(files)
    np.testing.assert_allclose(cached.outputs[:, 0], expected[[paths.index(p) for p in cached.paths]], atol=1e-5)
    assert cache.prune() >= 1
    assert not any(".tmp-" in n for n in os.listdir(view_dir))


def test_changed_and_broken_files_invalidate_their_shard(files, tmp_path):
    model = tiny.conv_backbone()
    cache = FrozenOutputCache(model, tmp_path, image_size=S, shard_size=8)
    cache.compute(files)
    entries, _ = cache._files(files)
    changed, broken = entries[2][0], entries[12][0]
    # Replace one image by another one's content (new size/mtime), break another.
    shutil.copyfile(entries[19][0], changed)
    os.utime(changed, ns=(entries[2][2] + 10**9, entries[2][2] + 10**9))
    with open(broken, "wb") as f:
        f.write(b"not an image")
    report = cache.compute(files)
    assert report["computed_shards"] == 2 and report["reused_shards"] == 1
    assert report["skipped_files"] == 1 and cache.skipped.count == 1
    cached = cache.load(files)
    assert broken not in cached.paths and cached.missing == [broken]
    np.testing.assert_allclose(cached.lookup(changed), cached.lookup(entries[19][0]), atol=1e-6)
    # Training never sees the broken file; every batch is full.
    n = sum(int(x.shape[0]) for x, _ in cache.dataset(files, batch_size=4, training=True, seed=1))
    assert n == 16


def test_augmented_views_are_fixed_and_aligned(files, tmp_path):
    model = tiny.conv_backbone()
    cache = FrozenOutputCache(model, tmp_path, image_size=S, views=2, seed=5, shard_size=16)
    report = cache.compute(files)
    assert report["computed_shards"] == 4  # 2 shards x 2 views
    cached = cache.load(files)
    assert cached.outputs.shape[:2] == (20, 2)
    assert not np.allclose(cached.outputs[:, 0], cached.outputs[:, 1])
    for x, y in cache.dataset(files, batch_size=5, training=True, seed=0).take(2):
        np.testing.assert_allclose(model.predict(x.numpy().astype("float32"), verbose=0), y.numpy(), atol=1e-5)


def test_cached_alignment_trains_as_uncached(clip, files, tmp_path):
    def train(ds):
        keras.utils.set_random_seed(7)
        aligner = CLIPFeatureAligner(clip, {"student": tiny.conv_backbone()}, projection_hidden_dim=8)
        aligner.compile(optimizer=keras.optimizers.SGD(0.1))
        history = aligner.fit(ds, epochs=2, verbose=0)
        return tiny.weights_of(aligner.learners["student"]), history.history["loss"]

    plain = unlabeled_dataset(files, image_size=S, batch_size=5, training=False)
    cache = FrozenOutputCache(clip, tmp_path, image_size=S, shard_size=8, batch_size=7)
    cached = cache.dataset(files, batch_size=5, training=False)
    w_plain, loss_plain = train(plain)
    w_cached, loss_cached = train(cached)
    np.testing.assert_allclose(loss_cached, loss_plain, rtol=1e-4, atol=1e-6)
    for a, b in zip(w_cached, w_plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_cached_pseudo_labels_train_as_teacher(world, files, tmp_path):
    keras.utils.set_random_seed(11)
    teacher = AestheticScorer(tiny.conv_backbone())
    cache = FrozenOutputCache(teacher, tmp_path, image_size=S, shard_size=8)
    x_u, y_u = next(iter(cache.dataset(files, batch_size=8, training=False)))
    x_l, y_l = next(iter(labeled_dataset(read_ava(world.ava_root), image_size=S, batch_size=8, training=False)))
    x_u, y_u, x_l, y_l = (np.asarray(v) for v in (x_u, y_u, x_l, y_l))

    def train(with_cache):
        keras.utils.set_random_seed(12)
        student = AestheticScorer(tiny.conv_backbone())
        distiller = SemiSupervisedDistiller(None if with_cache else teacher, student)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1), metrics=[])
        inputs = {LABELED_IMAGES: x_l, UNLABELED_IMAGES: x_u}
        if with_cache:
            inputs[PSEUDO_LABELS] = y_u
        # Tensors: on torch, train_on_batch hands nested numpy values through unconverted.
        inputs = {k: keras.ops.convert_to_tensor(v) for k, v in inputs.items()}
        losses = [float(np.asarray(distiller.train_on_batch(inputs, y_l, return_dict=True)["loss"])) for _ in range(3)]
        return losses, tiny.weights_of(student)

    (l_teacher, w_teacher), (l_cache, w_cache) = train(False), train(True)
    np.testing.assert_allclose(l_cache, l_teacher, rtol=1e-5)
    for a, b in zip(w_cache, w_teacher):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The zipped pipeline feeds the distiller without a teacher.
    ds = cache.semi_supervised_dataset(read_ava(world.ava_root), files, batch_size=4, unlabeled_ratio=1.5, seed=0)
    x, y = next(iter(ds))
    assert x[UNLABELED_IMAGES].shape[0] == 6 and x[PSEUDO_LABELS].shape == (6, 10) and y.shape == (4, 10)


def test_cached_datasets_follow_the_callers_clock_and_counter(world, files, tmp_path):
    model = tiny.conv_backbone()
    cache = FrozenOutputCache(model, tmp_path, image_size=S, views=2, shard_size=8)
    records = read_ava(world.ava_root)

    def make(clock, skipped=None):
        ds = cache.semi_supervised_dataset(records, files, batch_size=4, passes=clock, skipped=skipped)
        return ds.map(lambda x, y: (x, y))  # a new dataset object, as distribute_dataset makes

    def read(ds):
        return [(x[LABELED_IMAGES].numpy(), x[UNLABELED_IMAGES].numpy(), x[PSEUDO_LABELS].numpy()) for x, _ in ds]

    ds = make(PassClock(seed=2))
    pass0, pass1 = read(ds), read(ds)
    assert not np.array_equal(pass0[0][0], pass1[0][0])
    clock = PassClock(seed=2)
    resumed = make(clock)
    clock.pin(1)  # what PassesFollowEpochs does at the start of epoch 1
    for a, b in zip(read(resumed), pass1):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    # The pseudo-labels are the model's outputs on the very pixels yielded.
    _, images, pseudo = pass1[0]
    np.testing.assert_allclose(model.predict(images.astype("float32"), verbose=0), pseudo, atol=1e-5)
    # A file broken after computing (same size and time: the cache cannot tell) is skipped and counted
    # by the caller's counter.
    broken = sorted(os.path.join(d, f) for d, _, fs in os.walk(files) for f in fs)[0]
    st = os.stat(broken)
    with open(broken, "wb") as f:
        f.write(b"\0" * st.st_size)
    os.utime(broken, ns=(st.st_atime_ns, st.st_mtime_ns))
    counter = SkipCounter()
    n = sum(int(x.shape[0]) for x, _ in cache.dataset(files, batch_size=4, seed=0, compute=False, skipped=counter))
    assert n == 20 and counter.count == 1  # the epoch keeps its length; the place is refilled
    with pytest.raises(ValueError, match="not both"):
        cache.dataset(files, passes=PassClock(0), seed=0)
