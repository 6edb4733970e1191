"""Serving latency and throughput of the student in every export format, on this CPU.

Two scorers (random weights; speed does not depend on them): the demo's student
(`[model] student_backbone` of the default config, 32 px) and a
`keras.applications` MobileNetV2 at 224 px, each saved as `.keras` and exported
with `keras_cskd.export.export` to a SavedModel, ONNX, LiteRT (float32 and
int8, calibrated on 64 generated JPEGs) and OpenVINO IR. Then, each in a fresh
process, one after the other in one run:

- Keras `predict_on_batch` of the `.keras` file on tensorflow, jax and torch;
- the SavedModel's `serving_default` (TensorFlow): it takes encoded JPEG bytes
  (a 500x375 photo-sized JPEG), so its figures include decoding and the
  evaluation view;
- ONNX Runtime, the LiteRT interpreter (float32, int8) and OpenVINO (CPU):
  float32 pixels at the model's size.

For each: batch-1 latency (median and 95th percentile over `--runs` calls,
after warm-up calls) and batch-32 throughput (images/s over `--batches`
batches), with each runtime's default threads (all cores) except LiteRT's
interpreter, whose default is one thread and which is given all cores here, and
the artifact's size on disk.

    python benchmarks/serving.py --json benchmarks/serving_results.json
    python benchmarks/serving.py --models demo --runs 50       # a quick look
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = {"demo": 32, "mobilenet_v2": 224}
RUNTIMES = (
    "keras-tensorflow",
    "keras-jax",
    "keras-torch",
    "saved_model",
    "onnx",
    "litert",
    "litert-int8",
    "openvino",
)
ARTIFACTS = {
    "keras-tensorflow": "model.keras",
    "keras-jax": "model.keras",
    "keras-torch": "model.keras",
    "saved_model": "saved_model",
    "onnx": "model.onnx",
    "litert": "model.tflite",
    "litert-int8": "model_int8.tflite",
    "openvino": "model.xml",
}


def build(name, folder):
    """Save the scorer `name` and export it in every format into `folder`."""
    import keras

    from keras_cskd import export
    from keras_cskd import recipe
    from keras_cskd.models import AestheticScorer

    size = MODELS[name]
    spec = recipe.RecipeConfig().model.student_backbone if name == "demo" else "MobileNetV2"
    keras.utils.set_random_seed(0)
    model_path = os.path.join(folder, "model.keras")
    AestheticScorer(recipe.build_backbone(spec, size)).save(model_path)
    calibration = os.path.join(folder, "calibration")
    write_jpegs(calibration, 64, (375, 500))
    for runtime, target in ARTIFACTS.items():
        if runtime.startswith("keras"):
            continue
        format = {"saved_model": "tf_saved_model", "litert-int8": "litert"}.get(runtime, runtime)
        quantize = "int8" if runtime == "litert-int8" else None
        export.export(
            model_path,
            os.path.join(folder, target),
            format=format,
            quantize=quantize,
            representative=calibration if quantize else None,
            representative_count=64,
        )
    return size


def write_jpegs(folder, count, shape):
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        pixels = np.clip(rng.normal(120, 50, (*shape, 3)), 0, 255).astype("uint8")
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:03d}.jpg"), quality=90)


def artifact_bytes(path):
    if os.path.isfile(path):
        total = os.path.getsize(path)
        weights = path[: -len(".xml")] + ".bin" if path.endswith(".xml") else None
        return total + (os.path.getsize(weights) if weights else 0)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# === The timed runtimes (each in its own process) ===


def runner(runtime, path, size):
    """A function batch -> outputs for `runtime`, and the batch maker it takes (pixels or JPEG bytes)."""
    import numpy as np

    rng = np.random.default_rng(0)

    def pixels(n):
        return rng.uniform(0, 255, (n, size, size, 3)).astype("float32")

    if runtime.startswith("keras"):
        import keras

        import keras_cskd  # noqa: F401  (registers the scorer's classes for loading)

        model = keras.saving.load_model(path)
        return model.predict_on_batch, pixels
    if runtime == "saved_model":
        import io

        import tensorflow as tf
        from PIL import Image

        serve = tf.saved_model.load(path).signatures["serving_default"]
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype="uint8")).save(buffer, format="JPEG", quality=90)
        jpeg = buffer.getvalue()
        return (lambda batch: serve(image_bytes=batch)), (lambda n: tf.constant([jpeg] * n))
    if runtime == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return (lambda batch: session.run(None, {"images": batch})), pixels
    if runtime.startswith("litert"):
        from ai_edge_litert.interpreter import Interpreter

        # Every core, as the other runtimes use by default (LiteRT's own default is one thread).
        signature = Interpreter(model_path=path, num_threads=os.cpu_count()).get_signature_runner()
        return (lambda batch: signature(images=batch)), pixels
    if runtime == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(path, "CPU")
        return (lambda batch: compiled(batch)), pixels
    raise ValueError(runtime)


def measure(runtime, path, size, runs, batches):
    import numpy as np

    call, make = runner(runtime, path, size)
    one, many = make(1), make(32)
    for _ in range(10):  # warm-up: compilation, allocation
        call(one)
    call(many)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call(one)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(batches):
        call(many)
    seconds = time.perf_counter() - start
    return {
        "batch1_p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
        "batch1_p95_ms": round(1000 * float(np.percentile(times, 95)), 2),
        "batch32_images_per_s": round(32 * batches / seconds, 1),
    }


def run_child(runtime, path, size, runs, batches):
    environment = dict(os.environ)
    if runtime.startswith("keras-"):
        environment["KERAS_BACKEND"] = runtime[len("keras-") :]
    command = [sys.executable, __file__, "--child", runtime, path, str(size), str(runs), str(batches)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        return {"error": last[:200]}
    return json.loads(lines[-1])


def markdown(report):
    lines = [
        "| model | format | file size | batch 1 p50 | batch 1 p95 | batch 32 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, rows in report["models"].items():
        for runtime, row in rows.items():
            if "error" in row:
                lines.append(f"| {name} | {runtime} | | {row['error']} | | |")
                continue
            lines.append(
                f"| {name} ({MODELS[name]} px) | {runtime} | {row['megabytes']:.2f} MB | {row['batch1_p50_ms']:.2f} ms"
                f" | {row['batch1_p95_ms']:.2f} ms | {row['batch32_images_per_s']:.0f} images/s |"
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: demo, mobilenet_v2")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--runs", type=int, default=200, help="batch-1 calls timed per runtime")
    parser.add_argument("--batches", type=int, default=20, help="batch-32 calls timed per runtime")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        runtime, path, size, runs, batches = args.child
        print(json.dumps(measure(runtime, path, int(size), int(runs), int(batches))))
        return

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "load_average_before": round(os.getloadavg()[0], 2),
        "runs": args.runs,
        "batches": args.batches,
        "models": {},
    }
    work = tempfile.mkdtemp(prefix="cskd_serving_")
    for name in args.models.split(","):
        folder = os.path.join(work, name)
        os.makedirs(folder)
        size = build(name, folder)
        rows = {}
        for runtime in args.runtimes.split(","):
            path = os.path.join(folder, ARTIFACTS[runtime])
            rows[runtime] = run_child(runtime, path, size, args.runs, args.batches)
            rows[runtime]["megabytes"] = round(artifact_bytes(path) / 2**20, 3)
            print(name, runtime, rows[runtime], flush=True)
        report["models"][name] = rows
    report["load_average_after"] = round(os.getloadavg()[0], 2)
    report["markdown"] = markdown(report)
    print(report["markdown"])
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
