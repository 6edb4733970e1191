"""The recipe's models from a config: small offline demo models or named backbones."""

import keras

from keras_cskd import backbones
from keras_cskd.clip import CLIPImageTeacher
from keras_cskd.recipe.config import ConfigError


def small_clip(image_size, seed=0):
    """A small random KerasHub CLIP for offline demos (ViT, 2 layers, 64 wide)."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=max(image_size // 8, 1), hidden_dim=64, num_layers=2, num_heads=4,
        intermediate_dim=128, image_shape=(image_size, image_size, 3),
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=1000, embedding_dim=64, hidden_dim=64, num_layers=1, num_heads=4,
        intermediate_dim=128, max_sequence_length=16,
    )
    return keras_hub.models.CLIPBackbone(vision, text, projection_dim=64)


def build_backbone(spec, image_size, pretrained=False):
    """A built-in small architecture ('small_vit', 'small_cnn') or `backbones.get(spec)`.

    Example:
    >>> build_backbone("small_cnn", 32).output_shape
    (None, 64)
    """
    if spec == "small_vit":
        import keras_hub

        vit = keras_hub.models.ViTBackbone(
            image_shape=(image_size, image_size, 3), patch_size=max(image_size // 8, 1),
            num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
        )
        return backbones.get(vit, image_size=image_size, name="small_vit")
    if spec == "small_cnn":
        inputs = keras.Input((image_size, image_size, 3), name="images")
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
        for width in (16, 32, 64):
            x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
            # momentum 0.9: with the default 0.99, the few hundred steps of a small run leave the
            # moving statistics stale and evaluation noisy from seed to seed.
            x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, x, name="small_cnn")
    try:
        return backbones.get(spec, image_size=image_size, load_weights=True if pretrained else None)
    except ValueError as error:
        raise ConfigError(f"{error} (or use 'small_vit' / 'small_cnn')") from None


def clip_teacher(config):
    """The frozen CLIP of the align phase: `[model] clip_preset`, or `small_clip`."""
    size = config.data.image_size
    if config.model.clip_preset:
        try:
            return CLIPImageTeacher.from_preset(config.model.clip_preset, image_size=size)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return CLIPImageTeacher.from_backbone(small_clip(size, config.train.seed), image_size=size)
