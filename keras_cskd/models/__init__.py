"""The three CSKD training models."""

from keras_cskd.models.aligner import AlignedLearner
from keras_cskd.models.aligner import CLIPFeatureAligner
from keras_cskd.models.distiller import SemiSupervisedDistiller
from keras_cskd.models.scorer import AestheticScorer
