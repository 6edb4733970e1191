"""tf.data pipelines: shapes, determinism, bad files, mixing, and `fit` on the current backend."""

import io
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from PIL import ImageOps

from keras_cskd.callbacks import PassesFollowEpochs
from keras_cskd.data import ImageFiles
from keras_cskd.data import LabeledRecords
from keras_cskd.data import Look
from keras_cskd.data import PassClock
from keras_cskd.data import SkipCounter
from keras_cskd.data import decode_image
from keras_cskd.data import labeled_dataset
from keras_cskd.data import read_ava
from keras_cskd.data import semi_supervised_dataset
from keras_cskd.data import synthetic
from keras_cskd.data import unlabeled_dataset

SIZE = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return synthetic.make_world(root, num_labeled=40, num_unlabeled=24, image_size=32, seed=1)


@pytest.fixture(scope="module")
def records(world):
    return read_ava(world.ava_root, val_fraction=0.1, test_fraction=0.2, seed=0)


def _batches(ds):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds]


# === Labeled ===


def test_labeled_training_batches(records):
    skipped = SkipCounter()
    ds = labeled_dataset(records, "train", image_size=SIZE, batch_size=8, seed=0, skipped=skipped)
    assert ds.element_spec[0].shape == (8, SIZE, SIZE, 3)  # static: drop_remainder
    assert ds.element_spec[0].dtype == tf.uint8
    assert ds.element_spec[1].shape == (8, 10) and ds.element_spec[1].dtype == tf.float32
    batches = _batches(ds)
    assert len(batches) == 28 // 8
    for images, dists in batches:
        np.testing.assert_allclose(dists.sum(1), 1, atol=1e-5)
        assert images.max() > 100  # 0..255, not normalized
    assert skipped.count == 0 and skipped.last_pass == (0, 0)
    assert not hasattr(ds, "passes") and not hasattr(ds, "skipped")  # the caller's objects are the one way


def test_labeled_eval_keeps_order_and_remainder(records):
    test = records.select("test")
    ds = labeled_dataset(records, "test", image_size=SIZE, batch_size=3, dtype="float32")
    assert ds.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 3]
    batches = _batches(ds)
    assert [len(b[0]) for b in batches] == [3, 3, 2]
    assert batches[0][0].dtype == np.float32 and batches[0][0].max() <= 255
    np.testing.assert_allclose(np.concatenate([b[1] for b in batches]), test.distributions, rtol=1e-6)
    # Center crop + resize of the first file, computed independently.
    first = decode_image(tf.io.read_file(test.paths[0])).numpy().astype(np.float32)
    crop = first[2:30, 2:30]  # 0.875 * 32 = 28, centered
    expected = tf.image.resize(crop, [SIZE, SIZE]).numpy()  # bilinear: shrinks < 2x
    np.testing.assert_allclose(batches[0][0][0], expected, atol=1e-3)


def test_labeled_is_deterministic_with_seed(records):
    make = lambda seed: labeled_dataset(records, "train", image_size=SIZE, batch_size=8, seed=seed)  # noqa: E731
    a, b, c = make(5), make(5), make(6)
    epoch1_a, epoch1_b = _batches(a), _batches(b)
    for (xa, ya), (xb, yb) in zip(epoch1_a, epoch1_b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(epoch1_a[0][0], _batches(c)[0][0])
    # A second pass differs from the first, identically for both pipelines.
    epoch2_a, epoch2_b = _batches(a), _batches(b)
    assert not np.array_equal(epoch1_a[0][1], epoch2_a[0][1])
    np.testing.assert_array_equal(epoch2_a[0][0], epoch2_b[0][0])


def test_labeled_errors(records):
    with pytest.raises(ValueError, match="fewer than batch_size"):
        labeled_dataset(records, "test", training=True, batch_size=64)
    with pytest.raises(ValueError, match="split 'nope'"):
        labeled_dataset(records, "nope")
    with pytest.raises(ValueError, match="dtype"):
        labeled_dataset(records, "test", dtype="int32")
    with pytest.raises(ValueError, match="not both"):
        labeled_dataset(records, "test", passes=PassClock(0), seed=0)
    with pytest.raises(TypeError, match="PassClock"):
        labeled_dataset(records, "test", passes=0)


def test_look_is_checked_and_frozen():
    look = Look([24, 32], crop_fraction=1)
    assert look.image_size == (24, 32) and look.crop_fraction == 1.0 and look == Look((24, 32), 1.0)
    with pytest.raises(ValueError, match="image_size"):
        Look((1, 2, 3))
    with pytest.raises(ValueError, match="crop_fraction"):
        Look(8, crop_fraction=0)
    with pytest.raises(AttributeError):
        look.dtype = "float32"


def test_keep_aspect_ratio_crops_a_square(tmp_path):
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, :20] = 255  # white left third, outside a centered square crop of the shorter side
    Image.fromarray(img).save(tmp_path / "wide.png")
    r = LabeledRecords.from_arrays([str(tmp_path / "wide.png")], [[1, 1]])

    def first_image(**kw):
        return _batches(labeled_dataset(r, image_size=8, batch_size=1, crop_fraction=1.0, **kw))[0][0]

    squash, square = first_image(), first_image(keep_aspect_ratio=True)
    assert squash[0, :, :2].min() == 255 and square[0].max() == 0


# === Bad input ===


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _le_exif_jpeg(rgb, orientation):
    """JPEG with a hand-made little-endian EXIF block (PIL writes big-endian)."""
    tiff = b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01\x03\x00\x01\x00\x00\x00"
    tiff += bytes([orientation, 0, 0, 0]) + b"\x00\x00\x00\x00"
    payload = b"Exif\x00\x00" + tiff
    jpeg = _encode(Image.fromarray(rgb), "JPEG", quality=95)
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A folder of good-but-unusual and broken files, and what each should give."""
    d = tmp_path_factory.mktemp("messy")
    rng = np.random.default_rng(0)
    rgb = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    rgb[:5, :10] = [255, 0, 0]  # a red corner to check orientation
    good = {
        "plain.jpg": _encode(Image.fromarray(rgb), "JPEG", quality=95),
        "gray.jpeg": _encode(Image.fromarray(rgb).convert("L"), "JPEG"),
        "cmyk.jpg": _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "deep16.png": _encode(Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)), "PNG"),
        "palette.png": _encode(Image.fromarray(rgb).convert("P"), "PNG"),
        "alpha.png": _encode(Image.fromarray(rgb).convert("RGBA"), "PNG"),
        "image.bmp": _encode(Image.fromarray(rgb), "BMP"),
        "image.gif": _encode(Image.fromarray(rgb).convert("P"), "GIF"),
        "image.webp": _encode(Image.fromarray(rgb), "WEBP"),
        "png_named.jpg": _encode(Image.fromarray(rgb), "PNG"),  # wrong extension, real image
        "rot_le.jpg": _le_exif_jpeg(rgb, 8),
    }
    for orientation in range(2, 9):
        im = Image.fromarray(rgb)
        exif = im.getexif()
        exif[0x0112] = orientation
        good[f"exif{orientation}.jpg"] = _encode(im, "JPEG", exif=exif.tobytes(), quality=95)
    jpeg = good["plain.jpg"]
    bad = {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + rng.bytes(300),
        "notes.jpg": b"these are my notes, not a photo",
        "page.png": b"<html><body>404 not found</body></html>",
    }
    for name, data in {**good, **bad}.items():
        (d / name).write_bytes(data)
    return d, sorted(good), sorted(bad) + ["missing.jpg"], rgb


def test_decode_handles_formats_and_orientation(messy):
    d, good, _, rgb = messy
    for name in good:
        data = (d / name).read_bytes()
        got = decode_image(data).numpy().astype(int)
        reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        if name == "deep16.png":  # PIL clips 16-bit to 255 on convert; TF scales
            reference = np.repeat(rgb[..., :1], 3, axis=-1)
        assert got.shape == np.asarray(reference).shape, name
        tolerance = 25 if name == "cmyk.jpg" else 8  # decoders differ slightly on lossy files
        assert np.abs(got - np.asarray(reference, int)).mean() < tolerance, name
    # Orientation 6 means "rotate 90 degrees clockwise to view": the red corner moves to the top right.
    upright = decode_image((d / "exif6.jpg").read_bytes()).numpy()
    assert upright.shape == (30, 20, 3) and upright[1, -2, 0] > 200 and upright[1, -2, 1] < 60
    # Little-endian EXIF, orientation 8: red corner to the bottom left.
    upright = decode_image((d / "rot_le.jpg").read_bytes()).numpy()
    assert upright.shape == (30, 20, 3) and upright[-2, 1, 0] > 200 and upright[-2, 1, 1] < 60


def test_bad_files_are_skipped_and_reported(messy, caplog):
    d, good, bad, _ = messy
    paths = [str(d / n) for n in sorted(good + bad)]
    r = LabeledRecords.from_arrays(paths, np.ones((len(paths), 10)))
    with caplog.at_level(logging.WARNING, logger="keras_cskd.data"):
        counter = SkipCounter(max_examples=10)
        ds = labeled_dataset(r, training=True, image_size=SIZE, batch_size=2, seed=0, skipped=counter)
        n = sum(len(x) for x, _ in ds)
    skipped = counter
    # Training keeps the epoch length: skipped places are refilled from the next pass.
    assert ds.cardinality() == len(paths) // 2 and n == len(paths)
    assert skipped.count == len(bad) and skipped.last_pass == (len(bad), len(paths))
    reasons = dict(skipped.examples)
    assert reasons[str(d / "missing.jpg")] == "missing"
    assert reasons[str(d / "empty.jpg")] == "empty file"
    assert reasons[str(d / "notes.jpg")] == "not an image"
    assert reasons[str(d / "truncated.jpg")] == "corrupt or truncated image"
    lines = [rec.getMessage() for rec in caplog.records if "skipped" in rec.getMessage()]
    assert len(lines) == 1 and f"skipped {len(bad)} of {len(paths)}" in lines[0]
    # A second pass logs the same files again but counts them once.
    _batches(ds)
    lines = [rec.getMessage() for rec in caplog.records if "skipped" in rec.getMessage()]
    assert skipped.count == len(bad) and len(lines) == 2


def test_unlabeled_bad_files_and_shared_counter(messy):
    d, good, bad, _ = messy
    counter = SkipCounter(max_examples=2)
    ds = unlabeled_dataset(str(d), training=False, image_size=SIZE, batch_size=4, return_paths=True, skipped=counter)
    images, paths = zip(*_batches(ds))
    names = [os.path.basename(p.decode()) for p in np.concatenate(paths)]
    assert names == [n for n in sorted(good + bad) if n in good]  # folder order kept, bad ones dropped
    assert counter.count == len(bad) - 1 and len(counter.examples) == 2  # "missing.jpg" is not in the folder


def test_all_files_broken_gives_empty_pass(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    counter = SkipCounter()
    ds = unlabeled_dataset(str(tmp_path), image_size=SIZE, batch_size=1, skipped=counter)
    assert _batches(ds) == [] and counter.count == 1


def test_empty_sources_are_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no image files"):
        unlabeled_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="not a folder, list file, image file or 'tfds:' name"):
        unlabeled_dataset(str(tmp_path / "nothing"))


# === Unlabeled and mixed ===


def _solid_folder(path, color, n):
    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((16, 16, 3), color, np.uint8)).save(path / f"{i}.png")
    return str(path)


def test_unlabeled_folder_list_file_and_paths(world, tmp_path):
    ds = unlabeled_dataset(world.unlabeled_dir, image_size=SIZE, batch_size=5, seed=0)
    assert ds.element_spec.shape == (5, SIZE, SIZE, 3)  # just images, no tuple
    assert sum(len(b) for b in _batches(ds)) == 20
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{world.unlabeled_dir}/000/{i}.jpg\n" for i in range(7)))
    ds = unlabeled_dataset(str(listing), training=False, image_size=SIZE, batch_size=5, return_paths=True)
    paths = np.concatenate([p for _, p in _batches(ds)])
    assert len(paths) == 7 and paths[0].decode().endswith("000/0.jpg")
    files = [f"{world.unlabeled_dir}/000/{i}.jpg" for i in range(3)]
    assert sum(len(b) for b in _batches(unlabeled_dataset(files, training=False, batch_size=2, image_size=8))) == 3


def test_mixed_sources_follow_weights(tmp_path):
    red = _solid_folder(tmp_path / "red", (255, 0, 0), 10)
    blue = _solid_folder(tmp_path / "blue", (0, 0, 255), 30)

    def make(**kw):
        return unlabeled_dataset([red, ImageFiles.from_path(blue)], image_size=8, batch_size=10, seed=3, **kw)

    ds = make(weights=[0.8, 0.2], num_examples=200)
    images = np.concatenate(_batches(ds))
    assert len(images) == 200
    red_share = (images[:, 0, 0, 0] > 128).mean()
    assert 0.7 < red_share < 0.9
    np.testing.assert_array_equal(images, np.concatenate(_batches(make(weights=[0.8, 0.2], num_examples=200))))
    # Default: weights by source size, one epoch = all images once in expectation.
    images = np.concatenate(_batches(make()))
    assert len(images) == 40 and (images[:, 0, 0, 0] > 128).mean() < 0.5
    with pytest.raises(ValueError, match="one non-negative weight per source"):
        make(weights=[1.0])


# === Semi-supervised ===


def test_semi_supervised_structure(records, world):
    def make():
        return semi_supervised_dataset(
            records, world.unlabeled_dir, image_size=SIZE, batch_size=4, unlabeled_ratio=2.5, seed=0
        )

    ds = make()
    x_spec, y_spec = ds.element_spec
    assert x_spec["labeled_images"].shape == (4, SIZE, SIZE, 3)
    assert x_spec["unlabeled_images"].shape == (10, SIZE, SIZE, 3)
    assert y_spec.shape == (4, 10)
    # The labeled split defines the epoch; 24 unlabeled images repeat as needed.
    pass1, pass2, fresh = _batches(ds), _batches(ds), _batches(make())
    assert len(pass1) == 28 // 4 and ds.cardinality() == 28 // 4
    np.testing.assert_array_equal(pass1[-1][0]["unlabeled_images"], fresh[-1][0]["unlabeled_images"])
    np.testing.assert_array_equal(pass1[0][1], fresh[0][1])
    assert not np.array_equal(pass1[0][1], pass2[0][1])


def test_clock_survives_map_and_follows_epochs(records, world):
    """The caller's clock pins the passes of a dataset that was mapped after it was built."""

    def make(clock):
        ds = semi_supervised_dataset(records, world.unlabeled_dir, image_size=SIZE, batch_size=4, passes=clock)
        return ds.map(lambda x, y: (x, y))  # a new dataset object, as distribute_dataset makes

    ds = make(PassClock(seed=4))
    pass0, pass1 = _batches(ds), _batches(ds)
    assert not np.array_equal(pass0[0][1], pass1[0][1])
    # A resumed run: a new dataset and clock, pinned to epoch 1 by the callback.
    clock = PassClock(seed=4)
    resumed = make(clock)
    PassesFollowEpochs(clock).on_epoch_begin(1)
    again = _batches(resumed)
    np.testing.assert_array_equal(again[0][1], pass1[0][1])
    np.testing.assert_array_equal(again[-1][0]["unlabeled_images"], pass1[-1][0]["unlabeled_images"])
    with pytest.raises(TypeError, match="takes PassClocks"):
        PassesFollowEpochs(resumed)


def test_keys_module_imports_nothing():
    """`keras_cskd.keys` is cheap: a model file can import it without TensorFlow."""
    import subprocess
    import sys

    import keras_cskd.keys as keys

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('keys', {keys.__file__!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'keras_cskd')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert (keys.LABELED_IMAGES, keys.UNLABELED_IMAGES, keys.PSEUDO_LABELS) == (
        "labeled_images",
        "unlabeled_images",
        "pseudo_labels",
    )


# === The pipelines meet models on the current backend ===


def _tiny_model(num_bins=10):
    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(num_bins, activation="softmax"),
        ]
    )


class ImageOnlyModel(keras.Model):
    """Like CLIPFeatureAligner: fit on images alone, loss from the outputs."""

    def __init__(self):
        super().__init__()
        self.body = _tiny_model(4)

    def call(self, images):
        return self.body(images)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean(keras.ops.square(y_pred - 0.25))


class SemiModel(keras.Model):
    """Like SemiSupervisedDistiller: labeled head loss plus an unlabeled term."""

    def __init__(self):
        super().__init__()
        self.body = _tiny_model()

    def call(self, inputs):
        return self.body(inputs["labeled_images"]), self.body(inputs["unlabeled_images"])

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labeled, unlabeled = y_pred
        return keras.ops.mean(keras.ops.square(labeled - y)) + 0.1 * keras.ops.mean(unlabeled)


def test_fit_labeled(records):
    model = _tiny_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    history = model.fit(labeled_dataset(records, "train", image_size=SIZE, batch_size=8, seed=0), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and len(history.history["loss"]) == 2
    preds = model.predict(labeled_dataset(records, "test", image_size=SIZE, batch_size=3), verbose=0)
    assert preds.shape == (8, 10)


def test_fit_unlabeled_and_semi_supervised(records, world):
    model = ImageOnlyModel()
    model.compile(optimizer="adam")
    ds = unlabeled_dataset(world.unlabeled_dir, image_size=SIZE, batch_size=8, seed=0)
    history = model.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    model = SemiModel()
    model.compile(optimizer="adam")
    ds = semi_supervised_dataset(records, world.unlabeled_dir, image_size=SIZE, batch_size=4, unlabeled_ratio=2, seed=0)
    history = model.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
