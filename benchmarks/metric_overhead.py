"""Per-step cost of the SRCC and PLCC metrics in `model.evaluate`, per backend.

A small scorer (the recipe's `small_cnn` + `ScoreHead`, 64x64 images, batch
32) evaluates `--steps` batches: compiled with its loss only, with `SRCC()`
and `PLCC()`, and with two of Keras's own metrics (`MeanSquaredError()`,
`MeanAbsoluteError()`: what any two metrics cost in the same step),
alternating for `--rounds` rounds (each keeps its fastest). A callback times
every step; the report gives, per backend, the median step time of each run,
the overhead of the metrics, the median over rounds of each round's
difference from the loss-only run (`paired_overhead_ms`, and
`keras_metrics_paired_overhead_ms` for Keras's two: a round's runs are back
to back, so the machine's drift mostly cancels), and the metrics
run's median step time over its first and last 500 steps (the cost must not
grow with the samples seen: 8,000 steps of 32 is 256,000 samples, AVA's
size). On torch, whose steps run eagerly, it also times
Keras's `compute_metrics` inside the same steps (`metrics_in_step_ms`: with
the metrics minus without), since the eager step varies more than they cost.

    python benchmarks/metric_overhead.py [--backends tensorflow jax torch] [--steps 8000] [--json out.json]

Each backend runs in its own process (`KERAS_BACKEND`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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

    class TimedScorer(AestheticScorer):
        """Times `compute_metrics`, where the metrics update and are read (eager on torch)."""

        def compute_metrics(self, *args, **kwargs):
            start = time.perf_counter()
            logs = super().compute_metrics(*args, **kwargs)
            self.metric_times.append(time.perf_counter() - start)
            return logs

    eager = keras.backend.backend() == "torch"

    class StepTimes(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            self.times = [time.perf_counter()]

        def on_test_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    results = {}
    # Alternate the two models for `rounds` rounds (A B A B ...) so that drift in the machine's
    # load reaches both; each keeps its fastest round.
    for round_index in range(rounds):
        arms = (
            ("loss only", []),
            ("srcc+plcc", [metrics.SRCC(), metrics.PLCC()]),
            # Keras's own two simplest metrics: what any two metrics cost in the step.
            ("keras mse+mae", [keras.metrics.MeanSquaredError(), keras.metrics.MeanAbsoluteError()]),
        )
        for label, chosen in arms:
            keras.utils.set_random_seed(0)
            scorer = TimedScorer(build_backbone("small_cnn", image_size), num_bins=10)
            scorer.compile(metrics=chosen)
            scorer.metric_times = []
            scorer.evaluate(dataset.take(20), verbose=0)  # trace / compile
            timer, scorer.metric_times = StepTimes(), []
            scorer.evaluate(dataset, verbose=0, callbacks=[timer])
            step = np.diff(timer.times) * 1000.0
            measured = {
                "median_ms": float(np.median(step)),
                **({"compute_metrics_ms": float(np.median(scorer.metric_times) * 1000.0)} if eager else {}),
                "first_500_ms": float(np.median(step[:500])),
                "last_500_ms": float(np.median(step[-500:])),
                "round_medians_ms": results.get(label, {}).get("round_medians_ms", []) + [float(np.median(step))],
            }
            if label == "srcc+plcc":
                measured["samples_seen"] = int(chosen[0].count)
            if label not in results or measured["median_ms"] < results[label]["median_ms"]:
                results[label] = measured
            else:
                results[label]["round_medians_ms"] = measured["round_medians_ms"]
    base, with_metrics = results["loss only"]["median_ms"], results["srcc+plcc"]["median_ms"]
    results["overhead_percent"] = 100.0 * (with_metrics - base) / base
    # Each round's runs are back to back: their difference cancels most of the machine's drift.
    for label, key in (("srcc+plcc", "paired_overhead"), ("keras mse+mae", "keras_metrics_paired_overhead")):
        pairs = np.subtract(results[label]["round_medians_ms"], results["loss only"]["round_medians_ms"])
        results[f"{key}_ms"] = float(np.median(pairs))
        results[f"{key}_percent"] = 100.0 * results[f"{key}_ms"] / base
    if eager:  # the step's own variation hides the metrics: their time inside the same steps
        added = results["srcc+plcc"]["compute_metrics_ms"] - results["loss only"]["compute_metrics_ms"]
        results["metrics_in_step_ms"] = added
        results["metrics_in_step_percent"] = 100.0 * added / base
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per model; the fastest counts")
    parser.add_argument("--json", default=None, help="also write the report to this file")
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
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
