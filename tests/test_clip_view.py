"""CLIP sees patch positions, CLIP's own view of each photo, and constant predictors are reported."""

import os

import keras
import matplotlib
import numpy as np
import pytest
from PIL import Image

from keras_cskd import CLIPImageTeacher
from keras_cskd import data
from keras_cskd import report
from keras_cskd.recipe import score_metrics
from tests import tiny

PHOTO = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
# Crops of a real photo (600 x 512, portrait) at the aspect ratios of real cameras.
CROPS = {
    "portrait 512x600": None,
    "landscape 3:2": (0, 100, 512, 441),
    "portrait 2:3": (85, 0, 426, 512),
    "wide 16:9": (0, 150, 512, 438),
}


def _photo(name, tmp_path):
    image = Image.open(PHOTO).convert("RGB")
    if CROPS[name] is not None:
        image = image.crop(CROPS[name])
    path = str(tmp_path / f"{name.replace(' ', '_').replace(':', '-')}.jpg")
    image.save(path, quality=95)
    return path


def _reference_view(path, size):
    """CLIP's preprocessing as open_clip / torchvision do it, with Pillow: Resize(size, BICUBIC), CenterCrop(size)."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), np.float32)


def test_clip_built_in_code_sees_patch_positions():
    """KerasHub leaves position_ids at zeros unless a preset fills them; the teacher fills 0..N-1."""
    clip = tiny.clip_backbone()
    teacher = CLIPImageTeacher.from_backbone(clip, image_size=tiny.IMAGE_SIZE)
    positions = keras.ops.convert_to_numpy(clip.vision_encoder.embedding.position_ids)
    np.testing.assert_array_equal(positions, np.arange(positions.shape[1])[None])
    image = tiny.images(1)
    # The 4 x 4 grid of 8-pixel patches, shuffled: the same patches at other places.
    patches = image.reshape(1, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 16, 8, 8, 3)
    shuffled = patches[:, np.random.default_rng(0).permutation(16)]
    shuffled = shuffled.reshape(1, 4, 4, 8, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(image.shape)
    a, b = teacher.predict(image, verbose=0), teacher.predict(shuffled, verbose=0)
    assert np.abs(a - b).max() > 1e-3


def test_position_ids_survive_a_keras_round_trip(tmp_path):
    teacher = CLIPImageTeacher.from_backbone(tiny.clip_backbone(), image_size=tiny.IMAGE_SIZE)
    path = str(tmp_path / "clip.keras")
    teacher.save(path)
    loaded = keras.saving.load_model(path)
    positions = keras.ops.convert_to_numpy(loaded.vision_encoder.embedding.position_ids)
    np.testing.assert_array_equal(positions, np.arange(positions.shape[1])[None])


@pytest.mark.parametrize("name", list(CROPS))
def test_clip_view_matches_clip_preprocessing_on_real_photos(name, tmp_path):
    """Pixels within 1/255 on average of Pillow's bicubic resize + center crop, embedding cosine >= 0.999."""
    import tensorflow as tf

    path = _photo(name, tmp_path)
    size = tiny.IMAGE_SIZE
    decoded = data.decode_image(tf.io.read_file(path))
    ours = data.clip_view(decoded, size).numpy()
    reference = _reference_view(path, size)
    assert ours.shape == reference.shape == (size, size, 3)
    assert np.abs(ours - reference).mean() < 1.0
    teacher = CLIPImageTeacher.from_backbone(tiny.clip_backbone(), image_size=size)
    a, b = teacher.predict(np.stack([ours, reference]), verbose=0)
    assert float(a @ b) >= 0.999
    # The learners' view (0.875 crop squashed to a square) is another image: CLIP must not be fed it.
    learner = data.crop_resize(decoded, data.Look(size, dtype="float32")).numpy()
    assert np.abs(learner - reference).mean() > 3 * np.abs(ours - reference).mean()


def test_alignment_data_gives_clip_its_own_view(tmp_path):
    import tensorflow as tf

    folder = tmp_path / "photos"
    folder.mkdir()
    paths = [_photo(name, folder) for name in CROPS]
    ds = data.unlabeled_dataset(str(folder), image_size=16, batch_size=4, training=True, seed=0, clip_view_size=24)
    batch = next(iter(ds))
    assert tuple(batch["images"].shape) == (4, 16, 16, 3) and tuple(batch["clip_images"].shape) == (4, 24, 24, 3)
    references = [data.clip_view(data.decode_image(tf.io.read_file(p)), 24).numpy() for p in paths]
    for view in batch["clip_images"].numpy():  # each is the unaugmented CLIP view of one of the files
        assert min(np.abs(view - r).max() for r in references) < 1e-3


def test_cache_computes_clip_outputs_on_clips_view(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = sorted(_photo(name, folder) for name in CROPS)
    teacher = CLIPImageTeacher.from_backbone(tiny.clip_backbone(), image_size=tiny.IMAGE_SIZE)
    cache = data.FrozenOutputCache(teacher, str(tmp_path / "cache"), image_size=16, model_view_size=teacher.view_size)
    cached = cache.load(str(folder))
    expected = teacher.predict(np.stack([_reference_view(p, tiny.IMAGE_SIZE) for p in paths]), verbose=0)
    cosines = (cached.outputs[:, 0] * expected).sum(-1)
    assert cosines.min() >= 0.999
    images, outputs = next(iter(cache.dataset(str(folder), batch_size=2, seed=0)))
    assert tuple(images.shape) == (2, 16, 16, 3) and tuple(outputs.shape) == (2, 8)


def test_constant_predictions_are_reported_not_scored():
    rng = np.random.default_rng(0)
    true = rng.dirichlet(np.ones(10), 40).astype("float32")
    constant = np.tile(rng.dirichlet(np.ones(10))[None], (40, 1)).astype("float32")
    result = score_metrics(true, constant)
    assert result["srcc"] == result["plcc"] == report.CONSTANT_PREDICTIONS
    assert isinstance(result["accuracy"], float)
    assert "n/a (constant predictions)" in report.table({"student": result})
    varied = score_metrics(true, true[::-1].copy())
    assert isinstance(varied["srcc"], float)
