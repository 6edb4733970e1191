"""`cskd export --format onnx`: a real .onnx file that ONNX Runtime runs like `model.predict`.

Whatever KERAS_BACKEND runs the tests, the export itself goes through
PyTorch's exporter (in-process on torch, a torch-backend subprocess
otherwise), so this file checks both routes across the three backends.
"""

import sys

import keras
import numpy as np
import onnx
import onnxruntime
import pytest

from keras_cskd import cli
from keras_cskd import export
from keras_cskd import recipe
from keras_cskd.models import AestheticScorer
from tests import tiny

BIN_VALUES = [0.0, 2.5, 5.0, 7.5, 10.0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The recipe's student (its own rescaling, BatchNorm) at 32 px, with peaked outputs, exported by the CLI.

    BatchNorm's fresh moving statistics differ from any batch's, so an export
    in training mode would not match `predict`.
    """
    keras.utils.set_random_seed(7)
    backbone = recipe.build_backbone("small_cnn", tiny.IMAGE_SIZE)
    model = AestheticScorer(backbone, num_bins=len(BIN_VALUES), bin_values=BIN_VALUES)
    # Random score weights give near-uniform distributions, which would match
    # almost anything; sharpen them so a wrong graph shows.
    kernel, bias = model.score_head.logits.get_weights()
    rng = np.random.default_rng(0)
    model.score_head.logits.set_weights([rng.normal(0, 3, kernel.shape).astype("float32"), bias + [0, 1, 0, -1, 0]])
    folder = tmp_path_factory.mktemp("onnx")
    model_path = str(folder / "scorer.keras")
    model.save(model_path)
    out = str(folder / "nested" / "scorer.onnx")
    assert cli.main(["export", model_path, "--format", "onnx", "--out", out]) == 0
    return model, model_path, out


def test_onnx_runtime_matches_predict_for_any_batch_size(exported):
    model, _, out = exported
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_inputs()[0].shape[1:] == [tiny.IMAGE_SIZE, tiny.IMAGE_SIZE, 3]
    assert [o.name for o in session.get_outputs()] == ["distribution", "mean_score"]
    for n in (1, 5):  # The exporter traced a batch of 2; the batch is dynamic.
        images = tiny.images(n, seed=n)
        expected = keras.ops.convert_to_numpy(model.predict(images, verbose=0))
        assert expected.std(axis=-1).min() > 0.05  # Peaked, not uniform: the comparison means something.
        distribution, mean_score = session.run(None, {"images": images})
        assert distribution.shape == (n, len(BIN_VALUES)) and mean_score.shape == (n,)
        np.testing.assert_allclose(distribution, expected, atol=1e-4)
        np.testing.assert_allclose(mean_score, expected @ np.array(BIN_VALUES), atol=1e-3)


def test_onnx_file_passes_the_checker(exported):
    _, _, out = exported
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["images"]


def test_onnx_out_must_be_an_onnx_file(exported, tmp_path):
    _, model_path, _ = exported
    with pytest.raises(ValueError, match=r"ending in \.onnx"):
        export.export(model_path, str(tmp_path / "serving" / "1"), format="onnx")


def test_missing_exporter_package_says_what_to_install(exported, tmp_path, monkeypatch, capsys):
    _, model_path, _ = exported
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now raises ImportError.
    out = str(tmp_path / "scorer.onnx")
    with pytest.raises(RuntimeError, match=r'onnxscript.*pip install "keras-cskd\[onnx\]"'):
        export.export(model_path, out, format="onnx")
    assert cli.main(["export", model_path, "--format", "onnx", "--out", out]) == 1
    assert 'pip install "keras-cskd[onnx]"' in capsys.readouterr().err
