import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_cskd import cli
from keras_cskd import export
from keras_cskd.models import AestheticScorer
from tests import tiny

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


def expected_outputs(model, paths):
    import tensorflow as tf

    from keras_cskd.data import evaluation_view

    views = np.stack(
        [evaluation_view(tf.io.decode_image(open(p, "rb").read(), channels=3), tiny.IMAGE_SIZE).numpy() for p in paths]
    )
    distribution = keras.ops.convert_to_numpy(model(views))
    return distribution, distribution @ np.arange(1, 11)


def test_saved_model_serves_image_bytes_in_a_fresh_process(tmp_path):
    model = AestheticScorer(tiny.conv_backbone())
    model_path = str(tmp_path / "scorer.keras")
    model.save(model_path)
    out = str(tmp_path / "serving" / "1")
    export.export(model_path, out)

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

    paths = write_pngs(str(tmp_path / "imgs"), [(32, 32), (50, 41), (20, 70)])
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    served = json.loads(
        subprocess.run(
            [sys.executable, "-c", SERVE, out, json.dumps(paths)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    distribution, mean = expected_outputs(model, paths)
    np.testing.assert_allclose(served["distribution"], distribution, atol=1e-4)
    np.testing.assert_allclose(served["mean_score"], mean, atol=1e-3)
    assert served["bad"] == "rejected"
    np.testing.assert_allclose(served["after"], mean[:1], atol=1e-3)


def test_export_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="Model not found"):
        export.export(str(tmp_path / "missing.keras"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="Unknown export format"):
        export.export(str(tmp_path / "missing.keras"), str(tmp_path / "out"), format="tflite")


def test_predict_writes_csv_and_skips_unreadable_files(tmp_path, capsys):
    model = AestheticScorer(tiny.conv_backbone())
    model_path = str(tmp_path / "scorer.keras")
    model.save(model_path)
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
    np.testing.assert_allclose([by_path[p] for p in sorted(paths)], mean, atol=1e-3)
    assert "skipped 1 unreadable" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "nope.keras"), folder]) == 1
