"""TFDS builders for AVA, AADB and PARA (TFDS's own builder test case, fake files written here)."""

import shutil
import tempfile

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

# Builders and TFDS sources never meet a model: the same TF code runs under
# every backend, so they run once, with the tensorflow backend.
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="backend-independent; runs under KERAS_BACKEND=tensorflow"
)
pytest.importorskip("dill", reason="tfds.testing needs dill (in keras-cskd's [test] extra)")

from keras_cskd.data import TFDSImages
from keras_cskd.data import read_ava
from keras_cskd.data import synthetic
from keras_cskd.data import tfds_builders
from keras_cskd.data import unlabeled_dataset

# 20 labeled images; the official-style lists give 2 test images (AVA, AADB,
# PARA) and AADB's validation list 1. The random val split is 5% (1 image).
NUM_IMAGES = 20


def _fake_world(formats):
    root = tempfile.mkdtemp(prefix="cskd_tfds_")
    world = synthetic.make_world(root, num_labeled=NUM_IMAGES, num_unlabeled=0, image_size=16, seed=0, formats=formats)
    return root, world


class _FakeFiles:
    """Writes the fake files for one builder, then TFDS's test case checks it on them."""

    FORMAT = None
    SKIP_CHECKSUMS = True  # manual download: no URLs

    @classmethod
    def setUpClass(cls):
        cls._tmp, world = _fake_world(("ava", cls.FORMAT))
        root = getattr(world, f"{cls.FORMAT}_root")
        if cls.FORMAT == "ava":  # the official test list sits in the manual dir
            assert world.ava_test_list.startswith(root)
        cls.EXAMPLE_DIR = root
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls._tmp, ignore_errors=True)


class AvaBuilderTest(_FakeFiles, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tfds_builders.Ava
    FORMAT = "ava"
    SPLITS = {"train": 17, "val": 1, "test": 2}


class AadbBuilderTest(_FakeFiles, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tfds_builders.Aadb
    FORMAT = "aadb"
    SPLITS = {"train": 17, "val": 1, "test": 2}


class ParaBuilderTest(_FakeFiles, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tfds_builders.Para
    FORMAT = "para"
    SPLITS = {"train": 17, "val": 1, "test": 2}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The documented `tfds.load` call, on a world with one broken image."""
    _, world = _fake_world(("ava",))
    records = read_ava(world.ava_root)
    open(records.paths[0], "wb").close()  # an empty file is left out
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    splits = tfds.load(
        "ava",
        data_dir=data_dir,
        download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=world.ava_root)},
    )
    return splits, records, data_dir


def test_tfds_load_with_manual_dir(prepared):
    splits, records, _ = prepared
    assert sum(len(list(ds)) for ds in splits.values()) == NUM_IMAGES - 1
    example = next(iter(splits["test"]))
    expected = dict(zip(records.ids, records.distributions))
    np.testing.assert_allclose(example["distribution"], expected[example["image_id"].numpy().decode()], rtol=1e-6)
    np.testing.assert_allclose(example["mean_score"], example["distribution"].numpy() @ np.arange(1, 11), rtol=1e-5)
    assert example["image"].shape == (16, 16, 3)
    assert records.ids[0] not in {e["image_id"].numpy().decode() for e in splits["train"]}


def test_prepared_tfds_dataset_as_unlabeled_source(prepared, tmp_path):
    _, records, data_dir = prepared
    source = TFDSImages("ava", split="train", data_dir=data_dir)
    assert source.image_key == "image" and source.size == len(records.select("train")) - 1
    files = records.paths[1:9].tolist()
    ds = unlabeled_dataset([source, files], weights=[0.5, 0.5], num_examples=20, image_size=8, batch_size=4, seed=0)
    assert sum(len(b) for b in ds) == 20
    ds = unlabeled_dataset(source, training=False, image_size=8, batch_size=5, return_paths=True)
    keys = np.concatenate([k for _, k in ds])
    assert len(keys) == source.size and set(keys) == {b"tfds:ava/train"}
    with pytest.raises(FileNotFoundError, match="not prepared"):
        TFDSImages("ava", data_dir=str(tmp_path))
