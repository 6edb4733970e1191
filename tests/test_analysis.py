"""Attention distance / entropy analysis (keras_cskd.analysis), on every backend."""

import argparse
import itertools
import json
import math
import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_cskd import analysis
from keras_cskd import cli

IMAGE = 32
PATCH = 8
GRID = IMAGE // PATCH


@pytest.fixture(scope="module", autouse=True)
def _fast_jax_compiles():
    """XLA compiles every eager op once; unoptimized compiles keep this file quick."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


# === Helpers ===


def mean_grid_distance(rows, columns):
    """Closed form by enumeration: mean distance over all ordered pairs of a grid."""
    cells = list(itertools.product(range(rows), range(columns)))
    total = sum(math.dist(a, b) for a in cells for b in cells)
    return total / len(cells) ** 2


def images(count=2, size=IMAGE):
    """Batches of 2 throughout: JAX compiles each eager op once per shape."""
    return np.random.uniform(0, 255, (count, size, size, 3)).astype("float32")


def tiny_vit(**kwargs):
    config = dict(image_shape=(IMAGE, IMAGE, 3), patch_size=PATCH, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    return keras_hub.models.ViTBackbone(**{**config, **kwargs})


def attention_layers(model):
    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.MultiHeadAttention)]


def zero_query_key(model):
    """q = k = 0 in every MultiHeadAttention: every query attends uniformly."""
    for mha in attention_layers(model):
        for weight in mha.query_dense.weights + mha.key_dense.weights:
            weight.assign(np.zeros(weight.shape, "float32"))


def assign(model, values):
    by_path = {weight.path: weight for weight in model.weights}
    for path, value in values.items():
        by_path[path].assign(np.broadcast_to(value, by_path[path].shape).astype("float32"))


def features_model(backbone, name="features"):
    """Like keras_cskd.backbones.get: raw images -> normalization -> backbone -> pooled, + a head."""
    inputs = keras.Input((IMAGE, IMAGE, 3), name="images")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x), name=name)


# === Closed forms ===


def tiny_clip():
    return keras_hub.models.CLIPVisionEncoder(
        patch_size=PATCH,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(IMAGE, IMAGE, 3),
    )


def tiny_dinov2(registers=2):
    return keras_hub.models.DINOV2Backbone(
        patch_size=PATCH,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(IMAGE, IMAGE, 3),
        position_embedding_shape=(IMAGE, IMAGE, 3),
        num_register_tokens=registers,
    )


def tiny_deit():
    return keras_hub.models.DeiTBackbone(
        image_shape=(IMAGE, IMAGE, 3),
        patch_size=PATCH,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    )


# Forward passes on ViT and CLIP. DeiT and DINOv2 run the same
# MultiHeadAttention hook: `test_every_family_hooks_its_attention_layers` checks
# where their hooks go and `test_summary_of_random_attention_matches_numpy` the
# prefix (register) handling, without paying JAX's eager compiles once more.
@pytest.mark.parametrize("build, prefix", [(tiny_vit, 1), (tiny_clip, 1)])
def test_uniform_attention_has_closed_form_statistics(build, prefix):
    backbone = build()
    zero_query_key(backbone)
    stats = analysis.attention_statistics(backbone, images(4), batch_size=2)

    tokens = prefix + GRID * GRID
    assert stats["num_images"] == 4
    assert stats["num_prefix_tokens"] == [prefix, prefix]
    # Prefix keys are left out of the distance and the rest renormalized.
    expected_distance = mean_grid_distance(GRID, GRID) * PATCH
    np.testing.assert_allclose(stats["mean_distance"], np.full((2, 2), expected_distance), rtol=1e-5)
    np.testing.assert_allclose(stats["entropy"], np.full((2, 2), math.log(tokens)), rtol=1e-5)
    np.testing.assert_allclose(stats["max_entropy"], [math.log(tokens)] * 2, rtol=1e-6)
    np.testing.assert_allclose(stats["prefix_attention"], np.full((2, 2), prefix / tokens), rtol=1e-5)


@pytest.mark.parametrize(
    "build, backbone_name, prefix",
    [
        (tiny_vit, "ViTBackbone", 1),
        (lambda: tiny_vit(use_class_token=False), "ViTBackbone", 0),
        (tiny_deit, "DeiTBackbone", 2),
        (tiny_clip, "CLIPVisionEncoder", 1),
        (tiny_dinov2, "DINOV2Backbone", 3),
    ],
)
def test_every_family_hooks_its_attention_layers(build, backbone_name, prefix):
    backbone = build()
    capture = analysis.capture_attention(features_model(backbone))
    assert type(capture.backbone).__name__ == backbone_name
    hooked = [site.layer.path for site in capture.sites]
    assert hooked == sorted(layer.path for layer in attention_layers(backbone))  # all, in depth order
    for site in capture.sites:
        assert site.num_prefix_tokens == prefix
        assert site.num_keys == prefix + GRID * GRID
        assert site.token_size == (PATCH, PATCH)


def test_summary_of_random_attention_matches_numpy():
    prefix, patches = 3, GRID * GRID
    logits = np.random.normal(size=(2, 2, prefix + patches, prefix + patches)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    distances = analysis.pairwise_distances((GRID, GRID), (PATCH, PATCH))
    summary = analysis.attention_summary(probs.astype("float32"), distances, prefix)

    queries = probs[:, :, prefix:, :]
    to_patches = queries[..., prefix:] / queries[..., prefix:].sum(-1, keepdims=True)
    expected = {
        "mean_distance": np.sum(to_patches * distances, -1).mean(-1),
        "entropy": -np.sum(queries * np.log(queries), -1).mean(-1),
        "prefix_attention": queries[..., :prefix].sum(-1).mean(-1),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(summary[key]), value, rtol=1e-4)


def test_identity_attention_has_zero_distance_and_entropy():
    # Tokens are fixed, distinct +-1 vectors (patch embedding off, attention and
    # MLP outputs off, so every layer sees them); q = k = 10 * token, so the
    # self score beats every other by at least 100 / sqrt(8) * 4 and softmax
    # puts all weight on the token itself.
    backbone = tiny_vit()
    signs = []
    for ones in itertools.islice(itertools.combinations(range(8), 4), GRID * GRID + 1):
        half = -np.ones(8)
        half[list(ones)] = 1.0
        signs.append(np.concatenate([half, half]))  # zero mean, unit variance: LayerNorm keeps it
    values = {
        "vit_patching_and_embedding/class_token": 0.0,
        "vit_patching_and_embedding/patch_embedding/kernel": 0.0,
        "vit_patching_and_embedding/patch_embedding/bias": 0.0,
        "vit_patching_and_embedding/position_embedding/embeddings": np.array(signs),
    }
    identity = 10.0 * np.eye(16).reshape(16, 2, 8)
    for block in ("transformer_block_1", "transformer_block_2"):
        prefix = f"vit_encoder/{block}"
        values.update(
            {
                f"{prefix}/mha/query/kernel": identity,
                f"{prefix}/mha/key/kernel": identity,
                f"{prefix}/mha/query/bias": 0.0,
                f"{prefix}/mha/key/bias": 0.0,
                f"{prefix}/mha/attention_output/kernel": 0.0,
                f"{prefix}/mha/attention_output/bias": 0.0,
                f"{prefix}/mlp/dense_2/kernel": 0.0,
                f"{prefix}/mlp/dense_2/bias": 0.0,
            }
        )
    assign(backbone, values)
    stats = analysis.attention_statistics(features_model(backbone), images())
    np.testing.assert_allclose(stats["mean_distance"], np.zeros((2, 2)), atol=1e-6)
    np.testing.assert_allclose(stats["entropy"], np.zeros((2, 2)), atol=1e-5)
    np.testing.assert_allclose(stats["prefix_attention"], np.zeros((2, 2)), atol=1e-6)


def test_swin_uniform_windows_measure_within_window_distance():
    # 32 px / patch 4 -> 8x8 tokens of 4 px, window 4 (4 windows, the second
    # block shifted by 2); after merging 4x4 tokens of 8 px in one window.
    backbone = keras_hub.models.SwinTransformerBackbone(
        image_shape=(IMAGE, IMAGE, 3), embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=4, patch_size=4
    )
    for weight in backbone.weights:
        if "relative_position_bias_table" in weight.path:
            weight.assign(np.zeros(weight.shape, "float32"))
        elif "attention_qkv" in weight.path:  # zero q and k, keep v
            value = keras.ops.convert_to_numpy(weight).copy()
            value[..., : 2 * value.shape[-1] // 3] = 0.0
            weight.assign(value)
    stats = analysis.attention_statistics(backbone, images())

    assert stats["layers"] == ["stage_0/blocks_0", "stage_0/blocks_1", "stage_1/blocks_0", "stage_1/blocks_1"]
    assert stats["token_size_pixels"] == [[4.0, 4.0]] * 2 + [[8.0, 8.0]] * 2
    # Shifted windows: Swin masks pairs from different image regions, so the
    # four windows hold regions of 4x4, 4x2, 2x4 and 2x2 tokens.
    shifted_distance = (
        mean_grid_distance(4, 4) + mean_grid_distance(4, 2) + mean_grid_distance(2, 4) + mean_grid_distance(2, 2)
    ) / 4
    shifted_entropy = (math.log(16) + 2 * math.log(8) + math.log(4)) / 4
    expected_distance = [
        [4 * mean_grid_distance(4, 4)],
        [4 * shifted_distance],
        [8 * mean_grid_distance(4, 4)] * 2,
        [8 * mean_grid_distance(4, 4)] * 2,
    ]
    expected_entropy = [[math.log(16)], [shifted_entropy], [math.log(16)] * 2, [math.log(16)] * 2]
    for got, want in zip(stats["mean_distance"], expected_distance):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    for got, want in zip(stats["entropy"], expected_entropy):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert stats["prefix_attention"] == [[0.0], [0.0], [0.0, 0.0], [0.0, 0.0]]


# === Against the layers' own attention scores ===


def test_random_vit_matches_the_layers_own_attention_scores():
    backbone = tiny_vit()
    x = images(2)
    stats = analysis.attention_statistics(backbone, x, batch_size=2)

    # Reference: run the blocks by hand and ask each MHA for its scores.
    tokens = backbone.get_layer("vit_patching_and_embedding")(x)
    distances = np.array(
        [
            [math.dist(a, b) * PATCH for b in itertools.product(range(GRID), repeat=2)]
            for a in itertools.product(range(GRID), repeat=2)
        ]
    )
    for layer, block in enumerate(backbone.get_layer("vit_encoder").encoder_layers):
        normed = block.layer_norm_1(tokens)
        _, scores = block.mha(normed, normed, return_attention_scores=True)
        scores = keras.ops.convert_to_numpy(scores).astype("float64")[:, :, 1:, :]  # patch queries
        entropy = -np.sum(scores * np.log(scores), -1).mean((0, 2))
        on_patches = scores[..., 1:] / scores[..., 1:].sum(-1, keepdims=True)
        distance = np.sum(on_patches * distances, -1).mean((0, 2))
        np.testing.assert_allclose(stats["entropy"][layer], entropy, rtol=1e-4)
        np.testing.assert_allclose(stats["mean_distance"][layer], distance, rtol=1e-4)
        np.testing.assert_allclose(stats["prefix_attention"][layer], scores[..., 0].mean((0, 2)), rtol=1e-4)
        tokens = block(tokens)


# === The model is left as it was ===


def test_capture_leaves_predictions_unchanged():
    backbone = tiny_vit()
    model = features_model(backbone)
    x = images(2)

    def predict():
        return keras.ops.convert_to_numpy(model(x, training=False))

    before = predict()
    with analysis.capture_attention(model) as capture:
        captured = keras.ops.convert_to_numpy(capture.run(x))
    np.testing.assert_array_equal(captured, before)  # bit-identical during capture
    assert capture.statistics()["num_images"] == 2

    analysis.attention_statistics(model, x)
    np.testing.assert_array_equal(predict(), before)  # and after
    for mha in attention_layers(backbone):
        assert "_compute_attention" not in vars(mha)


def test_nested_backbones_and_selection():
    first, second = tiny_vit(name="first"), tiny_vit(name="second")
    inputs = keras.Input((IMAGE, IMAGE, 3))
    pooled = [keras.layers.GlobalAveragePooling1D()(b(inputs)) for b in (first, second)]
    model = keras.Model(inputs, keras.layers.Concatenate()(pooled), name="two_towers")
    with pytest.raises(ValueError, match="several supported backbones"):
        analysis.attention_statistics(model, images())
    stats = analysis.attention_statistics(model, images(), backbone="second")
    assert stats["backbone_path"] == "two_towers/second"


def test_unsupported_model_gives_a_clear_error():
    cnn = keras.Sequential(
        [keras.Input((IMAGE, IMAGE, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()],
        name="small_cnn",
    )
    with pytest.raises(ValueError, match="small_cnn") as error:
        analysis.attention_statistics(cnn, images())
    for name in analysis.SUPPORTED_BACKBONES:
        assert name in str(error.value)


# === Command line ===


def write_images(folder, count=4):
    from PIL import Image

    os.makedirs(folder)
    for index in range(count):
        pixels = np.random.randint(0, 255, (40, 48, 3), dtype="uint8")
        Image.fromarray(pixels).save(os.path.join(folder, f"image_{index}.png"))
    return folder


def parse(argv):
    parser = argparse.ArgumentParser(prog="cskd")
    analysis.register_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def run_cli(argv):
    """As `cskd` runs it: `cli.main` prints the command's user errors in one line."""
    return cli.main(argv)


def test_cli_writes_json_and_plots(tmp_path):
    before = tiny_vit()
    before.save_to_preset(str(tmp_path / "before"))
    after = features_model(tiny_vit())
    after.save(str(tmp_path / "after.keras"))
    folder = write_images(str(tmp_path / "imgs"))
    out = tmp_path / "out"

    code = run_cli(
        [
            "analyze",
            str(tmp_path / "before"),
            str(tmp_path / "after.keras"),
            "--images",
            folder,
            "--out",
            str(out),
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    result = json.loads((out / "attention.json").read_text())
    assert result["num_images"] == 4
    assert list(result["models"]) == ["before", "after"]
    for stats in result["models"].values():
        assert np.array(stats["mean_distance"]).shape == (2, 2)
        assert np.all(np.array(stats["entropy"]) <= math.log(GRID * GRID + 1) + 1e-5)
    for png in ("attention_distance.png", "attention_entropy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The IMAGES folder may also come last, without --images.
    code = run_cli(
        ["analyze", str(tmp_path / "after.keras"), folder, "--out", str(tmp_path / "out2"), "--batch-size", "2"]
    )
    assert code == 0
    assert list(json.loads((tmp_path / "out2" / "attention.json").read_text())["models"]) == ["after"]

    # A broken file among the images is skipped and left out of the count.
    with open(os.path.join(folder, "broken.jpg"), "wb") as file:
        file.write(b"not a jpeg")
    code = run_cli(["analyze", str(tmp_path / "after.keras"), folder, "--out", str(tmp_path / "out3")])
    assert code == 0
    assert json.loads((tmp_path / "out3" / "attention.json").read_text())["num_images"] == 4


def test_cli_reports_user_errors(tmp_path, capsys):
    folder = write_images(str(tmp_path / "imgs"), count=1)
    assert run_cli(["analyze", str(tmp_path / "missing.keras"), "--images", folder, "--out", str(tmp_path)]) == 1
    assert "missing.keras" in capsys.readouterr().err

    cnn = keras.Sequential([keras.Input((IMAGE, IMAGE, 3)), keras.layers.Conv2D(4, 3)], name="small_cnn")
    cnn.save(str(tmp_path / "cnn.keras"))
    assert run_cli(["analyze", str(tmp_path / "cnn.keras"), "--images", folder, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "small_cnn" in err and "ViTBackbone" in err and "Traceback" not in err


def test_command_raises_user_errors_for_main_to_print(tmp_path, capsys):
    folder = write_images(str(tmp_path / "imgs"), count=1)
    args = parse(["analyze", str(tmp_path / "missing.keras"), "--images", folder, "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        args.func(args)
    with pytest.raises(ValueError, match="then IMAGES"):
        args = parse(["analyze", str(tmp_path / "missing.keras"), "--out", str(tmp_path)])
        args.func(args)
    assert capsys.readouterr().err == ""
