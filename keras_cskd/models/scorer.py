"""The aesthetics model: backbone -> score distribution."""

import keras
import numpy as np

from keras_cskd import backbones
from keras_cskd import metrics as cskd_metrics
from keras_cskd.layers import ScoreHead
from keras_cskd.layers import bin_values_for
from keras_cskd.losses import EMDLoss
from keras_cskd.models.base import FunctionalModel


def default_metrics(bin_values=None, threshold=5.0):
    """SRCC, PLCC, threshold accuracy (mean score 5, as on AVA) and EMD."""
    return [
        cskd_metrics.SRCC(bin_values=bin_values),
        cskd_metrics.PLCC(bin_values=bin_values),
        cskd_metrics.ThresholdAccuracy(threshold=threshold, bin_values=bin_values),
        cskd_metrics.EMD(r=2),
    ]


@keras.saving.register_keras_serializable(package="keras_cskd")
class AestheticScorer(FunctionalModel):
    """An aesthetics model: raw images 0..255 -> distribution over score bins.

    `compile()` defaults to the squared EMD loss of CSKD and reports SRCC,
    PLCC, threshold accuracy and EMD. `predict` returns distributions and
    `score(images)` mean scores over `bin_values` (1..num_bins by default).

    Args:
        backbone: anything `keras_cskd.backbones.get` accepts, or an
            `AlignedLearner` (its projected CLIP-space feature feeds the head)
            or its `.backbone`.
        num_bins: int. 10 for AVA.
        dropout: float. Dropout before the score layer.
        bin_values: list of floats, the score each bin stands for.
        image_size: int. Input size, passed to `backbones.get`.
        dtype: the dtype policy (e.g. "mixed_bfloat16") of the model and of
            the layers it makes; saved with the model.

    Example:
    >>> import numpy as np
    >>> scorer = AestheticScorer("MobileNetV2", image_size=32)
    >>> scorer.compile()
    >>> scorer.predict(np.zeros((2, 32, 32, 3)), verbose=0).shape
    (2, 10)
    """

    config_fields = ("backbone", "num_bins", "dropout", "bin_values", "image_size")
    object_fields = ("backbone",)

    def __init__(self, backbone, num_bins=10, dropout=0.0, bin_values=None, image_size=None, dtype=None, **kwargs):
        bin_values_for(num_bins, bin_values)  # Validates the pair.
        # === Layers ===
        self.backbone = backbones.ensure(backbone, image_size=image_size)
        self.score_head = ScoreHead(num_bins=num_bins, dropout=dropout, dtype=dtype, name="score_head")

        # === Functional Model ===
        images = keras.Input(shape=self.backbone.input_shape[1:], name="images")
        outputs = self.score_head(self.backbone(images))
        super().__init__(inputs=images, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.num_bins = num_bins
        self.dropout = dropout
        self.bin_values = bin_values
        self.image_size = image_size

    def compile(self, optimizer="adam", loss="auto", metrics="auto", **kwargs):
        """Compile with CSKD's defaults: `EMDLoss(squared=True)` and the aesthetics metrics."""
        if loss == "auto":
            loss = EMDLoss(squared=True)
        if metrics == "auto":
            metrics = default_metrics(self.bin_values)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def for_inference(self):
        """A copy that predicts the same, faster: `backbones.fold_batch_norms` on the backbone.

        Not for training: the folded backbone has no batch norms left.

        Example:
        >>> import numpy as np
        >>> scorer = AestheticScorer("MobileNetV2", image_size=32)
        >>> images = np.random.uniform(0, 255, (2, 32, 32, 3))
        >>> fast = scorer.for_inference()
        >>> bool(np.allclose(fast.predict(images, verbose=0), scorer.predict(images, verbose=0), atol=1e-5))
        True
        """
        scorer = AestheticScorer(
            backbones.fold_batch_norms(self.backbone),
            num_bins=self.num_bins,
            dropout=self.dropout,
            bin_values=self.bin_values,
            image_size=self.image_size,
            dtype=self.dtype_policy,
            name=self.name,
        )
        scorer.score_head.set_weights(self.score_head.get_weights())
        return scorer

    def score(self, images, batch_size=32, verbose=0):
        """Mean scores (numpy, shape (batch,)) of images or a dataset of them."""
        distributions = self.predict(images, batch_size=batch_size, verbose=verbose)
        values = np.asarray(bin_values_for(self.num_bins, self.bin_values), dtype="float32")
        return distributions @ values
