"""Phase 2, SKD: distill a frozen teacher into a student on labeled + unlabeled images."""

import keras
from keras import ops

from keras_cskd.keys import LABELED_IMAGES
from keras_cskd.keys import PSEUDO_LABELS
from keras_cskd.keys import UNLABELED_IMAGES
from keras_cskd.losses import EMDDistillation
from keras_cskd.losses import EMDLoss
from keras_cskd.losses import unscaled_for_logging
from keras_cskd.models.base import SubclassedModel
from keras_cskd.models.scorer import default_metrics


@keras.saving.register_keras_serializable(package="keras_cskd")
class SemiSupervisedDistiller(SubclassedModel):
    """Semi-supervised knowledge distillation of CSKD's phase 2.

    loss = EMD(student(x_l), y_l) + unlabeled_weight * EMD(student(x_u), teacher(x_u))

    with the squared EMD on both terms; the teacher's prediction on unlabeled
    images is the pseudo-label. The teacher is frozen and runs with
    `training=False`. `fit` takes `({"labeled_images": x_l,
    "unlabeled_images": x_u}, y_l)`; add `"pseudo_labels"` to the dict to use
    precomputed teacher outputs instead of a teacher forward (the teacher may
    then be None). Both image batches go through the student in one forward
    pass. The logs hold `supervised_loss` and `distillation_loss` beside the
    total `loss`; compiled metrics (SRCC, PLCC, ... by default) are computed on
    the labeled batch. `distiller.student` is the trained student.

    `keras.distillation.Distiller` is not used because it feeds the same
    input to teacher and student and takes one `y`; here the teacher sees only
    the unlabeled batch. Its `DistillationLoss` protocol is used: the
    distillation term is any `keras.distillation.DistillationLoss`
    (`EMDDistillation` by default).

    Args:
        teacher: a fine-tuned `AestheticScorer`, or None with pseudo-labels.
        student: the `AestheticScorer` to train.
        unlabeled_weight: float. Weight of the distillation term.
        distillation_loss: a `keras.distillation.DistillationLoss`.

    Example:
    >>> distiller = SemiSupervisedDistiller(teacher, student)  # doctest: +SKIP
    >>> distiller.compile(optimizer="adam")  # doctest: +SKIP
    >>> distiller.fit(keras_cskd.data.semi_supervised_dataset(...))  # doctest: +SKIP
    >>> distiller.student.score(images)  # doctest: +SKIP
    """

    config_fields = ("teacher", "student", "unlabeled_weight", "distillation_loss")
    object_fields = ("teacher", "student", "distillation_loss")

    def __init__(self, teacher, student, unlabeled_weight=1.0, distillation_loss=None, **kwargs):
        super().__init__(**kwargs)
        if teacher is not None:
            teacher_bins, student_bins = teacher.output_shape[-1], student.output_shape[-1]
            if teacher_bins != student_bins:
                raise ValueError(
                    f"Teacher predicts {teacher_bins} bins but the student {student_bins}; "
                    "pseudo-labels need the same bins."
                )
            teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self.unlabeled_weight = unlabeled_weight
        self.distillation_loss = distillation_loss or EMDDistillation(squared=True)
        if teacher is not None:
            self.distillation_loss.validate_model_compatibility(teacher, student)
        self.supervised_loss = EMDLoss(squared=True)
        self.supervised_tracker = keras.metrics.Mean(name="supervised_loss")
        self.distillation_tracker = keras.metrics.Mean(name="distillation_loss")
        self.built = True  # Teacher and student are built functional models.

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict):
            return self.student(inputs, training=training)
        labeled = inputs[LABELED_IMAGES]
        if UNLABELED_IMAGES not in inputs:
            return {"labeled": self.student(labeled, training=training)}
        # One student pass over both batches: faster, and batch statistics
        # see labeled and unlabeled images together.
        both = self.student(ops.concatenate([labeled, inputs[UNLABELED_IMAGES]], axis=0), training=training)
        num_labeled = ops.shape(labeled)[0]
        return {"labeled": both[:num_labeled], "unlabeled": both[num_labeled:]}

    def compile(self, optimizer="adam", metrics="auto", **kwargs):
        """Compile for distillation; the losses are built in."""
        if kwargs.pop("loss", None) is not None:
            raise ValueError("SemiSupervisedDistiller's losses are fixed (EMD); do not pass `loss`.")
        if metrics == "auto":
            metrics = default_metrics(getattr(self.student, "bin_values", None))
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def _pseudo_labels(self, x):
        if PSEUDO_LABELS in x:
            return ops.stop_gradient(ops.convert_to_tensor(x[PSEUDO_LABELS]))  # may be numpy
        if self.teacher is None:
            raise ValueError(f"SemiSupervisedDistiller has no teacher: give {PSEUDO_LABELS!r} in the inputs.")
        return ops.stop_gradient(self.teacher(x[UNLABELED_IMAGES], training=False))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labeled_pred = y_pred["labeled"] if isinstance(y_pred, dict) else y_pred
        total = self.supervised_loss(y, labeled_pred, sample_weight=sample_weight)
        self.supervised_tracker.update_state(unscaled_for_logging(total))
        if isinstance(y_pred, dict) and "unlabeled" in y_pred:
            distillation = self.distillation_loss.compute_loss(self._pseudo_labels(x), y_pred["unlabeled"])
            self.distillation_tracker.update_state(unscaled_for_logging(distillation))
            total = total + self.unlabeled_weight * distillation
        for loss in self.losses:
            total = total + loss
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labeled_pred = y_pred["labeled"] if isinstance(y_pred, dict) else y_pred
        return super().compute_metrics(x, y, labeled_pred, sample_weight)

    @property
    def metrics(self):
        return super().metrics + [self.supervised_tracker, self.distillation_tracker]
