"""Phase 1, CFA: align learners (backbone + MLP projector) to frozen CLIP."""

import keras
from keras import ops

from keras_cskd import backbones
from keras_cskd.keys import CLIP_IMAGES
from keras_cskd.keys import IMAGES
from keras_cskd.layers import ProjectionHead
from keras_cskd.losses import CosineAlignmentLoss
from keras_cskd.losses import unscaled_for_logging
from keras_cskd.models.base import FunctionalModel
from keras_cskd.models.base import SubclassedModel


@keras.saving.register_keras_serializable(package="keras_cskd")
class AlignedLearner(FunctionalModel):
    """A learner of phase 1: backbone feature -> `ProjectionHead` -> CLIP space.

    `learner.backbone` (raw images -> pooled feature) is what phase 2 builds
    its `AestheticScorer` on; the projector can come along too.

    Args:
        backbone: anything `keras_cskd.backbones.get` accepts.
        output_dim: int. The CLIP embedding size.
        hidden_dim: int. The projector's hidden width.
        image_size: int. Input size, passed to `backbones.get`.
        dtype: the dtype policy (e.g. "mixed_bfloat16") of the model and of
            the layers it makes; saved with the model.

    Example:
    >>> import numpy as np
    >>> learner = AlignedLearner("MobileNetV2", output_dim=8, hidden_dim=16, image_size=32)
    >>> tuple(learner(np.zeros((2, 32, 32, 3))).shape)
    (2, 8)
    """

    config_fields = ("backbone", "output_dim", "hidden_dim", "image_size")
    object_fields = ("backbone",)

    def __init__(self, backbone, output_dim, hidden_dim=512, image_size=None, dtype=None, **kwargs):
        # === Layers ===
        self.backbone = backbone = backbones.ensure(backbone, image_size=image_size)
        self.projector = ProjectionHead(hidden_dim, output_dim, dtype=dtype, name="projector")

        # === Functional Model ===
        images = keras.Input(shape=backbone.input_shape[1:], name="images")
        outputs = self.projector(self.backbone(images))
        super().__init__(inputs=images, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.output_dim = output_dim
        self.hidden_dim = hidden_dim
        self.image_size = image_size


@keras.saving.register_keras_serializable(package="keras_cskd")
class CLIPFeatureAligner(SubclassedModel):
    """Phase 1 of CSKD: align several learners to a frozen CLIP teacher at once.

    Each learner gets a `ProjectionHead` sized to the CLIP embedding and is
    trained with `1 - cos(learner(x), clip(x))`. CLIP runs once per batch, with
    `training=False`, and never changes. `fit` takes unlabeled images (x only);
    or `{"images": x, "clip_images": x_clip}`, where CLIP sees its own view of
    each image (`keras_cskd.data.unlabeled_dataset(..., clip_view_size=...)`)
    and the learners theirs; or `(images, clip_embeddings)` when the
    embeddings were computed before (a cache). The logs hold the total `loss`
    and one `<name>_loss` per learner.

    Args:
        teacher: a `CLIPImageTeacher` (or any frozen model images -> embedding).
        learners: dict name -> backbone spec (anything `backbones.get` takes,
            or an `AlignedLearner`), or a list (names "learner_0", ...).
        projection_hidden_dim: int. Hidden width of each projector.
        image_size: int. Input size of the learners' backbones.

    Example:
    >>> aligner = CLIPFeatureAligner(teacher, {"teacher": "swin", "student": "MobileNetV2"})  # doctest: +SKIP
    >>> aligner.compile(optimizer="adam")  # doctest: +SKIP
    >>> aligner.fit(unlabeled_images, epochs=10)  # doctest: +SKIP
    >>> student = aligner.learners["student"]  # doctest: +SKIP
    """

    config_fields = ("teacher", "learners", "projection_hidden_dim", "image_size")
    object_fields = ("teacher", "learners")

    def __init__(self, teacher, learners, projection_hidden_dim=512, image_size=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(learners, dict):
            learners = {f"learner_{i}": spec for i, spec in enumerate(learners)}
        if not learners:
            raise ValueError("CLIPFeatureAligner needs at least one learner.")
        embedding_dim = int(teacher.output_shape[-1])
        self.teacher = teacher
        self.teacher.trainable = False
        self.learner_names = list(learners)
        self.learner_models = [
            spec
            if isinstance(spec, AlignedLearner)
            else AlignedLearner(
                spec,
                output_dim=embedding_dim,
                hidden_dim=projection_hidden_dim,
                image_size=image_size,
                dtype=self.dtype_policy,
                name=name,
            )
            for name, spec in learners.items()
        ]
        for name, learner in zip(self.learner_names, self.learner_models):
            if learner.output_dim != embedding_dim:
                raise ValueError(
                    f"Learner {name!r} projects to {learner.output_dim} dims but "
                    f"the CLIP teacher's embedding has {embedding_dim}."
                )
        self.alignment_loss = CosineAlignmentLoss()
        self.loss_trackers = [keras.metrics.Mean(name=f"{name}_loss") for name in self.learner_names]
        self.projection_hidden_dim = projection_hidden_dim
        self.image_size = image_size
        self.built = True  # Every part is a built functional model.

    @property
    def learners(self):
        """The aligned learners by name (each an `AlignedLearner`)."""
        return dict(zip(self.learner_names, self.learner_models))

    def call(self, images, training=None):
        if isinstance(images, dict):
            images = images[IMAGES]
        return {
            name: learner(images, training=training) for name, learner in zip(self.learner_names, self.learner_models)
        }

    def compile(self, optimizer="adam", **kwargs):
        """Compile for alignment; the loss is built in (cosine per learner)."""
        if kwargs.pop("loss", None) is not None:
            raise ValueError("CLIPFeatureAligner's loss is fixed (cosine alignment); do not pass `loss`.")
        super().compile(optimizer=optimizer, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is None:
            y = self.teacher(x[CLIP_IMAGES] if isinstance(x, dict) else x, training=False)
        target = ops.stop_gradient(ops.convert_to_tensor(y))  # y may be numpy (train_on_batch)
        total = 0.0
        for name, tracker in zip(self.learner_names, self.loss_trackers):
            loss = self.alignment_loss(target, y_pred[name], sample_weight=sample_weight)
            tracker.update_state(unscaled_for_logging(loss))
            total = total + loss
        for loss in self.losses:
            total = total + loss
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return self.get_metrics_result()

    @property
    def metrics(self):
        return super().metrics + self.loss_trackers
