"""The keys of the dict inputs that data pipelines build and models read.

`keras_cskd.data.semi_supervised_dataset` (and the frozen-output cache) yield
`({LABELED_IMAGES: ..., UNLABELED_IMAGES: ...[, PSEUDO_LABELS: ...]}, y)`,
which `keras_cskd.models.SemiSupervisedDistiller` reads;
`unlabeled_dataset(..., clip_view_size=S)` yields `{IMAGES: ..., CLIP_IMAGES: ...}`,
which `keras_cskd.models.CLIPFeatureAligner` reads (the learners' view and CLIP's). Both sides import the
names from here. This module imports nothing, so a model file can import it
without pulling in TensorFlow or the data layer.

Example:

>>> {LABELED_IMAGES: "x_l", UNLABELED_IMAGES: "x_u"}
{'labeled_images': 'x_l', 'unlabeled_images': 'x_u'}
"""

LABELED_IMAGES = "labeled_images"
UNLABELED_IMAGES = "unlabeled_images"
PSEUDO_LABELS = "pseudo_labels"
IMAGES = "images"
CLIP_IMAGES = "clip_images"
