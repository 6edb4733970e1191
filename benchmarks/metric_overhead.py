"""Per-step cost of the SRCC and PLCC metrics in `model.evaluate`, per backend.

A small scorer (the recipe's `small_cnn` + `ScoreHead`, 64x64 images, batch
32) evaluates `--steps` batches: compiled with its loss only, and with
`SRCC()` and `PLCC()`, alternating for `--rounds` rounds (each keeps its
fastest). A callback times every step; the report gives, per backend, the
median step time of each run, the overhead of the metrics, and
the metrics run's median step time over its first and last 500 steps (the
cost must not grow with the samples seen: 8,000 steps of 32 is 256,000
samples, AVA's size). On torch, whose steps run eagerly, it also times the
metrics' own calls alone (`metrics_alone_ms`), since the eager step varies
more than they cost.

    python benchmarks/metric_overhead.py [--backends tensorflow jax torch] [--steps 8000]

Each backend runs in its own process (`KERAS_BACKEND`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _metrics_alone(batch_size, calls=2000):
    """Median ms of one step's SRCC + PLCC work (update, then the step-log read), called eagerly."""
    import keras
    import numpy as np

    from keras_cskd import metrics

    rng = np.random.default_rng(0)
    y_true = keras.ops.convert_to_tensor(rng.dirichlet(np.ones(10), batch_size).astype("float32"))
    y_pred = keras.ops.convert_to_tensor(rng.dirichlet(np.ones(10), batch_size).astype("float32"))
    chosen = [metrics.SRCC(), metrics.PLCC()]

    class Step(keras.Model):
        def compute_metrics(self):  # read the way Keras's train / test step reads them
            for metric in chosen:
                metric.update_state(y_true, y_pred)
            return [metric.result() for metric in chosen]

    step = Step()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        step.compute_metrics()
        times.append(time.perf_counter() - start)
    return float(np.median(times[50:]) * 1000.0)


def _measure(steps, batch_size, image_size, rounds):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_cskd import metrics
    from keras_cskd.models import AestheticScorer
    from keras_cskd.recipe import build_backbone

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32")
    y = rng.dirichlet(np.ones(10), batch_size).astype("float32")
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat(steps)

    class StepTimes(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            self.times = [time.perf_counter()]

        def on_test_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    results = {}
    # Alternate the two models for `rounds` rounds (A B A B ...) so that drift in the machine's
    # load reaches both; each keeps its fastest round.
    for round_index in range(rounds):
        for label, chosen in (("loss only", []), ("srcc+plcc", [metrics.SRCC(), metrics.PLCC()])):
            keras.utils.set_random_seed(0)
            scorer = AestheticScorer(build_backbone("small_cnn", image_size), num_bins=10)
            scorer.compile(metrics=chosen)
            scorer.evaluate(dataset.take(20), verbose=0)  # trace / compile
            timer = StepTimes()
            scorer.evaluate(dataset, verbose=0, callbacks=[timer])
            step = np.diff(timer.times) * 1000.0
            measured = {
                "median_ms": float(np.median(step)),
                "first_500_ms": float(np.median(step[:500])),
                "last_500_ms": float(np.median(step[-500:])),
                "round_medians_ms": results.get(label, {}).get("round_medians_ms", []) + [float(np.median(step))],
            }
            if chosen:
                measured["samples_seen"] = int(chosen[0].count)
            if label not in results or measured["median_ms"] < results[label]["median_ms"]:
                results[label] = measured
            else:
                results[label]["round_medians_ms"] = measured["round_medians_ms"]
    if keras.backend.backend() == "torch":  # eager: the metrics' own calls can be timed alone
        results["metrics_alone_ms"] = _metrics_alone(batch_size)
    base, with_metrics = results["loss only"]["median_ms"], results["srcc+plcc"]["median_ms"]
    results["overhead_percent"] = 100.0 * (with_metrics - base) / base
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per model; the fastest counts")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.steps, args.batch_size, args.image_size, args.rounds)))
        return
    report = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0]}
    for backend in args.backends:
        command = [
            sys.executable,
            __file__,
            "--child",
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--image-size",
            str(args.image_size),
            "--rounds",
            str(args.rounds),
        ]
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        report[backend] = json.loads(output.strip().splitlines()[-1])
        print(backend, json.dumps(report[backend]), flush=True)
    report["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
