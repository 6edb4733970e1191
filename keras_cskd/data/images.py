"""Image files: listing, safe decoding in tf.data, and skip accounting.

Decoding runs entirely in TensorFlow ops (no Python per image): JPEG, PNG,
BMP, GIF (first frame) and WebP; grayscale, palette, alpha, CMYK and 16-bit
images come out as 8-bit RGB. TensorFlow ignores the EXIF orientation tag, so
`decode_image` reads it from the JPEG header itself and rotates/flips the
pixels the way a photo viewer would.

Files that are missing, empty, truncated, corrupt or not images at all are
dropped from the stream (`ignore_errors`), and a `SkipCounter` is told which
ones at the end of every pass.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import tensorflow as tf

logger = logging.getLogger("keras_cskd.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_LIST_FILE_EXTENSIONS = (".txt", ".lst", ".list", ".jpgl", ".csv")


def is_image_file(path):
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(*roots, recursive=True):
    """Sorted image file paths under folders, in list files, or given directly.

    Args:
        *roots: folders (searched recursively unless `recursive=False`; hidden
            files and folders are skipped), list files (`.txt`, `.lst`,
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
    for root in roots:
        root = os.fspath(root)
        if os.path.isdir(root):
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
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


def exif_orientation(data):
    """EXIF orientation (1..8) of JPEG bytes; 1 when absent or not a JPEG."""
    head = tf.strings.substr(data, 0, 131072)
    exif = tf.strings.split(head, sep="Exif\x00\x00", maxsplit=1)
    tiff = exif[-1]
    little = tf.equal(tf.strings.substr(tiff, 0, 2), "II")
    entry = tf.where(little, _ORIENTATION_LE, _ORIENTATION_BE)
    found = tf.strings.split(tiff, sep=entry, maxsplit=1)
    value = tf.strings.substr(found[-1], tf.where(little, 0, 1), 1)
    ok = (
        tf.equal(tf.strings.substr(data, 0, 2), b"\xff\xd8")
        & tf.equal(tf.size(exif), 2)
        & tf.equal(tf.size(found), 2)
        & tf.equal(tf.strings.length(value), 1)
    )
    value = tf.cast(tf.io.decode_raw(tf.where(ok, value, b"\x01"), tf.uint8)[0], tf.int32)
    return tf.where((value >= 1) & (value <= 8), value, 1)


def _orient(image, orientation):
    """Apply an EXIF orientation so the image displays upright (as PIL's exif_transpose)."""
    t = lambda x: tf.transpose(x, [1, 0, 2])  # noqa: E731
    branches = [
        lambda: image,
        lambda: image[:, ::-1],  # 2: mirror
        lambda: image[::-1, ::-1],  # 3: rotate 180
        lambda: image[::-1],  # 4: flip vertically
        lambda: t(image),  # 5: transpose
        lambda: t(image)[:, ::-1],  # 6: rotate 90 clockwise
        lambda: t(image)[::-1, ::-1],  # 7: transverse
        lambda: t(image)[::-1],  # 8: rotate 90 counter-clockwise
    ]
    return tf.switch_case(orientation - 1, branches)


def decode_image(data):
    """Encoded image bytes -> upright uint8 RGB tensor `(H, W, 3)`.

    Raises (inside tf.data: the element is dropped) when the bytes are not a
    decodable image.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> png = tf.io.encode_png(np.zeros((4, 6, 1), np.uint8))
    >>> decode_image(png).shape
    TensorShape([4, 6, 3])
    """
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image = _orient(image, exif_orientation(data))
    image.set_shape([None, None, 3])
    return image


# === Skip accounting ===


class SkipCounter:
    """Image files skipped because they could not be read or decoded.

    The pipelines fill it in at the end of every pass over a file list and log
    one line when something was skipped. Read it any time:

    Attributes:
        count: number of distinct files skipped so far.
        examples: up to `max_examples` `(path, reason)` pairs.
        passes: number of completed passes.
        last_pass: `(skipped, total)` of the latest completed pass.

    Example:

    >>> counter = SkipCounter()
    >>> counter.count, counter.examples
    (0, [])
    """

    def __init__(self, max_examples=5):
        self.max_examples = max_examples
        self.count = 0
        self.examples = []
        self.passes = 0
        self.last_pass = (0, 0)
        self._skipped = set()
        self._lock = threading.Lock()

    def end_pass(self, name, paths, seen):
        """Record a finished pass over `paths`, of which indices `seen` came through."""
        mask = np.ones(len(paths), bool)
        mask[np.asarray(seen, np.int64)] = False
        missing = [str(paths[i]) for i in np.flatnonzero(mask)]
        with self._lock:
            self.passes += 1
            self.last_pass = (len(missing), len(paths))
            new = [p for p in missing if p not in self._skipped]
            self._skipped.update(new)
            self.count = len(self._skipped)
            for path in new[: max(0, self.max_examples - len(self.examples))]:
                self.examples.append((path, skip_reason(path)))
        if missing:
            shown = ", ".join(f"{p} ({skip_reason(p)})" for p in missing[:3])
            logger.warning(
                "%s: skipped %d of %d image files in this pass (unreadable or not images), e.g. %s",
                name, len(missing), len(paths), shown,
            )
        else:
            logger.debug("%s: pass over %d image files, none skipped", name, len(paths))

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
    with open(path, "rb") as f:
        head = f.read(16)
    known = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF")
    return "corrupt or truncated image" if head.startswith(known) else "not an image"


def file_image_stream(paths, labels=None, *, shuffle=False, seed=None, deterministic=True, counter=None, name="images"):
    """Dataset of `{"image", "key", ["label"]}` decoded from files, bad files skipped.

    One pass over `paths` (shuffled if asked); the element order is
    deterministic when `deterministic` (and `seed`, if shuffling) are set.
    At the end of each pass, `counter.end_pass` learns which files were dropped.
    """
    paths = np.asarray([os.fspath(p) for p in paths], str)
    if len(paths) == 0:
        raise ValueError(f"{name}: no image files to read")
    n = len(paths)
    elements = {"index": np.arange(n, dtype=np.int64), "key": paths}
    if labels is not None:
        elements["label"] = labels
    ds = tf.data.Dataset.from_tensor_slices(elements)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)

    def load(element):
        return {**element, "image": decode_image(tf.io.read_file(element["key"]))}

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.ignore_errors()
    return _track_pass(ds, paths, counter or SkipCounter(), name)


def _track_pass(ds, paths, counter, name):
    """Remember which indices come through; report the rest after a sentinel element."""
    seen = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int32, default_value=0)

    def report():
        keys, _ = seen.export()
        seen.remove(keys)
        counter.end_pass(name, paths, keys.numpy())
        return True

    def insert(index):
        with tf.control_dependencies([seen.insert(index, 1)]):
            return tf.constant(True)

    def sentinel_of(spec):
        shape = [1 if d is None else d for d in spec.shape]
        value = "" if spec.dtype == tf.string else -1 if spec.dtype == tf.int64 else 0
        return tf.fill(shape, tf.constant(value, spec.dtype))

    sentinel = tf.data.Dataset.from_tensors(tf.nest.map_structure(sentinel_of, ds.element_spec))

    def mark(element):
        index = element["index"]
        done = tf.cond(index < 0, lambda: tf.py_function(report, [], tf.bool), lambda: insert(index))
        with tf.control_dependencies([done]):
            return {k: tf.identity(v) for k, v in element.items()}

    ds = ds.concatenate(sentinel).map(mark).filter(lambda e: e["index"] >= 0)
    return ds.map(lambda e: {k: v for k, v in e.items() if k != "index"})
