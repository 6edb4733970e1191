"""Where each supported KerasHub model family keeps its attention layers.

A site is one attention layer with the geometry of its tokens. Each family
has a function backbone -> list of `Site`; `find_attention_backbone` finds
the supported backbone inside any model.
"""

import math

import keras_hub

from keras_cskd.analysis.statistics import pairwise_distances


class Site:
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


def pair(value):
    """(value, value) for a single value; a pair as a tuple."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def image_hw(image_shape, data_format):
    """(height, width) of a backbone's `image_shape`."""
    if data_format == "channels_first":
        return int(image_shape[1]), int(image_shape[2])
    return int(image_shape[0]), int(image_shape[1])


def _global_sites(blocks, attention_of, image_size, patch_size, num_prefix_tokens):
    patch = pair(patch_size)
    grid = (image_size[0] // patch[0], image_size[1] // patch[1])
    return [Site(block.name, attention_of(block), "global", grid, patch, num_prefix_tokens) for block in blocks]


def _vit_sites(backbone):
    return _global_sites(
        backbone.get_layer("vit_encoder").encoder_layers,
        lambda block: block.mha,
        image_hw(backbone.image_shape, backbone.data_format),
        backbone.patch_size,
        int(bool(backbone.use_class_token)),
    )


def _deit_sites(backbone):
    return _global_sites(
        backbone.get_layer("deit_encoder").encoder_layers,
        lambda block: block.mha,
        image_hw(backbone.image_shape, backbone.data_format),
        backbone.patch_size,
        2,  # class and distillation tokens
    )


def _clip_sites(backbone):
    return _global_sites(
        backbone.encoder_layers,
        lambda block: block.attention,
        image_hw(backbone.image_shape, backbone.embedding.data_format),
        backbone.patch_size,
        1,
    )


def _dinov2_sites(backbone):
    return _global_sites(
        backbone.encoder.layers,
        lambda block: block.attention.attention,
        image_hw(backbone.image_shape, backbone.embeddings.data_format),
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
            sites.append(Site(name, block.attn, "window", window, (token, token), 0, windows))
    return sites


_FAMILIES = (  # keras_hub.models class name -> its attention layers
    ("ViTBackbone", _vit_sites),
    ("DeiTBackbone", _deit_sites),
    ("CLIPVisionEncoder", _clip_sites),
    ("DINOV2Backbone", _dinov2_sites),
    ("SwinTransformerBackbone", _swin_sites),
)
SUPPORTED_BACKBONES = tuple(name for name, _ in _FAMILIES)


def family(layer):
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
    >>> import keras
    >>> import keras_hub
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
        if family(layer) is not None:
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
