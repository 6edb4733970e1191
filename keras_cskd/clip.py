"""The frozen CLIP image encoder that phase 1 aligns learners to."""

import keras
import keras_hub
from keras import layers

from keras_cskd.layers import PixelNormalization
from keras_cskd.models.base import FunctionalModel

# OpenAI CLIP's pixel mean and std (the values of KerasHub's CLIP converters).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SCALE = [1.0 / (255.0 * s) for s in CLIP_STD]
CLIP_OFFSET = [-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)]


@keras.saving.register_keras_serializable(package="keras_cskd")
class TokenPooler(layers.Layer):
    """(batch, tokens, dim) -> the token at `index`, as CLIP pools its class token."""

    def __init__(self, index=0, **kwargs):
        super().__init__(**kwargs)
        self.index = index

    def call(self, sequence):
        return sequence[:, self.index, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"index": self.index})
        return config


def fill_position_ids(vision_encoder):
    """Set the CLIP vision embedding's `position_ids` to 0..N-1, as CLIP defines them.

    KerasHub's `CLIPVisionEmbedding.build` (keras_hub/src/models/clip/clip_layers.py)
    creates this non-trainable weight with a `zeros` initializer and relies on
    a preset's weights to fill it. A CLIP built in code, or a preset saved from
    one, therefore adds the *same* position embedding to every patch and cannot
    tell where anything is in the image. `CLIPImageTeacher` calls this for
    every encoder it is given; call it yourself before training a CLIP of your
    own. A no-op for a loaded preset, which already holds 0..N-1.

    Example:
    >>> import keras_hub
    >>> encoder = keras_hub.models.CLIPVisionEncoder(
    ...     patch_size=8, hidden_dim=8, num_layers=1, num_heads=2, intermediate_dim=8, image_shape=(16, 16, 3))
    >>> fill_position_ids(encoder)
    >>> keras.ops.convert_to_numpy(encoder.embedding.position_ids).tolist()
    [[0, 1, 2, 3, 4]]
    """
    embedding = vision_encoder.embedding
    positions = keras.ops.arange(embedding.num_positions, dtype=embedding.position_ids.dtype)
    embedding.position_ids.assign(keras.ops.expand_dims(positions, 0))


@keras.saving.register_keras_serializable(package="keras_cskd")
class CLIPImageTeacher(FunctionalModel):
    """Frozen CLIP image embedding of raw images 0..255.

    CLIP's mean/std run inside, then the vision encoder, the class-token
    pooler and the image projection, exactly as
    `keras_hub.models.CLIPBackbone.get_vision_embeddings`. The model is not
    trainable and runs its encoder with `training=False`; its encoder's
    `position_ids` are set to 0..N-1 (`fill_position_ids`).

    Which pixels CLIP sees matters: CLIP was trained on the shorter side
    resized to `view_size` (bicubic, antialiased), then a center crop. The
    data layer makes that view from the decoded file
    (`keras_cskd.data.clip_view`, and the `clip_images` of
    `unlabeled_dataset(..., clip_view_size=teacher.view_size)`): give the
    teacher images of `view_size` and it uses them as they are. Images of
    another size are resized inside (center crop to square, then `interpolation`,
    antialiased), which is close to CLIP's view but not the same pixels.

    Args:
        vision_encoder: a `keras_hub.models.CLIPVisionEncoder`.
        projection_dim: int. The CLIP embedding size.
        normalize: bool. L2-normalize the embedding.
        image_size: int or None. The size of the images it is given; None
            accepts any size.
        scale, offset: the pixel normalization (CLIP's mean/std by default).
        interpolation: str. The resize of images not of the encoder's size
            ("bicubic", as CLIP's preprocessing).
        dtype: the dtype policy (e.g. "mixed_bfloat16") of the model and of
            the layers it makes; saved with the model.

    Example:
    >>> teacher = CLIPImageTeacher.from_preset("clip_vit_base_patch16")  # doctest: +SKIP
    >>> teacher.predict(images).shape  # doctest: +SKIP
    (batch, 512)
    """

    config_fields = ("vision_encoder", "projection_dim", "normalize", "image_size", "scale", "offset", "interpolation")
    object_fields = ("vision_encoder",)

    def __init__(
        self,
        vision_encoder,
        projection_dim,
        normalize=True,
        image_size=None,
        scale=CLIP_SCALE,
        offset=CLIP_OFFSET,
        interpolation="bicubic",
        dtype=None,
        **kwargs,
    ):
        kwargs.pop("trainable", None)  # Always frozen.
        fill_position_ids(vision_encoder)
        # === Layers ===
        self.vision_encoder = vision_encoder
        self.normalization = PixelNormalization(scale=scale, offset=offset, dtype=dtype, name="normalization")
        encoder_size = tuple(vision_encoder.image_shape[:2])
        self.pooler = TokenPooler(0, dtype=dtype, name="pooler")
        self.projection = layers.Dense(projection_dim, use_bias=False, dtype=dtype, name="vision_projection")
        self.unit_norm = layers.UnitNormalization(axis=-1, dtype=dtype, name="l2_normalize") if normalize else None

        # === Functional Model ===
        size = (image_size, image_size) if image_size else (None, None)
        images = keras.Input(shape=(*size, 3), name="images")
        x = images
        # Only where used: an unbuilt layer makes Keras's jax trainer rebuild eagerly on every call.
        self.resize = None
        if size != encoder_size:
            self.resize = layers.Resizing(
                *encoder_size,
                interpolation=interpolation,
                crop_to_aspect_ratio=True,
                antialias=True,
                dtype=dtype,
                name="resize",
            )
            x = self.resize(x)
        x = self.normalization(x)
        x = self.vision_encoder({"images": x}, training=False)
        x = self.projection(self.pooler(x))
        if self.unit_norm is not None:
            x = self.unit_norm(x)
        super().__init__(inputs=images, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self.projection_dim = projection_dim
        self.normalize = normalize
        self.image_size = image_size
        self.scale = list(scale) if isinstance(scale, (list, tuple)) else scale
        self.offset = list(offset) if isinstance(offset, (list, tuple)) else offset
        self.interpolation = interpolation
        self.trainable = False

    @property
    def embedding_dim(self):
        return self.projection_dim

    @property
    def view_size(self):
        """The side of the square view CLIP's encoder takes (224 for ViT-B/16)."""
        return int(self.vision_encoder.image_shape[0])

    @classmethod
    def from_backbone(
        cls, clip_backbone, normalize=True, image_size=None, scale=CLIP_SCALE, offset=CLIP_OFFSET, **kwargs
    ):
        """The image side of a `keras_hub.models.CLIPBackbone`, weights shared."""
        if not isinstance(clip_backbone, keras_hub.models.CLIPBackbone):
            raise ValueError(
                f"CLIPImageTeacher needs a keras_hub.models.CLIPBackbone, got a {type(clip_backbone).__name__}."
            )
        teacher = cls(
            clip_backbone.vision_encoder,
            projection_dim=clip_backbone.projection_dim,
            normalize=normalize,
            image_size=image_size,
            scale=scale,
            offset=offset,
            **kwargs,
        )
        teacher.projection.set_weights(clip_backbone.vision_projection.get_weights())
        return teacher

    @classmethod
    def from_preset(cls, preset, normalize=True, image_size=None, load_weights=True, **kwargs):
        """Build from a KerasHub CLIP preset: a hub name or a local directory.

        Local directories come from `CLIPBackbone.save_to_preset(dir)` and
        must be given as explicit paths (`./dir` or absolute). The preset's
        image converter, if it has one, gives the pixel normalization and the
        interpolation; its size is the encoder's (`view_size`).
        """
        try:
            backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights)
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"Cannot load the CLIP preset {preset!r}: {reason}") from error
        if not isinstance(backbone, keras_hub.models.CLIPBackbone):
            raise ValueError(
                f"Preset {preset!r} holds a {type(backbone).__name__}, not a CLIP "
                "model (keras_hub.models.CLIPBackbone)."
            )
        scale, offset = CLIP_SCALE, CLIP_OFFSET
        try:
            converter = keras_hub.layers.ImageConverter.from_preset(preset)
        except Exception:  # The preset ships no image converter.
            converter = None
        if converter is not None and converter.scale is not None:
            scale = converter.scale
            offset = converter.offset if converter.offset is not None else 0.0
        if converter is not None:
            kwargs.setdefault("interpolation", getattr(converter, "interpolation", "bicubic"))
        return cls.from_backbone(
            backbone, normalize=normalize, image_size=image_size, scale=scale, offset=offset, **kwargs
        )
