"""Export a trained aesthetics model for serving.

`export(model_path, out, format="tf_saved_model")` writes a TF SavedModel
whose `serving_default` signature takes a batch of encoded images (JPEG, PNG,
BMP or GIF bytes, any size) and returns `distribution` (batch, bins) and
`mean_score` (batch,). Decoding, the evaluation view (center crop, resize) and
the model's own normalization all run inside, so TF Serving needs nothing
else. A batch holding bytes that do not decode fails that request with
`INVALID_ARGUMENT`; the server keeps running.

The SavedModel is traced with the TensorFlow backend. A model trained on JAX
or PyTorch is exported by loading its `.keras` file in a TensorFlow-backend
subprocess, so `cskd export` works whatever `KERAS_BACKEND` is.

`format="onnx"` writes one `.onnx` file (`out` must end in `.onnx`). Its
input `images` is a float32 batch (batch, H, W, 3) of raw 0..255 pixels, as
the Keras model takes them (the model's own normalization is inside, the
decoding and evaluation view are not); its outputs are `distribution` (batch,
bins) and `mean_score` (batch,). The batch size is dynamic, H and W are the
model's (or `image_size`). The engine is PyTorch's ONNX exporter
(`torch.onnx.export(dynamo=True)`, which needs `onnx` and `onnxscript`:
`pip install "keras-cskd[onnx]"`) whatever backend trained the model: on the
torch backend it runs in-process, otherwise in a torch-backend subprocess.
Keras' own per-backend exporters are not used: on TensorFlow, tf2onnx cannot
convert the exact GELU (`Erfc`) of the ViT/CLIP backbones; on JAX, jax2onnx
pulls in flax, optax and orbax; and on torch, `Model.export` falls back to the
TorchScript exporter for a dynamic batch, which fails on Keras variables.

Example:
>>> export("runs/demo/distill/student.keras", "serving/aesthetics/1")  # doctest: +SKIP
>>> export("runs/demo/distill/student.keras", "student.onnx", format="onnx")  # doctest: +SKIP
"""

import argparse
import os
import subprocess
import sys

import keras

from keras_cskd.layers import bin_values_for

FORMATS = ("tf_saved_model", "onnx")


def _image_size(model, image_size):
    shape = model.input_shape
    size = image_size or (shape[1], shape[2])
    if size[0] is None or size[1] is None:
        raise ValueError("The model takes any image size; give image_size (e.g. --image-size 224).")
    return int(size[0]), int(size[1])


def _bin_values(model):
    num_bins = int(model.output_shape[-1])
    return bin_values_for(num_bins, getattr(model, "bin_values", None))


def saved_model(model, out, image_size=None, crop_fraction=0.875):
    """Write `model` as a SavedModel serving image bytes (TensorFlow backend only)."""
    import tensorflow as tf

    from keras_cskd.data import evaluation_view

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("saved_model() traces with TensorFlow; use export() from another backend.")
    size = _image_size(model, image_size)
    values = tf.constant(_bin_values(model), tf.float32)

    def decode(image_bytes):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        return evaluation_view(image, size, crop_fraction=crop_fraction)

    def serve(image_bytes):
        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec((*size, 3), tf.float32))
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


ONNX_INSTALL = 'pip install "keras-cskd[onnx]"'
ONNX_EXPORT_BACKEND = "torch"


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


def export(model_path, out, format="tf_saved_model", image_size=None):
    """Export a `.keras` aesthetics model; works from any backend."""
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; use one of {', '.join(FORMATS)}.")
    if format == "onnx" and not str(out).endswith(".onnx"):
        raise ValueError(f"ONNX export writes one file; give a path ending in .onnx, not {out!r}.")
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"Model not found: {model_path}")
    if format == "onnx":
        _require_onnx_exporter()
    engine = {"tf_saved_model": "tensorflow", "onnx": ONNX_EXPORT_BACKEND}[format]
    if keras.backend.backend() != engine:
        command = [sys.executable, "-m", "keras_cskd.export", model_path, str(out), "--format", format]
        if image_size:
            command += ["--image-size", str(image_size[0]), str(image_size[1])]
        env = dict(os.environ, KERAS_BACKEND=engine)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"Export of {model_path} with the {engine} backend failed:\n{result.stderr[-2000:]}")
        return out
    model = keras.saving.load_model(model_path)
    if format == "onnx":
        return onnx_model(model, out, image_size=image_size)
    return saved_model(model, out, image_size=image_size)


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_cskd.export")
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--format", default="tf_saved_model", choices=FORMATS)
    parser.add_argument("--image-size", type=int, nargs=2)
    args = parser.parse_args(argv)
    export(args.model, args.out, args.format, tuple(args.image_size) if args.image_size else None)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
