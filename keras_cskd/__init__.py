"""keras-cskd: CLIP-aligned aesthetics learners (CSKD) in Keras 3, any backend.

Example:
    >>> import keras_cskd
    >>> teacher = keras_cskd.CLIPImageTeacher.from_preset("clip_vit_base_patch16")  # doctest: +SKIP
    >>> aligner = keras_cskd.models.CLIPFeatureAligner(teacher, {"student": "MobileNetV2"})  # doctest: +SKIP
"""

from keras_cskd import backbones
from keras_cskd import layers
from keras_cskd import losses
from keras_cskd import metrics
from keras_cskd import models
from keras_cskd.clip import CLIPImageTeacher

__version__ = "0.1.0"
