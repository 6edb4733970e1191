"""`cskd analyze`: load models and images, write attention.json and the plots.

`run_command` returns an exit code and raises its user errors (OSError,
ValueError, RuntimeError) for `cskd`'s `main` to print.
"""

import argparse
import importlib
import json
import os

import keras
import keras_hub
import numpy as np

from keras_cskd import data
from keras_cskd.analysis.capture import attention_statistics
from keras_cskd.analysis.plots import plot
from keras_cskd.analysis.sites import find_attention_backbone
from keras_cskd.analysis.sites import image_hw
from keras_cskd.analysis.sites import pair

JSON_NAME = "attention.json"


def _register_library_objects():
    """Imports keras_cskd modules so their serializable classes are registered."""
    for module in ("layers", "backbones", "clip", "models"):
        try:
            importlib.import_module(f"keras_cskd.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"keras_cskd.{module}":
                raise


def load_model(path):
    """A `.keras` file or a local KerasHub preset directory -> a model."""
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise ValueError(f"{path} is a folder but not a KerasHub preset (no config.json).")
        return keras_hub.models.Backbone.from_preset(os.path.abspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model not found: {path}")
    if not path.endswith(".keras"):
        raise ValueError(f"{path}: expected a .keras file or a KerasHub preset directory.")
    _register_library_objects()
    try:
        return keras.saving.load_model(path, compile=False)
    except TypeError as error:  # e.g. a custom class that is not registered
        raise ValueError(f"Cannot load {path}: {error}") from error


def image_batches(files, size, batch_size=16):
    """Numpy batches (B, H, W, 3) of float 0..255 images resized to `size`.

    Decoded by the data layer, so broken files are skipped and counted.
    """
    dataset = data.unlabeled_dataset(
        data.ImageFiles(files),
        training=False,
        image_size=size,
        batch_size=batch_size,
        crop_fraction=1.0,
        dtype="float32",
    )
    return dataset.as_numpy_iterator()


def _input_shape(model):
    """The model's input shape (a dict for dict inputs), or None if unknown."""
    try:
        return model.input_shape
    except (AttributeError, ValueError, RuntimeError):  # subclassed, never called
        return None


def _input_size(model, backbone):
    """(height, width) the model takes: its input shape, else its backbone's."""
    shape = _input_shape(model)
    if isinstance(shape, dict):
        shape = next(iter(shape.values()))
    if isinstance(shape, tuple) and len(shape) == 4 and None not in shape[1:3]:
        return int(shape[1]), int(shape[2])
    image_shape = getattr(backbone, "image_shape", None)
    if image_shape is not None and None not in image_shape[:2]:
        return image_hw(image_shape, getattr(backbone, "data_format", "channels_last"))
    return None


def _model_names(paths):
    names = []
    for path in paths:
        base = os.path.basename(os.path.normpath(path))
        name = base[: -len(".keras")] if base.endswith(".keras") else base
        candidate, number = name, 2
        while candidate in names:
            candidate, number = f"{name}-{number}", number + 1
        names.append(candidate)
    return names


def analyze(
    model_paths,
    image_paths,
    out_dir,
    image_size=None,
    batch_size=16,
    max_images=None,
    backbone=None,
):
    """Loads models and images, writes `attention.json` and the plots.

    Args:
        model_paths: `.keras` files or local KerasHub preset directories.
        image_paths: image files or folders.
        out_dir: output folder.
        image_size: int or (height, width); defaults to each model's input size.
        batch_size: int.
        max_images: int or None. Use only the first images.
        backbone: str or None. Which backbone, if a model holds several.

    Returns:
        The dict written to `attention.json`: {"models": {name: statistics},
        "num_images", "plots"}.

    Example:
    >>> analyze(["before.keras", "after.keras"], ["images/"], "out")  # doctest: +SKIP
    """
    for path in model_paths:  # fail before the first (slow) model runs
        if not os.path.exists(path):
            raise FileNotFoundError(f"Model not found: {path}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}.")
    files = data.list_images(*image_paths)[:max_images]
    if not files:
        raise ValueError(f"No images ({', '.join(data.IMAGE_EXTENSIONS)}) found in {', '.join(image_paths)}.")
    models = {}
    for name, path in zip(_model_names(model_paths), model_paths):
        model = load_model(path)
        size = image_size or _input_size(model, find_attention_backbone(model, backbone)[1])
        if size is None:
            raise ValueError(f"Cannot tell the input size of {path}; give --image-size.")
        size = pair(size)
        stats = attention_statistics(model, image_batches(files, size, batch_size), backbone=backbone)
        models[name] = {"path": path, "image_size": list(size), **stats}
    plots = plot(models, out_dir)
    result = {
        "num_images": next(iter(models.values()))["num_images"],  # after skipped files
        "models": models,
        "plots": [os.path.basename(p) for p in plots],
    }
    with open(os.path.join(out_dir, JSON_NAME), "w") as file:
        json.dump(result, file, indent=1)
    return result


# === Command line ===


def _size(text):
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    if len(size) not in (1, 2) or min(size) <= 0:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    return size * (3 - len(size))


def register_command(subparsers):
    """Adds `cskd analyze` to an argparse subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "analyze",
        help="attention distance and entropy per layer, e.g. before/after alignment",
        description=(
            "Mean attention distance (pixels) and attention entropy (nats) per layer and "
            "head of each model's attention backbone (KerasHub ViT, DeiT, CLIP vision "
            "encoder, DINOv2, Swin), averaged over the images. Writes attention.json and "
            "attention_distance.png / attention_entropy.png with one line per model."
        ),
        usage=(
            "%(prog)s MODEL [MODEL ...] --images PATH [PATH ...] --out DIR [options]\n"
            "       %(prog)s MODEL [MODEL ...] IMAGES --out DIR [options]"
        ),
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="MODEL",
        help=".keras files or KerasHub preset folders; without --images the last one is "
        "IMAGES (an image file or folder)",
    )
    parser.add_argument("--images", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--image-size", type=_size, metavar="N|HxW", help="default: each model's input size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-images", type=int, metavar="N", help="use the first N images")
    parser.add_argument("--backbone", metavar="NAME", help="backbone layer name, if a model holds several")
    parser.set_defaults(func=run_command)
    return parser


def run_command(args):
    """The `cskd analyze` handler: prints a summary and returns the exit code.

    User errors are raised, not printed: `ValueError` (bad arguments, no
    images, no supported backbone, a file that is not a model),
    `FileNotFoundError` and other `OSError`s (missing or unreadable files,
    an output folder that cannot be written), `RuntimeError` (no attention
    recorded).
    """
    models, images = list(args.paths), args.images
    if images is None:
        if len(models) < 2:
            raise ValueError("give at least one MODEL, then IMAGES (or --images).")
        models, images = models[:-1], models[-1:]
    result = analyze(
        models,
        images,
        args.out,
        image_size=args.image_size,
        batch_size=args.batch_size,
        max_images=args.max_images,
        backbone=args.backbone,
    )
    print(f"{result['num_images']} images")
    for name, stats in result["models"].items():
        print(f"{name} ({stats['backbone']}): layer, mean distance (px), entropy (nats)")
        width = max(len(layer) for layer in stats["layers"])
        rows = zip(stats["layers"], stats["mean_distance"], stats["entropy"])
        for layer, distance, entropy in rows:
            print(f"  {layer:<{width}} {np.mean(distance):8.2f} {np.mean(entropy):8.3f}")
    print(f"wrote {os.path.join(args.out, JSON_NAME)}, " + ", ".join(result["plots"]))
    return 0
