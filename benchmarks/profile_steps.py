"""Where the time of keras-cskd's slowest steps goes (tensorflow, jax or torch backend, CPU sizes).

For the teacher fine-tune, student inference and CLIP forward steps of
`benchmarks/throughput.py` (same models, same fixed batch), it prints:

1. the Keras path (`train_on_batch` / `predict_on_batch`) against the same
   computation written bare (`tf.function` / `jax.jit` of the model call, a
   GradientTape or `jax.grad` step with the same optimizer): the difference is
   the Keras per-call Python overhead;
2. the split of a training step into forward, forward + backward, and the
   whole step with the optimizer (bare, so that the parts are comparable);
3. the same bare calls with XLA (`jit_compile=True`; jax is always XLA);
4. tensorflow only, `--trace`: a `tf.profiler` trace of the Keras path,
   aggregated per op type and per part (forward / gradient / optimizer) from
   the trace's XPlane protobuf (no TensorBoard plugin needed);
5. every backend, `--against-keras`: the library's models (`CLIPFeatureAligner`,
   `AestheticScorer`) against hand-written `keras.Sequential` models doing the
   same step with the same student backbone, loss and optimizer: cached
   student alignment, the student's fine-tune, and inference;
6. torch (one thread): the Keras path, and how much of it `torch.profiler`
   finds inside torch's own ops (the rest is Python: Keras's layer calls), with
   the costliest op types; `--torch-compile` adds the Keras path with
   `jit_compile=True` (torch.compile) for inference.

    KERAS_BACKEND=tensorflow python benchmarks/profile_steps.py --trace
    KERAS_BACKEND=jax python benchmarks/profile_steps.py
    KERAS_BACKEND=torch python benchmarks/profile_steps.py [--torch-compile]
    KERAS_BACKEND=jax python benchmarks/profile_steps.py --against-keras

Milliseconds per step, median of `--repeats` runs of `--steps` steps. Times on a
shared machine are noisy: compare rows of one invocation, not across runs.
"""

import argparse
import collections
import glob
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def timeit(f, steps, repeats, warmup=3):
    for _ in range(warmup):
        f()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            f()
        runs.append((time.perf_counter() - t) / steps)
    return round(statistics.median(runs) * 1000, 2)


def build(config):
    import keras
    import numpy as np

    from benchmarks.throughput import keras_models
    from keras_cskd.models import AestheticScorer

    keras.utils.set_random_seed(0)
    b, s, bins = config["batch_size"], config["image_size"], config["num_bins"]
    clip, teacher_fn, student_fn = keras_models(config)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (b, s, s, 3)).astype("float32")
    y = rng.dirichlet(np.ones(bins), b).astype("float32")
    teacher = AestheticScorer(teacher_fn(), num_bins=bins)
    student = AestheticScorer(student_fn(), num_bins=bins)
    return clip, teacher, student, x, y


def against_keras_rows(config, clip, x, y, steps, repeats):
    """The library's models and hand-written `keras.Sequential` models, the same step each (ms)."""
    import keras

    from benchmarks.throughput import keras_models
    from keras_cskd.losses import CosineAlignmentLoss
    from keras_cskd.losses import EMDLoss
    from keras_cskd.models import AestheticScorer
    from keras_cskd.models import CLIPFeatureAligner

    student_fn = keras_models(config)[2]
    embeddings = keras.ops.convert_to_numpy(clip.predict_on_batch(x))
    hidden, bins = config["projection_hidden_dim"], config["num_bins"]
    aligner = CLIPFeatureAligner(clip, {"student": student_fn()}, projection_hidden_dim=hidden)
    aligner.compile(optimizer="adam")
    scorer = AestheticScorer(student_fn(), num_bins=bins)
    scorer.compile(optimizer="adam", metrics=[])  # the same step as the hand-written one: no metrics
    layers = keras.layers
    plain_aligner = keras.Sequential(
        [student_fn(), layers.Dense(hidden, activation="relu"), layers.Dense(embeddings.shape[-1])]
    )
    plain_aligner.compile(optimizer="adam", loss=CosineAlignmentLoss())
    plain_scorer = keras.Sequential([student_fn(), layers.Dense(bins), layers.Softmax()])
    plain_scorer.compile(optimizer="adam", loss=EMDLoss(squared=True))
    calls = {
        "align_student_cached": (
            lambda: aligner.train_on_batch(x, embeddings),
            lambda: plain_aligner.train_on_batch(x, embeddings),
        ),
        "student fine-tune": (lambda: scorer.train_on_batch(x, y), lambda: plain_scorer.train_on_batch(x, y)),
        "inference": (lambda: scorer.predict_on_batch(x), lambda: plain_scorer.predict_on_batch(x)),
    }
    rows = {}
    for name, (library, handwritten) in calls.items():
        rows[f"{name} library"] = timeit(library, steps, repeats)
        rows[f"{name} hand-written keras"] = timeit(handwritten, steps, repeats)
        rows[f"{name} library again"] = timeit(library, steps, repeats)  # the load drifts: time it on both sides
        library_ms = (rows[f"{name} library"] + rows[f"{name} library again"]) / 2
        rows[f"{name} library / hand-written"] = round(library_ms / rows[f"{name} hand-written keras"], 2)
    return rows


def tensorflow_rows(clip, teacher, student, x, y, steps, repeats):
    import keras
    import tensorflow as tf

    from keras_cskd.losses import EMDLoss

    xt, yt = tf.constant(x), tf.constant(y)
    rows = {}
    for jit in (False, True):
        tag = "xla" if jit else "graph"
        teacher.compile(optimizer="adam", metrics=[], jit_compile=jit)
        rows[f"finetune keras train_on_batch [{tag}]"] = timeit(lambda: teacher.train_on_batch(x, y), steps, repeats)
        loss_fn = EMDLoss(squared=True)
        optimizer = keras.optimizers.Adam()
        optimizer.build(teacher.trainable_variables)
        variables = teacher.trainable_variables

        @tf.function(jit_compile=jit)
        def forward(x, y):
            return loss_fn(y, teacher(x, training=True))

        @tf.function(jit_compile=jit)
        def forward_backward(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, teacher(x, training=True))
            grads = tape.gradient(loss, variables)
            return tf.add_n([tf.reduce_sum(tf.convert_to_tensor(g)) for g in grads])

        @tf.function(jit_compile=jit)
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, teacher(x, training=True))
            optimizer.apply(tape.gradient(loss, variables), variables)
            return loss

        rows[f"finetune bare forward [{tag}]"] = timeit(lambda: forward(xt, yt).numpy(), steps, repeats)
        rows[f"finetune bare forward+backward [{tag}]"] = timeit(
            lambda: forward_backward(xt, yt).numpy(), steps, repeats
        )
        rows[f"finetune bare step (+Adam) [{tag}]"] = timeit(lambda: train_step(xt, yt).numpy(), steps, repeats)
        for name, model in (("inference", student), ("clip_forward", clip)):
            model.compile(jit_compile=jit)
            rows[f"{name} keras predict_on_batch [{tag}]"] = timeit(lambda: model.predict_on_batch(x), steps, repeats)
            call = tf.function(lambda x: model(x, training=False), jit_compile=jit)
            rows[f"{name} bare model(x) [{tag}]"] = timeit(lambda: call(xt).numpy(), steps, repeats)
    return rows


def jax_rows(clip, teacher, student, x, y, steps, repeats):
    import jax
    import keras
    import numpy as np

    from keras_cskd.losses import EMDLoss

    rows = {}
    teacher.compile(optimizer="adam", metrics=[])
    rows["finetune keras train_on_batch [xla]"] = timeit(lambda: teacher.train_on_batch(x, y), steps, repeats)
    loss_fn = EMDLoss(squared=True)
    optimizer = keras.optimizers.Adam()
    optimizer.build(teacher.trainable_variables)
    tv = [v.value for v in teacher.trainable_variables]
    ntv = [v.value for v in teacher.non_trainable_variables]
    ov = [v.value for v in optimizer.variables]

    def loss(tv, ntv, x, y):
        pred, ntv = teacher.stateless_call(tv, ntv, x, training=True)
        return loss_fn(y, pred), ntv

    forward = jax.jit(lambda tv, ntv, x, y: loss(tv, ntv, x, y)[0])
    grad = jax.jit(jax.grad(lambda tv, ntv, x, y: loss(tv, ntv, x, y)[0]))

    @jax.jit
    def train_step(tv, ntv, ov, x, y):
        (value, ntv), grads = jax.value_and_grad(loss, has_aux=True)(tv, ntv, x, y)
        tv, ov = optimizer.stateless_apply(ov, grads, tv)
        return value, tv, ntv, ov

    state = [tv, ntv, ov]

    def step():
        value, state[0], state[1], state[2] = train_step(*state, x, y)
        return float(value)

    rows["finetune bare forward [xla]"] = timeit(lambda: float(forward(tv, ntv, x, y)), steps, repeats)
    rows["finetune bare forward+backward [xla]"] = timeit(
        lambda: jax.block_until_ready(grad(tv, ntv, x, y)), steps, repeats
    )
    rows["finetune bare step (+Adam) [xla]"] = timeit(step, steps, repeats)
    for name, model in (("inference", student), ("clip_forward", clip)):
        model.compile()
        rows[f"{name} keras predict_on_batch [xla]"] = timeit(lambda: model.predict_on_batch(x), steps, repeats)
        mtv = [v.value for v in model.trainable_variables]
        mntv = [v.value for v in model.non_trainable_variables]
        call = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        rows[f"{name} bare model(x) [xla]"] = timeit(lambda: np.asarray(call(mtv, mntv, x)), steps, repeats)
    return rows


def torch_rows(clip, teacher, student, x, y, steps, repeats, torch_compile=False):
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    teacher.compile(optimizer="adam", metrics=[])
    calls = {
        "finetune": lambda: teacher.train_on_batch(x, y),
        "inference": lambda: student.predict_on_batch(x),
        "clip_forward": lambda: clip.predict_on_batch(x),
    }
    rows, ops = {}, {}
    for name, call in calls.items():
        rows[f"{name} keras path"] = timeit(call, steps, repeats)
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            for _ in range(steps):
                call()
        events = sorted(trace.key_averages(), key=lambda e: -e.self_cpu_time_total)
        rows[f"{name} of which in torch ops"] = round(sum(e.self_cpu_time_total for e in events) / steps / 1000, 2)
        ops[name] = {e.key: round(e.self_cpu_time_total / steps / 1000, 2) for e in events[:6]}
    if torch_compile:
        student.compile(jit_compile=True)
        start = time.perf_counter()
        student.predict_on_batch(x)
        rows["inference keras path, jit_compile=True: first call"] = round((time.perf_counter() - start) * 1000, 2)
        rows["inference keras path, jit_compile=True"] = timeit(lambda: student.predict_on_batch(x), steps, repeats)
    rows["torch ops per step, costliest"] = ops
    return rows


def tensorflow_trace(clip, teacher, student, x, y, steps):
    """Per op type and per part, ms per step, from a tf.profiler trace of the Keras path."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    teacher.compile(optimizer="adam", metrics=[], jit_compile=False)
    student.compile(jit_compile=False)
    clip.compile(jit_compile=False)
    calls = {
        "finetune": lambda: teacher.train_on_batch(x, y),
        "inference": lambda: student.predict_on_batch(x),
        "clip_forward": lambda: clip.predict_on_batch(x),
    }
    report = {}
    for name, call in calls.items():
        for _ in range(3):
            call()
        logdir = tempfile.mkdtemp(prefix=f"cskd_trace_{name}_")
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(steps):
            call()
        wall = (time.perf_counter() - start) / steps
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
        by_op, count, by_part, threads = collections.Counter(), collections.Counter(), collections.Counter(), set()
        for plane in space.planes:
            if not plane.name.startswith("/host"):
                continue
            names = {k: v.name for k, v in plane.event_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    full = names.get(event.metadata_id, "")
                    # TF op events are "scope/name:OpType"; skip executor wrappers.
                    if ":" not in full or full.startswith(" ") or full.split(":")[-1] in ("Process", "Run"):
                        continue
                    scope, op = full.rsplit(":", 1)
                    if scope == "EagerLocalExecute":
                        continue
                    ms = event.duration_ps / 1e9 / steps
                    by_op[op] += ms
                    count[op] += 1 / steps
                    part = (
                        "gradient"
                        if "gradient" in scope.lower()
                        else "optimizer"
                        if "adam" in scope.lower()
                        else "forward"
                    )
                    by_part[part] += ms
                    threads.add(line.name)
        report[name] = {
            "wall_ms": round(wall * 1000, 2),
            "op_ms_summed_over_threads": round(sum(by_op.values()), 2),
            "ops_per_step": round(sum(count.values())),
            "threads_with_ops": len(threads),
            "parts_ms": {k: round(v, 2) for k, v in by_part.most_common()},
            "top_ops_ms": {f"{k} x{count[k]:.0f}": round(v, 2) for k, v in by_op.most_common(12)},
        }
        tf.io.gfile.rmtree(logdir)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trace", action="store_true", help="tensorflow: tf.profiler trace, per op type")
    parser.add_argument(
        "--against-keras", action="store_true", help="only the library against hand-written keras.Models"
    )
    parser.add_argument("--torch-compile", action="store_true", help="torch: inference with jit_compile=True too")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import keras

    from benchmarks.throughput import SIZES

    backend = keras.backend.backend()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    parts = build(SIZES[args.sizes])
    if args.against_keras:
        clip, _, _, x, y = parts
        rows = against_keras_rows(SIZES[args.sizes], clip, x, y, args.steps, args.repeats)
    elif backend == "torch":
        rows = torch_rows(*parts, args.steps, args.repeats, args.torch_compile)
    else:
        rows = (jax_rows if backend == "jax" else tensorflow_rows)(*parts, args.steps, args.repeats)
    result = {"backend": backend, "sizes": args.sizes, "loadavg_start": load, "ms_per_step": rows}
    if args.trace and backend == "tensorflow":
        result["trace"] = tensorflow_trace(*parts, args.steps)
    with open("/proc/loadavg") as f:
        result["loadavg_end"] = " ".join(f.read().split()[:3])
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
