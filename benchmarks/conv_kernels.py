"""Where MobileNetV2's time goes per backend: one Keras convolution layer against the bare backend op.

The student's forward is mostly 1x1 (pointwise) and 3x3 depthwise convolutions
on small feature maps. For each backend this times, on one thread, a batch of 8
feature maps of 16 x 16 x 96 (MobileNetV2 at 32 px, its second stage) through:

- `keras`: a `keras.layers.Conv2D(24, 1)` and a `keras.layers.DepthwiseConv2D(3)`,
  called as a model runs them (torch: eagerly under `no_grad`; jax: `jax.jit` of
  `stateless_call`; tensorflow: `tf.function`);
- `bare`: the same convolution written directly for the backend, in the layout
  its users hold (torch: `F.conv2d` on NCHW tensors; jax: `lax.conv_general_dilated`
  on NHWC under `jax.jit`; tensorflow: `tf.nn.conv2d` / `depthwise_conv2d` on NHWC in a
  `tf.function`), and on tensorflow both again under XLA (`tf.function(jit_compile=True)`);
- `keras_cskd` (depthwise): `keras_cskd.layers.ShiftAddDepthwiseConv2D`, the
  depthwise layer the library's MobileNets use (shifted multiply-adds on jax's
  CPU, Keras's own kernel elsewhere), called as `keras` is;
- torch only, `keras_layout_copies`: `F.conv2d` with the copies Keras's torch
  backend makes on every call for channels_last data (the input permuted and
  made contiguous, then made channels_last, the kernel permuted and made
  channels_last, the output permuted back), to show what the layer's extra time is;
  and `keras_channels_first`: the same Keras layers built with
  `data_format="channels_first"` on NCHW tensors.

Median microseconds per call over `--repeats` runs of `--calls` calls each.

    python benchmarks/conv_kernels.py [--backends tensorflow jax torch] [--json out.json]

Each backend runs in its own process (`KERAS_BACKEND`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 16, 16, 96)


def _time(function, calls, repeats):
    for _ in range(10):
        function()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return round(sorted(runs)[len(runs) // 2], 1)


def _bare(backend, x, pointwise, depthwise, jit_compile=False):
    """{'pointwise', 'depthwise'}: the convolutions in the backend's own API, as functions of no argument.

    `jit_compile` (tensorflow only): compile the `tf.function` with XLA.
    """
    if backend == "torch":
        import torch
        import torch.nn.functional as F

        x_nchw = torch.as_tensor(x).permute(0, 3, 1, 2).contiguous()
        w = torch.as_tensor(pointwise).permute(3, 2, 0, 1).contiguous()
        d = torch.as_tensor(depthwise).reshape(3, 3, 1, -1).permute(3, 2, 0, 1).contiguous()
        return {
            "pointwise": lambda: F.conv2d(x_nchw, w),
            "depthwise": lambda: F.conv2d(x_nchw, d, padding=1, groups=d.shape[0]),
        }
    if backend == "jax":
        import jax

        dims = ("NHWC", "HWIO", "NHWC")
        conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims))
        grouped = jax.jit(
            lambda x, w: jax.lax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=dims, feature_group_count=x.shape[-1]
            )
        )
        x_j, w, d = (jax.numpy.asarray(a) for a in (x, pointwise, depthwise.reshape(3, 3, 1, -1)))
        return {
            "pointwise": lambda: conv(x_j, w).block_until_ready(),
            "depthwise": lambda: grouped(x_j, d).block_until_ready(),
        }
    import tensorflow as tf

    x_t, w, d = (tf.constant(a) for a in (x, pointwise, depthwise))
    conv = tf.function(lambda: tf.nn.conv2d(x_t, w, 1, "SAME"), jit_compile=jit_compile)
    grouped = tf.function(lambda: tf.nn.depthwise_conv2d(x_t, d, [1, 1, 1, 1], "SAME"), jit_compile=jit_compile)
    return {"pointwise": lambda: conv().numpy(), "depthwise": lambda: grouped().numpy()}


def _keras(backend, x, layers, jit_compile=False):
    """{'pointwise', 'depthwise'}: each Keras layer called as a model's forward runs it (`jit_compile`: as `_bare`)."""
    calls = {}
    for name, layer in layers.items():
        if backend == "torch":
            import torch

            x_t = torch.as_tensor(x)

            def call(layer=layer):
                with torch.no_grad():
                    return layer(x_t)

        elif backend == "jax":
            import jax

            step = jax.jit(lambda variables, x, layer=layer: layer.stateless_call(variables, [], x)[0])
            variables = [v.value for v in layer.trainable_variables]
            x_j = jax.numpy.asarray(x)

            def call(step=step, variables=variables):
                return step(variables, x_j).block_until_ready()

        else:
            import tensorflow as tf

            x_t = tf.constant(x)
            step = tf.function(lambda layer=layer: layer(x_t), jit_compile=jit_compile)

            def call(step=step):
                return step().numpy()

        calls[name] = call
    return calls


def _measure(calls, repeats):
    import keras
    import numpy as np

    from keras_cskd.layers import ShiftAddDepthwiseConv2D

    backend = keras.backend.backend()
    if backend == "torch":  # one compute thread everywhere (jax: XLA_FLAGS, set by the driver)
        import torch

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=SHAPE).astype("float32")
    layers = {
        "pointwise": keras.layers.Conv2D(24, 1, use_bias=False),
        "depthwise": keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False),
    }
    for layer in layers.values():
        layer.build(SHAPE)
    pointwise = keras.ops.convert_to_numpy(layers["pointwise"].kernel)
    depthwise = keras.ops.convert_to_numpy(layers["depthwise"].kernel)
    bare = _bare(backend, x, pointwise, depthwise)
    ours = _keras(backend, x, layers)
    result = {}
    for name in layers:
        result[name] = {"keras_us": _time(ours[name], calls, repeats), "bare_us": _time(bare[name], calls, repeats)}
        result[name]["keras_over_bare"] = round(result[name]["keras_us"] / result[name]["bare_us"], 2)
    if backend == "tensorflow":  # the same under XLA, as `compile(jit_compile=True)` runs them
        bare_xla = _bare(backend, x, pointwise, depthwise, jit_compile=True)
        ours_xla = _keras(backend, x, layers, jit_compile=True)
        for name in layers:
            result[name]["keras_xla_us"] = _time(ours_xla[name], calls, repeats)
            result[name]["bare_xla_us"] = _time(bare_xla[name], calls, repeats)
    shift_add = ShiftAddDepthwiseConv2D(3, padding="same", use_bias=False)
    shift_add.build(SHAPE)
    shift_add.set_weights([depthwise])
    result["depthwise"]["keras_cskd_us"] = _time(
        _keras(backend, x, {"depthwise": shift_add})["depthwise"], calls, repeats
    )
    if backend == "torch":
        import torch
        import torch.nn.functional as F

        x_t, w = torch.as_tensor(x), torch.as_tensor(pointwise)
        last = torch.channels_last

        def copies():
            inputs = x_t.permute(0, 3, 1, 2).contiguous().contiguous(memory_format=last)
            kernel = w.permute(3, 2, 0, 1).contiguous(memory_format=last)
            return F.conv2d(inputs, kernel).permute(0, 2, 3, 1)

        with torch.no_grad():
            result["pointwise"]["keras_layout_copies_us"] = _time(copies, calls, repeats)
            x_nchw = x_t.permute(0, 3, 1, 2).contiguous()
            for name, layer in (
                ("pointwise", keras.layers.Conv2D(24, 1, use_bias=False, data_format="channels_first")),
                (
                    "depthwise",
                    keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, data_format="channels_first"),
                ),
            ):
                layer.build(x_nchw.shape)
                result[name]["keras_channels_first_us"] = _time(lambda layer=layer: layer(x_nchw), calls, repeats)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.calls, args.repeats)))
        return
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "shape_nhwc": SHAPE, "threads": 1}
    report["load_average_before"] = round(os.getloadavg()[0], 2)
    for backend in args.backends:
        env = dict(
            os.environ,
            KERAS_BACKEND=backend,
            TF_CPP_MIN_LOG_LEVEL="3",
            PYTHONPATH=ROOT,
            OMP_NUM_THREADS="1",
            XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        )
        command = [sys.executable, __file__, "--child", "--calls", str(args.calls), "--repeats", str(args.repeats)]
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        report[backend] = json.loads(output.strip().splitlines()[-1])
        print(backend, json.dumps(report[backend]), flush=True)
    report["load_average_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
