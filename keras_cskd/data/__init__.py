"""Data: dataset readers, unlabeled sources, tf.data pipelines, synthetic world.

Readers return `LabeledRecords`; pipelines turn records and unlabeled
sources into `tf.data.Dataset`s that any Keras backend's `fit` consumes:

- `labeled_dataset`: `(images, distributions)`;
- `unlabeled_dataset`: `images` (for `CLIPFeatureAligner`);
- `semi_supervised_dataset`:
  `({"labeled_images", "unlabeled_images"}, distributions)` (for
  `SemiSupervisedDistiller`).

TFDS builders for AVA, AADB and PARA live in `keras_cskd.data.tfds_builders`
(imported on demand, since importing TFDS is slow).
"""

from keras_cskd.data import synthetic
from keras_cskd.data.images import IMAGE_EXTENSIONS, SkipCounter, decode_image, list_images
from keras_cskd.data.pipelines import (
    ImageFiles,
    TFDSImages,
    evaluation_view,
    labeled_dataset,
    semi_supervised_dataset,
    unlabeled_dataset,
)
from keras_cskd.data.readers import read_aadb, read_ava, read_para
from keras_cskd.data.records import LabeledRecords, LabelFormatError, mean_to_distribution

__all__ = [
    "IMAGE_EXTENSIONS",
    "evaluation_view",
    "ImageFiles",
    "LabelFormatError",
    "LabeledRecords",
    "SkipCounter",
    "TFDSImages",
    "decode_image",
    "labeled_dataset",
    "list_images",
    "mean_to_distribution",
    "read_aadb",
    "read_ava",
    "read_para",
    "semi_supervised_dataset",
    "synthetic",
    "unlabeled_dataset",
]
