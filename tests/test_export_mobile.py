"""`cskd export --format litert|openvino`, float and int8: the runtimes' outputs match `model.predict`.

Tolerances (largest difference from `model.predict` on this backend):
LiteRT float32 1e-5 on the distribution, 1e-4 on the mean score; OpenVINO
float32 (CPU, f32 precision) 1e-4 and 1e-3; LiteRT int8 0.05 on the
distribution and 0.5 on the mean score (bins 1..5), also on the labeled
split its export reports on.

The artifacts are traced with TensorFlow; from JAX and torch the three
exports run in one TensorFlow-backend process.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ai_edge_litert = pytest.importorskip("ai_edge_litert.interpreter")
openvino = pytest.importorskip("openvino")

from keras_cskd import cli
from keras_cskd import export
from keras_cskd import recipe
from keras_cskd.data import synthetic
from keras_cskd.models import AestheticScorer
from tests import tiny

BIN_VALUES = [1.0, 2.0, 3.0, 4.0, 5.0]

# The three exports, run in-process on TensorFlow and in one TensorFlow process from the other
# backends (the route `export` itself takes from them, tested with the SavedModel).
EXPORTS = """
import contextlib, io, json, sys
from keras_cskd import cli
printed = io.StringIO()
for command in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(printed):
        assert cli.main(command) == 0, command
print(json.dumps(printed.getvalue()))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The recipe's student at 32 px with peaked outputs, as LiteRT float, LiteRT int8 and OpenVINO files.

    Returns the model, its path, the files and what the int8 export printed.
    """
    keras.utils.set_random_seed(11)
    model = AestheticScorer(recipe.build_backbone("small_cnn", tiny.IMAGE_SIZE), num_bins=5, bin_values=BIN_VALUES)
    kernel, bias = model.score_head.logits.get_weights()
    model.score_head.logits.set_weights([np.random.default_rng(0).normal(0, 3, kernel.shape).astype("float32"), bias])
    folder = tmp_path_factory.mktemp("mobile")
    model_path = str(folder / "scorer.keras")
    model.save(model_path)
    world = synthetic.make_world(
        str(folder / "world"), num_labeled=40, num_unlabeled=0, image_size=48, test_fraction=0.5, seed=1
    )
    files = {name: str(folder / name) for name in ("float.tflite", "int8.tflite", "model.xml")}
    int8 = ["export", model_path, "--format", "litert", "--out", files["int8.tflite"], "--quantize", "int8"]
    int8 += ["--representative", os.path.join(world.ava_root, "images"), "--representative-count", "32"]
    int8 += ["--eval-ava", world.ava_root, "--eval-test-list", world.ava_test_list]
    commands = [
        ["export", model_path, "--format", "litert", "--out", files["float.tflite"]],
        ["export", model_path, "--format", "openvino", "--out", files["model.xml"]],
        int8,
    ]
    if keras.backend.backend() == "tensorflow":
        printed = io.StringIO()
        for command in commands:
            with contextlib.redirect_stdout(printed):
                assert cli.main(command) == 0, command
        printed = printed.getvalue()
    else:
        done = subprocess.run(
            [sys.executable, "-c", EXPORTS, json.dumps(commands)],
            env=dict(os.environ, KERAS_BACKEND="tensorflow"),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        printed = json.loads(done.stdout.strip().splitlines()[-1])
    return model, model_path, files, printed


def peaked_predictions(model, n, seed):
    images = tiny.images(n, seed=seed)
    expected = keras.ops.convert_to_numpy(model.predict(images, verbose=0))
    assert expected.std(axis=-1).min() > 0.05  # Peaked, not uniform: the comparison means something.
    return images, expected


def run_litert(path, images):
    interpreter = ai_edge_litert.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner()
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["images"], "outputs": ["distribution", "mean_score"]}
    }
    result = runner(images=images)
    return result["distribution"], result["mean_score"]


def test_litert_float_matches_predict_for_any_batch_size(exported):
    model, _, files, _ = exported
    for n in (1, 5):
        images, expected = peaked_predictions(model, n, seed=n)
        distribution, mean_score = run_litert(files["float.tflite"], images)
        np.testing.assert_allclose(distribution, expected, atol=1e-5)
        np.testing.assert_allclose(mean_score, expected @ np.array(BIN_VALUES), atol=1e-4)


def test_openvino_matches_predict_for_any_batch_size(exported):
    model, _, files, _ = exported
    assert os.path.exists(files["model.xml"][:-4] + ".bin")
    compiled = openvino.Core().compile_model(files["model.xml"], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert [sorted(o.get_names()) for o in compiled.outputs] == [["distribution"], ["mean_score"]]
    for n in (1, 5):
        images, expected = peaked_predictions(model, n, seed=n)
        result = compiled({"images": images})
        np.testing.assert_allclose(result[compiled.output("distribution")], expected, atol=1e-4)
        np.testing.assert_allclose(result[compiled.output("mean_score")], expected @ np.array(BIN_VALUES), atol=1e-3)


def test_int8_is_integer_inside_close_to_float_and_reports_its_quality(exported):
    model, _, files, printed = exported
    interpreter = ai_edge_litert.Interpreter(model_path=files["int8.tflite"])
    kinds = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in kinds and interpreter.get_input_details()[0]["dtype"] == np.float32
    assert os.path.getsize(files["int8.tflite"]) < 0.5 * os.path.getsize(files["float.tflite"])
    images, expected = peaked_predictions(model, 5, seed=5)
    distribution, mean_score = run_litert(files["int8.tflite"], images)
    np.testing.assert_allclose(distribution, expected, atol=0.05)
    np.testing.assert_allclose(mean_score, expected @ np.array(BIN_VALUES), atol=0.5)
    assert "Quality on 20 images of the 'test' split" in printed, printed
    rows = {" ".join(line.split()[:2]): line.split()[2:] for line in printed.splitlines() if line.startswith("  ")}
    for row in ("Keras float32", "LiteRT int8"):
        srcc, plcc = (float(v) for v in rows[row])
        assert -1 <= srcc <= 1 and -1 <= plcc <= 1, printed
    assert float(printed.split("largest mean-score difference:")[1].split()[0]) < 0.5


def test_wrong_shapes_raise_errors_not_crashes(exported):
    _, _, files, _ = exported
    interpreter = ai_edge_litert.Interpreter(model_path=files["float.tflite"])
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    with pytest.raises(ValueError):
        interpreter.set_tensor(index, np.zeros((1, 16, 16, 3), "float32"))
    with pytest.raises(RuntimeError, match="only allows mutating unknown dimensions"):
        interpreter.resize_tensor_input(index, [2, 16, 16, 3], strict=True)
    compiled = openvino.Core().compile_model(files["model.xml"], "CPU")
    with pytest.raises(RuntimeError):
        compiled({"images": np.zeros((1, 16, 16, 3), "float32")})


def test_bad_outputs_and_options_fail_before_tracing(exported, tmp_path, capsys):
    _, model_path, _, _ = exported
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for fmt, name in (("litert", "m.tflite"), ("openvino", "m.xml")):
        assert cli.main(["export", model_path, "--format", fmt, "--out", str(blocker / name)]) == 1
        assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"ending in \.tflite"):
        export.export(model_path, str(tmp_path / "m.onnx"), format="litert")
    with pytest.raises(ValueError, match=r"ending in \.xml"):
        export.export(model_path, str(tmp_path / "m"), format="openvino")
    with pytest.raises(ValueError, match="representative"):
        export.export(model_path, str(tmp_path / "m.tflite"), format="litert", quantize="int8")
    with pytest.raises(ValueError, match="litert"):
        export.export(model_path, str(tmp_path / "m.xml"), format="openvino", eval_ava=str(tmp_path))
