"""The recipe's models from a config: small offline demo models or named backbones."""

import os

import keras
import numpy as np

from keras_cskd import backbones
from keras_cskd.clip import CLIPImageTeacher
from keras_cskd.layers import ShiftAddDepthwiseConv2D
from keras_cskd.recipe.config import ConfigError
from keras_cskd.recipe.phase import save_atomically


def small_clip(image_size, seed=0, num_layers=2, patch_size=None):
    """A small random KerasHub CLIP for offline demos (ViT, 64 wide; a token text tower, unused here).

    `patch_size` is `image_size // 8` by default (an 8 x 8 grid of patches).
    """
    import keras_hub

    keras.utils.set_random_seed(seed)
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=patch_size or max(image_size // 8, 1),
        hidden_dim=64,
        num_layers=num_layers,
        num_heads=4,
        intermediate_dim=128,
        image_shape=(image_size, image_size, 3),
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
    return keras_hub.models.CLIPBackbone(vision, text, projection_dim=64)


def caption_loss(words, logits):
    """The negative log-likelihood of a caption naming one word per attribute: a softmax per word group.

    `words` are `synthetic.caption_words` (one hot word per group of
    `synthetic.CAPTION_VOCABULARY`), `logits` one per word.

    Example:
    >>> from keras_cskd.data import synthetic
    >>> words = synthetic.caption_words(synthetic.sample_attributes(2, np.random.default_rng(0)))
    >>> [round(float(v), 3) for v in caption_loss(words, np.zeros_like(words))]  # 7 uniform groups
    [15.603, 15.603]
    """
    from keras_cskd.data import synthetic

    total, start = 0.0, 0
    for *_, count in synthetic.CAPTION_VOCABULARY:
        group = slice(start, start + count)
        total = total + keras.losses.categorical_crossentropy(words[:, group], logits[:, group], from_logits=True)
        start += count
    return total


def stand_in_clip(
    image_size, seed=0, num_images=2000, epochs=8, path=None, patch_size=None, grain=0.0, readout="sigmoid"
):
    """A small KerasHub CLIP trained offline to name what the synthetic world shows.

    No pretrained CLIP is reachable offline, and a random one carries nothing.
    This stand-in's vision tower (+ projection, L2-normalized) learns the
    caption words (`synthetic.caption_words`) of
    `num_images` scenes rendered apart from any world's files: what captions
    naming the visible attributes would teach a CLIP. It never sees scores,
    votes or qualities. With `path`, the trained teacher is saved there and
    loaded from there next time. `patch_size` is its ViT's (`small_clip`);
    `grain` renders its scenes as `make_world(..., grain=...)` renders the
    world's. `readout="sigmoid"` scores each word on its own (binary
    cross-entropy); `"softmax"` scores each caption's one word per attribute
    against the attribute's other words (`caption_loss`), the likelihood of
    such a caption.

    Returns:
        A frozen `CLIPImageTeacher` for `image_size` images.
    """
    from keras_cskd.data import synthetic

    if readout not in ("sigmoid", "softmax"):
        raise ValueError(f"readout must be 'sigmoid' or 'softmax', got {readout!r}")
    if path and os.path.exists(path):
        return keras.saving.load_model(path)
    rng = np.random.default_rng(seed + 12345)
    attributes = synthetic.sample_attributes(num_images, rng)
    images = synthetic.render(attributes, image_size, rng, grain).astype("float32")
    words = synthetic.caption_words(attributes)
    backbone = small_clip(image_size, seed + 12345, num_layers=3, patch_size=patch_size)
    teacher = CLIPImageTeacher.from_backbone(backbone, image_size=image_size)
    teacher.trainable = True
    inputs = keras.Input((image_size, image_size, 3))
    # Unit-norm embeddings times a temperature, then one logit per word (CLIP's scaled cosine).
    logits = keras.layers.Dense(words.shape[1])(keras.layers.Rescaling(10.0)(teacher(inputs)))
    reader = keras.Model(inputs, logits)
    losses = {"sigmoid": keras.losses.BinaryCrossentropy(from_logits=True), "softmax": caption_loss}
    reader.compile(optimizer=keras.optimizers.Adam(2e-3), loss=losses[readout])
    reader.fit(images, words, epochs=epochs, batch_size=64, verbose=0)
    teacher.trainable = False
    if path:
        save_atomically(teacher, path)
    return teacher


def small_mobilenet(image_size, batch_norm_momentum=0.9):
    """A small MobileNetV2-style CNN: stem, inverted residual blocks (ReLU6, depthwise 3x3), 1x1 head, pooled.

    Its depthwise layers are `ShiftAddDepthwiseConv2D`, fast on jax's CPU too.

    Example:
    >>> small_mobilenet(32).output_shape
    (None, 128)
    """

    def normalize(x):
        return keras.layers.BatchNormalization(momentum=batch_norm_momentum or 0.99)(x)

    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU(6.0)(normalize(x))
    for filters, stride in [(16, 1), (24, 2), (24, 1), (32, 2), (32, 1)]:
        y = keras.layers.Conv2D(x.shape[-1] * 4, 1, use_bias=False)(x)
        y = keras.layers.ReLU(6.0)(normalize(y))
        y = ShiftAddDepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
        y = keras.layers.ReLU(6.0)(normalize(y))
        y = normalize(keras.layers.Conv2D(filters, 1, use_bias=False)(y))
        x = keras.layers.Add()([x, y]) if stride == 1 and x.shape[-1] == filters else y
    x = keras.layers.ReLU(6.0)(normalize(keras.layers.Conv2D(128, 1, use_bias=False)(x)))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="small_mobilenet")


def build_backbone(spec, image_size, pretrained=False, batch_norm_momentum=0.9):
    """A built-in small architecture ('small_vit', 'small_cnn', 'small_mobilenet') or `backbones.get(spec)`.

    `batch_norm_momentum` is set on every BatchNormalization layer (0 keeps a
    named backbone's own, e.g. 0.999 in `keras.applications.MobileNetV2`).

    Example:
    >>> build_backbone("small_cnn", 32).output_shape
    (None, 64)
    """
    if spec == "small_vit":
        import keras_hub

        vit = keras_hub.models.ViTBackbone(
            image_shape=(image_size, image_size, 3),
            patch_size=max(image_size // 8, 1),
            num_layers=2,
            num_heads=4,
            hidden_dim=64,
            mlp_dim=128,
        )
        return backbones.get(vit, image_size=image_size, name="small_vit")
    if spec == "small_mobilenet":
        return small_mobilenet(image_size, batch_norm_momentum)
    if spec == "small_cnn":
        inputs = keras.Input((image_size, image_size, 3), name="images")
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
        for width in (16, 32, 64):
            x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=batch_norm_momentum or 0.99)(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, x, name="small_cnn")
    try:
        return backbones.get(
            spec,
            image_size=image_size,
            load_weights=True if pretrained else None,
            batch_norm_momentum=batch_norm_momentum or None,
        )
    except ValueError as error:
        raise ConfigError(f"{error} (or use 'small_vit', 'small_cnn' or 'small_mobilenet')") from None


def clip_teacher(config, out_dir):
    """The frozen CLIP of the align phase.

    `[model] clip_preset` if set; on the synthetic world the stand-in CLIP
    (`stand_in_clip`, trained once into `out_dir/world/stand_in_clip.keras`);
    otherwise `small_clip`, random (it carries nothing: give a preset).
    """
    size = config.data.image_size
    if config.model.clip_preset:
        try:
            return CLIPImageTeacher.from_preset(config.model.clip_preset)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if not config.data.ava_root:
        path = os.path.join(out_dir, "world", "stand_in_clip.keras")
        return stand_in_clip(
            size, config.train.seed, config.model.stand_in_clip_images, config.model.stand_in_clip_epochs, path=path
        )
    return CLIPImageTeacher.from_backbone(small_clip(size, config.train.seed), image_size=size)
