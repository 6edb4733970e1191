import keras
import keras_hub
import numpy as np
import pytest

from keras_cskd import backbones
from keras_cskd.clip import CLIPImageTeacher
from tests import tiny


def check_feature_model(model, size=tiny.IMAGE_SIZE):
    features = keras.ops.convert_to_numpy(model(tiny.images(2)[:, :size, :size]))
    assert features.ndim == 2 and features.shape[0] == 2
    assert np.all(np.isfinite(features))
    return features


def test_keras_applications_name():
    model = backbones.get("MobileNetV2", image_size=32)
    assert check_feature_model(model).shape[1] == 1280
    # MobileNetV2 weights expect [-1, 1]: the normalization is inside.
    assert model.get_layer("normalization").scale == pytest.approx(1 / 127.5)


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
