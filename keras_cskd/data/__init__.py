"""Data: dataset readers, unlabeled sources, tf.data pipelines, synthetic world.

Readers return `LabeledRecords`; pipelines turn records and unlabeled
sources into `tf.data.Dataset`s that any Keras backend's `fit` consumes:

- `labeled_dataset`: `(images, distributions)`;
- `unlabeled_dataset`: `images` (for `CLIPFeatureAligner`);
- `semi_supervised_dataset`:
  `({LABELED_IMAGES, UNLABELED_IMAGES}, distributions)` (for
  `SemiSupervisedDistiller`; the keys live in `keras_cskd.keys`);
- `FrozenOutputCache`: the same pipelines with what a frozen model (CLIP,
  the teacher) computes on each image read from disk instead of recomputed.

A dataset carries no state of its own: the caller makes the objects that
follow it and keeps them, so they survive `map` and `distribute_dataset`. A
`PassClock` numbers the passes (`passes=clock`, or `seed=s` for a new one)
and a `SkipCounter` hears of unreadable files (`skipped=counter`). Resumable
training pins the clock to the epoch:

    clock = PassClock(seed)
    ds = labeled_dataset(records, "train", passes=clock)
    model.fit(ds, callbacks=[PassesFollowEpochs(clock), CheckpointEachEpoch(backup_dir)])

`Look` (image size, crop, dtype) and `crop_resize` are the one view of an
image that every pipeline, the cache and serving share.

TFDS builders for AVA, AADB and PARA live in `keras_cskd.data.tfds_builders`
(imported on demand, since importing TFDS is slow).
"""

from keras_cskd.data import synthetic
from keras_cskd.data.cache import CachedOutputs
from keras_cskd.data.cache import FrozenOutputCache
from keras_cskd.data.cache import fingerprint
from keras_cskd.data.images import IMAGE_EXTENSIONS
from keras_cskd.data.images import SkipCounter
from keras_cskd.data.images import decode_image
from keras_cskd.data.images import list_images
from keras_cskd.data.passes import PassClock
from keras_cskd.data.pipelines import ImageFiles
from keras_cskd.data.pipelines import Look
from keras_cskd.data.pipelines import TFDSImages
from keras_cskd.data.pipelines import as_sources
from keras_cskd.data.pipelines import clip_view
from keras_cskd.data.pipelines import crop_resize
from keras_cskd.data.pipelines import evaluation_view
from keras_cskd.data.pipelines import labeled_dataset
from keras_cskd.data.pipelines import semi_supervised_dataset
from keras_cskd.data.pipelines import unlabeled_dataset
from keras_cskd.data.readers import read_aadb
from keras_cskd.data.readers import read_ava
from keras_cskd.data.readers import read_para
from keras_cskd.data.records import LabeledRecords
from keras_cskd.data.records import LabelFormatError
from keras_cskd.data.records import mean_to_distribution

__all__ = [
    "IMAGE_EXTENSIONS",
    "CachedOutputs",
    "FrozenOutputCache",
    "ImageFiles",
    "LabelFormatError",
    "LabeledRecords",
    "Look",
    "PassClock",
    "SkipCounter",
    "TFDSImages",
    "as_sources",
    "crop_resize",
    "decode_image",
    "clip_view",
    "evaluation_view",
    "fingerprint",
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
