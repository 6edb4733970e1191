"""Feature-collapse analysis: mean attention distance and attention entropy.

CSKD (arXiv 2307.15640) shows that aligning a backbone to CLIP eases feature
collapse by comparing, layer by layer and head by head, how far and how
broadly the attention of a vision transformer looks, before and after the
alignment. This module measures both for any model that contains a supported
KerasHub backbone, at any depth of nesting (a bare backbone, a
`keras_cskd.backbones.get(...)` feature model, an aligned learner, a
`CLIPImageTeacher`):

| backbone                                  | attention               | prefix tokens |
|-------------------------------------------|-------------------------|---------------|
| `keras_hub.models.ViTBackbone`            | global                  | CLS (if used) |
| `keras_hub.models.DeiTBackbone`           | global                  | CLS, distill. |
| `keras_hub.models.CLIPVisionEncoder`      | global                  | CLS           |
| `keras_hub.models.DINOV2Backbone`         | global                  | CLS, registers|
| `keras_hub.models.SwinTransformerBackbone`| local (shifted) windows | none          |

Anything else (a CNN, DINOv3, a KerasHub model not listed) raises a
`ValueError` that names the model and lists the supported backbones.

Definitions (ViT paper, Dosovitskiy et al. 2021, appendix D.7), for each
layer and head, with `a_ij` the softmax attention of query token i on key
token j:

- mean attention distance (pixels) = mean over queries i of
  `sum_j a_ij * ||pos_i - pos_j||`, where `pos` is a token's (row, column)
  on the patch grid times the token's size in pixels. Prefix tokens (CLS,
  distillation, registers) have no position: they are left out as queries,
  and each query's attention on the patch tokens is renormalized to sum 1,
  so the value is the expected pixel distance to the patch attended to.
  The share of attention that went to prefix tokens is reported separately
  as `prefix_attention`.
- attention entropy (nats) = mean over queries i of `-sum_j a_ij log a_ij`,
  over each query's full attention row (prefix tokens included as keys: that
  is the distribution the layer applies). Queries are the patch tokens, as
  for the distance. Uniform attention over K keys gives `log K`
  (`max_entropy`), attention on a single key gives 0.

Both are averaged over the images. Swin attends inside local windows:
distances are between token positions inside their window, and a token's size
in pixels is the patch size times 2 per patch merging before its stage
(`patch_size * 2**stage`). In shifted windows, pairs that wrap around the
image border are masked by Swin itself (weight about e^-100), so every pair
that carries weight has its window distance equal to its image distance.
Where a stage's resolution is not a multiple of the window, Swin attends over
zero-padded tokens too, and so does this measurement.

How the weights are obtained: the model runs as usual while the supported
attention layers are hooked for the duration of the run only. For
`keras.layers.MultiHeadAttention` (ViT, DeiT, CLIP, DINOv2) the hook takes the
layer's own projected queries and keys and applies the layer's own scaling,
einsum and masked softmax (the layer's explicit-scores code path) next to the
layer's unchanged computation; for Swin's `WindowAttention` the layer's own
`call` returns the weights it used. The hooks are instance attributes removed
afterwards, so the model is never modified and its predictions stay
bit-identical.

Command line: `cskd analyze before.keras after.keras --images imgs/ --out DIR`
(or `cskd analyze before.keras after.keras imgs/ --out DIR`) writes
`attention.json` and the plots `attention_distance.png` and
`attention_entropy.png`, one line per model.
"""

import argparse
import contextlib
import functools
import importlib
import json
import math
import os
import sys

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_cskd import data

JSON_NAME = "attention.json"
_PLOTS = (
    ("mean_distance", "mean attention distance (pixels)", "attention_distance.png"),
    ("entropy", "attention entropy (nats)", "attention_entropy.png"),
)
_STATISTICS = ("mean_distance", "entropy", "prefix_attention")
_MISSING = object()


# === Metrics (keras.ops, any backend) ===


def pairwise_distances(grid, token_size):
    """(P, P) pixel distances between the tokens of a row-major patch grid.

    Args:
        grid: (rows, columns) of patch tokens.
        token_size: (height, width) of one token in pixels.

    Example:
    >>> pairwise_distances((1, 2), (16, 16)).tolist()
    [[0.0, 16.0], [16.0, 0.0]]
    """
    rows, columns = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    positions = np.stack([rows.ravel() * token_size[0], columns.ravel() * token_size[1]], -1)
    gaps = positions[:, None, :] - positions[None, :, :]
    return np.sqrt(np.sum(np.square(gaps, dtype="float64"), -1)).astype("float32")


def attention_summary(probs, distances, num_prefix_tokens=0):
    """Per image and head: mean distance, entropy and prefix share of attention.

    Args:
        probs: (batch, heads, tokens, tokens) softmax attention, rows summing
            to 1. The first `num_prefix_tokens` tokens (CLS, registers) have
            no position; the others are the patches of `distances`.
        distances: (patches, patches) pixel distances, see `pairwise_distances`.
        num_prefix_tokens: int.

    Returns:
        A dict of (batch, heads) tensors: "mean_distance" (pixels, prefix keys
        left out and the rest renormalized), "entropy" (nats, over full rows),
        "prefix_attention" (share of attention on prefix tokens). All are
        means over the patch queries.

    Example:
    >>> uniform = np.full((1, 1, 2, 2), 0.5, "float32")
    >>> summary = attention_summary(uniform, pairwise_distances((1, 2), (8, 8)))
    >>> float(summary["mean_distance"][0, 0]), float(summary["entropy"][0, 0])
    (4.0, 0.693147...)
    """
    probs = ops.cast(probs, "float32")
    rows = probs[:, :, num_prefix_tokens:, :]
    positive = ops.greater(rows, 0.0)
    entropy = -ops.sum(rows * ops.log(ops.where(positive, rows, 1.0)), axis=-1)
    on_patches = rows[:, :, :, num_prefix_tokens:]
    weighted = ops.sum(on_patches * ops.convert_to_tensor(distances, "float32"), axis=-1)
    distance = weighted / ops.maximum(ops.sum(on_patches, axis=-1), 1e-30)
    on_prefix = ops.sum(rows[:, :, :, :num_prefix_tokens], axis=-1)
    return {
        "mean_distance": ops.mean(distance, axis=-1),
        "entropy": ops.mean(entropy, axis=-1),
        "prefix_attention": ops.mean(on_prefix, axis=-1),
    }


@functools.cache
def _summary_function():
    """`attention_summary`, compiled as one program on JAX.

    Eager JAX compiles every op for every new shape; one compiled summary per
    shape is much quicker. The other backends run it eagerly.
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(attention_summary, static_argnums=2)
    return attention_summary


# === Finding the attention layers ===


class _Site:
    """One attention layer: what to hook and the geometry of its tokens."""

    def __init__(self, name, layer, kind, grid, token_size, num_prefix_tokens=0, windows=1):
        self.name = name
        self.layer = layer
        self.kind = kind  # "global": MultiHeadAttention; "window": Swin.
        self.windows = windows  # attention windows per image
        self.num_prefix_tokens = num_prefix_tokens
        self.token_size = tuple(float(s) for s in token_size)
        self.distances = pairwise_distances(grid, token_size)
        self.num_keys = num_prefix_tokens + grid[0] * grid[1]


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _image_hw(image_shape, data_format):
    if data_format == "channels_first":
        return int(image_shape[1]), int(image_shape[2])
    return int(image_shape[0]), int(image_shape[1])


def _global_sites(blocks, attention_of, image_hw, patch_size, num_prefix_tokens):
    patch = _pair(patch_size)
    grid = (image_hw[0] // patch[0], image_hw[1] // patch[1])
    return [
        _Site(block.name, attention_of(block), "global", grid, patch, num_prefix_tokens)
        for block in blocks
    ]


def _vit_sites(backbone):
    return _global_sites(
        backbone.get_layer("vit_encoder").encoder_layers,
        lambda block: block.mha,
        _image_hw(backbone.image_shape, backbone.data_format),
        backbone.patch_size,
        int(bool(backbone.use_class_token)),
    )


def _deit_sites(backbone):
    return _global_sites(
        backbone.get_layer("deit_encoder").encoder_layers,
        lambda block: block.mha,
        _image_hw(backbone.image_shape, backbone.data_format),
        backbone.patch_size,
        2,  # class and distillation tokens
    )


def _clip_sites(backbone):
    return _global_sites(
        backbone.encoder_layers,
        lambda block: block.attention,
        _image_hw(backbone.image_shape, backbone.embedding.data_format),
        backbone.patch_size,
        1,
    )


def _dinov2_sites(backbone):
    return _global_sites(
        backbone.encoder.layers,
        lambda block: block.attention.attention,
        _image_hw(backbone.image_shape, backbone.embeddings.data_format),
        backbone.patch_size,
        1 + backbone.num_register_tokens,
    )


def _swin_sites(backbone):
    sites = []
    for index, stage in enumerate(backbone.stages):
        token = backbone.patch_size * 2**index
        for block in stage.blocks:
            window = (block.attn.win_h, block.attn.win_w)
            height, width = block.input_resolution
            windows = math.ceil(height / window[0]) * math.ceil(width / window[1])
            name = f"{stage.name}/{block.name}"
            sites.append(_Site(name, block.attn, "window", window, (token, token), 0, windows))
    return sites


_FAMILIES = (  # keras_hub.models class name -> its attention layers
    ("ViTBackbone", _vit_sites),
    ("DeiTBackbone", _deit_sites),
    ("CLIPVisionEncoder", _clip_sites),
    ("DINOV2Backbone", _dinov2_sites),
    ("SwinTransformerBackbone", _swin_sites),
)
SUPPORTED_BACKBONES = tuple(name for name, _ in _FAMILIES)


def _family(layer):
    for class_name, sites in _FAMILIES:
        cls = getattr(keras_hub.models, class_name, None)
        if cls is not None and isinstance(layer, cls):
            return sites
    return None


def find_attention_backbone(model, backbone=None):
    """The supported KerasHub backbone inside `model` (or `model` itself).

    Searches nested models and layers at any depth.

    Args:
        model: a `keras.Model` or layer.
        backbone: str or None. The name (or "/"-joined path) of the backbone
            layer to use when `model` holds several.

    Returns:
        (path, backbone layer).

    Example:
    >>> vit = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...     num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    >>> find_attention_backbone(keras.Sequential([vit]))[1] is vit
    True
    """
    found, others, seen = [], [], set()

    def visit(layer, path):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if _family(layer) is not None:
            found.append((path, layer))
            return
        if isinstance(layer, keras_hub.models.Backbone):
            others.append(type(layer).__name__)
        for child in layer._flatten_layers(include_self=False, recursive=False):
            visit(child, f"{path}/{child.name}")

    visit(model, model.name)
    if backbone is not None:
        found = [(p, b) for p, b in found if backbone in (b.name, p, p.split("/", 1)[-1])]
    if len(found) == 1:
        return found[0]
    what = f"model {model.name!r} ({type(model).__name__})"
    if not found and backbone is not None:
        raise ValueError(f"No supported backbone named {backbone!r} in {what}.")
    if not found:
        seen_hub = f" It holds {', '.join(others)} (not supported)." if others else ""
        raise ValueError(
            f"Cannot analyze attention of {what}: it contains no supported "
            f"attention backbone.{seen_hub} Supported: "
            f"{', '.join('keras_hub.models.' + n for n in SUPPORTED_BACKBONES)}."
        )
    raise ValueError(
        f"{what} holds several supported backbones: "
        f"{', '.join(p for p, _ in found)}. Choose one with backbone=NAME "
        "(--backbone on the command line)."
    )


# === Capture ===


def _mha_probabilities(layer, query, key, attention_mask):
    """The softmax weights of a MultiHeadAttention, from its projected q and k.

    This is the layer's own explicit-scores path (`_compute_attention` with
    `return_attention_scores=True`) without dropout.
    """
    query = ops.multiply(query, ops.cast(layer._inverse_sqrt_key_dim, query.dtype))
    scores = ops.einsum(layer._dot_product_equation, key, query)
    return layer._masked_softmax(scores, attention_mask)


class AttentionCapture:
    """Records attention statistics while a model runs; see `capture_attention`."""

    def __init__(self, model, backbone=None):
        self.model = model
        self.backbone_path, self.backbone = find_attention_backbone(model, backbone)
        self.sites = _family(self.backbone)(self.backbone)
        self._sums = [None] * len(self.sites)
        self._counts = [0] * len(self.sites)
        self._compiled_calls = 0
        self._installed = []

    def _record(self, index, probs):
        site = self.sites[index]
        summary = _summary_function()(probs, site.distances, site.num_prefix_tokens)
        try:
            values = np.stack([ops.convert_to_numpy(summary[k]) for k in _STATISTICS])
        except Exception:  # a compiled call (tracers, graph tensors): no values.
            # Raising here would abort e.g. `predict` mid-trace, which on JAX
            # leaves the model's variables unusable; `statistics` reports it.
            self._compiled_calls += 1
            return
        # (statistics, images * windows, heads) -> mean over each image's windows
        values = values.astype("float64")
        values = values.reshape(len(_STATISTICS), -1, site.windows, values.shape[-1]).mean(axis=2)
        previous = 0.0 if self._sums[index] is None else self._sums[index]
        self._sums[index] = previous + values.sum(axis=1)
        self._counts[index] += values.shape[1]

    def _hook(self, index):
        site = self.sites[index]
        if site.kind == "global":
            original = site.layer._compute_attention

            def compute_attention(query, key, value, attention_mask=None, *args, **kwargs):
                if not keras.backend.is_keras_tensor(query):  # symbolic: nothing to measure
                    probs = _mha_probabilities(site.layer, query, key, attention_mask)
                    self._record(index, probs)
                return original(query, key, value, attention_mask, *args, **kwargs)

            return "_compute_attention", compute_attention
        original = site.layer.call

        def call(x, mask=None, return_attns=False):
            outputs, probs = original(x, mask=mask, return_attns=True)
            if not keras.backend.is_keras_tensor(probs):
                self._record(index, probs)
            return (outputs, probs) if return_attns else outputs

        return "call", call

    def __enter__(self):
        try:
            for index, site in enumerate(self.sites):
                name, hook = self._hook(index)
                previous = site.layer.__dict__.get(name, _MISSING)
                object.__setattr__(site.layer, name, hook)
                self._installed.append((site.layer, name, previous))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info):
        while self._installed:
            layer, name, previous = self._installed.pop()
            if previous is _MISSING:
                object.__delattr__(layer, name)
            else:
                object.__setattr__(layer, name, previous)
        return False

    def run(self, images):
        """Runs the model eagerly in inference mode on a batch; returns its outputs."""
        images = ops.convert_to_tensor(np.asarray(images, "float32"))
        with _no_grad():
            return self.model(images, training=False)

    def statistics(self):
        """The per-layer, per-head statistics recorded so far (JSON-ready)."""
        if not all(self._counts):
            missing = [s.name for s, c in zip(self.sites, self._counts) if not c]
            hint = (
                " It only ran compiled (predict, jit, tf.function): run it eagerly, "
                "e.g. `capture.run(images)`."
                if self._compiled_calls
                else " Run the model first."
            )
            raise RuntimeError(f"No attention recorded for layers {missing}.{hint}")
        means = [total / count for total, count in zip(self._sums, self._counts)]
        result = {
            "backbone": type(self.backbone).__name__,
            "backbone_path": self.backbone_path,
            "num_images": min(self._counts),
            "layers": [site.name for site in self.sites],
            "token_size_pixels": [list(site.token_size) for site in self.sites],
            "num_prefix_tokens": [site.num_prefix_tokens for site in self.sites],
            "max_entropy": [math.log(site.num_keys) for site in self.sites],
        }
        for position, key in enumerate(_STATISTICS):
            result[key] = [mean[position].tolist() for mean in means]
        return result


def capture_attention(model, backbone=None):
    """Context manager that records attention while `model` runs eagerly.

    The hooks exist only inside the `with` block and leave the model's outputs
    unchanged. Run the model with `capture.run(images)` (or call it eagerly);
    compiled calls such as `predict` are not recorded.

    Example:
    >>> vit = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...     num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    >>> with capture_attention(vit) as capture:
    ...     _ = capture.run(np.zeros((2, 32, 32, 3)))
    >>> len(capture.statistics()["entropy"])
    2
    """
    return AttentionCapture(model, backbone)


@contextlib.contextmanager
def _no_grad():
    """PyTorch would otherwise record a graph for the eager forward pass."""
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            yield
    else:
        yield


def _batches(images, batch_size):
    if hasattr(images, "shape") and len(images.shape) == 4:
        images = ops.convert_to_numpy(images)
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]
        return
    for batch in images:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def attention_statistics(model, images, batch_size=16, backbone=None):
    """Mean attention distance and entropy per layer and head, over images.

    Args:
        model: a `keras.Model` that takes images and contains a supported
            backbone (see `SUPPORTED_BACKBONES`), at any depth.
        images: (N, H, W, 3) array of what `model` takes (0..255 for
            `keras_cskd` models), or an iterable of such batches.
        batch_size: int. Batch size when `images` is an array.
        backbone: str or None. Which backbone, if the model holds several.

    Returns:
        A JSON-ready dict: "mean_distance" (pixels) and "entropy" (nats) and
        "prefix_attention", each a list over layers of a list over heads;
        "layers" (names), "max_entropy" (log of keys per query),
        "token_size_pixels", "num_prefix_tokens", "num_images", "backbone".

    Example:
    >>> vit = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...     num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    >>> stats = attention_statistics(vit, np.zeros((3, 32, 32, 3)))
    >>> np.array(stats["mean_distance"]).shape, stats["num_images"]
    ((2, 2), 3)
    """
    with capture_attention(model, backbone) as capture:
        for batch in _batches(images, batch_size):
            capture.run(batch)
    return capture.statistics()


def compare(models, images, batch_size=16, backbone=None):
    """`attention_statistics` of each model in a {name: model} dict, same images.

    Example:
    >>> stats = compare({"before": vit, "after": aligned_vit}, images)  # doctest: +SKIP
    >>> plot(stats, "out/")  # doctest: +SKIP
    """
    return {
        name: attention_statistics(model, images, batch_size, backbone)
        for name, model in models.items()
    }


# === Plots ===


def plot(stats_by_model, out_dir):
    """Per-layer distance and entropy charts, one line per model.

    Lines are the mean over heads; dots are the single heads.

    Args:
        stats_by_model: {name: attention_statistics(...)}.
        out_dir: folder for the PNG files (created if needed).

    Returns:
        The paths of the PNG files written.

    Example:
    >>> plot({"before": before_stats, "after": after_stats}, "out")  # doctest: +SKIP
    ['out/attention_distance.png', 'out/attention_entropy.png']
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key, label, filename in _PLOTS:
        figure = Figure(figsize=(6.4, 4.2), layout="constrained")
        axes = figure.subplots()
        for index, (name, stats) in enumerate(stats_by_model.items()):
            color = f"C{index % 10}"
            per_layer = stats[key]
            depth = np.arange(1, len(per_layer) + 1)
            axes.plot(depth, [np.mean(h) for h in per_layer], "o-", color=color, label=name)
            for x, heads in zip(depth, per_layer):
                axes.scatter(np.full(len(heads), x), heads, s=12, alpha=0.35, color=color)
        axes.set_title("lines: mean over heads; dots: single heads", fontsize="small")
        axes.set_xlabel("layer")
        axes.set_ylabel(label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
        path = os.path.join(out_dir, filename)
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths


# === Files: models and images ===


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
        data.ImageFiles(files), training=False, image_size=size, batch_size=batch_size,
        crop_fraction=1.0, dtype="float32",
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
        return _image_hw(image_shape, getattr(backbone, "data_format", "channels_last"))
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
        size = _pair(size)
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
    parser.add_argument(
        "--image-size", type=_size, metavar="N|HxW", help="default: each model's input size"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-images", type=int, metavar="N", help="use the first N images")
    parser.add_argument(
        "--backbone", metavar="NAME", help="backbone layer name, if a model holds several"
    )
    parser.set_defaults(func=run_command)
    return parser


def run_command(args):
    """The `cskd analyze` handler; returns the exit code."""
    models, images = list(args.paths), args.images
    if images is None:
        if len(models) < 2:
            print(
                "cskd analyze: error: give at least one MODEL, then IMAGES (or --images).",
                file=sys.stderr,
            )
            return 2
        models, images = models[:-1], models[-1:]
    try:
        result = analyze(
            models,
            images,
            args.out,
            image_size=args.image_size,
            batch_size=args.batch_size,
            max_images=args.max_images,
            backbone=args.backbone,
        )
    except (OSError, ValueError, RuntimeError) as error:
        print(f"cskd analyze: error: {error}", file=sys.stderr)
        return 1
    print(f"{result['num_images']} images")
    for name, stats in result["models"].items():
        print(f"{name} ({stats['backbone']}): layer, mean distance (px), entropy (nats)")
        width = max(len(layer) for layer in stats["layers"])
        rows = zip(stats["layers"], stats["mean_distance"], stats["entropy"])
        for layer, distance, entropy in rows:
            print(f"  {layer:<{width}} {np.mean(distance):8.2f} {np.mean(entropy):8.3f}")
    print(f"wrote {os.path.join(args.out, JSON_NAME)}, " + ", ".join(result["plots"]))
    return 0
