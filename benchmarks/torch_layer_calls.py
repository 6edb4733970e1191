"""How much of a Keras model's eager torch forward is Keras's `Layer.__call__`, and why torch.compile does not help.

On the torch backend Keras runs a model eagerly: each step walks the functional
graph and calls every layer through `Layer.__call__`, which binds the call's
arguments to its signature, handles masks, autocasting and the name scope,
and only then runs the layer's `call`. This script times, on one thread, under
`torch.no_grad()`, a batch of 8 images of 32 px:

- `layer`: one trivial layer (`keras.layers.Identity`) called through
  `__call__` against its `call` directly: the fixed cost per layer call;
- `tree`: `keras.tree.flatten` of a layer's `(args, kwargs)`, which Keras's
  torch backend computes with torch's own pytree (chosen there for torch.compile),
  against `optree.tree_flatten`, what Keras uses on the other backends;
- `model`: the library's MobileNetV2 student (unfolded, and with its batch
  norms folded) called as Keras calls it, against the same functional graph
  walked with each layer's `call` run directly (Keras's private
  `Functional._run_through_graph`, used here only to measure; the outputs are
  checked equal);
- `compile`: `torch._dynamo.explain` on both paths: how many graphs and graph
  breaks torch.compile sees, and the first break reasons; then the direct walk
  compiled with `torch.compile` and timed.

    python benchmarks/torch_layer_calls.py --json benchmarks/torch_layer_calls_results.json
"""

import argparse
import json
import os
import time

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import optree  # noqa: E402
import torch  # noqa: E402

from keras_cskd import backbones  # noqa: E402


def median_ms(run, repeats=30):
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1e3, 4)


def call_directly(model, x):
    """Runs `model`'s graph with each layer's `call`, skipping `Layer.__call__` (nested models too)."""

    def operation_fn(operation):
        if isinstance(operation, keras.Model) and hasattr(operation, "_run_through_graph"):
            return lambda inputs, **kwargs: call_directly(operation, inputs)
        return operation.call

    outputs = model._run_through_graph(x, operation_fn=operation_fn)
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def explain(function, x):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(function)(x)
    reasons = []
    for graph_break in explanation.break_reasons:
        frame = graph_break.user_stack[-1] if graph_break.user_stack else None
        where = f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}" if frame else ""
        reason = f"{graph_break.reason.splitlines()[0][:160]} ({where})"
        if reason not in reasons:
            reasons.append(reason)
    return {
        "graphs": explanation.graph_count,
        "graph_breaks": explanation.graph_break_count,
        "first_break_reasons": reasons[:4],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-compile", action="store_true", help="skip the torch.compile explanation (slow)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_start": os.getloadavg()[0],
        "versions": {"keras": keras.__version__, "torch": torch.__version__},
        "threads": 1,
    }
    with torch.no_grad():
        identity = keras.layers.Identity()
        small = torch.ones(8, 4)
        identity(small)
        per_call = {
            "__call__": median_ms(lambda: [identity(small) for _ in range(100)]) * 10,
            "call": median_ms(lambda: [identity.call(small) for _ in range(100)]) * 10,
        }
        results["layer_us_per_call"] = {k: round(v, 1) for k, v in per_call.items()}
        structure = ((small, small), {})
        flatten = {
            "keras.tree.flatten": median_ms(lambda: [keras.tree.flatten(structure) for _ in range(100)]) * 10,
            "optree.tree_flatten": median_ms(lambda: [optree.tree_flatten(structure) for _ in range(100)]) * 10,
        }
        results["tree_flatten_us_per_call"] = {k: round(v, 1) for k, v in flatten.items()}

        x = torch.from_numpy(np.random.default_rng(0).random((8, 32, 32, 3), dtype="float32"))
        student = backbones.get("MobileNetV2", image_size=32, load_weights=False)
        for name, model in (("unfolded", student), ("folded", backbones.fold_batch_norms(student))):
            difference = float((model(x, training=False) - call_directly(model, x)).abs().max())
            row = {
                "layers": len(model._flatten_layers(include_self=False, recursive=True)),
                "max_abs_difference": difference,
                "keras_call_ms": median_ms(lambda model=model: model(x, training=False)),
                "layer_calls_skipped_ms": median_ms(lambda model=model: call_directly(model, x)),
            }
            row["keras_share"] = round(1 - row["layer_calls_skipped_ms"] / row["keras_call_ms"], 3)
            results[f"mobilenetv2_{name}"] = row
            print(name, row, flush=True)
        if not args.skip_compile:
            results["compile_keras_call"] = explain(lambda x: student(x, training=False), x)
            results["compile_layer_calls_skipped"] = explain(lambda x: call_directly(student, x), x)
            torch._dynamo.reset()
            compiled = torch.compile(lambda x: call_directly(student, x))
            start = time.perf_counter()
            compiled(x)
            results["compiled_layer_calls_skipped"] = {
                "compile_s": round(time.perf_counter() - start, 1),
                "ms": median_ms(lambda: compiled(x)),
                "max_abs_difference": float((compiled(x) - student(x, training=False)).abs().max()),
            }
    results["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
