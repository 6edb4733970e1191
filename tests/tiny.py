"""Tiny, randomly initialised models and data shared by the tests."""

import keras
import keras_hub
import numpy as np

IMAGE_SIZE = 32


def clip_backbone(projection_dim=8):
    """A random CLIP small enough for a test (one layer, 16 wide)."""
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=64,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=8,
    )
    return keras_hub.models.CLIPBackbone(vision, text, projection_dim=projection_dim)


def conv_backbone(width=8, batch_norm=False):
    """A small CNN as "any keras.Model": raw 0..255 images -> pooled feature.

    `batch_norm=True`: the second convolution is followed by a batch norm.
    """
    return keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(width, 3, strides=2, activation="relu"),
            *(
                [keras.layers.Conv2D(width, 3, strides=2), keras.layers.BatchNormalization(), keras.layers.ReLU()]
                if batch_norm
                else [keras.layers.Conv2D(width, 3, strides=2, activation="relu")]
            ),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )


def random_batch_statistics(model, seed=0):
    """Give every batch norm of `model` non-trivial gamma, beta, mean and variance."""
    rng = np.random.default_rng(seed)
    draws = {
        "gamma": lambda shape: rng.uniform(0.5, 1.5, shape),
        "beta": lambda shape: rng.normal(0, 0.2, shape),
        "moving_mean": lambda shape: rng.normal(0, 0.2, shape),
        "moving_variance": lambda shape: rng.uniform(0.5, 2, shape),
    }
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            for name, draw in draws.items():
                if (variable := getattr(layer, name, None)) is not None:
                    variable.assign(draw(variable.shape).astype("float32"))
    return model


def vit_backbone():
    return keras_hub.models.ViTBackbone(
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )


def swin_backbone(drop_path=0.1):
    return keras_hub.models.SwinTransformerBackbone(
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=4,
        patch_size=4,
        drop_path=drop_path,
    )


def images(n=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")


def learnable_scores(x, num_bins=10):
    """Distributions peaked at a bin that follows image brightness: learnable."""
    brightness = x.mean(axis=(1, 2, 3)) / 255.0
    centers = 1 + brightness * (num_bins - 1)
    bins = np.arange(1, num_bins + 1)
    logits = -np.square(bins[None, :] - centers[:, None])
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype("float32")


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


def recomputed_layers(model):
    """Names of the layers inside `model` that `keras.RematScope` rematerializes."""
    modes = {layer.name: layer._remat_mode for layer in model._flatten_layers()}
    return sorted(name for name, mode in modes.items() if mode and name in mode.layer_names)
