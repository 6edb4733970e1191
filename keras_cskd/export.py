"""Export a trained aesthetics model for serving, mobile and edge runtimes.

| format | `out` | input | preprocessing inside | engine |
| --- | --- | --- | --- | --- |
| `tf_saved_model` | a folder | `image_bytes`, a batch of encoded images | all of `preprocess` | TensorFlow |
| `onnx` | `*.onnx` | `images`, float32 (batch, H, W, 3), 0..255 | normalization | PyTorch |
| `litert` | `*.tflite` | `images`, float32 (batch, H, W, 3), 0..255 | normalization | TensorFlow |
| `openvino` | `*.xml` (+ `.bin`) | `images`, float32 (batch, H, W, 3), 0..255 | normalization | TensorFlow |

Every artifact returns `distribution` (batch, bins) and `mean_score` (batch,);
the batch size is dynamic, H and W are the model's (or `image_size`).

**One preprocessing.** `preprocess(image_bytes, look)` is the one definition of
"image bytes -> model input": `keras_cskd.data.decode_image` (JPEG, PNG, BMP,
GIF, WebP; EXIF orientation applied; grayscale, palette, alpha, CMYK and
16-bit converted to 8-bit RGB) then `keras_cskd.data.crop_resize` in the
evaluation `Look` (center crop 0.875, bilinear resize). Training streams,
evaluation and `cskd predict` decode with the same `decode_image` and view
with the same `crop_resize`; the SavedModel runs `preprocess` inside its
graph. The pixel formats (ONNX, LiteRT, OpenVINO) leave it to the caller:
apply `preprocess` (or the equivalent) to match the other paths' scores.

**Engines.** The SavedModel, LiteRT and OpenVINO artifacts are traced from a
TensorFlow graph of the model; a model trained on JAX or PyTorch is loaded
from its `.keras` file in a TensorFlow-backend subprocess, so every format
works whatever `KERAS_BACKEND` is (TensorFlow is always installed). LiteRT
files are made by TensorFlow's converter (`tf.lite.TFLiteConverter`) with
LiteRT's builtin ops only, so any LiteRT runtime runs them; OpenVINO IR by
`openvino.convert_model` (`pip install "keras-cskd[export]"`), in float32.
Keras's own `Model.export(format="litert")` is not used from the other
backends: it has no JAX route and on torch it needs `litert-torch` and fixes
the batch size. ONNX is made by PyTorch's exporter (`torch.onnx.export(dynamo=
True)`, which needs `onnx` and `onnxscript`: `pip install "keras-cskd[onnx]"`),
in-process on torch, otherwise in a torch-backend subprocess: on TensorFlow,
tf2onnx cannot convert the exact GELU (`Erfc`) of the ViT/CLIP backbones; on
JAX, jax2onnx pulls in flax, optax and orbax; and on torch, `Model.export`
falls back to the TorchScript exporter for a dynamic batch, which fails on
Keras variables.

**int8.** `quantize="int8"` (LiteRT only) applies full-integer post-training
quantization: weights and activations int8, calibrated on `representative`
(a folder or list file of unlabeled images, the first `representative_count`
of which go through `preprocess`); the input and outputs stay float32, so the
file is called like the float one. With `eval_ava` (an AVA-format root),
`export` also scores the test split with the Keras model and the LiteRT file
and returns their SRCC and PLCC side by side (`summary["quality"]`).

A SavedModel request with bytes that do not decode fails with
`INVALID_ARGUMENT`; the server keeps running.

Example:
>>> export("runs/demo/distill/student.keras", "serving/aesthetics/1")  # doctest: +SKIP
>>> export("runs/demo/distill/student.keras", "student.tflite", format="litert")  # doctest: +SKIP
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_cskd.layers import bin_values_for
from keras_cskd.models import AestheticScorer

FORMATS = ("tf_saved_model", "onnx", "litert", "openvino")
QUANTIZATIONS = (None, "int8")
# Which backend traces each format, and what `out` must end with.
ENGINES = {"tf_saved_model": "tensorflow", "onnx": "torch", "litert": "tensorflow", "openvino": "tensorflow"}
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite", "openvino": ".xml"}
EXPORT_INSTALL = 'pip install "keras-cskd[export]"'
ONNX_INSTALL = 'pip install "keras-cskd[onnx]"'
ONNX_EXPORT_BACKEND = "torch"
# The summary line the export subprocess prints for its parent.
_SUMMARY = "keras_cskd.export summary: "


def _image_size(model, image_size):
    shape = model.input_shape
    size = image_size or (shape[1], shape[2])
    if size[0] is None or size[1] is None:
        raise ValueError("The model takes any image size; give image_size (e.g. --image-size 224).")
    return int(size[0]), int(size[1])


def _bin_values(model):
    num_bins = int(model.output_shape[-1])
    return bin_values_for(num_bins, getattr(model, "bin_values", None))


# === Preprocessing ===


def preprocess(image_bytes, look):
    """Encoded image bytes -> the model's float32 input `(H, W, 3)`, values 0..255.

    The one definition shared by evaluation, `cskd predict` and the
    SavedModel: `keras_cskd.data.decode_image` (EXIF orientation, colour
    conversion to 8-bit RGB) then `keras_cskd.data.crop_resize` in `look`
    (an evaluation `keras_cskd.data.Look`). Pure TensorFlow ops, so it runs in
    tf.data, eagerly and inside a SavedModel graph. Feed its output to the
    ONNX, LiteRT and OpenVINO files.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> from keras_cskd.data import Look
    >>> png = tf.io.encode_png(np.zeros((40, 60, 3), np.uint8))
    >>> preprocess(png, Look(32, dtype="float32")).shape
    TensorShape([32, 32, 3])
    """
    from keras_cskd.data import crop_resize
    from keras_cskd.data import decode_image

    return crop_resize(decode_image(image_bytes), look)


def _look(size, crop_fraction=0.875):
    from keras_cskd.data import Look

    return Look(size, crop_fraction=crop_fraction, dtype="float32")


def _pixel_function(model, size):
    """A tf.function `images` (batch, H, W, 3) float32 -> {distribution, mean_score}."""
    import tensorflow as tf

    values = tf.constant(_bin_values(model), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec((None, *size, 3), tf.float32, name="images")])
    def serve(images):
        distribution = tf.cast(model(images, training=False), tf.float32)
        return {"distribution": distribution, "mean_score": tf.reduce_sum(distribution * values, axis=-1)}

    return serve


def _require_tensorflow_backend(what):
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"{what}() traces with TensorFlow; use export() from another backend.")


# === SavedModel ===


def saved_model(model, out, image_size=None, crop_fraction=0.875):
    """Write `model` as a SavedModel serving image bytes (TensorFlow backend only)."""
    import tensorflow as tf

    _require_tensorflow_backend("saved_model")
    size = _image_size(model, image_size)
    look = _look(size, crop_fraction)
    values = tf.constant(_bin_values(model), tf.float32)

    def serve(image_bytes):
        images = tf.map_fn(
            lambda data: preprocess(data, look),
            image_bytes,
            fn_output_signature=tf.TensorSpec((*size, 3), tf.float32),
        )
        distribution = tf.cast(model(images, training=False), tf.float32)
        return {"distribution": distribution, "mean_score": tf.reduce_sum(distribution * values, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec(shape=(None,), dtype=tf.string, name="image_bytes")],
    )
    archive.write_out(out, verbose=False)
    return out


# === LiteRT ===


def representative_images(paths, image_size, count=300, crop_fraction=0.875):
    """Up to `count` images (evenly spaced over the sorted files) through `preprocess`, unreadable ones skipped.

    Args:
        paths: a folder, list file or image file, or a list of them.
    """
    import tensorflow as tf

    from keras_cskd.data import list_images

    files = list_images(*([paths] if isinstance(paths, (str, os.PathLike)) else paths))
    if not files:
        raise ValueError(f"No images found for the representative dataset in {paths}")
    picked = [files[int(i)] for i in np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).astype(int))]
    look = _look(image_size, crop_fraction)
    images = []
    for path in picked:
        try:
            images.append(preprocess(tf.io.read_file(path), look).numpy())
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            continue
    if not images:
        raise ValueError(f"None of the {len(picked)} representative images could be decoded: {paths}")
    return np.stack(images)


def litert_model(model, out, image_size=None, quantize=None, representative=None, representative_count=300):
    """Write `model` as a LiteRT `.tflite` file: `images` (batch, H, W, 3) 0..255 in (TensorFlow backend only).

    `quantize="int8"` calibrates full-integer quantization on `representative`
    (images or a path for `representative_images`); input and outputs stay float32.
    """
    import tensorflow as tf

    _require_tensorflow_backend("litert_model")
    size = _image_size(model, image_size)
    serve = _pixel_function(model, size)
    # Through a SavedModel, as Keras' own LiteRT exporter: the converter then freezes the
    # variables into constants, which calibration needs.
    staging = tempfile.mkdtemp(prefix="keras_cskd_litert_")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.write_out(staging, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(staging)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "int8":
        if representative is None:
            raise ValueError("int8 quantization needs representative images (--representative PATH).")
        images = representative
        if not isinstance(images, np.ndarray):
            images = representative_images(representative, size, representative_count)
        images = images.astype("float32")

        def calibration():
            for image in images:
                yield [image[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantize is not None:
        raise ValueError(f"Unknown quantization {quantize!r}; use int8.")
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # The converter raises its own ConverterError with the op that failed.
        raise RuntimeError(f"LiteRT conversion failed (builtin ops only): {str(error).strip()[-600:]}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with open(out, "wb") as file:
        file.write(flatbuffer)
    return out


def litert_predict(path, images, batch_size=32, num_threads=None):
    """Outputs of a `.tflite` file on `images` (N, H, W, 3) float32: (distribution, mean_score).

    `num_threads` defaults to every core of this machine (LiteRT's own default is one).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise RuntimeError(f"Running a LiteRT file needs ai-edge-litert: {EXPORT_INSTALL}") from error
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count())
    runner = interpreter.get_signature_runner()
    distributions, means = [], []
    for start in range(0, len(images), batch_size):
        result = runner(images=np.ascontiguousarray(images[start : start + batch_size], "float32"))
        distributions.append(result["distribution"])
        means.append(result["mean_score"])
    return np.concatenate(distributions), np.concatenate(means)


# === OpenVINO ===


def _import_openvino():
    try:
        import openvino
    except ImportError as error:
        raise RuntimeError(f"OpenVINO export needs the openvino package: {EXPORT_INSTALL}") from error
    return openvino


def openvino_model(model, out, image_size=None):
    """Write `model` as OpenVINO IR (`out` `.xml` plus its `.bin`), float32 (TensorFlow backend only)."""
    _require_tensorflow_backend("openvino_model")
    ov = _import_openvino()
    size = _image_size(model, image_size)
    ir = ov.convert_model(_pixel_function(model, size).get_concrete_function())
    ov.save_model(ir, out, compress_to_fp16=False)
    return out


# === ONNX ===


def _require_onnx_exporter():
    """Fail early, with what to install, if the ONNX exporter's packages are missing."""
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise RuntimeError(
            f"ONNX export needs {' and '.join(missing)} (PyTorch's ONNX exporter uses them): {ONNX_INSTALL}"
        )


def onnx_model(model, out, image_size=None):
    """Write `model` as a `.onnx` file: `images` (batch, H, W, 3) 0..255 in (torch backend only)."""
    if keras.backend.backend() != ONNX_EXPORT_BACKEND:
        raise RuntimeError("onnx_model() exports with PyTorch's exporter; use export() from another backend.")
    _require_onnx_exporter()
    import torch

    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
        raise RuntimeError(f"ONNX export needs torch>=2.6 (found {torch.__version__}): {ONNX_INSTALL}")
    size = _image_size(model, image_size)
    values = keras.ops.convert_to_tensor(_bin_values(model), "float32")  # On Keras' device, like the weights.

    class Serve(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images):
            distribution = self.model(images, training=False).to(torch.float32)
            return distribution, (distribution * values).sum(dim=-1)

    serve = Serve().eval()
    # A batch of 2: torch.export specializes a size-1 dimension to a constant.
    example = keras.ops.zeros((2, *size, 3), "float32")
    with torch.no_grad():
        program = torch.onnx.export(
            serve,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["distribution", "mean_score"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    program.optimize()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    program.save(out)
    return out


# === Quality of an artifact ===


def _correlations(predicted, target):
    from scipy import stats

    return {
        "srcc": float(stats.spearmanr(predicted, target).statistic),
        "plcc": float(stats.pearsonr(predicted, target).statistic),
    }


def litert_quality(model, tflite_path, ava_root, image_size=None, split="test", test_list=None):
    """SRCC/PLCC of the Keras model and the LiteRT file on an AVA-format split, both fed by `preprocess`."""
    import tensorflow as tf

    from keras_cskd.data import read_ava

    size = _image_size(model, image_size)
    records = read_ava(ava_root, test_list=test_list).select(split)
    look = _look(size)
    images, targets = [], []
    for path, target in zip(records.paths, records.mean_scores):
        try:
            images.append(preprocess(tf.io.read_file(path), look).numpy())
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            continue
        targets.append(target)
    if len(images) < 3:
        raise ValueError(f"{ava_root}: fewer than 3 readable images in the {split!r} split")
    images = np.stack(images)
    keras_scores = model.predict(images, batch_size=32, verbose=0) @ np.asarray(_bin_values(model), "float32")
    _, litert_scores = litert_predict(tflite_path, images)
    return {
        "split": split,
        "images": len(images),
        "keras": _correlations(keras_scores, targets),
        "litert": _correlations(litert_scores, targets),
        "max_abs_score_difference": float(np.max(np.abs(keras_scores - litert_scores))),
    }


# === Entry point ===


def _check_output(out, format):
    """A clear error, before any tracing, when `out` has the wrong form or cannot be written."""
    suffix = SUFFIXES.get(format)
    if suffix and not str(out).endswith(suffix):
        raise ValueError(f"{format} export writes a {suffix} file; give a path ending in {suffix}, not {out!r}.")
    target = os.path.abspath(out)
    if suffix is None and os.path.exists(target) and not os.path.isdir(target):
        raise OSError(f"Cannot write {out}: it is a file, and a SavedModel is a folder")
    if suffix and os.path.isdir(target):
        raise OSError(f"Cannot write {out}: it is a folder")
    folder = target if suffix is None else os.path.dirname(target)
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OSError(f"Cannot write {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise OSError(f"Cannot write {out}: {existing} is not writable")
    os.makedirs(folder, exist_ok=True)


def _files(out):
    """Each file an export wrote, with its size in bytes."""
    if os.path.isdir(out):
        return {os.path.join(d, f): os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs}
    files = {out: os.path.getsize(out)}
    if str(out).endswith(".xml") and os.path.exists(out[:-4] + ".bin"):
        files[out[:-4] + ".bin"] = os.path.getsize(out[:-4] + ".bin")
    return files


def export(
    model_path,
    out,
    format="tf_saved_model",
    image_size=None,
    quantize=None,
    representative=None,
    representative_count=300,
    eval_ava=None,
    eval_test_list=None,
):
    """Export a `.keras` aesthetics model; works from any backend.

    Returns:
        dict summary: `format`, `out`, `files` (path -> bytes), `quantize`,
        and with `eval_ava` (LiteRT only), `quality`: the test split's
        `images`, `keras` and `litert` `{srcc, plcc}` and the largest
        difference of their mean scores.
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; use one of {', '.join(FORMATS)}.")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantize!r}; use int8.")
    if quantize and format != "litert":
        raise ValueError(f"--quantize {quantize} is offered for litert only, not {format}.")
    if quantize and not representative:
        raise ValueError("int8 quantization needs representative images: --representative FOLDER|LIST_FILE.")
    if eval_ava and format != "litert":
        raise ValueError(f"--eval-ava compares the Keras model with a litert file, not {format}.")
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"Model not found: {model_path}")
    _check_output(out, format)
    if format == "onnx":
        _require_onnx_exporter()
    if format == "openvino":
        _import_openvino()
    engine = ENGINES[format]
    if keras.backend.backend() != engine:
        return _export_in_subprocess(
            engine,
            model_path,
            out,
            format,
            image_size,
            quantize,
            representative,
            representative_count,
            eval_ava,
            eval_test_list,
        )
    model = keras.saving.load_model(model_path)
    if isinstance(model, AestheticScorer):
        model = model.for_inference()  # The artifact computes the same with fewer layers.
    summary = {"format": format, "out": str(out), "quantize": quantize}
    if format == "onnx":
        onnx_model(model, out, image_size=image_size)
    elif format == "litert":
        litert_model(model, out, image_size, quantize, representative, representative_count)
    elif format == "openvino":
        openvino_model(model, out, image_size=image_size)
    else:
        saved_model(model, out, image_size=image_size)
    summary["files"] = _files(str(out))
    if eval_ava:
        summary["quality"] = litert_quality(model, out, eval_ava, image_size, test_list=eval_test_list)
    return summary


def _export_in_subprocess(
    engine,
    model_path,
    out,
    format,
    image_size,
    quantize,
    representative,
    representative_count,
    eval_ava,
    eval_test_list,
):
    command = [sys.executable, "-m", "keras_cskd.export", model_path, str(out), "--format", format]
    if image_size:
        command += ["--image-size", str(image_size[0]), str(image_size[1])]
    if quantize:
        command += ["--quantize", quantize, "--representative", str(representative)]
        command += ["--representative-count", str(representative_count)]
    if eval_ava:
        command += ["--eval-ava", str(eval_ava)]
    if eval_test_list:
        command += ["--eval-test-list", str(eval_test_list)]
    env = dict(os.environ, KERAS_BACKEND=engine)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = result.stdout.splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith(_SUMMARY):
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        detail = errors[-1][len("error: ") :] if errors else result.stderr[-2000:]
        raise RuntimeError(f"Export of {model_path} to {format} with the {engine} backend failed: {detail}")
    return json.loads(lines[-1][len(_SUMMARY) :])


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_cskd.export")
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--format", default="tf_saved_model", choices=FORMATS)
    parser.add_argument("--image-size", type=int, nargs=2)
    parser.add_argument("--quantize", choices=[q for q in QUANTIZATIONS if q])
    parser.add_argument("--representative")
    parser.add_argument("--representative-count", type=int, default=300)
    parser.add_argument("--eval-ava")
    parser.add_argument("--eval-test-list")
    args = parser.parse_args(argv)
    try:
        summary = export(
            args.model,
            args.out,
            args.format,
            tuple(args.image_size) if args.image_size else None,
            quantize=args.quantize,
            representative=args.representative,
            representative_count=args.representative_count,
            eval_ava=args.eval_ava,
            eval_test_list=args.eval_test_list,
        )
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(_SUMMARY + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
