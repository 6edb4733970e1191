"""TFDS builders for AVA, AADB and PARA, prepared from files already on disk.

None of these datasets can be downloaded automatically, so, the TFDS way for
such datasets, each builder reads its files from `manual_dir` (the layouts of
`read_ava`, `read_aadb`, `read_para`). Importing this module registers the
names `"ava"`, `"aadb"` and `"para"`:

    import tensorflow_datasets as tfds
    import keras_cskd.data.tfds_builders  # registers the builders

    ds = tfds.load(
        "ava",
        split="train",
        data_dir="/data/tfds",
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir="/data/AVA_dataset")
        },
    )

or the builder directly: `Ava(data_dir=...).download_and_prepare(download_config=...)`.

Examples: `{"image": uint8 (H, W, 3), "image_id": str, "distribution": float32
(num_bins,), "mean_score": float32}`; `as_supervised=True` gives
`(image, distribution)`. Splits are those of the reader with its defaults:
official lists where the files have them (AVA's
`aesthetics_image_lists/generic_test.jpgl`, AADB's three lists, PARA's
`PARA-GiaaTest.csv`), otherwise seeded random `val` (5%) and `test` (10%).

Images are checked while preparing: files that cannot be decoded are left
out (and logged); JPEGs are stored as they are, other formats and
EXIF-rotated JPEGs are stored upright as JPEG.
"""

from __future__ import annotations

import inspect
import logging

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from keras_cskd.data import readers
from keras_cskd.data.images import decode_image
from keras_cskd.data.images import exif_orientation

logger = logging.getLogger("keras_cskd.data")


def _encoded_jpeg(path):
    """JPEG bytes of an image file, upright; `None` if it cannot be decoded."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        image = decode_image(data)
    except (tf.errors.OpError, OSError):
        return None
    if data[:2] == b"\xff\xd8" and int(exif_orientation(data)) == 1:
        return data
    return tf.io.encode_jpeg(image, quality=95).numpy()


class _AestheticsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: subclasses set `BINS`, `_read`, and the texts."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BINS = None
    HOMEPAGE = ""
    CITATION = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS 4.9's default needs the `importlib_resources` backport for
        # builders outside its own package; the source file is all it needs.
        return epath.Path(inspect.getfile(cls))

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "image_id": tfds.features.Text(),
                    "distribution": tfds.features.Tensor(shape=(len(self.BINS),), dtype=np.float32),
                    "mean_score": np.float32,
                }
            ),
            supervised_keys=("image", "distribution"),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )

    def _read(self, root):
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        records = self._read(str(dl_manager.manual_dir))
        return {name: self._generate_examples(records.select(name)) for name in records.splits}

    def _generate_examples(self, records):
        skipped = []
        for image_id, path, dist in zip(records.ids, records.paths, records.distributions):
            image = _encoded_jpeg(path)
            if image is None:
                skipped.append(path)
                continue
            yield (
                str(image_id),
                {
                    "image": image,
                    "image_id": str(image_id),
                    "distribution": dist,
                    "mean_score": np.float32(dist @ self.BINS),
                },
            )
        if skipped:
            logger.warning(
                "%s: left out %d of %d images that could not be decoded, e.g. %s",
                self.name,
                len(skipped),
                len(records),
                ", ".join(skipped[:3]),
            )


class Ava(_AestheticsBuilder):
    """AVA (Murray et al. 2012): ~255k photos with 10-bin vote histograms."""

    BINS = readers.AVA_BINS
    HOMEPAGE = "http://refbase.cvc.uab.es/files/MMP2012a.pdf"
    CITATION = "Murray, Marchesotti, Perronnin. AVA: A large-scale database for aesthetic visual analysis. CVPR 2012."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put the AVA files in `manual_dir`: `AVA.txt`, the images as `images/<id>.jpg`,
    and optionally `aesthetics_image_lists/generic_test.jpgl` (official test ids).
    """

    def _read(self, root):
        test_list = f"{root}/aesthetics_image_lists/generic_test.jpgl"
        return readers.read_ava(root, test_list=test_list if tf.io.gfile.exists(test_list) else None)


class Aadb(_AestheticsBuilder):
    """AADB (Kong et al. 2016): 10k photos; mean of five 1..5 ratings as a two-hot distribution."""

    BINS = readers.AADB_BINS
    HOMEPAGE = "https://www.ics.uci.edu/~skong2/aesthetics.html"
    CITATION = (
        "Kong, Shen, Lin, Mech, Fowlkes. Photo aesthetics ranking network with attributes "
        "and content adaptation. ECCV 2016."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put the AADB files in `manual_dir`: `imgListFiles_label/` (the
    imgList*Regression_score.txt lists) and the images in
    `datasetImages_originalSize/` (or `datasetImages_warp256/`, `AADB_newtest/`).
    """

    def _read(self, root):
        return readers.read_aadb(root)


class Para(_AestheticsBuilder):
    """PARA (Yang et al. 2022): 31k photos with 9-bin (1.0..5.0) vote histograms."""

    BINS = readers.PARA_BINS
    HOMEPAGE = "https://cv-datasets.institutecv.com/#/data-sets"
    CITATION = "Yang et al. Personalized image aesthetics assessment with rich attributes. CVPR 2022."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put the PARA folder's contents in `manual_dir`: `annotation/` (PARA-GiaaAll.csv or
    PARA-GiaaTrain.csv + PARA-GiaaTest.csv, and/or PARA-Images.csv) and
    `imgs/<sessionId>/<imageName>`.
    """

    def _read(self, root):
        return readers.read_para(root)
