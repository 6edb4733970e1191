import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_cskd.clip import CLIPImageTeacher
from keras_cskd.layers import MeanScore
from keras_cskd.layers import PixelNormalization
from keras_cskd.layers import ProjectionHead
from keras_cskd.layers import ScoreHead
from keras_cskd.models import AestheticScorer
from keras_cskd.models import CLIPFeatureAligner
from keras_cskd.models import SemiSupervisedDistiller
from tests import tiny


def falls(history, key):
    values = history.history[key]
    return values[-1] < 0.8 * values[0]


def make_aligner():
    teacher = CLIPImageTeacher.from_backbone(tiny.clip_backbone(), image_size=tiny.IMAGE_SIZE)
    return CLIPFeatureAligner(
        teacher, {"teacher": tiny.conv_backbone(), "student": tiny.conv_backbone(4)}, projection_hidden_dim=16
    )


def make_distiller():
    teacher = AestheticScorer(tiny.conv_backbone())
    student = AestheticScorer(tiny.conv_backbone(4))
    return SemiSupervisedDistiller(teacher, student, unlabeled_weight=0.5)


def test_aligner_trains_and_clip_stays_frozen():
    aligner = make_aligner()
    clip_before = tiny.weights_of(aligner.teacher)
    aligner.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = aligner.fit(tiny.images(16), batch_size=8, epochs=6, verbose=0)
    assert falls(history, "loss")
    assert falls(history, "teacher_loss") and falls(history, "student_loss")
    for before, after in zip(clip_before, tiny.weights_of(aligner.teacher)):
        np.testing.assert_array_equal(before, after)
    student = aligner.learners["student"]
    assert student.predict(tiny.images(2), verbose=0).shape == (2, 8)
    assert student.backbone.output_shape == (None, 4)


def test_aligner_accepts_precomputed_clip_embeddings():
    aligner = make_aligner()
    x = tiny.images(8)
    targets = aligner.teacher.predict(x, verbose=0)
    aligner.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = aligner.fit(x, targets, batch_size=8, epochs=4, verbose=0)
    assert falls(history, "loss")


def test_precomputed_targets_work_with_train_on_batch():
    aligner = make_aligner()
    aligner.compile(optimizer="adam")
    x = tiny.images(4)
    assert np.isfinite(aligner.train_on_batch(x, aligner.teacher.predict(x, verbose=0), return_dict=True)["loss"])
    distiller = SemiSupervisedDistiller(None, AestheticScorer(tiny.conv_backbone(4)))
    distiller.compile(optimizer="adam")
    inputs = {"labeled_images": x, "unlabeled_images": x, "pseudo_labels": tiny.learnable_scores(x)}
    assert np.isfinite(distiller.train_on_batch(inputs, tiny.learnable_scores(x), return_dict=True)["loss"])


def test_scorer_learns_and_scores():
    x = tiny.images(32)
    y = tiny.learnable_scores(x)
    scorer = AestheticScorer(tiny.conv_backbone())
    scorer.compile(optimizer=keras.optimizers.Adam(3e-2))
    history = scorer.fit(x, y, batch_size=16, epochs=8, verbose=0)
    assert falls(history, "loss")
    assert set(history.history) >= {"srcc", "plcc", "accuracy", "emd"}
    scores = scorer.score(x)
    assert scores.shape == (32,) and np.all((scores >= 1) & (scores <= 10))


def test_distiller_trains_student_and_teacher_stays_frozen():
    x = tiny.images(16)
    y = tiny.learnable_scores(x)
    distiller = make_distiller()
    teacher_before = tiny.weights_of(distiller.teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-2))
    inputs = {"labeled_images": x, "unlabeled_images": tiny.images(16, seed=1)}
    history = distiller.fit(inputs, y, batch_size=8, epochs=8, verbose=0)
    assert falls(history, "loss") and falls(history, "supervised_loss")
    assert "distillation_loss" in history.history
    for before, after in zip(teacher_before, tiny.weights_of(distiller.teacher)):
        np.testing.assert_array_equal(before, after)


def test_distiller_with_precomputed_pseudo_labels_and_no_teacher():
    x = tiny.images(8)
    student = AestheticScorer(tiny.conv_backbone(4))
    distiller = SemiSupervisedDistiller(None, student)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    unlabeled = tiny.images(8, seed=2)
    inputs = {"labeled_images": x, "unlabeled_images": unlabeled, "pseudo_labels": tiny.learnable_scores(unlabeled)}
    history = distiller.fit(inputs, tiny.learnable_scores(x), batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["distillation_loss"][-1])
    with pytest.raises(ValueError, match="no teacher"):
        distiller.fit({"labeled_images": x, "unlabeled_images": unlabeled}, tiny.learnable_scores(x), verbose=0)


def test_distiller_rejects_mismatched_bins():
    with pytest.raises(ValueError, match="10 bins but the student 5"):
        SemiSupervisedDistiller(
            AestheticScorer(tiny.conv_backbone()), AestheticScorer(tiny.conv_backbone(), num_bins=5)
        )


def layers_model():
    inputs = keras.Input((tiny.IMAGE_SIZE, tiny.IMAGE_SIZE, 3))
    x = PixelNormalization(scale=[0.01, 0.02, 0.03], offset=-1.0, reverse_channels=True)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = ProjectionHead(8, 6)(x)
    distribution = ScoreHead(num_bins=5, dropout=0.1)(x)
    return keras.Model(inputs, [distribution, MeanScore(bin_values=[1, 2, 4, 8, 16])(distribution)])


def all_models():
    return {
        "layers": layers_model(),
        "aligner": make_aligner(),
        "scorer": AestheticScorer(tiny.conv_backbone(), bin_values=[float(v) for v in range(0, 10)]),
        "distiller": make_distiller(),
    }


def predictions(model, x):
    out = model.predict(x, verbose=0)
    return [np.asarray(v) for v in keras.tree.flatten(out)]


def test_save_and_load_without_custom_objects(tmp_path):
    x = tiny.images(4)
    for name, model in all_models().items():
        if name == "scorer":
            model.compile()
        path = str(tmp_path / f"{name}.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        assert type(restored) is type(model)
        for a, b in zip(predictions(model, x), predictions(restored, x)):
            np.testing.assert_array_equal(a, b)
    assert restored.teacher is not None and not restored.teacher.trainable


LOAD_ELSEWHERE = """
import json, sys
import keras, numpy as np
import keras_cskd
folder = sys.argv[1]
x = np.load(folder + "/x.npy")
out = {}
for name in json.load(open(folder + "/names.json")):
    model = keras.saving.load_model(f"{folder}/{name}.keras")
    out[name] = [np.asarray(v).tolist() for v in keras.tree.flatten(model.predict(x, verbose=0))]
json.dump(out, open(folder + "/" + keras.backend.backend() + ".json", "w"))
"""


# Each backend's models load on the next one: over the three suites every backend saves and loads.
NEXT_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}


def test_models_load_on_another_backend(tmp_path):
    x = tiny.images(3)
    np.save(tmp_path / "x.npy", x)
    models = all_models()
    expected = {}
    for name, model in models.items():
        model.save(str(tmp_path / f"{name}.keras"))
        expected[name] = predictions(model, x)
    (tmp_path / "names.json").write_text(json.dumps(list(models)))
    here, backend = keras.backend.backend(), NEXT_BACKEND[keras.backend.backend()]
    env = dict(os.environ, KERAS_BACKEND=backend)
    subprocess.run([sys.executable, "-c", LOAD_ELSEWHERE, str(tmp_path)], env=env, check=True, timeout=600)
    loaded = json.loads((tmp_path / f"{backend}.json").read_text())
    for name, outputs in expected.items():
        for a, b in zip(outputs, loaded[name]):
            np.testing.assert_allclose(a, np.asarray(b), atol=1e-4, err_msg=f"{name}: {here} -> {backend}")


def test_torch_zeroes_every_gradient_between_steps():
    """Same-named layers in two sub-models (two projectors, two score heads) must not lose
    their torch parameter registration: their gradients would pile up from step to step."""
    if keras.backend.backend() != "torch":
        pytest.skip("torch's zero_grad() only")
    x = tiny.images(4)
    teacher = AestheticScorer(tiny.conv_backbone(), name="teacher")
    models = [
        CLIPFeatureAligner(
            CLIPImageTeacher.from_backbone(tiny.clip_backbone()),
            {"teacher": tiny.conv_backbone(), "student": tiny.conv_backbone()},
            projection_hidden_dim=8,
        ),
        SemiSupervisedDistiller(teacher, AestheticScorer(tiny.conv_backbone(), name="student")),
    ]
    batches = [(x, None), ({"labeled_images": x, "unlabeled_images": x}, tiny.learnable_scores(x))]
    for model, (inputs, targets) in zip(models, batches):
        registered = {id(p) for p in model.parameters()}
        assert all(id(v.value) in registered for v in model.trainable_variables)
        model.compile(optimizer=keras.optimizers.SGD(0.0))
        model.train_on_batch(inputs, targets)
        first = [keras.ops.convert_to_numpy(v.value.grad) for v in model.trainable_variables]
        model.train_on_batch(inputs, targets)
        second = [keras.ops.convert_to_numpy(v.value.grad) for v in model.trainable_variables]
        for a, b in zip(first, second, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_mixed_precision_policy_survives_a_round_trip(tmp_path):
    """A model built under mixed_bfloat16 loads with that policy, its own layers too,
    whatever the global policy is when it is loaded."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        teacher = CLIPImageTeacher.from_backbone(tiny.clip_backbone(), image_size=tiny.IMAGE_SIZE)
        models = {
            "scorer": AestheticScorer(tiny.conv_backbone(4), num_bins=5, dtype="mixed_bfloat16"),
            "aligner": CLIPFeatureAligner(
                teacher, {"student": tiny.conv_backbone(4)}, projection_hidden_dim=8, dtype="mixed_bfloat16"
            ),
        }
        for model in models.values():
            model.save(str(tmp_path / f"{model.name}.keras"))
    finally:
        keras.config.set_dtype_policy(previous)
    for model in models.values():
        restored = keras.saving.load_model(str(tmp_path / f"{model.name}.keras"))
        assert restored.name == model.name
        assert restored.dtype_policy.name == "mixed_bfloat16"
    scorer = keras.saving.load_model(str(tmp_path / f"{models['scorer'].name}.keras"))
    assert scorer.score_head.dtype_policy.name == "mixed_bfloat16"
    assert scorer.score_head.logits.compute_dtype == "bfloat16"
    aligner = keras.saving.load_model(str(tmp_path / f"{models['aligner'].name}.keras"))
    assert aligner.teacher.dtype_policy.name == "mixed_bfloat16"
    assert aligner.learners["student"].dtype_policy.name == "mixed_bfloat16"
    assert aligner.learners["student"].projector.compute_dtype == "bfloat16"


def test_trainable_and_name_survive_a_round_trip(tmp_path):
    scorer = AestheticScorer(tiny.conv_backbone(4), num_bins=5, name="frozen_scorer")
    scorer.trainable = False
    distiller = SemiSupervisedDistiller(None, AestheticScorer(tiny.conv_backbone(4)), name="frozen_distiller")
    distiller.trainable = False
    teacher = CLIPImageTeacher.from_backbone(tiny.clip_backbone(), image_size=tiny.IMAGE_SIZE, name="clip")
    for model in (scorer, distiller, teacher):
        path = str(tmp_path / f"{model.name}.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        assert restored.name == model.name
        assert not restored.trainable and not restored.trainable_weights
    trainable = AestheticScorer(tiny.conv_backbone(4), num_bins=5)
    trainable.save(str(tmp_path / "trainable.keras"))
    assert keras.saving.load_model(str(tmp_path / "trainable.keras")).trainable
