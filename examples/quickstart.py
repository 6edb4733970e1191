"""CSKD end to end on random images, small enough for a laptop CPU.

Phase 1 aligns a teacher and a student backbone to a (random, tiny) KerasHub
CLIP; phase 2 fine-tunes the teacher on labels with the squared EMD, then
distills it into the student on labeled + unlabeled images.

    KERAS_BACKEND=jax python examples/quickstart.py

With real weights, build the teacher with
`keras_cskd.CLIPImageTeacher.from_preset("clip_vit_base_patch16")` and pass
backbone names such as "MobileNetV2" or a KerasHub preset.
"""

import keras
import keras_hub
import numpy as np

import keras_cskd
from keras_cskd.models import AestheticScorer
from keras_cskd.models import CLIPFeatureAligner
from keras_cskd.models import SemiSupervisedDistiller

SIZE = 32
rng = np.random.default_rng(0)
unlabeled = rng.uniform(0, 255, (32, SIZE, SIZE, 3)).astype("float32")
labeled = rng.uniform(0, 255, (32, SIZE, SIZE, 3)).astype("float32")
votes = rng.integers(0, 20, (32, 10)).astype("float32")  # Vote counts per score 1..10.

# A small random CLIP; any KerasHub CLIP preset works the same way.
clip = keras_hub.models.CLIPBackbone(
    vision_encoder=keras_hub.models.CLIPVisionEncoder(
        patch_size=8,
        hidden_dim=64,
        num_layers=2,
        num_heads=4,
        intermediate_dim=128,
        image_shape=(SIZE, SIZE, 3),
    ),
    text_encoder=keras_hub.models.CLIPTextEncoder(
        vocabulary_size=1000,
        embedding_dim=64,
        hidden_dim=64,
        num_layers=1,
        num_heads=4,
        intermediate_dim=128,
        max_sequence_length=16,
    ),
    projection_dim=32,
)
clip_teacher = keras_cskd.CLIPImageTeacher.from_backbone(clip, image_size=SIZE)

# Phase 1: align a KerasHub ViT teacher and a MobileNetV2 student to CLIP at once.
vit = keras_hub.models.ViTBackbone(
    image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128
)
aligner = CLIPFeatureAligner(
    clip_teacher, {"teacher": vit, "student": "MobileNetV2"}, projection_hidden_dim=64, image_size=SIZE
)
aligner.compile(optimizer=keras.optimizers.Adam(1e-3))
aligner.fit(unlabeled, batch_size=16, epochs=2)

# Phase 2a: fine-tune the aligned teacher on labels (squared EMD).
teacher = AestheticScorer(aligner.learners["teacher"].backbone)
teacher.compile(optimizer=keras.optimizers.Adam(1e-3))
teacher.fit(labeled, votes, batch_size=16, epochs=2)

# Phase 2b: distill into the aligned student on labeled + unlabeled images.
student = AestheticScorer(aligner.learners["student"].backbone)
distiller = SemiSupervisedDistiller(teacher, student)
distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
distiller.fit({"labeled_images": labeled, "unlabeled_images": unlabeled[:32]}, votes, batch_size=16, epochs=2)

print("student mean scores:", np.round(distiller.student.score(labeled[:5]), 2))
distiller.student.save("student.keras")
