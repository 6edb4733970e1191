"""Image files: listing, safe decoding in tf.data, and skip accounting.

Decoding runs entirely in TensorFlow ops (no Python per image): JPEG, PNG,
BMP, GIF (first frame) and WebP; grayscale, palette, alpha, CMYK and 16-bit
images come out as 8-bit RGB. TensorFlow ignores the EXIF orientation tag, so
`decode_image` reads it from the JPEG header itself and rotates/flips the
pixels the way a photo viewer would.

Files that are missing, empty, truncated, corrupt or not images at all are
dropped from the stream (`ignore_errors`); at the end of a pass that dropped
any, a `SkipCounter` is told which, and one log line names a few. (Training
streams then refill the epoch to its full length from the next pass, so the
number of batches stays known.)
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import tensorflow as tf

from keras_cskd.data.passes import first
from keras_cskd.data.passes import side_step

logger = logging.getLogger("keras_cskd.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_LIST_FILE_EXTENSIONS = (".txt", ".lst", ".list", ".jpgl", ".csv")


def is_image_file(path):
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(*roots, recursive=True):
    """Sorted image file paths under folders, in list files, or given directly.

    Args:
        *roots: folders (searched recursively unless `recursive=False`; hidden
            files and folders are skipped; links are followed, each real
            folder is listed once, so a link loop ends), list files (`.txt`, `.lst`,
            `.list`, `.jpgl`, `.csv`: one path per line, relative paths are
            relative to the list file, blank lines and `#` comments ignored),
            or image files.
        recursive: descend into sub-folders.

    Returns:
        list of str paths with an image extension
        (`IMAGE_EXTENSIONS`, case-insensitive), sorted, without duplicates.

    Example:

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp(); os.makedirs(f"{d}/sub")
    >>> for name in ["a.jpg", "sub/b.PNG", "notes.txt"]:
    ...     open(os.path.join(d, name), "w").close()
    >>> [os.path.relpath(p, d) for p in list_images(d)]
    ['a.jpg', 'sub/b.PNG']
    """
    found = []
    visited = set()  # real folders already listed: links are followed, each folder read once
    for root in roots:
        root = os.fspath(root)
        if os.path.isdir(root):
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                real = os.path.realpath(dirpath)
                if real in visited:  # a link loop (`ln -s . again`) or a second link to it
                    dirnames[:] = []
                    continue
                visited.add(real)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
                found += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(f)]
        elif root.lower().endswith(_LIST_FILE_EXTENSIONS):
            base = os.path.dirname(os.path.abspath(root))
            with open(root, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
            found += [os.path.join(base, line) for line in lines if line and not line.startswith("#")]
        elif is_image_file(root):
            found.append(root)
        else:
            raise ValueError(f"not a folder, list file or image file: {root}")
    return sorted(set(found))


# === Decoding ===

# EXIF orientation entry (tag 0x0112, type SHORT, count 1) in both byte orders.
_ORIENTATION_LE = b"\x12\x01\x03\x00\x01\x00\x00\x00"
_ORIENTATION_BE = b"\x01\x12\x00\x03\x00\x00\x00\x01"


def _has_exif(data):
    """Whether JPEG bytes start with an EXIF segment (alone or after a JFIF header)."""
    return tf.equal(tf.strings.substr(data, 0, 2), b"\xff\xd8") & (
        tf.equal(tf.strings.substr(data, 6, 4), b"Exif") | tf.equal(tf.strings.substr(data, 24, 4), b"Exif")
    )


def exif_orientation(data):
    """EXIF orientation (1..8) of JPEG bytes; 1 when absent or not a JPEG.

    Finds the "Exif" segment in the first 64 KiB and the orientation entry
    (tag 0x0112) in its TIFF block, in either byte order.
    """
    exif = tf.strings.split(tf.strings.substr(data, 0, 65536), sep=b"Exif\x00\x00", maxsplit=1)
    tiff = exif[-1]
    little = tf.equal(tf.strings.substr(tiff, 0, 2), b"II")
    found = tf.strings.split(tiff, sep=tf.where(little, _ORIENTATION_LE, _ORIENTATION_BE), maxsplit=1)
    value = tf.strings.substr(found[-1], tf.where(little, 0, 1), 1)
    ok = _has_exif(data) & tf.equal(tf.size(exif), 2) & tf.equal(tf.size(found), 2)
    ok &= tf.equal(tf.strings.length(value), 1)
    value = tf.cast(tf.io.decode_raw(tf.where(ok, value, b"\x01"), tf.uint8)[0], tf.int32)
    return tf.where((value >= 1) & (value <= 8), value, 1)


def _orient(image, orientation):
    """Apply an EXIF orientation so the image displays upright (as PIL's exif_transpose).

    Orientations 5..8 swap the axes first; then 2, 3, 6, 7 mirror left-right
    and 3, 4, 7, 8 flip top-bottom.
    """
    o = tf.cast(orientation, tf.int32)
    image = tf.transpose(image, tf.where(o >= 5, [1, 0, 2], [0, 1, 2]))
    flip_lr = tf.reduce_any(tf.equal(o, [2, 3, 6, 7]))
    flip_ud = tf.reduce_any(tf.equal(o, [3, 4, 7, 8]))
    return tf.reverse(image, tf.boolean_mask([0, 1], tf.stack([flip_ud, flip_lr])))


def decode_image(data):
    """Encoded image bytes -> upright uint8 RGB tensor `(H, W, 3)`.

    Raises (inside tf.data: the element is dropped) when the bytes are not a
    decodable image. The EXIF orientation of JPEGs is applied when their EXIF
    segment comes first or right after the standard JFIF header, where cameras
    and editors put it; images without EXIF take a fast path.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> png = tf.io.encode_png(np.zeros((4, 6, 1), np.uint8))
    >>> decode_image(png).shape
    TensorShape([4, 6, 3])
    """

    def plain():
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)

    image = tf.cond(_has_exif(data), lambda: _orient(plain(), exif_orientation(data)), plain)
    image.set_shape([None, None, 3])
    return image


# === Skip accounting ===


class SkipCounter:
    """Image files skipped because they could not be read or decoded.

    The pipelines fill it in at the end of each pass over a file list that
    skipped something, and log one line then. Read it any time:

    Attributes:
        count: number of distinct files skipped so far.
        examples: up to `max_examples` `(path, reason)` pairs.
        last_pass: `(skipped, total)` of the latest pass that skipped files.

    Example:

    >>> counter = SkipCounter()
    >>> counter.count, counter.examples
    (0, [])
    """

    def __init__(self, max_examples=5):
        self.max_examples = max_examples
        self.count = 0
        self.examples = []
        self.last_pass = (0, 0)
        self._skipped = set()
        self._lock = threading.Lock()

    def end_pass(self, name, paths, seen, tried=None):
        """Record a pass that tried the indices `tried` of `paths` (default: all) and decoded `seen`."""
        mask = np.zeros(len(paths), bool)
        if tried is None:
            mask[:] = True
        else:
            mask[np.asarray(tried, np.int64)] = True
        total = int(mask.sum())
        mask[np.asarray(seen, np.int64)] = False
        missing = [str(paths[i]) for i in np.flatnonzero(mask)]
        with self._lock:
            self.last_pass = (len(missing), total)
            new = [p for p in missing if p not in self._skipped]
            self._skipped.update(new)
            self.count = len(self._skipped)
            for path in new[: max(0, self.max_examples - len(self.examples))]:
                self.examples.append((path, skip_reason(path)))
        shown = ", ".join(f"{p} ({skip_reason(p)})" for p in missing[:3])
        logger.warning(
            "%s: skipped %d of %d image files in this pass (unreadable or not images), e.g. %s",
            name,
            len(missing),
            total,
            shown,
        )

    def __repr__(self):
        return f"SkipCounter(count={self.count}, examples={[p for p, _ in self.examples]})"


def skip_reason(path):
    """Why a file could not be used, as a short phrase (for reports)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing"
    if size == 0:
        return "empty file"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return "unreadable"
    known = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF")
    return "corrupt or truncated image" if head.startswith(known) else "not an image"


def file_image_stream(
    paths,
    labels=None,
    *,
    clock=None,
    salt=0,
    deterministic=True,
    keep_length=False,
    repeat=False,
    counter=None,
    name="images",
    shard=None,
    batch_size=None,
):
    """Dataset of `{"image", "key", ["label"]}` decoded from files, bad files skipped.

    One pass over `paths`, in file order, or shuffled when a `PassClock` is
    given: pass *k* of the clock (salted by `salt`) fixes the order with a
    stateless shuffle, so it is the same in every run. The element order is
    deterministic when `deterministic` is set. When a pass skipped files,
    `counter.end_pass` learns which, at its end.

    With `keep_length`, the stream always has exactly `len(paths)` elements
    (a known cardinality): the places of skipped files are filled with the
    first images of the next (reshuffled) pass. With `repeat`, passes follow
    each other forever, each with its own order.

    With `shard` (a `keras_cskd.data.passes.Shard`) and `batch_size` (the
    global batch the stream is cut into), only the files of the shard's rows
    of each global batch are read and decoded: the same order is computed,
    then the positions the shard does not own are dropped before reading.
    Without unreadable files, the shard's stream is exactly its rows of the
    unsharded stream; `keep_length` keeps the shard's rows of the whole
    global batches in `len(paths)` (the partial last batch is left out, as
    training batches drop it), refilled from the shard's rows of the next
    pass, and each pass reports the files of its rows that it skipped.
    """
    paths = np.asarray([os.fspath(p) for p in paths], str)
    if len(paths) == 0:
        raise ValueError(f"{name}: no image files to read")
    if shard is not None and not batch_size:
        raise ValueError(f"{name}: a shard needs the global batch_size its rows are cut from")
    n = len(paths)
    counter = counter or SkipCounter()
    # Indices of the images tried and decoded in the current pass. They are
    # recorded inside the (parallel) decode step, successes only once
    # decoding succeeded; the pass's first and last steps, which yield
    # nothing, clear the record and report the rest.
    tried = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int32, default_value=0)
    seen = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int32, default_value=0)
    keys = tf.constant(paths)
    label_table = None if labels is None else tf.constant(labels)

    def load(index):
        with tf.control_dependencies([tried.insert(index, 1)]):
            data = tf.io.read_file(keys[index])
        image = decode_image(data)
        with tf.control_dependencies([image]):  # only once decoding succeeded
            recorded = seen.insert(index, 1)
        with tf.control_dependencies([recorded]):
            element = {"key": keys[index], "image": tf.identity(image)}
        if label_table is not None:
            element["label"] = tf.gather(label_table, index)
        return element

    last_pass = {"empty": False}

    def report():
        found, _ = seen.export()
        attempted, _ = tried.export()
        last_pass["empty"] = len(found) == 0 and len(attempted) > 0
        if len(found) < len(attempted):
            counter.end_pass(name, paths, found.numpy(), attempted.numpy())
        return True

    def clear():
        found, _ = seen.export()
        attempted, _ = tried.export()
        with tf.control_dependencies([seen.remove(found), tried.remove(attempted)]):
            return tf.constant(True)

    def one_pass(order, number=0):
        if shard is not None and keep_length and not repeat:
            # An epoch: the shard's rows of the pass's whole batches (refills come from the next pass's).
            positions = tf.range(n, dtype=tf.int64)
            order = tf.boolean_mask(
                order, shard.owns(positions, batch_size) & (positions < n // batch_size * batch_size)
            )
        elif shard is not None:  # endless: pass `number` holds the global positions number * n ...
            positions = tf.cast(number, tf.int64) * n + tf.range(n, dtype=tf.int64)
            order = tf.boolean_mask(order, shard.owns(positions, batch_size))
        ds = tf.data.Dataset.from_tensor_slices(order)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic).ignore_errors()
        ds = side_step(clear, ds.element_spec).concatenate(ds)
        return ds.concatenate(side_step(lambda: tf.py_function(report, [], tf.bool), ds.element_spec))

    def shuffle(seed):
        return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=seed)

    def numbered(make):
        """Passes `make(number, seed)` for number = 0, 1, ...; stops after a pass that found no image."""

        def passes(seed):
            numbers = tf.data.Dataset.counter().take_while(
                lambda _: tf.py_function(lambda: not last_pass["empty"], [], tf.bool)
            )
            return numbers.flat_map(lambda i: make(i, tf.random.experimental.stateless_fold_in(seed, i)))

        return passes

    if clock is None:
        if not (keep_length or repeat):
            ds = one_pass(tf.range(n, dtype=tf.int64))
        elif shard is None:
            ds = one_pass(tf.range(n, dtype=tf.int64)).repeat()
        else:  # each pass owns its own positions
            ds = numbered(lambda i, _: one_pass(tf.range(n, dtype=tf.int64), i))(tf.constant([0, 0], tf.int64))
    elif keep_length or repeat:
        # Pass after pass, each with its own order.
        ds = clock.each_pass(salt, numbered(lambda i, seed: one_pass(shuffle(seed), i)))
    else:
        ds = clock.each_pass(salt, lambda seed: one_pass(shuffle(seed)))
    if keep_length and not repeat:
        return first(ds, n if shard is None else shard.count_in(n // batch_size * batch_size, batch_size))
    return ds


def file_candidates(paths, clock, salt=0):
    """The endless stream of `{"key", "data": ""}` that `file_image_stream(paths, clock=clock, salt=salt,
    repeat=True)` reads, in its order, without reading anything.

    What a sharded mix of sources enumerates: every process walks the same
    candidates and reads only its own (`decode_candidate`).
    """
    paths = np.asarray([os.fspath(p) for p in paths], str)
    if len(paths) == 0:
        raise ValueError("no image files to read")
    n = len(paths)
    keys = tf.constant(paths)

    def passes(seed):
        def one_pass(i):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.random.experimental.stateless_fold_in(seed, i)
            )
            return tf.data.Dataset.from_tensor_slices(tf.gather(keys, order))

        return tf.data.Dataset.counter().flat_map(one_pass)

    return clock.each_pass(salt, passes).map(lambda key: {"key": key, "data": tf.constant("")})


def decode_candidate(candidate):
    """`{"image", "key"}` of a candidate `{"key", "data"}`: its encoded `data`, or the file `key` when empty."""
    data = candidate["data"]
    data = tf.cond(tf.strings.length(data) > 0, lambda: data, lambda: tf.io.read_file(candidate["key"]))
    return {"image": decode_image(data), "key": candidate["key"]}
