"""CSKD end to end through the Python API, small enough for a laptop CPU (about a minute).

Phase 1 aligns a KerasHub ViT teacher and a keras.applications MobileNetV2
student to a frozen KerasHub CLIP; phase 2 fine-tunes the teacher on labels
with the squared EMD, then distills it into the student on labeled +
unlabeled images. The images are a small synthetic world whose votes depend on
what is visible; the CLIP here is random, so this shows the API, not the gain
(`cskd demo` and `benchmarks/ablation.py` measure that with a stand-in CLIP).

    KERAS_BACKEND=jax python examples/quickstart.py

With real weights, build the teacher with
`keras_cskd.CLIPImageTeacher.from_preset("clip_vit_base_patch16")` and pass
backbone names such as "MobileNetV2" or a KerasHub preset.
"""

import keras
import keras_hub
import numpy as np
from scipy import stats

import keras_cskd
from keras_cskd import data
from keras_cskd.models import AestheticScorer
from keras_cskd.models import CLIPFeatureAligner
from keras_cskd.models import SemiSupervisedDistiller
from keras_cskd.recipe import small_clip

SIZE = 32
world = data.synthetic.make_world("quickstart_world", num_labeled=240, num_unlabeled=240, test_fraction=0.5)
records = data.read_ava(world.ava_root, test_list=world.ava_test_list, val_fraction=0.0)

# The frozen CLIP; any KerasHub CLIP preset works the same way.
clip = keras_cskd.CLIPImageTeacher.from_backbone(small_clip(SIZE))

# Phase 1: align a KerasHub ViT teacher and a MobileNetV2 student to CLIP at once.
# momentum 0.9: MobileNetV2's own 0.999 leaves a short run's BatchNorm statistics stale.
vit = keras_hub.models.ViTBackbone(
    image_shape=(SIZE, SIZE, 3), patch_size=4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128
)
student_backbone = keras_cskd.backbones.get("MobileNetV2", image_size=SIZE, batch_norm_momentum=0.9)
aligner = CLIPFeatureAligner(clip, {"teacher": vit, "student": student_backbone}, projection_hidden_dim=64)
aligner.compile(optimizer=keras.optimizers.Adam(1e-3))
# The learners see training crops; CLIP sees its own view of each whole image.
unlabeled = data.unlabeled_dataset(
    world.unlabeled_dir, image_size=SIZE, batch_size=16, seed=0, clip_view_size=clip.view_size
)
aligner.fit(unlabeled, epochs=3)

# Phase 2a: fine-tune the aligned teacher on labels (squared EMD).
teacher = AestheticScorer(aligner.learners["teacher"].backbone)
teacher.compile(optimizer=keras.optimizers.Adam(1e-3))
teacher.fit(data.labeled_dataset(records, "train", image_size=SIZE, batch_size=16, seed=0), epochs=5)

# Phase 2b: distill into the aligned student on labeled + unlabeled images.
student = AestheticScorer(aligner.learners["student"].backbone)
distiller = SemiSupervisedDistiller(teacher, student)
distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
distiller.fit(
    data.semi_supervised_dataset(records, world.unlabeled_dir, image_size=SIZE, batch_size=16, seed=0), epochs=10
)

test = data.labeled_dataset(records, "test", image_size=SIZE, batch_size=64)
scores = student.score(test)
true = records.select("test").mean_scores
print("student mean scores:", np.round(scores[:5], 2), f"(spread {scores.std():.3f})")
print(f"student test SRCC on {len(true)} images: {stats.spearmanr(scores, true)[0]:.3f}")
student.save("student.keras")
