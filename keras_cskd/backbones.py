"""One door from any backbone to "raw images in, pooled feature out".

`get(spec)` accepts a `keras.applications` name, a KerasHub preset (hub name or
local directory) or `keras_hub.models.Backbone`, a KerasCV backbone, or any
`keras.Model`, and returns a functional `keras.Model` that takes images
(batch, H, W, 3) with values 0..255, applies the backbone's own normalization
(and resize, where the backbone needs a fixed size), runs the backbone and
pools its output to (batch, features).
"""

import collections
import difflib
import os
import random

import keras
import keras_hub
from keras import layers

from keras_cskd.layers import PixelNormalization
from keras_cskd.layers import ShiftAddDepthwiseConv2D

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# `keras.applications` families by the normalization their weights expect.
_APPLICATION_MODES = {
    "tf": ("mobilenet", "mobilenet_v2", "inception_v3", "xception", "inception_resnet_v2", "nasnet", "resnet_v2"),
    "caffe": ("resnet", "vgg16", "vgg19"),
    "torch": ("densenet",),
    # These include their own normalization layer.
    "none": ("efficientnet", "efficientnet_v2", "convnext", "mobilenet_v3", "regnet"),
}


def normalization(mode):
    """A `PixelNormalization` for a named mode: "tf", "torch", "caffe", "none".

    "tf" maps 0..255 to [-1, 1]; "torch" applies ImageNet mean/std; "caffe"
    flips to BGR and subtracts the ImageNet mean; "none" only casts.
    """
    if mode == "tf":
        return PixelNormalization(scale=1 / 127.5, offset=-1.0, name="normalization")
    if mode == "torch":
        return PixelNormalization(
            scale=[1 / (255.0 * s) for s in IMAGENET_STD],
            offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
            name="normalization",
        )
    if mode == "caffe":
        return PixelNormalization(
            scale=1.0, offset=[-m for m in CAFFE_MEAN_BGR], reverse_channels=True, name="normalization"
        )
    if mode == "none":
        return PixelNormalization(name="normalization")
    raise ValueError(f"Unknown normalization mode {mode!r}; use 'tf', 'torch', 'caffe' or 'none'.")


def _application_mode(constructor):
    family = constructor.__module__.rsplit(".", 1)[-1]
    for mode, families in _APPLICATION_MODES.items():
        if family in families:
            return mode
    return "tf"


def _application_names():
    return sorted(n for n in dir(keras.applications) if n[:1].isupper())


def _hub_preset_names():
    return sorted(keras_hub.models.Backbone.presets)


def _is_local_preset(spec):
    return os.path.isdir(spec) and os.path.exists(os.path.join(spec, "config.json"))


def _from_preset(preset, load_weights):
    """A KerasHub backbone and its normalization from a preset."""
    backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights)
    preprocessing = normalization("torch")  # As for a backbone object.
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception:  # The preset ships no image converter.
        converter = None
    if converter is not None and (converter.scale is not None or converter.offset is not None):
        preprocessing = PixelNormalization(
            scale=converter.scale if converter.scale is not None else 1.0,
            offset=converter.offset if converter.offset is not None else 0.0,
            name="normalization",
        )
    return backbone, preprocessing


def _resolve_name(spec, image_size, load_weights):
    """(model, preprocessing) for a string spec, or a clear error."""
    if spec in _application_names():
        constructor = getattr(keras.applications, spec)
        size = image_size or 224
        model = constructor(
            include_top=False,
            weights="imagenet" if load_weights else None,
            input_shape=(size, size, 3),
        )
        return model, normalization(_application_mode(constructor))
    if _is_local_preset(spec):
        return _from_preset(spec, True if load_weights is None else load_weights)
    if spec in _hub_preset_names():
        return _from_preset(spec, bool(load_weights))
    try:
        import keras_cv

        if spec in keras_cv.models.Backbone.presets:
            model = keras_cv.models.Backbone.from_preset(spec, load_weights=bool(load_weights))
            return model, None
    except ImportError:
        pass
    if os.path.exists(spec):
        raise ValueError(
            f"Backbone path {spec!r} is not a KerasHub preset directory "
            "(no config.json); make one with `backbone.save_to_preset(dir)`."
        )
    choices = _application_names() + _hub_preset_names()
    close = difflib.get_close_matches(spec, choices, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"Unknown backbone {spec!r}: not a keras.applications name (e.g. "
        "'MobileNetV2'), a KerasHub or KerasCV preset name, or a local preset "
        f"directory.{hint}"
    )


def _fixed_image_size(model):
    """The (H, W) a model's image input requires, or None if any size works."""
    shape = model.input_shape
    if isinstance(shape, dict):
        shape = next(iter(shape.values()))
    if isinstance(shape, list):
        shape = shape[0]
    if shape is None or len(shape) != 4:
        return None
    height, width = shape[1], shape[2]
    if height is None or width is None:
        return None
    return int(height), int(width)


def _pool(features):
    if isinstance(features, dict):
        for key in ("sequence_output", "pooled_output"):
            if key in features:
                features = features[key]
                break
        else:
            features = features[sorted(features)[-1]]
    if len(features.shape) == 4:
        return layers.GlobalAveragePooling2D(name="pool")(features)
    if len(features.shape) == 3:
        return layers.GlobalAveragePooling1D(name="pool")(features)
    if len(features.shape) == 2:
        return features
    raise ValueError(f"Cannot pool a backbone output of shape {features.shape}.")


def set_batch_norm_momentum(model, momentum):
    """Set `momentum` on every `BatchNormalization` layer inside `model`; returns how many.

    `keras.applications.MobileNetV2` uses 0.999: after a short run (a few
    hundred steps) its moving statistics are still mostly the initial ones
    (mean 0, variance 1), and at inference the randomly initialised network's
    activations, no longer normalised, saturate until it predicts one score for
    every image. A momentum of 0.9 follows the statistics within tens of steps.

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.999)])
    >>> set_batch_norm_momentum(model, 0.9), model.layers[0].momentum
    (1, 0.9)
    """
    count = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum
            count += 1
    return count


def use_shift_add_depthwise(model):
    """`model` with each `keras.layers.DepthwiseConv2D` a `ShiftAddDepthwiseConv2D`, same weights.

    On jax's CPU, XLA's depthwise convolution is what makes MobileNets slow there;
    the swapped layer computes the same outputs as shifted multiply-adds there
    and is Keras's layer elsewhere. A functional or Sequential model without
    depthwise layers comes back as it is.

    Example:
    >>> model = use_shift_add_depthwise(keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None))
    >>> sum(isinstance(layer, ShiftAddDepthwiseConv2D) for layer in model.layers)
    17
    """

    def is_plain_depthwise(layer):  # a subclass is someone's own layer: left alone
        return type(layer) is layers.DepthwiseConv2D

    if not any(map(is_plain_depthwise, model.layers)):
        return model

    def clone(layer):
        kind = ShiftAddDepthwiseConv2D if is_plain_depthwise(layer) else layer.__class__
        return kind.from_config(layer.get_config())

    swapped = keras.models.clone_model(model, clone_function=clone)
    swapped.set_weights(model.get_weights())
    return swapped


def _transformer_block_classes():
    from keras_hub.src.models.clip.clip_layers import CLIPEncoderLayer
    from keras_hub.src.models.swin_transformer.swin_transformer_layers import SwinTransformerBlock
    from keras_hub.src.models.vit.vit_layers import ViTEncoderBlock

    return (ViTEncoderBlock, SwinTransformerBlock, CLIPEncoderLayer, keras_hub.layers.TransformerEncoder)


def _draws_random_numbers(layer):
    """A layer with a seed generator and a nonzero rate (one without a known rate counts as random)."""
    if not any(isinstance(value, keras.random.SeedGenerator) for value in vars(layer).values()):
        return False
    return getattr(layer, "rate", getattr(layer, "drop_prob", 1.0)) > 0


def rematerialize(model):
    """A copy of `model` whose transformer blocks recompute their activations in the backward pass.

    Gradient checkpointing: a training step keeps only each block's input
    instead of every activation inside it, and runs each block's forward once
    more in the backward pass. The outputs and gradients are the same (to float
    rounding); the blocks are KerasHub's ViT, Swin and CLIP encoder blocks and
    `keras_hub.layers.TransformerEncoder`, found at any depth. A model without
    them comes back as it is. Rematerializing is a training-time setting: a
    saved and loaded copy keeps its activations again.

    Raises `ValueError`, naming the layer, when a block draws random numbers
    (dropout or drop path above 0): Keras draws them anew when it recomputes
    the block, so the gradient would belong to another mask (on tensorflow) or
    the step fails (jax, torch). Build the backbone with those rates at 0.

    Example:
    >>> import keras_hub, numpy as np
    >>> vit = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...     num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    >>> model = rematerialize(get(vit, image_size=32))
    >>> tuple(model(np.zeros((1, 32, 32, 3))).shape)
    (1, 16)
    """
    block_classes = _transformer_block_classes()
    blocks = [layer for layer in model._flatten_layers(recursive=True) if isinstance(layer, block_classes)]
    if not blocks:
        return model
    for block in blocks:
        for layer in block._flatten_layers(include_self=False, recursive=True):
            if _draws_random_numbers(layer):
                raise ValueError(
                    f"Cannot rematerialize {model.name}: {layer.path or block.name + '/' + layer.name} draws random numbers in training "
                    f"({type(layer).__name__}), which Keras would draw anew when it recomputes {block.name}; "
                    "build the backbone with its dropout and drop-path rates at 0."
                )
    state = random.getstate()  # Keras seeds new layers from Python's: the copy leaves later draws as they were
    with keras.RematScope(mode="list_of_layers", layer_names=sorted({block.name for block in blocks})):
        copy = keras.models.clone_model(model)
    random.setstate(state)
    copy.set_weights(model.get_weights())
    return copy


_FOLDABLE_CONVOLUTIONS = (layers.Conv2D, layers.DepthwiseConv2D, ShiftAddDepthwiseConv2D)


def _foldable_pairs(model):
    """{id(convolution): batch norm} for each convolution whose output only a batch norm reads.

    Looks at the nodes of `model`'s own graph (a Sequential's through the
    functional model it builds) and, recursively, of the models inside it.
    """
    graph = model._functional if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_nodes_by_depth"):
        return {}  # An unbuilt Sequential or a subclassed model: no graph to read.
    nodes = [node for depth in graph._nodes_by_depth.values() for node in depth]
    calls = collections.Counter(id(node.operation) for node in nodes)
    readers = collections.Counter(id(t) for node in nodes for t in node.input_tensors)
    readers.update(id(t) for t in graph.outputs)
    pairs = {}
    for node in nodes:
        batch_norm = node.operation
        if isinstance(batch_norm, keras.Model):
            pairs.update(_foldable_pairs(batch_norm))
        if type(batch_norm) is not layers.BatchNormalization or calls[id(batch_norm)] != 1:
            continue
        (tensor,) = node.input_tensors
        convolution = tensor._keras_history.operation
        if (
            type(convolution) in _FOLDABLE_CONVOLUTIONS
            and convolution.activation is keras.activations.linear
            and calls[id(convolution)] == 1
            and readers[id(tensor)] == 1
            and batch_norm.axis in {"channels_last": (-1, 3), "channels_first": (1,)}[convolution.data_format]
        ):
            pairs[id(convolution)] = batch_norm
    return pairs


def _folded_weights(convolution, batch_norm):
    """(kernel, bias) of `convolution` followed by `batch_norm` at inference, as one convolution."""
    kernel = keras.ops.convert_to_numpy(convolution.kernel).astype("float64")
    bias = keras.ops.convert_to_numpy(convolution.bias).astype("float64") if convolution.use_bias else 0.0
    mean, variance = (keras.ops.convert_to_numpy(w).astype("float64") for w in batch_norm.non_trainable_weights)
    gamma = keras.ops.convert_to_numpy(batch_norm.gamma).astype("float64") if batch_norm.scale else 1.0
    beta = keras.ops.convert_to_numpy(batch_norm.beta).astype("float64") if batch_norm.center else 0.0
    scale = gamma / (variance + batch_norm.epsilon) ** 0.5
    # Output channel c of a depthwise kernel (h, w, channels, multiplier) is [:, :, c // m, c % m].
    kernel = kernel * scale.reshape(kernel.shape[2:] if isinstance(convolution, layers.DepthwiseConv2D) else -1)
    dtype = convolution.kernel.dtype
    return [kernel.astype(dtype), ((bias - mean) * scale + beta).astype(dtype)]


def fold_batch_norms(model):
    """`model` for inference, each batch norm after a convolution folded into it.

    A `BatchNormalization` that alone reads a `Conv2D` or `DepthwiseConv2D`
    output (no activation between) computes, at inference, a per-channel
    scale and shift: the copy puts them into the convolution's kernel and
    bias and drops the layer. The outputs equal `model(x, training=False)` to
    float rounding, with a third fewer layers in a MobileNetV2: 1.3x faster
    `predict` on tensorflow and 1.5x on torch at 32 px (docs/performance.md).
    The copy has no batch statistics left to train. Functional and Sequential
    models, nested ones included (in a Sequential one an `Identity` layer
    stands where the batch norm was); a model without such pairs comes back
    as it is.

    Example:
    >>> model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None)
    >>> len(model.layers), len(fold_batch_norms(model).layers)
    (156, 104)
    """
    pairs = _foldable_pairs(model)
    if not pairs:
        return model
    folded = {id(batch_norm) for batch_norm in pairs.values()}
    clones = []  # (original, clone) of every layer the copy makes
    identities = set()  # ids of the layers that stand in for the folded batch norms

    def clone(layer):
        if id(layer) in folded:
            identity = layers.Identity(name=layer.name)
            identities.add(id(identity))
            return identity
        config = layer.get_config()
        if id(layer) in pairs:
            config["use_bias"] = True
        copy = layer.__class__.from_config(config)
        clones.append((layer, copy))
        return copy

    def call(layer, *args, **kwargs):  # In a functional graph the stand-in is not even called.
        return args[0] if id(layer) in identities else layer(*args, **kwargs)

    # Keras's clone takes no call_function for a Sequential model: its stand-ins stay in.
    calls = {} if isinstance(model, keras.Sequential) else {"call_function": call}
    copy = keras.models.clone_model(model, clone_function=clone, recursive=True, **calls)
    for original, new in clones:
        weights = _folded_weights(original, pairs[id(original)]) if id(original) in pairs else original.get_weights()
        new.set_weights(weights)
    return copy


def get(spec, image_size=None, load_weights=None, preprocessing=None, name=None, batch_norm_momentum=None):
    """Resolve any backbone into a model: raw images 0..255 -> pooled feature.

    Args:
        spec: a `keras.applications` name ("MobileNetV2"), a KerasHub preset
            name or local preset directory, a KerasCV preset name, a
            `keras_hub.models.Backbone`, a KerasCV backbone, or a `keras.Model`.
        image_size: int. The input size; a backbone that needs another fixed
            size gets a resize inside. Defaults to the backbone's own size.
        load_weights: bool. Load pretrained weights. By default a local
            preset directory loads its weights and everything else (names
            that would need the hub) starts from random init, which works
            offline.
        preprocessing: "tf", "torch", "caffe", "none" or a layer, overriding
            the backbone's normalization. Backbone objects without a preset
            default to ImageNet mean/std ("torch").
        name: str. The model's name.
        batch_norm_momentum: float or None. Set on every BatchNormalization
            layer of the backbone (`set_batch_norm_momentum`); None keeps the
            backbone's own (0.999 for `keras.applications.MobileNetV2`, which
            leaves short runs with stale statistics).

    Returns:
        A functional `keras.Model` (batch, H, W, 3) -> (batch, features).

    Example:
    >>> import numpy as np
    >>> model = get("MobileNetV2", image_size=32)
    >>> tuple(model(np.zeros((1, 32, 32, 3))).shape)
    (1, 1280)
    """
    default_preprocessing = None
    if isinstance(spec, str):
        model, default_preprocessing = _resolve_name(spec, image_size, load_weights)
        model = use_shift_add_depthwise(model)
    elif isinstance(spec, keras.Model):
        model = spec
        if _is_hub_or_cv_backbone(model):
            default_preprocessing = normalization("torch")
    else:
        raise ValueError(f"A backbone must be a name, a preset directory or a keras.Model; got {type(spec).__name__}.")
    if batch_norm_momentum is not None:
        set_batch_norm_momentum(model, batch_norm_momentum)
    if isinstance(preprocessing, str):
        preprocessing = normalization(preprocessing)
    preprocessing = preprocessing or default_preprocessing or normalization("none")

    required_size = _fixed_image_size(model)
    if image_size is None:
        size = required_size
    else:
        size = (image_size, image_size)
    inputs = keras.Input(shape=(*(size or (None, None)), 3), name="images")
    x = preprocessing(inputs)
    if required_size is not None and size != required_size:
        x = layers.Resizing(*required_size, name="resize")(x)
    features = _pool(model(x))
    return keras.Model(inputs, features, name=name or f"{model.name}_features")


def _is_hub_or_cv_backbone(model):
    if isinstance(model, keras_hub.models.Backbone):
        return True
    try:
        import keras_cv

        return isinstance(model, keras_cv.models.Backbone)
    except ImportError:
        return False


def ensure(spec, image_size=None):
    """`spec` itself if it already maps images to pooled features, else `get(spec)`.

    A feature model is a `keras.Model` (not a bare KerasHub/KerasCV backbone)
    with one (batch, H, W, 3) input and a (batch, features) output, such as
    what `get` returns or an `AlignedLearner`.
    """
    if (
        isinstance(spec, keras.Model)
        and not _is_hub_or_cv_backbone(spec)
        and not isinstance(spec.input_shape, (dict, list))
        and len(spec.input_shape) == 4
        and not isinstance(spec.output_shape, (dict, list))
        and len(spec.output_shape) == 2
    ):
        return spec
    return get(spec, image_size=image_size)


def feature_dim(model):
    """Size of the pooled feature a `get(...)` model returns."""
    return int(model.output_shape[-1])
