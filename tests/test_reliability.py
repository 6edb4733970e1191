"""A phase is "done" only if it trained; every bad input gets one line."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cskd.callbacks import CheckpointEachEpoch
from keras_cskd.callbacks import non_finite_weights
from keras_cskd.recipe import Phase
from keras_cskd.recipe import PhaseError


def _model(learning_rate=0.01):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(learning_rate), "mse")
    model(np.zeros((1, 3), "float32"))
    return model


def _data(count=16):
    x = np.random.default_rng(0).normal(size=(count, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(8, drop_remainder=True)


class _PoisonAtEpoch(keras.callbacks.Callback):
    """Makes the hidden layer's bias NaN after the last batch of an epoch, before any epoch-end check."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:  # two batches an epoch
            bias = self.model.layers[0].bias
            bias.assign(np.full(bias.shape, np.nan, "float32"))


def test_checkpoints_never_hold_non_finite_weights(tmp_path):
    model = _model()
    checkpoint = CheckpointEachEpoch(str(tmp_path / "ckpt"))
    history = model.fit(_data(), epochs=3, verbose=0, callbacks=[_PoisonAtEpoch(1), checkpoint])
    assert all(np.isfinite(history.history["loss"]))  # the logged loss says nothing
    assert [os.path.basename(p) for p in checkpoint.checkpoints()] == ["epoch-00001"]
    assert "end of epoch 2" in checkpoint.non_finite and "weight arrays hold NaN" in checkpoint.non_finite
    assert "dense" in non_finite_weights(model)


def test_non_finite_phase_is_not_done_and_its_advice_names_what_exists(tmp_path):
    phase = Phase(str(tmp_path), "teacher", log=lambda line: None)
    with pytest.raises(PhaseError) as error:
        phase.train(_model(), _data(), 3, callbacks=[_PoisonAtEpoch(1)])
    message = str(error.value)
    assert not phase.done and not os.path.exists(phase.model_path) and not os.path.exists(phase.done_path)
    checkpoint = os.path.join(phase.dir, "checkpoint", "epoch-00001")
    assert checkpoint in message and os.path.isdir(checkpoint)
    assert f"cskd run {tmp_path}/config.toml --out {tmp_path}" in message
    phase = Phase(str(tmp_path / "fresh"), "teacher", log=lambda line: None)
    with pytest.raises(PhaseError, match="no epoch of this phase completed, so it starts over") as error:
        phase.train(_model(), _data(), 2, callbacks=[_PoisonAtEpoch(0)])
    assert "checkpoint" not in str(error.value).split("run '")[0]  # names no checkpoint folder


def test_a_full_disk_stops_with_one_line_keeps_the_checkpoint_and_resumes(tmp_path, monkeypatch):
    """Simulated ENOSPC: after epoch 1 the file system reports less free space than a checkpoint needs."""
    import collections
    import errno

    from keras_cskd import callbacks

    real_disk_usage = callbacks.shutil.disk_usage
    usage = collections.namedtuple("usage", "total used free")

    class FillDiskAfterEpoch(keras.callbacks.Callback):
        full = False

        def on_epoch_end(self, epoch, logs=None):
            FillDiskAfterEpoch.full = FillDiskAfterEpoch.full or epoch == 0

    def disk_usage(path):
        return usage(1 << 30, 1 << 30, 1000) if FillDiskAfterEpoch.full else real_disk_usage(path)

    monkeypatch.setattr(callbacks.shutil, "disk_usage", disk_usage)
    phase = Phase(str(tmp_path), "teacher", log=lambda line: None)
    # The filler runs first: epoch 1's checkpoint fits, epoch 2's does not.
    with pytest.raises(OSError) as error:
        phase.train(_model(), _data(), 3, callbacks=[FillDiskAfterEpoch()])
    assert error.value.errno == errno.ENOSPC and "\n" not in str(error.value)
    assert "checkpoint of epoch 2" in str(error.value) and os.path.join(phase.dir, "checkpoint") in str(error.value)
    assert [os.path.basename(p) for p in os.listdir(os.path.join(phase.dir, "checkpoint"))] == ["epoch-00001"]
    assert not phase.done
    FillDiskAfterEpoch.full = False
    monkeypatch.setattr(callbacks.shutil, "disk_usage", real_disk_usage)  # space freed
    phase = Phase(str(tmp_path), "teacher", log=lambda line: None)
    phase.train(_model(), _data(), 3)
    assert phase.done and os.path.exists(phase.model_path)


def test_resume_takes_the_lowered_learning_rate(tmp_path):
    model = _model(learning_rate=0.5)
    model.fit(_data(), epochs=1, verbose=0, callbacks=[CheckpointEachEpoch(str(tmp_path))])
    resumed = _model(learning_rate=0.001)
    resumed.fit(_data(), epochs=1, verbose=0, callbacks=[CheckpointEachEpoch(str(tmp_path))])
    assert float(resumed.optimizer.learning_rate) == pytest.approx(0.001)
    assert int(resumed.optimizer.iterations) == 2  # the optimizer state itself was restored


@pytest.mark.parametrize("count", [0, 5])  # no images; fewer than one batch
def test_a_phase_without_a_training_step_is_an_error(tmp_path, count):
    phase = Phase(str(tmp_path), "align", log=lambda line: None)
    with pytest.raises(PhaseError, match=r"took no training step.*unlabeled images \(\[data\] unlabeled\)"):
        phase.train(_model(), _data(count), 2)
    assert not phase.done and not os.path.exists(phase.done_path)
    assert not os.path.exists(os.path.join(phase.dir, "checkpoint"))


def test_a_phase_that_trained_records_its_steps(tmp_path):
    phase = Phase(str(tmp_path), "teacher", log=lambda line: None)
    phase.train(_model(), _data(16), 2)
    assert phase.done
    with open(phase.done_path) as file:
        assert json.load(file)["steps"] == 4


@pytest.mark.parametrize(
    "section, field, value, message",
    [
        ("data", "batch_size", 0, r"\[data\] batch_size must be a positive number of images, got 0"),
        ("data", "image_size", 0, r"\[data\] image_size must be at least 8"),
        ("train", "learning_rate", -0.001, r"\[train\] learning_rate must be a positive number, got -0.001"),
        ("model", "num_bins", 0, r"\[model\] num_bins must be at least 2 bins, got 0"),
        ("model", "dropout", 1.5, r"\[model\] dropout must be in \[0, 1\), got 1.5"),
    ],
)
def test_config_is_validated_before_any_work(tmp_path, section, field, value, message):
    from keras_cskd import recipe

    config = recipe.RecipeConfig.from_dict({section: {field: value}})
    with pytest.raises(recipe.ConfigError, match=message):
        recipe.run(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")  # nothing written, nothing trained
    recipe.RecipeConfig().validate()  # the defaults pass


def test_list_images_follows_links_without_looping(tmp_path):
    from keras_cskd.data import list_images

    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "sub/b.jpg"):
        (tmp_path / name).write_bytes(b"")
    os.symlink(".", tmp_path / "again")  # a loop
    os.symlink(tmp_path / "sub", tmp_path / "link_to_sub")  # a second way into sub
    other = tmp_path.parent / f"{tmp_path.name}_other"
    other.mkdir()
    (other / "c.jpg").write_bytes(b"")
    os.symlink(other, tmp_path / "linked")  # a link to a folder outside is followed
    names = sorted(os.path.relpath(p, tmp_path) for p in list_images(str(tmp_path)))
    assert sorted(os.path.basename(n) for n in names) == ["a.jpg", "b.jpg", "c.jpg"], names  # each image once


def test_duplicate_image_ids_are_refused_with_a_count(tmp_path):
    from keras_cskd.data import read_ava

    rows = ["1 100 0 0 0 1 2 1 0 0 0 0 0 0 1", "2 101 0 0 1 1 1 0 0 0 0 0 0 0 1", "3 100 5 0 0 0 0 0 0 0 0 1 0 0 1"]
    (tmp_path / "AVA.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match=r"1 image id\(s\) appear on more than one row \(e.g. '100', again on row 3\)"):
        read_ava(str(tmp_path))
