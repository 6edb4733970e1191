"""`cskd predict` and the SavedModel: the same pixels, hence the same scores, for every kind of file."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_cskd import backbones
from keras_cskd import cli
from keras_cskd import export
from keras_cskd.models import AestheticScorer
from tests import tiny

# Tolerance between paths that see the same pixels (the model on this backend
# against TensorFlow's graph of it): distribution 1e-4, mean score 1e-3.
ATOL_DISTRIBUTION, ATOL_SCORE = 1e-4, 1e-3

SERVE = """
import io, json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
serve = loaded.signatures["serving_default"]
files = json.loads(sys.argv[2])
out = serve(image_bytes=tf.constant([open(f, "rb").read() for f in files]))
result = {k: v.numpy().tolist() for k, v in out.items()}
try:
    serve(image_bytes=tf.constant([open(files[0], "rb").read(), b"not an image"]))
    result["bad"] = "accepted"
except tf.errors.InvalidArgumentError:
    result["bad"] = "rejected"
# The process still serves after the bad request.
result["after"] = serve(image_bytes=tf.constant([open(files[0], "rb").read()]))["mean_score"].numpy().tolist()
print(json.dumps(result))
"""


def write_pngs(folder, sizes):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index, (h, w) in enumerate(sizes):
        pixels = np.random.default_rng(index).integers(0, 255, (h, w, 3), dtype="uint8")
        path = os.path.join(folder, f"{index}.png")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def write_awkward_images(folder):
    """The files training and serving used to see differently, made with Pillow: name -> path."""
    os.makedirs(folder, exist_ok=True)
    y, x = np.mgrid[0:40, 0:24]
    # A smooth, asymmetric picture (JPEG keeps it), 40 high and 24 wide.
    upright = np.stack([x * 10, y * 6, (x + y) * 4], axis=-1).clip(0, 255).astype("uint8")
    upright[:8, :12] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the camera stored the picture sideways.
    files = {
        "exif_rotated.jpg": (Image.fromarray(np.rot90(upright, 1)), {"exif": exif.tobytes(), "quality": 95}),
        "cmyk.jpg": (Image.fromarray(upright).convert("CMYK"), {"quality": 95}),
        "grayscale.png": (Image.fromarray(upright[..., 1]), {}),
        "palette.png": (Image.fromarray(upright).convert("P", palette=Image.Palette.ADAPTIVE), {}),
        "16bit.png": (Image.fromarray(upright[..., 0].astype(np.uint16) * 257), {}),
    }
    paths = {}
    for name, (image, options) in files.items():
        paths[name] = os.path.join(folder, name)
        image.save(paths[name], **options)
    assert Image.open(paths["16bit.png"]).mode == "I;16" and Image.open(paths["cmyk.jpg"]).mode == "CMYK"
    return paths


def expected_outputs(model, paths):
    """The model on `export.preprocess` of each file: what evaluation feeds it."""
    import tensorflow as tf

    from keras_cskd.data import Look

    look = Look(tiny.IMAGE_SIZE, dtype="float32")
    views = np.stack([export.preprocess(tf.io.read_file(p), look).numpy() for p in paths])
    distribution = keras.ops.convert_to_numpy(model(views))
    return distribution, distribution @ np.arange(1, 11)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A scorer with peaked outputs, its SavedModel, and the files it is served."""
    keras.utils.set_random_seed(3)
    # export() folds the batch norm into the convolution: what it serves must still be this model.
    backbone = tiny.conv_backbone(batch_norm=True)
    backbones.set_batch_norm_momentum(backbone, 0.0)  # One training call sets the moving statistics.
    backbone(np.random.default_rng(1).uniform(0, 255, (16, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE, 3)), training=True)
    model = AestheticScorer(backbone)
    kernel, bias = model.score_head.logits.get_weights()
    model.score_head.logits.set_weights([np.random.default_rng(0).normal(0, 3, kernel.shape).astype("float32"), bias])
    folder = tmp_path_factory.mktemp("export")
    model_path = str(folder / "scorer.keras")
    model.save(model_path)
    out = str(folder / "serving" / "1")
    export.export(model_path, out)
    pngs = write_pngs(str(folder / "imgs"), [(32, 32), (50, 41), (20, 70)])
    awkward = write_awkward_images(str(folder / "imgs"))
    files = pngs + list(awkward.values())
    served = json.loads(
        subprocess.run(
            [sys.executable, "-c", SERVE, out, json.dumps(files)],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, KERAS_BACKEND="tensorflow"),
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return model, model_path, out, files, awkward, served


def test_saved_model_signature(exported):
    _, _, out, _, _, _ = exported
    shown = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
            "show",
            "--dir",
            out,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "image_bytes" in shown and "DT_STRING" in shown
    assert "distribution" in shown and "mean_score" in shown


def test_saved_model_scores_as_evaluation_and_rejects_bad_bytes(exported):
    model, _, _, files, _, served = exported
    distribution, mean = expected_outputs(model, files)
    assert distribution.std(axis=-1).min() > 0.02  # Peaked: a different image would show.
    np.testing.assert_allclose(served["distribution"], distribution, atol=ATOL_DISTRIBUTION)
    np.testing.assert_allclose(served["mean_score"], mean, atol=ATOL_SCORE)
    assert served["bad"] == "rejected"
    np.testing.assert_allclose(served["after"], mean[:1], atol=ATOL_SCORE)


def test_predict_and_saved_model_see_the_same_pixels(exported, tmp_path):
    """EXIF-rotated, CMYK, grayscale, palette and 16-bit files score alike in `cskd predict` and the SavedModel."""
    import tensorflow as tf

    from keras_cskd.data import evaluation_view

    model, model_path, _, files, awkward, served = exported
    out_csv = str(tmp_path / "scores.csv")
    assert cli.main(["predict", model_path, *awkward.values(), "--csv", out_csv]) == 0
    predicted = {r["path"]: float(r["mean_score"]) for r in csv.DictReader(open(out_csv))}
    by_file = dict(zip(files, served["mean_score"]))
    for path in awkward.values():
        assert abs(predicted[path] - by_file[path]) < ATOL_SCORE, path
    # The orientation matters to this model: decoding without it (as serving once did) scores differently.
    rotated = awkward["exif_rotated.jpg"]
    sideways = evaluation_view(tf.io.decode_image(open(rotated, "rb").read(), channels=3), tiny.IMAGE_SIZE)
    sideways_score = keras.ops.convert_to_numpy(model(sideways[None].numpy()))[0] @ np.arange(1, 11)
    assert abs(sideways_score - by_file[rotated]) > 10 * ATOL_SCORE


def test_export_errors_are_clear(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="Model not found"):
        export.export(str(tmp_path / "missing.keras"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="Unknown export format"):
        export.export(str(tmp_path / "missing.keras"), str(tmp_path / "out"), format="tflite")
    with pytest.raises(ValueError, match="litert only"):
        export.export(str(tmp_path / "missing.keras"), str(tmp_path / "o.onnx"), format="onnx", quantize="int8")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    model_path = str(tmp_path / "scorer.keras")
    AestheticScorer(tiny.conv_backbone()).save(model_path)
    assert cli.main(["export", model_path, "--out", str(blocker / "serving" / "1")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_predict_writes_csv_and_skips_unreadable_files(exported, tmp_path, capsys):
    model, model_path, _, _, _, _ = exported
    folder = str(tmp_path / "imgs")
    paths = write_pngs(folder, [(32, 32), (40, 36)])
    with open(os.path.join(folder, "broken.jpg"), "wb") as file:
        file.write(b"\xff\xd8 truncated")
    out_csv = str(tmp_path / "scores.csv")
    assert cli.main(["predict", model_path, folder, "--csv", out_csv]) == 0
    rows = list(csv.DictReader(open(out_csv)))
    assert sorted(r["path"] for r in rows) == sorted(paths)
    _, mean = expected_outputs(model, sorted(paths))
    by_path = {r["path"]: float(r["mean_score"]) for r in rows}
    np.testing.assert_allclose([by_path[p] for p in sorted(paths)], mean, atol=ATOL_SCORE)
    assert "skipped 1 unreadable" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "nope.keras"), folder]) == 1


def test_predict_refuses_bad_batch_size_and_a_folder_of_unreadable_files(exported, tmp_path, capsys):
    _, model_path, _, _, _, _ = exported
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"\xff\xd8 truncated")
    out_csv = str(tmp_path / "scores.csv")
    assert cli.main(["predict", model_path, str(folder), "--csv", out_csv, "--batch-size", "0"]) == 1
    assert "--batch-size must be a positive number" in capsys.readouterr().err
    assert cli.main(["predict", model_path, str(folder), "--csv", out_csv]) == 1
    err = capsys.readouterr().err
    assert "no image could be read: skipped all 2 file(s)" in err and len(err.strip().splitlines()) <= 2
    assert not os.path.exists(out_csv)


def test_predict_resume_keeps_scored_rows_and_scores_the_rest(exported, tmp_path, capsys):
    """A run killed mid-row leaves a cut-off last line; --resume drops it and scores what is missing."""
    model, model_path, _, _, _, _ = exported
    folder = str(tmp_path / "imgs")
    paths = write_pngs(folder, [(32, 32), (40, 36), (36, 40), (48, 32)])
    out_csv = str(tmp_path / "scores.csv")
    assert cli.main(["predict", model_path, folder, "--csv", out_csv, "--batch-size", "2"]) == 0
    full = open(out_csv).read()
    lines = full.splitlines(keepends=True)
    with open(out_csv, "w") as file:  # header, one whole row, half of the next
        file.write(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    assert cli.main(["predict", model_path, folder, "--csv", out_csv, "--resume"]) == 0
    assert "1 image(s) already in" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out_csv)))
    assert sorted(r["path"] for r in rows) == sorted(paths)
    assert sorted(open(out_csv).read().splitlines()) == sorted(full.splitlines())
    assert cli.main(["predict", model_path, folder, "--csv", out_csv, "--resume"]) == 0
    assert len(list(csv.DictReader(open(out_csv)))) == len(paths)
