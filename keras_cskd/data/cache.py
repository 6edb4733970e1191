"""On-disk cache of what frozen models compute: CLIP embeddings, teacher pseudo-labels.

Phase 1 runs the frozen CLIP on every unlabeled image every epoch and phase 2
runs the frozen teacher on every unlabeled image every epoch. Their outputs
only depend on the model's weights, the image file and the view of the image
(how it is cropped), so they can be computed once and read back:

>>> cache = FrozenOutputCache(clip, "cache/", image_size=224)        # doctest: +SKIP
>>> clock = PassClock(seed=0)                                         # doctest: +SKIP
>>> ds = cache.dataset(world.unlabeled_dir, batch_size=32, passes=clock)  # doctest: +SKIP
>>> aligner.fit(ds, epochs=10, callbacks=[PassesFollowEpochs(clock)])    # doctest: +SKIP

`cache.dataset` computes whatever is missing first (`cache.compute`), then
yields `(images, cached_outputs)`, which `CLIPFeatureAligner.fit` takes as
`(x, clip_embeddings)`; `cache.semi_supervised_dataset` yields the
`{LABELED_IMAGES, UNLABELED_IMAGES, PSEUDO_LABELS}` batches (`keras_cskd.keys`)
that `SemiSupervisedDistiller` reads instead of running its teacher. Both are
the pipelines of `keras_cskd.data.pipelines` with the cached outputs joined to
the images: the same decoding, crops, passes (`passes=`/`seed=`) and skip
accounting.

Keys and invalidation. Entries live under
`<directory>/<fingerprint>/<look>/<view>/`: `fingerprint(model)` hashes the
model's class, config and every weight, so a changed model never reads an old
entry; `<look>` is the image size and crop settings; `<view>` is `center`
(the unaugmented evaluation crop) or `aug<seed>-<i>` for augmented view `i`
of `views`. Each view holds shards: consecutive runs of `shard_size` files of
the sorted file list, each named by a hash of its files' absolute paths, sizes
and modification times. A changed, added or removed file changes the name of
its shard (and, for additions/removals, of the shards after it), which is
then recomputed; shards that no file list names any more are left until
`prune()`.

Crash safety. A shard is written to a temporary name, flushed, fsynced and
renamed into place (`os.replace`, atomic), so a shard file under its final
name is always complete; leftover temporary files are never read (and are
removed by `prune()`); a final-named file that does not load, or holds other
files than its name says, is recomputed. `manifest.json` in each view folder
lists the complete shards (also replaced atomically) for people and tools;
the cache itself trusts only the shard files. A run that dies half-way
resumes with the shards it finished.

Augmented views. With `views=k`, view `i` of a file is the pipeline's
random crop and flip (`crop_resize`) drawn from a seed made of a hash of the
file's path and `i` (stateless ops), so it is the same image whenever and
wherever it is made; `cache.dataset(training=True)` picks one of the `k` cached views per
image and step, and yields that view's pixels with its outputs.

Images are decoded by the data layer (`keras_cskd.data`): unreadable files
are skipped and counted in `cache.skipped` (a `SkipCounter`), have no
entry, and never reach training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid

import keras
import numpy as np
import tensorflow as tf

from keras_cskd.data.images import SkipCounter
from keras_cskd.data.passes import pass_clock
from keras_cskd.data.pipelines import ImageFiles
from keras_cskd.data.pipelines import Look
from keras_cskd.data.pipelines import as_sources
from keras_cskd.data.pipelines import clip_view
from keras_cskd.data.pipelines import crop_resize
from keras_cskd.data.pipelines import finish
from keras_cskd.data.pipelines import process_batch_size
from keras_cskd.data.pipelines import semi_supervised_batches
from keras_cskd.data.pipelines import unlabeled_batch_size
from keras_cskd.data.pipelines import unlabeled_elements
from keras_cskd.keys import PSEUDO_LABELS
from keras_cskd.keys import UNLABELED_IMAGES

FORMAT_VERSION = 1


def fingerprint(model):
    """Hex SHA-256 of a model's class, config and all weights (names, shapes, dtypes, values).

    Equal for the same architecture with the same weights, on any backend;
    different as soon as one weight value changes.

    Example:

    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> fingerprint(m) == fingerprint(m)
    True
    """
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    try:
        config = json.dumps(model.get_config(), sort_keys=True, default=repr)
    except Exception:  # a model without a config is keyed by its weights alone
        config = ""
    h.update(config.encode())
    for w in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(f"|{w.path}|{value.shape}|{value.dtype}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _file_entry(path):
    st = os.stat(path)
    return path, int(st.st_size), int(st.st_mtime_ns)


def _shard_key(entries):
    h = hashlib.sha256()
    for path, size, mtime in entries:
        h.update(f"{path}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:24]


def _atomic_write(path, write):
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _path_seed(paths, view):
    """Stateless seed pair of (file, view): the same crop of a file wherever it is made."""
    return tf.stack([tf.strings.to_hash_bucket_fast(paths, 2**62), tf.cast(view, tf.int64)], axis=-1)


class CachedOutputs:
    """What `FrozenOutputCache.load` returns: outputs of the readable files.

    Attributes:
        paths: absolute paths (sorted) of the files with outputs.
        outputs: float32 array `(len(paths), num_views, *output_shape)`.
        missing: paths that could not be decoded (no outputs).
    """

    def __init__(self, paths, outputs, missing):
        self.paths, self.outputs, self.missing = paths, outputs, missing

    def __len__(self):
        return len(self.paths)

    def lookup(self, path, view=0):
        return self.outputs[self.paths.index(os.path.abspath(path)), view]


class FrozenOutputCache:
    """On-disk, sharded, resumable cache of a frozen model's outputs per image file and view.

    Args:
        model: the frozen model (a `CLIPImageTeacher`, a fine-tuned
            `AestheticScorer`, any `keras.Model` raw images -> outputs).
        directory: root folder of the cache (shared by many models).
        image_size, crop_fraction, keep_aspect_ratio, dtype: the look of the
            images, as in `keras_cskd.data.unlabeled_dataset`.
        views: `None` for the unaugmented (center-crop) view; an int `k`
            for `k` fixed augmented views (random crop and flip) per image.
        model_view_size: the model sees CLIP's view of each file at this
            size (`keras_cskd.data.clip_view`, e.g. `teacher.view_size`), one
            output per file, while the images the datasets yield keep the
            cache's look (randomly cropped and flipped when training). Use it
            for a `CLIPImageTeacher`; not with `views`.
        seed: which augmented views (only with `views`).
        shard_size: files per shard (the unit of resumption).
        batch_size: images per model call while computing.
        skipped: a `SkipCounter` for unreadable files (default: a new one).

    Example:

    >>> import tempfile
    >>> from keras_cskd.data import synthetic
    >>> world = synthetic.make_world(tempfile.mkdtemp(), num_labeled=4, num_unlabeled=10, image_size=32)
    >>> model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> cache = FrozenOutputCache(model, tempfile.mkdtemp(), image_size=32, shard_size=4)
    >>> cache.compute(world.unlabeled_dir)["computed_shards"]
    3
    >>> cache.compute(world.unlabeled_dir)["computed_shards"]
    0
    >>> images, outputs = next(iter(cache.dataset(world.unlabeled_dir, batch_size=5, seed=0)))
    >>> tuple(images.shape), tuple(outputs.shape)
    ((5, 32, 32, 3), (5, 3))
    """

    def __init__(
        self,
        model,
        directory,
        *,
        image_size=224,
        crop_fraction=0.875,
        keep_aspect_ratio=False,
        dtype="uint8",
        views=None,
        seed=0,
        shard_size=1024,
        batch_size=64,
        skipped=None,
        model_view_size=None,
    ):
        if views is not None and int(views) < 1:
            raise ValueError(f"views must be None or a positive int, got {views}")
        if views is not None and model_view_size:
            raise ValueError("model_view_size gives one output per file (CLIP's view); it does not take views")
        self.model_view_size = int(model_view_size) if model_view_size else None
        self.model = model
        self.directory = os.path.abspath(os.fspath(directory))
        self.look = Look(image_size, crop_fraction, keep_aspect_ratio, dtype)
        self.views = None if views is None else int(views)
        self.seed = int(seed)
        self.shard_size = int(shard_size)
        self.batch_size = int(batch_size)
        self.skipped = skipped if skipped is not None else SkipCounter()
        self.fingerprint = fingerprint(model)
        h, w = self.look.image_size
        look = self.look
        look_tag = f"{h}x{w}-crop{look.crop_fraction:g}-{'square' if look.keep_aspect_ratio else 'squash'}-{look.dtype}"
        self.root = os.path.join(self.directory, self.fingerprint[:32], look_tag)

    # === Views ===

    @property
    def num_views(self):
        return 1 if self.views is None else self.views

    def view_tag(self, view):
        if self.model_view_size:
            return f"clip{self.model_view_size}"
        return "center" if self.views is None else f"aug{self.seed}-{view}"

    def _view_seed(self, view):
        return self.seed * 1_000_003 + int(view)

    def _image(self, image, path, view):
        """The pixels of `view` of one decoded file."""
        return crop_resize(image, self.look, training=self.views is not None, seed=_path_seed(path, view))

    def _model_input(self, image, path, view):
        """What the model sees of `view` of one decoded file."""
        if self.model_view_size:
            return clip_view(image, self.model_view_size)
        return self._image(image, path, view)

    # === Files ===

    def _files(self, sources):
        paths = []
        for source in as_sources(sources):
            if not hasattr(source, "paths"):
                raise ValueError("FrozenOutputCache keys entries by image file; give folders, list files or paths")
            paths.extend(os.path.abspath(p) for p in source.paths)
        entries, missing = [], []
        for p in sorted(set(paths)):
            try:
                entries.append(_file_entry(p))
            except OSError:
                missing.append(p)
        return entries, missing

    def _shards(self, entries):
        return [entries[i : i + self.shard_size] for i in range(0, len(entries), self.shard_size)]

    def _shard_path(self, view, key):
        return os.path.join(self.root, self.view_tag(view), f"shard-{key}.npz")

    def _read_shard(self, view, entries):
        """(paths, outputs) of a complete shard, or None if absent or unusable."""
        path = self._shard_path(view, _shard_key(entries))
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                files, ok, outputs = list(z["files"]), z["ok"], z["outputs"]
                version = int(z["version"])
        except Exception:  # truncated, corrupt, not ours
            return None
        if version != FORMAT_VERSION or files != [e[0] for e in entries] or len(outputs) != int(ok.sum()):
            return None
        return [f for f, good in zip(files, ok) if good], outputs

    # === Compute ===

    def _predict(self, images):
        return keras.ops.convert_to_numpy(self.model.predict_on_batch(images)).astype("float32")

    def _compute_shard(self, view, entries):
        files = [e[0] for e in entries]

        def fixed_view(element, seed):
            return {**element, "image": self._model_input(element["image"], element["key"], view)}

        ds = unlabeled_elements(
            ImageFiles(files, name="cache"), fixed_view, clock=None, counter=self.skipped, training=False
        )
        ds = ds.batch(self.batch_size).prefetch(2)
        keys, outputs = [], []
        for batch in ds:
            images, batch_keys = batch["image"].numpy(), batch["key"]
            outputs.append(self._predict(images.astype("float32", copy=False)))
            keys.extend(k.decode() for k in batch_keys.numpy())
        position = {f: i for i, f in enumerate(files)}
        order = np.argsort([position[k] for k in keys], kind="stable")
        outputs = np.concatenate(outputs)[order] if outputs else np.zeros((0,), "float32")
        done = set(keys)
        ok = np.array([f in done for f in files], bool)
        path = self._shard_path(view, _shard_key(entries))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _atomic_write(
            path,
            lambda f: np.savez(
                f,
                version=np.int64(FORMAT_VERSION),
                files=np.array(files, str),
                ok=ok,
                outputs=outputs,
                sizes=np.array([e[1] for e in entries], np.int64),
                mtimes_ns=np.array([e[2] for e in entries], np.int64),
            ),
        )
        return [f for f, good in zip(files, ok) if good], outputs

    def _write_manifest(self, view, shards):
        folder = os.path.join(self.root, self.view_tag(view))
        os.makedirs(folder, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "model": type(self.model).__name__,
            "look": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.look).items()},
            "view": self.view_tag(view),
            "shards": shards,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _atomic_write(os.path.join(folder, "manifest.json"), lambda f: f.write(json.dumps(manifest, indent=1).encode()))

    def compute(self, sources, verbose=0):
        """Compute and store every missing shard of every view; returns a report dict.

        Complete shards are read, not recomputed (resumption); the report has
        `files`, `computed_shards`, `reused_shards`, `skipped_files`, `seconds`.
        """
        return self._run(sources, verbose=verbose)[1]

    def load(self, sources, compute=True, verbose=0):
        """`CachedOutputs` for the files of `sources` (computing what is missing unless `compute=False`)."""
        return self._run(sources, compute=compute, verbose=verbose)[0]

    def _run(self, sources, compute=True, verbose=0):
        start = time.perf_counter()
        entries, missing = self._files(sources)
        shards = self._shards(entries)
        computed = reused = 0
        per_view = []
        for view in range(self.num_views):
            paths, outputs, listing = [], [], {}
            for shard in shards:
                result = self._read_shard(view, shard)
                if result is None:
                    if not compute:
                        raise FileNotFoundError(
                            f"cache shard of {shard[0][0]} ... is not computed (view {self.view_tag(view)})"
                        )
                    result = self._compute_shard(view, shard)
                    computed += 1
                    listing[_shard_key(shard)] = {"files": len(shard), "ok": len(result[0]), "first": shard[0][0]}
                    self._write_manifest(view, listing)
                    if verbose:
                        print(f"cache {self.view_tag(view)}: shard {len(listing)}/{len(shards)} computed")
                else:
                    reused += 1
                    listing[_shard_key(shard)] = {"files": len(shard), "ok": len(result[0]), "first": shard[0][0]}
                paths.extend(result[0])
                if len(result[1]):
                    outputs.append(result[1])
            self._write_manifest(view, listing)
            per_view.append((paths, outputs))
        paths = per_view[0][0]
        # A file unreadable in one view is unreadable in all (decoding does not depend on the view).
        for other, _ in per_view[1:]:
            if other != paths:
                raise RuntimeError("cache views disagree on which files are readable; prune() and compute again")
        if paths:
            outputs = np.stack([np.concatenate(o) for _, o in per_view], axis=1)
        else:
            outputs = np.zeros((0, self.num_views), "float32")
        readable = set(paths)
        missing = missing + [e[0] for e in entries if e[0] not in readable]
        report = {
            "files": len(entries),
            "computed_shards": computed,
            "reused_shards": reused,
            "skipped_files": len(missing),
            "seconds": round(time.perf_counter() - start, 3),
        }
        return CachedOutputs(paths, outputs, missing), report

    def prune(self, keep_sources=None):
        """Delete temporary files, and shards that `keep_sources` (if given) do not use. Returns the count."""
        keep = None
        if keep_sources is not None:
            entries, _ = self._files(keep_sources)
            keep = {f"shard-{_shard_key(s)}.npz" for s in self._shards(entries)}
        removed = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                if ".tmp-" in name or (keep is not None and name.startswith("shard-") and name not in keep):
                    os.remove(os.path.join(folder, name))
                    removed += 1
        return removed

    # === tf.data ===

    def dataset(
        self,
        sources,
        *,
        batch_size=32,
        training=True,
        passes=None,
        seed=None,
        repeat=False,
        compute=True,
        skipped=None,
        shard=None,
    ):
        """Batches `(images, cached_outputs)` for `fit`, computing missing shards first.

        `training=True` shuffles the files each pass and drops the last partial
        batch; with `views=k` each image comes as one of its `k` cached
        augmented views, chosen at random per step. File order and views
        follow `(seed, pass)` of the `PassClock` `passes` (or a new
        `PassClock(seed)`; see `keras_cskd.data.passes`). `training=False`
        keeps the sorted file order and every image (view 0).
        Images have the cache's look; outputs are float32 as the model returned them.
        `skipped`: the `SkipCounter` of files unreadable now (default `self.skipped`).
        `shard`: `(index, count)`, e.g. `strategy.shard` (training only): this
        process reads and decodes only its rows of each global batch of
        `batch_size`, as `keras_cskd.data.labeled_dataset` does.
        """
        clock = pass_clock(passes, seed)
        ds = self._elements(
            sources,
            clock,
            skipped,
            training=training,
            repeat=repeat,
            compute=compute,
            shard=shard,
            batch_size=batch_size,
        )
        ds = ds.batch(process_batch_size(batch_size, shard), drop_remainder=training)
        return finish(ds.map(lambda e: (e["image"], e["output"])), clock, shard)

    def _elements(self, sources, clock, skipped, *, training, repeat, compute, shard=None, batch_size=None):
        """The unlabeled pipeline's elements over the cached files, each with its `"output"` for its view."""
        cached = self.load(sources, compute=compute)
        if not len(cached):
            raise ValueError("no readable image files to cache")
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(cached.paths), tf.range(len(cached.paths), dtype=tf.int64)),
            default_value=-1,
        )
        outputs = tf.constant(cached.outputs)
        k = self.num_views

        def cached_view(element, seed):
            view = tf.constant(0, tf.int64)
            if seed is not None:  # training: one of the cached views
                view = tf.random.stateless_uniform([], seed, maxval=k, dtype=tf.int64)
            row = table.lookup(element["key"])  # every file streamed is a cached one
            if self.model_view_size:  # one output per file; the images keep the pipelines' augmentation
                image = crop_resize(element["image"], self.look, training=seed is not None, seed=seed)
            else:
                image = self._image(element["image"], element["key"], view)
            return {**element, "image": image, "output": tf.gather_nd(outputs, tf.stack([row, view]))}

        return unlabeled_elements(
            ImageFiles(cached.paths, name="cache"),
            cached_view,
            clock=clock,
            counter=self.skipped if skipped is None else skipped,
            training=training,
            repeat=repeat,
            shard=shard,
            batch_size=batch_size,
        )

    def semi_supervised_dataset(
        self,
        records,
        unlabeled,
        split="train",
        *,
        batch_size=32,
        unlabeled_ratio=1.0,
        passes=None,
        seed=None,
        compute=True,
        skipped=None,
        shard=None,
    ):
        """`({LABELED_IMAGES, UNLABELED_IMAGES, PSEUDO_LABELS}, distributions)` for `SemiSupervisedDistiller`.

        `keras_cskd.data.semi_supervised_dataset` with the cache's look, whose
        unlabeled side is `self.dataset(unlabeled, training=True, repeat=True)`:
        the cached teacher outputs come as pseudo-labels, so the distiller
        needs no teacher. Both sides follow one `PassClock` (`passes`, or a
        new `PassClock(seed)`). `shard`: as in `dataset`, for both sides.
        """
        clock = pass_clock(passes, seed)
        counter = self.skipped if skipped is None else skipped
        images = self._elements(
            unlabeled,
            clock,
            counter,
            training=True,
            repeat=True,
            compute=compute,
            shard=shard,
            batch_size=unlabeled_batch_size(batch_size, unlabeled_ratio),
        )
        images = images.map(lambda e: {UNLABELED_IMAGES: e["image"], PSEUDO_LABELS: e["output"]})
        ds = semi_supervised_batches(
            records,
            split,
            images,
            self.look,
            batch_size=batch_size,
            unlabeled_ratio=unlabeled_ratio,
            clock=clock,
            counter=counter,
            shard=shard,
        )
        return finish(ds, clock, shard)
