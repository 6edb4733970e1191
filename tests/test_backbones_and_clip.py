import random

import keras
import keras_hub
import numpy as np
import pytest

from keras_cskd import backbones
from keras_cskd.clip import CLIPImageTeacher
from keras_cskd.layers import ShiftAddDepthwiseConv2D
from keras_cskd.layers import shift_add_depthwise_conv
from keras_cskd.models import AestheticScorer
from tests import tiny


def check_feature_model(model, size=tiny.IMAGE_SIZE):
    features = keras.ops.convert_to_numpy(model(tiny.images(2)[:, :size, :size]))
    assert features.ndim == 2 and features.shape[0] == 2
    assert np.all(np.isfinite(features))
    return features


def test_keras_applications_name():
    model = backbones.get("MobileNetV2", image_size=32)
    assert check_feature_model(model).shape[1] == 1280
    assert any(isinstance(layer, ShiftAddDepthwiseConv2D) for layer in model.get_layer("mobilenetv2_1.00_32").layers)
    # MobileNetV2 weights expect [-1, 1]: the normalization is inside.
    assert model.get_layer("normalization").scale == pytest.approx(1 / 127.5)


@pytest.mark.parametrize(
    "kernel, strides, padding, dilation, multiplier",
    [(3, 1, "same", 1, 1), (3, 2, "same", 1, 1), (3, 2, "valid", 1, 2), (5, 1, "same", 2, 1), (2, 2, "same", 1, 1)],
)
def test_shift_add_depthwise_conv_equals_keras_depthwise_conv(kernel, strides, padding, dilation, multiplier):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 8, 3)).astype("float32")
    k = rng.normal(size=(kernel, kernel, 3, multiplier)).astype("float32")
    direct = keras.ops.depthwise_conv(x, k, strides=strides, padding=padding, dilation_rate=dilation)
    shifted = shift_add_depthwise_conv(x, k, (strides,) * 2, padding, (dilation,) * 2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(shifted), keras.ops.convert_to_numpy(direct), atol=1e-5)


def test_use_shift_add_depthwise_swaps_only_the_layer_class():
    plain = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False)
    swapped = backbones.use_shift_add_depthwise(plain)
    pairs = [(a, b) for a, b in zip(plain.layers, swapped.layers) if isinstance(a, keras.layers.DepthwiseConv2D)]
    assert len(pairs) == 17 and all(type(b) is ShiftAddDepthwiseConv2D for _, b in pairs)
    assert all(a.get_config() == b.get_config() for a, b in pairs)
    for a, b in zip(plain.get_weights(), swapped.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert backbones.use_shift_add_depthwise(swapped) is swapped


def test_fold_batch_norms_computes_the_same_without_the_batch_norms():
    inner = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False)
    model = tiny.random_batch_statistics(backbones.get(inner))  # nested: normalization, MobileNetV2, pooling
    folded = backbones.fold_batch_norms(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded._flatten_layers())
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(folded(x, training=False)), want, rtol=1e-4, atol=1e-5)
    assert backbones.fold_batch_norms(folded) is folded


def test_for_inference_folds_a_loaded_scorer_and_keeps_its_bins(tmp_path):
    # Loading rebuilds a Sequential layer by layer, which leaves extra nodes on its layers.
    scorer = AestheticScorer(
        tiny.random_batch_statistics(tiny.conv_backbone(batch_norm=True)), bin_values=list(range(10))
    )
    scorer.save(tmp_path / "scorer.keras")
    fast = keras.saving.load_model(tmp_path / "scorer.keras").for_inference()
    assert isinstance(fast, AestheticScorer) and fast.bin_values == list(range(10))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in fast._flatten_layers())
    images = np.random.default_rng(4).uniform(0, 255, (2, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE, 3))
    np.testing.assert_allclose(fast.predict(images, verbose=0), scorer.predict(images, verbose=0), atol=1e-5)


@pytest.mark.parametrize("nested", [False, True])
def test_fold_batch_norms_in_sequential_models(nested):
    sequential = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(), keras.layers.ReLU()]
    )
    model = sequential
    if nested:
        x = keras.Input((8, 8, 3))
        model = keras.Model(x, keras.layers.Flatten()(sequential(x)))
    tiny.random_batch_statistics(model)
    folded = backbones.fold_batch_norms(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded._flatten_layers())
    images = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(folded(images, training=False)), want, atol=1e-5)


def test_fold_batch_norms_leaves_what_it_cannot_fold():
    x = keras.Input((8, 8, 3))
    read_twice = keras.layers.Conv2D(4, 3, padding="same")(x)
    a = keras.layers.BatchNormalization()(read_twice)
    activated = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(a)
    b = keras.layers.BatchNormalization()(activated)
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=True)(b)
    c = keras.layers.BatchNormalization(center=False)(depthwise)
    model = tiny.random_batch_statistics(keras.Model(x, [c, read_twice]))
    folded = backbones.fold_batch_norms(model)
    kinds = [type(layer).__name__ for layer in folded.layers]
    assert kinds.count("BatchNormalization") == 2  # only the multiplier-2 depthwise one folds
    images = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype("float32")
    for got, want in zip(folded(images, training=False), model(images, training=False)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want), atol=1e-5)


def test_rematerialize_recomputes_the_transformer_blocks():
    model = backbones.get(tiny.vit_backbone())
    state = random.getstate()
    rematerialized = backbones.rematerialize(model)
    assert random.getstate() == state  # a run's later random draws do not move
    assert tiny.recomputed_layers(rematerialized) == ["transformer_block_1"]
    x = tiny.images(2)
    want = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rematerialized(x)), want, rtol=1e-5, atol=1e-6)
    plain = tiny.conv_backbone()
    assert backbones.rematerialize(plain) is plain


def test_rematerialized_blocks_train_the_same():
    model = backbones.get(tiny.swin_backbone(drop_path=0.0))  # blocks nested in stages
    rematerialized = backbones.rematerialize(model)
    assert tiny.recomputed_layers(rematerialized) == ["blocks_0"]
    trained = []
    for learner in (model, rematerialized):
        scorer = keras.Sequential([learner, keras.layers.Dense(3, kernel_initializer="ones")])
        scorer.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        scorer.train_on_batch(tiny.images(4), np.ones((4, 3), "float32"))
        trained.append(tiny.weights_of(learner))
    for got, want in zip(*trained):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rematerialize_refuses_blocks_that_draw_random_numbers():
    with pytest.raises(ValueError, match="drop_path.*draws random numbers.*rates at 0"):
        backbones.rematerialize(backbones.get(tiny.swin_backbone(drop_path=0.1)))


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the shift-add path is jax's (on a CPU)")
def test_on_jax_cpu_depthwise_layers_run_without_xla_grouped_convolution():
    import jax

    layer = ShiftAddDepthwiseConv2D(3, strides=2, padding="same", use_bias=True, activation="relu")
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    layer.build(x.shape)
    reference = keras.layers.DepthwiseConv2D.from_config(layer.get_config())
    reference.build(x.shape)
    reference.set_weights([w + 0.1 for w in layer.get_weights()])
    layer.set_weights(reference.get_weights())

    def loss(variables, x, layer):
        return jax.numpy.sum(layer.stateless_call(variables, [], x)[0] ** 2)

    variables = [v.value for v in layer.trainable_variables]
    jaxpr = str(jax.make_jaxpr(jax.grad(loss), static_argnums=2)(variables, x, layer))
    assert "conv_general_dilated" not in jaxpr
    for got, want in zip(jax.grad(loss)(variables, x, layer), jax.grad(loss)(variables, x, reference)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", [tiny.vit_backbone, tiny.swin_backbone])
def test_keras_hub_backbone_objects(make):
    check_feature_model(backbones.get(make()))


def test_keras_hub_mobilenet_and_resize():
    mobilenet = keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[16], [24]],
        stackwise_num_blocks=[1, 1],
        stackwise_num_filters=[[8], [16]],
        stackwise_kernel_size=[[3], [3]],
        stackwise_num_strides=[[2], [2]],
        stackwise_se_ratio=[[None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"]],
        stackwise_padding=[[1], [1]],
        depthwise_stride=2,
        depthwise_residual=False,
        last_layer_filter=32,
        output_num_filters=32,
        input_activation="hard_swish",
        output_activation="hard_swish",
        input_num_filters=8,
        image_shape=(32, 32, 3),
        depthwise_filters=8,
        squeeze_and_excite=0.5,
    )
    model = backbones.get(mobilenet, image_size=48)
    assert model.get_layer("resize") is not None
    features = keras.ops.convert_to_numpy(model(np.full((2, 48, 48, 3), 128.0)))
    assert features.shape == (2, 32) and np.all(np.isfinite(features))


def test_keras_cv_backbone():
    import keras_cv

    darknet = keras_cv.models.CSPDarkNetBackbone(
        stackwise_channels=[8, 16], stackwise_depth=[1, 1], include_rescaling=False, input_shape=(32, 32, 3)
    )
    check_feature_model(backbones.get(darknet))


def test_local_keras_hub_preset(tmp_path):
    preset = str(tmp_path / "vit_preset")
    vit = tiny.vit_backbone()
    vit.save_to_preset(preset)
    model = backbones.get(preset)
    reference = backbones.get(vit)
    x = tiny.images(2)
    np.testing.assert_allclose(model.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-5)


def test_unknown_backbone_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Unknown backbone 'MobileNetV9'.*Did you mean"):
        backbones.get("MobileNetV9")
    with pytest.raises(ValueError, match="not a KerasHub preset directory"):
        backbones.get(str(tmp_path))


def test_clip_teacher_matches_keras_hub_embedding():
    clip = tiny.clip_backbone()
    teacher = CLIPImageTeacher.from_backbone(clip, image_size=tiny.IMAGE_SIZE, normalize=False)
    x = tiny.images(3)
    normalized = x / 255.0
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    expected = clip.get_vision_embeddings(((normalized - mean) / std).astype("float32"))
    np.testing.assert_allclose(teacher.predict(x, verbose=0), keras.ops.convert_to_numpy(expected), atol=1e-4)
    assert not teacher.trainable and not teacher.trainable_weights


def test_clip_teacher_from_local_preset(tmp_path):
    clip = tiny.clip_backbone()
    preset = str(tmp_path / "clip_preset")
    clip.save_to_preset(preset)
    teacher = CLIPImageTeacher.from_preset(preset)
    reference = CLIPImageTeacher.from_backbone(clip)
    x = tiny.images(2)
    embedding = teacher.predict(x, verbose=0)
    np.testing.assert_allclose(embedding, reference.predict(x, verbose=0), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    # Any input size: CLIP's resize runs inside.
    assert teacher.predict(np.zeros((1, 40, 50, 3)), verbose=0).shape == (1, 8)


def test_clip_preset_that_is_not_clip(tmp_path):
    preset = str(tmp_path / "vit_preset")
    tiny.vit_backbone().save_to_preset(preset)
    with pytest.raises(ValueError, match="holds a ViTBackbone, not a CLIP model"):
        CLIPImageTeacher.from_preset(preset)


def test_missing_clip_preset_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError) as error:
        CLIPImageTeacher.from_preset(str(tmp_path / "no_such_preset"))
    message = str(error.value)
    assert message.startswith("Cannot load the CLIP preset") and "\n" not in message
