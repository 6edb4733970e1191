"""tf.data pipelines that feed `fit` on every Keras backend.

All pipelines decode in parallel, crop and resize to a fixed square
`image_size`, batch, and prefetch. Images leave as `uint8` (or `float32`)
values 0..255: models own their normalization.

- training (`training=True`): full shuffle of the file list each pass, random
  crop of `crop_fraction` of each side, random horizontal flip,
  `drop_remainder=True` (static batch shape);
- evaluation: file order kept, center crop, the last partial batch kept.

Crop-then-resize is the same as resize-then-crop (NIMA's resize to 256, crop
224 with the default `crop_fraction=0.875`), but only the crop is resampled:
bilinear, antialiased when it shrinks by more than 2x.
By default the crop keeps the image's aspect ratio in the crop box and the
resize squashes it to a square (the whole composition stays in view); with
`keep_aspect_ratio=True` the crop box is a square of the shorter side.

Unreadable files are skipped (see `keras_cskd.data.images`). A training
epoch keeps its full length: the places of skipped files are taken by the
first images of the next shuffled pass, so the number of batches is known in
advance (`len // batch_size`), the same on every replica. Evaluation drops
skipped files and adds nothing, so metrics cover exactly the readable images;
its length is then unknown in advance, which Keras reports as "input ran out
of data" at the end of `evaluate`/`predict` (harmless).

With a `seed`, every pass is reproducible: file order, crops, flips and
source mixing come from stateless ops seeded by `(seed, pass number)`, and
parallel stages keep their order. Successive passes (epochs) differ from each
other, and pass *k* is the same in every run, so a resumed `fit` can read
exactly the data an uninterrupted one would (see `keras_cskd.data.passes`).

The state of a dataset lives in objects the caller makes and keeps, so that
it survives whatever the dataset goes through (`map`, `distribute_dataset`):

- `passes=clock`, a `PassClock`, numbers the passes (`seed=s` is short for
  `passes=PassClock(s)`); `keras_cskd.callbacks.PassesFollowEpochs(clock)`
  pins it to the epoch, which makes a resumed `fit` read what an
  uninterrupted one would:

      clock = PassClock(seed)
      ds = labeled_dataset(records, "train", passes=clock)
      model.fit(ds, callbacks=[PassesFollowEpochs(clock), CheckpointEachEpoch(backup_dir)])

- `skipped=counter`, a `SkipCounter`, hears of unreadable files at the end of
  each pass.

With several training processes, `shard=strategy.shard` (`(index, count)`)
makes a training pipeline read and decode only this process's rows of every
global batch: same order, same augmentation, B / count rows per batch (see
`keras_cskd.data.passes.Shard` and docs/distribute.md).

The parts the pipelines are made of are public for the rest of the data layer
(the frozen-output cache builds on them): `Look` (the image options) and
`crop_resize` (the one crop, resize and flip), `as_sources`, and the stages
`labeled_batches`, `unlabeled_elements`, `semi_supervised_batches`, `finish`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from keras_cskd.data.images import decode_candidate
from keras_cskd.data.images import decode_image
from keras_cskd.data.images import file_candidates
from keras_cskd.data.images import file_image_stream
from keras_cskd.data.images import is_image_file
from keras_cskd.data.images import list_images
from keras_cskd.data.passes import as_shard
from keras_cskd.data.passes import element_seeds
from keras_cskd.data.passes import first
from keras_cskd.data.passes import keep_cardinality
from keras_cskd.data.passes import mark_sharded
from keras_cskd.data.passes import pass_clock
from keras_cskd.keys import CLIP_IMAGES
from keras_cskd.keys import IMAGES
from keras_cskd.keys import LABELED_IMAGES
from keras_cskd.keys import UNLABELED_IMAGES

AUTOTUNE = tf.data.AUTOTUNE


# === Unlabeled sources ===


class ImageFiles:
    """An explicit list of image files as an unlabeled source.

    Example:

    >>> ImageFiles(["a.jpg", "b.png"]).size
    2
    """

    def __init__(self, paths, name="files"):
        self.paths = [os.fspath(p) for p in paths]
        self.name = name
        if not self.paths:
            raise ValueError(f"unlabeled source {name!r} holds no image files")

    @classmethod
    def from_path(cls, path):
        """A folder (recursive) or a list file."""
        return cls(list_images(path), name=os.fspath(path))

    @property
    def size(self):
        return len(self.paths)

    def stream(self, clock, salt, *, training, deterministic, counter, repeat=False, shard=None, batch_size=None):
        """Decoded `{"image", "key"}`: one pass (file order), or shuffled passes of a known length.

        Training streams shuffle each pass by `clock` (salted by `salt`); with
        `repeat` they go on forever. With a `Shard`, only its rows of each
        global batch of `batch_size` (`file_image_stream`).
        """
        return file_image_stream(
            self.paths,
            clock=clock if training else None,
            salt=salt,
            deterministic=deterministic,
            keep_length=training,
            repeat=repeat,
            counter=counter,
            name=self.name,
            shard=shard,
            batch_size=batch_size,
        )

    def candidates(self, clock, salt):
        """The endless training stream's `{"key", "data"}` before reading (`file_candidates`)."""
        return file_candidates(self.paths, clock, salt)


class TFDSImages:
    """The image feature of a prepared TFDS dataset as an unlabeled source.

    Reads `tfds.builder(name, data_dir=data_dir)` as already prepared (nothing
    is downloaded); the encoded images go through the same decoder as files.
    `image_key` defaults to the first top-level `tfds.features.Image`.
    Decode failures are dropped but not counted (TFDS checks images when it
    builds a dataset). Training reads the records in their stored order
    through a shuffle buffer of up to 10,000 seeded by the pass (TFDS shuffles
    the records when it prepares a dataset).

    Example (`"tfds:<name>[/<split>]"` strings work wherever a source does,
    reading from TFDS's default data dir or `TFDS_DATA_DIR`):

        TFDSImages("imagenet2012", split="train", data_dir="~/tensorflow_datasets")
    """

    def __init__(self, name, split="train", data_dir=None, image_key=None):
        import tensorflow_datasets as tfds

        self.name, self.split = name, split
        self.builder = tfds.builder(name, data_dir=data_dir)
        if not self.builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {self.builder.data_dir}; "
                "prepare it first or pass data_dir (TFDS_DATA_DIR also works); nothing is downloaded here"
            )
        features = self.builder.info.features
        if image_key is None:
            image_key = next((k for k, f in features.items() if isinstance(f, tfds.features.Image)), None)
        if image_key is None or not isinstance(features[image_key], tfds.features.Image):
            raise ValueError(f"TFDS dataset {name!r} has no image feature {image_key or ''}")
        self.image_key = image_key
        self.size = self.builder.info.splits[split].num_examples

    def stream(self, clock, salt, *, training, deterministic, counter, repeat=False, shard=None, batch_size=None):
        """As `ImageFiles.stream`; a `Shard` skips the other shards' records before decoding."""
        import tensorflow_datasets as tfds

        records = self.builder.as_dataset(
            split=self.split, shuffle_files=False, decoders={self.image_key: tfds.decode.SkipDecoding()}
        )
        key = f"tfds:{self.name}/{self.split}"

        def decoded(ds):
            ds = ds.map(
                lambda e: {"image": decode_image(e[self.image_key]), "key": tf.constant(key)},
                num_parallel_calls=AUTOTUNE,
                deterministic=deterministic,
            )
            return ds.ignore_errors()

        if not training:
            if shard is not None:
                raise ValueError("only training streams are sharded")
            return decoded(records.repeat() if repeat else records)
        buffer = min(self.size, 10_000)

        def shuffled(seed):
            return records.shuffle(buffer, seed=seed[0] % (2**31), reshuffle_each_iteration=False)

        if shard is None:
            ds = clock.each_pass(salt, lambda seed: element_seeds(seed).flat_map(lambda s: decoded(shuffled(s))))
            # Known epoch length, as for files (TFDS checked the images when it prepared the dataset).
            return ds if repeat else first(ds, self.size)
        ds = clock.each_pass(salt, lambda seed: element_seeds(seed).flat_map(shuffled))
        ds = decoded(ds.enumerate().filter(lambda j, _: shard.owns(j, batch_size)).map(lambda _, e: e))
        return ds if repeat else first(ds, shard.count_in(self.size // batch_size * batch_size, batch_size))

    def candidates(self, clock, salt):
        """The endless training stream's `{"key", "data"}` (encoded images) before decoding."""
        import tensorflow_datasets as tfds

        records = self.builder.as_dataset(
            split=self.split, shuffle_files=False, decoders={self.image_key: tfds.decode.SkipDecoding()}
        )
        buffer, key = min(self.size, 10_000), tf.constant(f"tfds:{self.name}/{self.split}")

        def shuffled(seed):
            return records.shuffle(buffer, seed=seed[0] % (2**31), reshuffle_each_iteration=False)

        ds = clock.each_pass(salt, lambda seed: element_seeds(seed).flat_map(shuffled))
        return ds.map(lambda e: {"key": key, "data": e[self.image_key]})


def as_source(source):
    """A source object from a folder, list file, `"tfds:name[/split]"`, list of image paths, or source object."""
    if hasattr(source, "stream"):
        return source
    if isinstance(source, (list, tuple)):
        return ImageFiles(source)
    text = os.fspath(source)
    if text.startswith("tfds:"):
        name, _, split = text[5:].partition("/")
        return TFDSImages(name, split or "train")
    if os.path.isdir(text) or os.path.isfile(text):
        return ImageFiles.from_path(text)
    raise ValueError(f"unlabeled source is not a folder, list file, image file or 'tfds:' name: {text}")


def as_sources(sources):
    """A list of source objects from one source or a list of them (see `unlabeled_dataset`).

    A list whose items are all image file paths is one source, not several.

    Example:

    >>> [s.size for s in as_sources(["a.jpg", "b.jpg"])]
    [2]
    """
    if (
        isinstance(sources, (list, tuple))
        and sources
        and all(isinstance(s, (str, os.PathLike)) and is_image_file(s) for s in sources)
    ):
        return [ImageFiles(sources)]
    if isinstance(sources, (str, os.PathLike)) or hasattr(sources, "stream"):
        sources = [sources]
    if not sources:
        raise ValueError("no unlabeled sources given")
    return [as_source(s) for s in sources]


# === Crop, resize, flip ===


@dataclasses.dataclass(frozen=True)
class Look:
    """How the images of a pipeline look: size, crop and dtype (checked).

    Args:
        image_size: output size: an int (square) or (height, width); kept as
            a (height, width) tuple.
        crop_fraction: fraction of each side kept by the crop, in (0, 1].
        keep_aspect_ratio: crop a square instead of squashing (see module doc).
        dtype: `"uint8"` or `"float32"` images, values 0..255.

    Example:

    >>> Look(32)
    Look(image_size=(32, 32), crop_fraction=0.875, keep_aspect_ratio=False, dtype='uint8')
    >>> Look(32, crop_fraction=1.5)
    Traceback (most recent call last):
    ...
    ValueError: crop_fraction must be in (0, 1], got 1.5
    """

    image_size: tuple = (224, 224)
    crop_fraction: float = 0.875
    keep_aspect_ratio: bool = False
    dtype: str = "uint8"

    def __post_init__(self):
        size = self.image_size
        size = (int(size),) * 2 if np.ndim(size) == 0 else tuple(int(v) for v in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image_size must be an int or (height, width), got {self.image_size}")
        if self.dtype not in ("uint8", "float32"):
            raise ValueError(f"dtype must be 'uint8' or 'float32', got {self.dtype!r}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "crop_fraction", float(self.crop_fraction))
        object.__setattr__(self, "keep_aspect_ratio", bool(self.keep_aspect_ratio))


def crop_resize(image, look, *, training=False, seed=None):
    """One decoded (H, W, 3) uint8 image in `look`: crop, resize, and (training) flip.

    Evaluation takes the center crop; training a random crop and a random
    horizontal flip drawn from `seed`, a (2,) int tensor (stateless ops: the
    same seed gives the same image).

    Example:

    >>> image = tf.zeros([40, 60, 3], tf.uint8)
    >>> crop_resize(image, Look(16)).shape
    TensorShape([16, 16, 3])
    >>> crop_resize(image, Look(16, dtype="float32"), training=True, seed=[0, 1]).dtype.name
    'float32'
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    ch, cw = (tf.minimum(h, w),) * 2 if look.keep_aspect_ratio else (h, w)
    ch = tf.clip_by_value(tf.cast(tf.round(tf.cast(ch, tf.float32) * look.crop_fraction), tf.int32), 1, h)
    cw = tf.clip_by_value(tf.cast(tf.round(tf.cast(cw, tf.float32) * look.crop_fraction), tf.int32), 1, w)
    if training:
        u = tf.random.stateless_uniform([3], seed=seed)
        top = tf.minimum(tf.cast(u[0] * tf.cast(h - ch + 1, tf.float32), tf.int32), h - ch)
        left = tf.minimum(tf.cast(u[1] * tf.cast(w - cw + 1, tf.float32), tf.int32), w - cw)
    else:
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top : top + ch, left : left + cw]
    if training:  # flip the uint8 crop: cheaper than the float output
        crop = tf.reverse(crop, tf.boolean_mask([1], [u[2] < 0.5]))
    # Antialiasing costs ~4x; it only matters when shrinking by more than 2x.
    height, width = look.image_size
    out = tf.cond(
        tf.logical_or(ch > 2 * height, cw > 2 * width),
        lambda: tf.image.resize(crop, [height, width], antialias=True),
        lambda: tf.image.resize(crop, [height, width]),
    )
    if look.dtype == "uint8":
        out = tf.cast(tf.clip_by_value(out + 0.5, 0.0, 255.0), tf.uint8)  # rounds
    else:
        out = tf.clip_by_value(out, 0.0, 255.0)
    out.set_shape([height, width, 3])
    return out


def clip_view(image, size, interpolation="bicubic"):
    """CLIP's view of one decoded (H, W, 3) image: float32 (size, size, 3), values 0..255.

    As CLIP's own preprocessing (open_clip, Hugging Face): the shorter side
    resized to `size` (the longer to `int(size * long / short)`), bicubic and
    antialiased, then the center `size` x `size` crop (offsets rounded as
    torchvision's `CenterCrop`). Against that reference computed with Pillow
    on real photos of several aspect ratios, the pixels differ by about 0.3
    of 255 on average at 224 px and under 1 at 32 px (JPEG decoders and
    Pillow's uint8 rounding), and CLIP embeddings by a cosine of at least
    0.999 (`tests/test_clip_view.py`). Whatever crop the learners train on, CLIP's
    targets come from this view of the whole image.

    Example:

    >>> clip_view(tf.zeros([30, 60, 3], tf.uint8), 16).shape
    TensorShape([16, 16, 3])
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short = tf.minimum(h, w)
    new_h = tf.maximum(tf.cast(tf.floor(size * h / short), tf.int32), size)
    new_w = tf.maximum(tf.cast(tf.floor(size * w / short), tf.int32), size)
    resized = tf.image.resize(tf.cast(image, tf.float32), [new_h, new_w], method=interpolation, antialias=True)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)  # half to even, as Python's round
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    out = tf.clip_by_value(resized[top : top + size, left : left + size], 0.0, 255.0)
    out.set_shape([size, size, 3])
    return out


def evaluation_view(image, image_size, crop_fraction=0.875, keep_aspect_ratio=False, dtype="float32"):
    """The evaluation transform of one decoded (H, W, 3) image: center crop, resize.

    Serving (`keras_cskd.export`) applies the same view as evaluation.
    """
    return crop_resize(image, Look(image_size, crop_fraction, keep_aspect_ratio, dtype))


# === Stages ===


def look_view(look, training, clip_view_size=None):
    """The pipelines' view of a decoded element, `view(element, seed)`: its image through `crop_resize`.

    With `clip_view_size`, the element also gets `"clip_image"`, CLIP's view
    (`clip_view`) of the same decoded image.
    """

    def view(element, seed):
        viewed = {**element, "image": crop_resize(element["image"], look, training=training, seed=seed)}
        if clip_view_size:
            viewed["clip_image"] = clip_view(element["image"], clip_view_size)
        return viewed

    return view


def _view_each(ds, view, *, training, clock, salt, deterministic, shard=None, batch_size=None):
    """`view(element, seed)` of each element; training draws the seeds from the pass (`salt`), evaluation gives None.

    A sharded stream (`shard`, cut into global batches of `batch_size`) draws
    each element's seed from its global position, as the unsharded stream does.
    """
    if not training:
        return ds.map(lambda e: view(e, None), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = tf.data.Dataset.zip(ds, clock.element_seeds(salt, shard, batch_size))
    return ds.map(view, num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def _deterministic(clock, training):
    return not training or clock.seeded


def _check_shard(shard, training):
    shard = as_shard(shard)
    if shard is not None and not training:
        raise ValueError(
            "shard= is for training pipelines: evaluation drops unreadable files, so processes could "
            "read different numbers of batches; build it unsharded and pass it through strategy.distribute_dataset"
        )
    return shard


def process_batch_size(batch_size, shard):
    """This process's batch: its rows of a global batch of `batch_size` (`shard`: `(index, count)` or None).

    Example:

    >>> process_batch_size(8, (1, 2)), process_batch_size(8, None)
    (4, 8)
    """
    shard = as_shard(shard)
    return batch_size if shard is None else shard.size(batch_size)


def unlabeled_batch_size(batch_size, unlabeled_ratio):
    """Unlabeled images per global batch of `batch_size` labeled images."""
    return max(1, int(round(batch_size * unlabeled_ratio)))


def labeled_batches(records, split, look, *, batch_size, training, clock, counter, shard=None):
    """Batches `(images, distributions)` of `records.select(split)` in `look`, passes numbered by `clock`.

    The stage `labeled_dataset` is made of (before `finish`). Salts of its
    random streams: 0 file order, 1 augmentation. With `shard`, this
    process's rows of each global batch of `batch_size` (see `labeled_dataset`).
    """
    shard = _check_shard(shard, training)
    if split is not None:
        records = records.select(split)
    if training and len(records) < batch_size:
        raise ValueError(
            f"{records.name}/{split}: {len(records)} images is fewer than batch_size={batch_size}; "
            "training drops the last partial batch, so no batch would be made"
        )
    deterministic = _deterministic(clock, training)
    ds = file_image_stream(
        records.paths,
        records.distributions,
        clock=clock if training else None,
        salt=0,
        deterministic=deterministic,
        keep_length=training,
        counter=counter,
        name=f"{records.name}/{split or 'all'}",
        shard=shard,
        batch_size=batch_size,
    )
    view = look_view(look, training)
    ds = _view_each(
        ds,
        view,
        training=training,
        clock=clock,
        salt=1,
        deterministic=deterministic,
        shard=shard,
        batch_size=batch_size,
    )
    ds = ds.map(lambda e: (e["image"], e["label"]))
    return ds.batch(process_batch_size(batch_size, shard), drop_remainder=training)


def unlabeled_elements(
    sources,
    view,
    *,
    clock,
    counter,
    training=True,
    weights=None,
    num_examples=None,
    repeat=False,
    shard=None,
    batch_size=None,
):
    """Unbatched elements `{"image", "key", ...}` of unlabeled sources, each through `view`.

    The stage `unlabeled_dataset` is made of (before batching). `view(element,
    seed)` returns the element as the model should see it: `look_view(look,
    training)` for the pipelines; `seed` is a (2,) seed of this element and
    pass when training, `None` otherwise. Salts of its random streams: 10
    mixing, 11 view, 12 + i source i. `weights`, `num_examples`, `repeat`:
    as in `unlabeled_dataset`. With `shard`, only this process's rows of
    each global batch of `batch_size` elements are read and decoded.
    """
    sources = as_sources(sources)
    shard = _check_shard(shard, training)
    mixed = len(sources) > 1 or num_examples is not None
    deterministic = _deterministic(clock, training)
    if shard is not None and mixed and not all(hasattr(s, "candidates") for s in sources):
        raise NotImplementedError(
            "shard= mixes sources that have candidates() (ImageFiles, TFDSImages); "
            "build this one unsharded and pass it through strategy.distribute_dataset"
        )

    def stream(i, source):
        return source.stream(
            clock,
            12 + i,
            training=training,
            deterministic=deterministic,
            counter=counter,
            repeat=repeat or mixed,
            **({} if shard is None else {"shard": shard, "batch_size": batch_size}),
        )

    if not mixed:
        ds = stream(0, sources[0])
    else:
        sizes = np.array([s.size for s in sources], np.float64)
        weights = sizes if weights is None else np.asarray(weights, np.float64)
        if len(weights) != len(sources) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"need one non-negative weight per source ({len(sources)}), got {weights}")
        logits = tf.math.log([weights / weights.sum()])

        choices = clock.element_seeds(10).map(lambda s: tf.random.stateless_categorical(logits, 1, seed=s)[0, 0])
        total = int(num_examples or sizes.sum())
        if shard is None:
            ds = tf.data.Dataset.choose_from_datasets([stream(i, s) for i, s in enumerate(sources)], choices)
            if not repeat:
                ds = first(ds, total)
        else:  # mix the sources' candidates as the unsharded mix does, then read only this shard's
            streams = [s.candidates(clock, 12 + i) for i, s in enumerate(sources)]
            ds = tf.data.Dataset.choose_from_datasets(streams, choices).enumerate()
            ds = ds.filter(lambda j, _: shard.owns(j, batch_size)).map(lambda _, e: e)
            ds = ds.map(decode_candidate, num_parallel_calls=AUTOTUNE, deterministic=deterministic).ignore_errors()
            if not repeat:
                ds = first(ds, shard.count_in(total // batch_size * batch_size, batch_size))
    return _view_each(
        ds,
        view,
        training=training,
        clock=clock,
        salt=11,
        deterministic=deterministic,
        shard=shard,
        batch_size=batch_size,
    )


def semi_supervised_batches(
    records, split, unlabeled, look, *, batch_size, unlabeled_ratio, clock, counter, shard=None
):
    """Labeled training batches zipped with batches of `unlabeled`, an endless dataset of dicts.

    Yields `({LABELED_IMAGES: images, **unlabeled batch}, distributions)`;
    the unlabeled batch size is `unlabeled_batch_size(batch_size,
    unlabeled_ratio)` and the labeled split defines the epoch. The stage
    `semi_supervised_dataset` is made of (before `finish`). With `shard`,
    the labeled side is sharded here; `unlabeled` must be the same shard's
    elements, cut into global batches of the unlabeled batch size.
    """
    shard = as_shard(shard)
    labeled = labeled_batches(
        records, split, look, batch_size=batch_size, training=True, clock=clock, counter=counter, shard=shard
    )
    unlabeled = unlabeled.batch(
        process_batch_size(unlabeled_batch_size(batch_size, unlabeled_ratio), shard), drop_remainder=True
    )
    ds = tf.data.Dataset.zip(labeled, unlabeled)
    ds = ds.map(lambda labeled_batch, u: ({LABELED_IMAGES: labeled_batch[0], **u}, labeled_batch[1]))
    return keep_cardinality(ds, labeled)


def finish(ds, clock, shard=None):
    """`ds` starting a pass of `clock` on each iteration, prefetched: the last stage of every pipeline.

    A sharded pipeline's dataset is marked as `shard`'s share, which
    `strategy.distribute_dataset` then leaves as it is.
    """
    return mark_sharded(clock.start(ds).prefetch(AUTOTUNE), as_shard(shard))


# === Pipelines ===


def labeled_dataset(
    records,
    split=None,
    *,
    image_size=224,
    batch_size=32,
    training=None,
    passes=None,
    seed=None,
    crop_fraction=0.875,
    keep_aspect_ratio=False,
    dtype="uint8",
    skipped=None,
    shard=None,
):
    """Batches `(images, distributions)` from labeled records.

    Args:
        records: a `LabeledRecords` (from `read_ava`, `read_aadb`, `read_para`
            or `LabeledRecords.from_arrays`).
        split: split to use (`"train"`, `"val"`, `"test"`); `None` for all records.
        image_size: output size: an int (square) or (height, width).
        batch_size: images per batch.
        training: augment, shuffle and drop the last partial batch; default
            `split == "train"`.
        passes: the `PassClock` that numbers the passes; keep it to pin the
            passes to epochs (`keras_cskd.callbacks.PassesFollowEpochs`).
        seed: short for `passes=PassClock(seed)` (not both); a seed makes the
            pipeline deterministic.
        crop_fraction: fraction of each side kept by the crop.
        keep_aspect_ratio: crop a square instead of squashing (see module doc).
        dtype: `"uint8"` or `"float32"` images, values 0..255.
        skipped: a `SkipCounter` that hears of unreadable files (default: none
            is kept; the skips are still logged).
        shard: `(index, count)`, e.g. `strategy.shard`: build process
            `index` of `count`'s share of every global batch of `batch_size`
            (its rows `[index * batch_size // count, (index + 1) * batch_size // count)`).
            Every process computes the same order of each pass and reads and
            decodes only its own samples; without unreadable files they are
            exactly its slice of the unsharded batches, with the same
            augmentation. Training only. `None` (default): the global batches.

    Returns:
        `tf.data.Dataset` of `(images (B, S, S, 3), distributions (B, num_bins) float32)`.

    Example:

    >>> from keras_cskd.data import PassClock, SkipCounter, labeled_dataset, read_ava, synthetic
    >>> world = synthetic.make_world("/tmp/cskd_doc_world", num_labeled=40, num_unlabeled=0)
    >>> clock, skipped = PassClock(seed=0), SkipCounter()
    >>> ds = labeled_dataset(read_ava(world.ava_root), "train", image_size=32, batch_size=8,
    ...                      passes=clock, skipped=skipped)
    >>> images, dists = next(iter(ds))
    >>> images.shape, images.dtype.name, dists.shape
    (TensorShape([8, 32, 32, 3]), 'uint8', TensorShape([8, 10]))
    >>> clock.current, skipped.count  # pass 0 is being read; no file was unreadable
    (0, 0)
    """
    training = split == "train" if training is None else training
    clock = pass_clock(passes, seed)
    look = Look(image_size, crop_fraction, keep_aspect_ratio, dtype)
    ds = labeled_batches(
        records,
        split,
        look,
        batch_size=batch_size,
        training=training,
        clock=clock,
        counter=skipped,
        shard=shard,
    )
    return finish(ds, clock, shard)


def unlabeled_dataset(
    sources,
    *,
    weights=None,
    image_size=224,
    batch_size=32,
    training=True,
    passes=None,
    seed=None,
    num_examples=None,
    repeat=False,
    return_paths=False,
    crop_fraction=0.875,
    keep_aspect_ratio=False,
    dtype="uint8",
    skipped=None,
    clip_view_size=None,
    shard=None,
):
    """Batches of images (no labels) from one or several sources, for `CLIPFeatureAligner.fit`.

    Args:
        sources: a source or a list of sources. A source is a folder (searched
            recursively), a list file, `"tfds:<name>[/<split>]"`, a list of
            image file paths, an `ImageFiles`, or a `TFDSImages`. A list whose
            items are all image file paths is one source, not several.
        weights: mixing weight of each source; default proportional to source
            size (every image equally likely). With one source, `None` reads it
            in plain passes.
        num_examples: images per epoch when mixing; default the sum of the
            source sizes. Each source repeats on its own, so one epoch of a
            mix need not cover every image exactly once.
        repeat: repeat forever (then `fit` needs `steps_per_epoch`).
        training: shuffle, random crop and flip, drop the last partial batch;
            `False` keeps the order (one source) and center-crops.
        return_paths: yield `(images, paths)` instead of `images`, e.g. to
            match predictions with files (skipped files have no row).
        clip_view_size: also yield CLIP's view of each image at this size
            (`clip_view`; `CLIPImageTeacher.view_size`): batches are then
            `{"images": (B, S, S, 3), "clip_images": (B, C, C, 3) float32}`,
            which `CLIPFeatureAligner.fit` reads (learners on the first, the
            frozen CLIP on the second).
        image_size, batch_size, passes, seed, crop_fraction,
        keep_aspect_ratio, dtype, skipped, shard: as in `labeled_dataset`.

    Returns:
        `tf.data.Dataset` of images `(B, S, S, 3)` (or `(images, paths)`, or
        the dict above).

    Example:

    >>> from keras_cskd.data import unlabeled_dataset, synthetic
    >>> world = synthetic.make_world("/tmp/cskd_doc_world", num_labeled=40, num_unlabeled=40)
    >>> ds = unlabeled_dataset(world.unlabeled_dir, image_size=32, batch_size=8, seed=0)
    >>> next(iter(ds)).shape
    TensorShape([8, 32, 32, 3])
    """
    clock = pass_clock(passes, seed)
    look = Look(image_size, crop_fraction, keep_aspect_ratio, dtype)
    ds = unlabeled_elements(
        sources,
        look_view(look, training, clip_view_size),
        clock=clock,
        counter=skipped,
        training=training,
        weights=weights,
        num_examples=num_examples,
        repeat=repeat,
        shard=shard,
        batch_size=batch_size,
    )
    ds = ds.batch(process_batch_size(batch_size, as_shard(shard)), drop_remainder=training)
    if clip_view_size:
        ds = ds.map(lambda e: {IMAGES: e["image"], CLIP_IMAGES: e["clip_image"]})
    else:
        ds = ds.map(lambda e: (e["image"], e["key"]) if return_paths else e["image"])
    return finish(ds, clock, shard)


def semi_supervised_dataset(
    records,
    unlabeled,
    split="train",
    *,
    image_size=224,
    batch_size=32,
    unlabeled_ratio=1.0,
    unlabeled_weights=None,
    passes=None,
    seed=None,
    crop_fraction=0.875,
    keep_aspect_ratio=False,
    dtype="uint8",
    skipped=None,
    shard=None,
):
    """Labeled and unlabeled batches zipped, for `SemiSupervisedDistiller.fit`.

    The labeled split defines the epoch (one shuffled pass); the unlabeled
    stream repeats and is never exhausted. Both are training pipelines and
    follow one `PassClock`.

    Args:
        records: `LabeledRecords`.
        unlabeled: unlabeled source(s), as in `unlabeled_dataset`.
        split: labeled split.
        batch_size: labeled images per batch.
        unlabeled_ratio: unlabeled images per labeled image; the unlabeled
            batch size is `max(1, round(batch_size * unlabeled_ratio))`.
        unlabeled_weights: mixing weights of the unlabeled sources.
        image_size, passes, seed, crop_fraction, keep_aspect_ratio, dtype,
            skipped: as in `labeled_dataset`; one `SkipCounter` serves both streams.
        shard: as in `labeled_dataset`, for both sides:
            this process's rows of the labeled and of the unlabeled batch.

    Returns:
        `tf.data.Dataset` of
        `({LABELED_IMAGES: (B, S, S, 3), UNLABELED_IMAGES: (U, S, S, 3)}, distributions (B, num_bins))`
        (keys from `keras_cskd.keys`: `"labeled_images"`, `"unlabeled_images"`).

    Example:

    >>> from keras_cskd.data import read_ava, semi_supervised_dataset, synthetic
    >>> world = synthetic.make_world("/tmp/cskd_doc_world", num_labeled=40, num_unlabeled=40)
    >>> ds = semi_supervised_dataset(read_ava(world.ava_root), world.unlabeled_dir,
    ...                              image_size=32, batch_size=4, unlabeled_ratio=2, seed=0)
    >>> x, y = next(iter(ds))
    >>> x["labeled_images"].shape[0], x["unlabeled_images"].shape[0], y.shape
    (4, 8, TensorShape([4, 10]))
    """
    clock = pass_clock(passes, seed)
    look = Look(image_size, crop_fraction, keep_aspect_ratio, dtype)
    images = unlabeled_elements(
        unlabeled,
        look_view(look, True),
        clock=clock,
        counter=skipped,
        weights=unlabeled_weights,
        repeat=True,
        shard=shard,
        batch_size=unlabeled_batch_size(batch_size, unlabeled_ratio),
    )
    images = images.map(lambda e: {UNLABELED_IMAGES: e["image"]})
    ds = semi_supervised_batches(
        records,
        split,
        images,
        look,
        batch_size=batch_size,
        unlabeled_ratio=unlabeled_ratio,
        clock=clock,
        counter=skipped,
        shard=shard,
    )
    return finish(ds, clock, shard)
