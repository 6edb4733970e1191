"""Training and inference throughput of each CSKD step, per backend, against a PyTorch peer.

For each runner (keras-cskd on tensorflow, tensorflow + XLA, jax, torch; and the
plain-PyTorch peer in `benchmarks/peers/torch_cskd.py`) it times, on one fixed
random batch:

- `align`: phase 1 step, CLIP forward (frozen) + teacher and student learners
  forward/backward + Adam (`CLIPFeatureAligner.train_on_batch(x)`);
- `align_cached`: the same with the CLIP embeddings given (`train_on_batch(x, y)`);
- `align_student`, `align_student_cached`: phase 1 for the student alone (CLIP
  vs. student cost: what the cache removes);
- `finetune`: teacher + score head, squared EMD, Adam;
- `distill`: phase 2 student step on B labeled + B unlabeled images with a teacher
  forward (`SemiSupervisedDistiller`); `distill_cached` with `pseudo_labels` given;
- `inference`: student forward (`predict_on_batch`);
- `inference_folded`: the same after folding its batch norms into the
  convolutions (`AestheticScorer.for_inference()`, as `cskd predict` and
  `export` run it; the peer: `torch.nn.utils.fuse_conv_bn_eval`);
- `clip_forward`: the frozen CLIP alone.

Each runner is its own process (one backend per process); each phase is
warmed up (`--warmup` steps, which include tracing/compilation), then timed
`--repeats` times over `--steps` steps; the median step time gives images/s
(the distillation steps count labeled + unlabeled images). Compiled metrics
are off on both sides (loss only). A keras-cskd runner builds only the models of
the phases it runs. Peak memory is the runner process's peak resident set
(`ru_maxrss`, all its phases); `--remat` rematerializes the teacher's transformer
blocks (`keras_cskd.backbones.rematerialize`), for the memory figures in
docs/performance.md.

Then, on the fastest keras-cskd backend, `--cache-epochs` measures whole
epochs of `fit` through the real input pipeline on a synthetic world: uncached
vs. `keras_cskd.data.FrozenOutputCache` (the compute pass timed apart), and
checks that the trained weights match on unaugmented views. The input pipeline
rate (decoded images/s, `unlabeled_dataset(training=True)`) is reported beside.

    python benchmarks/throughput.py                         # CPU sizes, about 10 minutes on 2 busy cores
    python benchmarks/throughput.py --runners jax,peer --repeats 3
    python benchmarks/throughput.py --runners peer,tensorflow,tensorflow-xla,peer --threads 1   # fair on a shared CPU
    python benchmarks/throughput.py --sizes ratio --runners tensorflow --cache-backend tensorflow --phases align_student,align_student_cached,clip_forward   # caching at the paper's FLOP ratio
    python benchmarks/throughput.py --sizes paper           # CLIP ViT-B/16, Swin-B, MobileNetV2 @224 (GPU)
    python benchmarks/throughput.py --sizes paper --runners tensorflow --phases align --batch-size 64 --remat --warmup 1 --repeats 1 --steps 1 --cache-epochs 0   # memory at the paper's batch

`--threads N` gives every runner N compute threads (default: each library's
own, one per core); on a machine other jobs load, eager PyTorch's OpenMP
threads slow down far more than TensorFlow's, so compare with `--threads 1`
there. A runner may be named twice (e.g. the peer before and after) to see
drift. `--sizes ratio` (and `--flops`) also counts per-image FLOPs of the CLIP
forward and of a student alignment step with XLA's cost analysis (jax).
    python benchmarks/throughput.py --json out.json --markdown out.md
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SIZES = {
    # Runs on a 2-core CPU. The CLIP is bigger than the learners, as in the paper.
    "cpu": dict(
        image_size=32,
        batch_size=8,
        num_bins=10,
        projection_hidden_dim=512,
        clip=dict(patch_size=4, hidden_dim=192, num_layers=6, num_heads=3, mlp_dim=768, projection_dim=128),
        teacher=dict(kind="vit", patch_size=4, hidden_dim=96, num_layers=4, num_heads=4, mlp_dim=384),
        student="MobileNetV2",
    ),
    # The paper's models (CLIP ViT-B/16, Swin-B, MobileNetV2 at 224): for a GPU.
    "paper": dict(
        image_size=224,
        batch_size=32,
        num_bins=10,
        projection_hidden_dim=512,
        clip=dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072, projection_dim=512),
        teacher=dict(
            kind="swin", embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7, patch_size=4
        ),
        student="MobileNetV2",
    ),
    # Runs on a 2-core CPU with the paper's FLOP ratio of CLIP forward to student
    # training step (per image, XLA cost analysis: ViT-B/16 forward at 224 is 35.3
    # GFLOPs, a MobileNetV2 alignment step at 224 1.95 GFLOPs, 18.1x; here 64 px,
    # a 7-layer 256-wide CLIP with 16x16 patches of 4 px (as ViT-B/16's 14x14 of
    # 16 px): 3.34 vs 0.178 GFLOPs, 18.8x). `--sizes ratio` prints both counts.
    "ratio": dict(
        image_size=64,
        batch_size=8,
        num_bins=10,
        projection_hidden_dim=512,
        clip=dict(patch_size=4, hidden_dim=256, num_layers=7, num_heads=4, mlp_dim=1024, projection_dim=256),
        teacher=dict(kind="vit", patch_size=4, hidden_dim=96, num_layers=4, num_heads=4, mlp_dim=384),
        student="MobileNetV2",
    ),
}
PHASES = [
    "align",
    "align_cached",
    "align_student",
    "align_student_cached",
    "finetune",
    "distill",
    "distill_cached",
    "inference",
    "inference_folded",
    "clip_forward",
]
DEFAULT_PHASES = [
    "align",
    "align_cached",
    "finetune",
    "distill",
    "distill_cached",
    "inference",
    "inference_folded",
    "clip_forward",
]
RUNNERS = {
    "tensorflow": ("tensorflow", False),
    "tensorflow-xla": ("tensorflow", True),
    "jax": ("jax", None),
    "torch": ("torch", None),
}


def _set_threads(n, runner):
    """Give this worker `n` compute threads (None: the library's default, one per core).

    Peer: `torch.set_num_threads(n)` and `set_num_interop_threads(n)`. TensorFlow:
    intra-op and inter-op pools of `n` each (TensorFlow runs independent ops of a
    graph side by side in its inter-op pool; eager PyTorch runs one op at a time).
    JAX: XLA's intra-op threads, set through XLA_FLAGS by the driver (`_spawn`).
    """
    if n is None:
        return
    if runner == "peer":
        import torch

        torch.set_num_threads(n)
        torch.set_num_interop_threads(n)
    elif os.environ.get("KERAS_BACKEND") == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


def _peak_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def time_phase(step, images, warmup, repeats, steps, budget_s):
    """Median seconds per step over `repeats` runs of `steps` steps, after `warmup` steps."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    compile_s = time.perf_counter() - start
    runs, begin = [], time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        runs.append((time.perf_counter() - t) / steps)
        if time.perf_counter() - begin > budget_s and len(runs) >= 2:
            break
    median = statistics.median(runs)
    return {
        "step_s": round(median, 5),
        "images_per_s": round(images / median, 1),
        "spread": round((max(runs) - min(runs)) / median, 3),
        "runs": len(runs),
        "warmup_s": round(compile_s, 2),
    }


# === keras-cskd side ===


def keras_models(config, remat=False):
    import keras_hub

    from keras_cskd import CLIPImageTeacher
    from keras_cskd import backbones

    s = config["image_size"]
    c, t = config["clip"], config["teacher"]
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=c["patch_size"],
        hidden_dim=c["hidden_dim"],
        num_layers=c["num_layers"],
        num_heads=c["num_heads"],
        intermediate_dim=c["mlp_dim"],
        image_shape=(s, s, 3),
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=64,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=8,
    )
    clip = CLIPImageTeacher.from_backbone(
        keras_hub.models.CLIPBackbone(vision, text, projection_dim=c["projection_dim"]), image_size=s
    )

    def teacher():
        if t["kind"] == "vit":
            model = keras_hub.models.ViTBackbone(
                image_shape=(s, s, 3),
                patch_size=t["patch_size"],
                num_layers=t["num_layers"],
                num_heads=t["num_heads"],
                hidden_dim=t["hidden_dim"],
                mlp_dim=t["mlp_dim"],
            )
        else:
            model = keras_hub.models.SwinTransformerBackbone(
                image_shape=(s, s, 3),
                embed_dim=t["embed_dim"],
                depths=t["depths"],
                num_heads=t["num_heads"],
                window_size=t["window_size"],
                patch_size=t["patch_size"],
                **({"drop_path": 0.0} if remat else {}),  # a rematerialized block must not draw random numbers
            )
        features = backbones.get(model, image_size=s)
        return backbones.rematerialize(features) if remat else features

    def student():
        return backbones.get(config["student"], image_size=s)

    return clip, teacher, student


def keras_steps(config, jit, phases=PHASES, remat=False):
    """{phase: (step, images per step)} for each of `phases`; only their models are built."""
    import keras
    import numpy as np

    from keras_cskd.models import AestheticScorer
    from keras_cskd.models import CLIPFeatureAligner
    from keras_cskd.models import SemiSupervisedDistiller

    keras.utils.set_random_seed(0)
    b, s, bins = config["batch_size"], config["image_size"], config["num_bins"]
    clip, teacher_fn, student_fn = keras_models(config, remat)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (b, s, s, 3)).astype("float32")
    x_u = rng.uniform(0, 255, (b, s, s, 3)).astype("float32")
    y = rng.dirichlet(np.ones(bins), b).astype("float32")
    jit_kw = {} if jit is None else {"jit_compile": jit}
    hidden = config["projection_hidden_dim"]
    # Tensors, not numpy: on torch, train_on_batch passes numpy targets through
    # unconverted and the models' ops.stop_gradient fails on them.
    if {"align_cached", "align_student_cached"} & set(phases):
        embeddings = keras.ops.convert_to_tensor(np.asarray(clip.predict_on_batch(x)))

    def aligner(learners):
        model = CLIPFeatureAligner(clip, learners, projection_hidden_dim=hidden)
        model.compile(optimizer="adam", **jit_kw)
        return model

    def step(train, *args):
        return lambda: train(*args)

    def build(phase):
        if phase in ("align", "align_cached", "align_student", "align_student_cached"):
            both = {"teacher": teacher_fn(), "student": student_fn()} if "student" not in phase else None
            targets = (embeddings,) if phase.endswith("cached") else ()
            return step(aligner(both or {"student": student_fn()}).train_on_batch, x, *targets), b
        if phase == "finetune":
            teacher = AestheticScorer(teacher_fn(), num_bins=bins)
            teacher.compile(optimizer="adam", metrics=[], **jit_kw)
            return step(teacher.train_on_batch, x, y), b
        if phase in ("distill", "distill_cached"):
            frozen = AestheticScorer(teacher_fn(), num_bins=bins)
            inputs = {"labeled_images": x, "unlabeled_images": x_u}
            if phase == "distill_cached":
                inputs["pseudo_labels"] = keras.ops.convert_to_tensor(np.asarray(frozen.predict_on_batch(x_u)))
                frozen = None
            d = SemiSupervisedDistiller(frozen, AestheticScorer(student_fn(), num_bins=bins))
            d.compile(optimizer="adam", metrics=[], **jit_kw)
            return step(d.train_on_batch, inputs, y), 2 * b
        if phase in ("inference", "inference_folded"):
            student = AestheticScorer(student_fn(), num_bins=bins)
            student.compile(optimizer="adam", metrics=[], **jit_kw)
            if phase == "inference_folded":
                student = student.for_inference()
                student.compile(**jit_kw)
            return step(student.predict_on_batch, x), b
        clip.compile(**jit_kw)
        return step(clip.predict_on_batch, x), b

    return {phase: build(phase) for phase in PHASES if phase in phases}


def sizes(args):
    """The models and batch of `--sizes`, with `--batch-size` if given."""
    return dict(SIZES[args.sizes], **({"batch_size": args.batch_size} if args.batch_size else {}))


def worker(args):
    config = sizes(args)
    if args.worker == "peer":
        import torch

        from benchmarks.peers import torch_cskd

        device = "cuda" if torch.cuda.is_available() else "cpu"
        autocast = torch.bfloat16 if args.mixed_precision == "mixed_bfloat16" else None
        steps = torch_cskd.steps(config, compile_models=args.peer_compile, device=device, autocast_dtype=autocast)
        info = {
            "runner": "peer-torch" + ("-compile" if args.peer_compile else ""),
            "threads": torch.get_num_threads(),
            "device": device,
            "autocast": str(autocast).replace("torch.", "") if autocast else "float32",
        }
    else:
        import keras

        backend, jit = RUNNERS[args.worker]
        if args.mixed_precision:
            keras.config.set_dtype_policy(args.mixed_precision)
        steps = keras_steps(config, jit, args.phases.split(","), args.remat)
        info = {"runner": args.worker, "backend": backend, "dtype_policy": keras.config.dtype_policy().name}
        info["remat"] = args.remat
    phases = {}
    for name in args.phases.split(","):
        if name not in steps:
            continue
        step, images = steps[name]
        phases[name] = time_phase(step, images, args.warmup, args.repeats, args.steps, args.seconds)
        print(f"  {info['runner']:<16} {name:<22} {phases[name]['images_per_s']:>9} img/s", file=sys.stderr, flush=True)
    return {**info, "phases": phases, "peak_rss_mb": _peak_mb()}


# === FLOP counts ===


def flops_worker(args):
    """Per-image FLOPs (XLA cost analysis, jax backend, lowered, not run) of the CLIP forward
    and of one student alignment training step (cached targets: learner forward, backward,
    Adam), for `--sizes` and for the paper's models."""
    import jax
    import numpy as np

    from keras_cskd.models import CLIPFeatureAligner

    def count(config, b=2):
        s = config["image_size"]
        clip, _, student_fn = keras_models(config)
        x = np.zeros((b, s, s, 3), "float32")
        tv = [v.value for v in clip.trainable_variables]
        ntv = [v.value for v in clip.non_trainable_variables]
        forward = jax.jit(lambda tv, ntv, x: clip.stateless_call(tv, ntv, x, training=False)[0])
        clip_flops = forward.lower(tv, ntv, x).cost_analysis()["flops"] / b
        a = CLIPFeatureAligner(clip, {"student": student_fn()}, projection_hidden_dim=config["projection_hidden_dim"])
        a.compile(optimizer="adam")
        a.optimizer.build(a.trainable_variables)
        state = tuple(
            [v.value for v in group]
            for group in (a.trainable_variables, a.non_trainable_variables, a.optimizer.variables, a.metrics_variables)
        )
        y = np.zeros((b, config["clip"]["projection_dim"]), "float32")
        step_flops = jax.jit(a.train_step).lower(state, (x, y, None)).cost_analysis()["flops"] / b
        return {
            "clip_forward_gflops": round(clip_flops / 1e9, 4),
            "student_step_gflops": round(step_flops / 1e9, 4),
            "ratio": round(clip_flops / step_flops, 2),
        }

    out = {args.sizes: count(SIZES[args.sizes])}
    if args.sizes != "paper":
        out["paper"] = count(SIZES["paper"])
    return out


# === Cached vs. uncached epochs ===


def cache_worker(args):
    """Whole epochs of fit on a synthetic world, uncached vs. cached, on this process's backend."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_cskd.data import FrozenOutputCache
    from keras_cskd.data import read_ava
    from keras_cskd.data import semi_supervised_dataset
    from keras_cskd.data import synthetic
    from keras_cskd.data import unlabeled_dataset
    from keras_cskd.models import AestheticScorer
    from keras_cskd.models import CLIPFeatureAligner
    from keras_cskd.models import SemiSupervisedDistiller

    config = sizes(args)
    s, b, bins = config["image_size"], config["batch_size"], config["num_bins"]
    tmp = tempfile.mkdtemp(prefix="cskd_throughput_")
    world = synthetic.make_world(
        os.path.join(tmp, "world"),
        num_labeled=args.cache_images,
        num_unlabeled=args.cache_images,
        image_size=args.file_size,
        seed=0,
    )
    records = read_ava(world.ava_root, val_fraction=0.0, test_fraction=0.0)
    out = {"backend": keras.backend.backend(), "images": args.cache_images, "epochs": args.cache_epochs}

    # Input pipeline rate beside the step rate.
    ds = unlabeled_dataset(world.unlabeled_dir, image_size=s, batch_size=b, training=True, seed=0)
    for _ in ds:
        pass
    start, n = time.perf_counter(), 0
    for _ in range(2):
        for batch in ds:
            n += int(batch.shape[0])
    out["pipeline_images_per_s"] = round(n / (time.perf_counter() - start), 1)

    clip, teacher_fn, student_fn = keras_models(config)

    def timed_fit(model, data, epochs):
        times = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.t)

        model.fit(data, epochs=epochs, verbose=0, callbacks=[Timer()])
        return times  # the first epoch includes tracing/compilation

    def summary(times):
        later = times[1:] or times
        return {"first_epoch_s": round(times[0], 3), "epoch_s": round(statistics.median(later), 3)}

    def new_aligner(seed=1):
        keras.utils.set_random_seed(seed)
        a = CLIPFeatureAligner(clip, {"student": student_fn()}, projection_hidden_dim=config["projection_hidden_dim"])
        a.compile(optimizer="adam")
        return a

    # Phase 1, student alignment: CLIP forward each step vs. cached embeddings.
    align = {}
    plain = unlabeled_dataset(world.unlabeled_dir, image_size=s, batch_size=b, training=True, seed=0)
    align["uncached"] = summary(timed_fit(new_aligner(), plain, args.cache_epochs))
    cache = FrozenOutputCache(clip, os.path.join(tmp, "cache"), image_size=s, batch_size=b * 2, shard_size=256)
    align["compute_s"] = cache.compute(world.unlabeled_dir)["seconds"]
    cached = cache.dataset(world.unlabeled_dir, batch_size=b, training=True, seed=0)
    align["cached"] = summary(timed_fit(new_aligner(), cached, args.cache_epochs))
    align["speedup"] = round(align["uncached"]["epoch_s"] / align["cached"]["epoch_s"], 2)
    # Same trained result on unaugmented views: one epoch each, same order.
    w = []
    for data in (
        unlabeled_dataset(world.unlabeled_dir, image_size=s, batch_size=b, training=False),
        cache.dataset(world.unlabeled_dir, batch_size=b, training=False),
    ):
        a = new_aligner(seed=3)
        a.fit(data, epochs=1, verbose=0)
        w.append([np.asarray(v) for v in a.learners["student"].get_weights()])
    align["max_weight_diff_unaugmented"] = float(max(np.max(np.abs(p - q)) for p, q in zip(*w)))
    out["align_student"] = align

    # Phase 2, distillation: teacher forward each step vs. cached pseudo-labels.
    keras.utils.set_random_seed(2)
    teacher = AestheticScorer(teacher_fn(), num_bins=bins)

    def new_distiller(with_teacher):
        keras.utils.set_random_seed(4)
        d = SemiSupervisedDistiller(teacher if with_teacher else None, AestheticScorer(student_fn(), num_bins=bins))
        d.compile(optimizer="adam", metrics=[])
        return d

    dist = {}
    data = semi_supervised_dataset(records, world.unlabeled_dir, image_size=s, batch_size=b, seed=0)
    dist["uncached"] = summary(timed_fit(new_distiller(True), data, args.cache_epochs))
    tcache = FrozenOutputCache(teacher, os.path.join(tmp, "cache"), image_size=s, batch_size=b * 2, shard_size=256)
    dist["compute_s"] = tcache.compute(world.unlabeled_dir)["seconds"]
    data = tcache.semi_supervised_dataset(records, world.unlabeled_dir, batch_size=b, seed=0)
    dist["cached"] = summary(timed_fit(new_distiller(False), data, args.cache_epochs))
    dist["speedup"] = round(dist["uncached"]["epoch_s"] / dist["cached"]["epoch_s"], 2)
    out["distill"] = dist
    out["peak_rss_mb"] = _peak_mb()
    tf.io.gfile.rmtree(tmp)
    return out


# === Driver ===


def _loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _spawn(args, worker, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
        if backend == "jax":
            flags = f"intra_op_parallelism_threads={args.threads}"
            if args.threads == 1:
                flags = "--xla_cpu_multi_thread_eigen=false " + flags
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker] + args.passthrough
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {"runner": worker, "error": f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results):
    runners = [r for r in results["runners"] if "phases" in r]
    peers = [r for r in runners if r["runner"].startswith("peer")]
    ours = [r for r in runners if r not in peers]
    # A peer named twice (before and after) counts at its faster run: the ratio least favourable to us.
    head = "| phase | " + " | ".join(r["runner"] for r in runners) + " | best keras-cskd / faster peer |"
    lines = [head, "|" + " --- |" * (len(runners) + 2)]
    for phase in PHASES:
        cells = [str(r["phases"].get(phase, {}).get("images_per_s", "-")) for r in runners]
        ratio = "-"
        peer_rates = [r["phases"][phase]["images_per_s"] for r in peers if phase in r["phases"]]
        if peer_rates and ours:
            best = max(r["phases"].get(phase, {}).get("images_per_s", 0) for r in ours)
            ratio = f"{best / max(peer_rates):.2f}"
        lines.append(f"| {phase} | " + " | ".join(cells) + f" | {ratio} |")
    lines.append("| peak RSS (MB) | " + " | ".join(str(r["peak_rss_mb"]) for r in runners) + " | |")
    f = results.get("flops")
    if f and "error" not in f:
        lines += [
            "",
            "FLOPs per image (XLA cost analysis): "
            + "; ".join(
                f"{k}: CLIP forward {v['clip_forward_gflops']} G, student alignment step {v['student_step_gflops']} G, "
                f"ratio {v['ratio']}x"
                for k, v in f.items()
            ),
        ]
    lines += [
        "",
        f"Threads per runner: {results.get('threads') or 'library default'}; load average "
        f"{results.get('loadavg_start')} at the start, {results.get('loadavg_end')} at the end ({results.get('date')}).",
    ]
    c = results.get("cache")
    if c and "align_student" in c:
        lines += [
            "",
            f"Cached vs. uncached epochs ({c['backend']}, {c['images']} unlabeled images, median epoch after the first):",
            "",
            "| phase | uncached epoch s | cache compute s (once) | cached epoch s | speedup |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key in ("align_student", "distill"):
            p = c[key]
            lines.append(
                f"| {key} | {p['uncached']['epoch_s']} | {p['compute_s']} | {p['cached']['epoch_s']} | {p['speedup']}x |"
            )
        lines += [
            "",
            f"Input pipeline: {c['pipeline_images_per_s']} decoded images/s (`unlabeled_dataset(training=True)`). "
            f"Largest weight difference, cached vs. uncached alignment epoch on unaugmented views: "
            f"{c['align_student']['max_weight_diff_unaugmented']:.2e}.",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="instead of the batch size of --sizes")
    parser.add_argument("--runners", default="tensorflow,tensorflow-xla,jax,torch,peer")
    parser.add_argument("--phases", default=",".join(DEFAULT_PHASES), help=f"any of {','.join(PHASES)}")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed run")
    parser.add_argument("--seconds", type=float, default=6.0, help="stop repeating a phase after this long")
    parser.add_argument("--peer-compile", action="store_true", help="torch.compile the peer's models")
    parser.add_argument("--cache-epochs", type=int, default=3, help="epochs per cached/uncached run (0: skip)")
    parser.add_argument("--cache-images", type=int, default=128)
    parser.add_argument("--cache-backend", default=None, help="default: the fastest keras-cskd backend on 'align'")
    parser.add_argument(
        "--file-size", type=int, default=None, help="side of the generated JPEGs (default: 1.5x the image size)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="compute threads for every runner alike (default: each library's own, one per core)",
    )
    parser.add_argument(
        "--flops", action="store_true", help="count FLOPs (jax, XLA cost analysis); on by default for --sizes ratio"
    )
    parser.add_argument(
        "--mixed-precision",
        default="",
        choices=["", "mixed_bfloat16", "mixed_float16"],
        help="Keras dtype policy of the keras-cskd runners; the peer runs mixed_bfloat16 as torch.autocast(bfloat16) "
        "and anything else in float32; default float32",
    )
    parser.add_argument(
        "--remat",
        action="store_true",
        help="keras-cskd runners: the teacher's transformer blocks recompute their activations in the backward pass "
        "(backbones.rematerialize; a Swin teacher is then built without drop path); the peer keeps its activations",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.file_size is None:
        args.file_size = SIZES[args.sizes]["image_size"] * 3 // 2

    if args.worker:
        _set_threads(args.threads, args.worker)
        workers = {"cache": cache_worker, "flops": flops_worker}
        result = workers.get(args.worker, worker)(args)
        print(json.dumps(result))
        return result

    args.passthrough = (
        [
            "--sizes",
            args.sizes,
            "--phases",
            args.phases,
            "--warmup",
            str(args.warmup),
            "--repeats",
            str(args.repeats),
            "--steps",
            str(args.steps),
            "--seconds",
            str(args.seconds),
            "--cache-epochs",
            str(args.cache_epochs),
            "--cache-images",
            str(args.cache_images),
            "--file-size",
            str(args.file_size),
        ]
        + ([] if args.batch_size is None else ["--batch-size", str(args.batch_size)])
        + (["--peer-compile"] if args.peer_compile else [])
        + (["--remat"] if args.remat else [])
        + (["--mixed-precision", args.mixed_precision] if args.mixed_precision else [])
        + ([] if args.threads is None else ["--threads", str(args.threads)])
    )
    results = {
        "sizes": args.sizes,
        "config": sizes(args),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_start": _loadavg(),
        "runners": [],
    }
    if args.flops or args.sizes == "ratio":
        print("counting FLOPs (jax) ...", file=sys.stderr, flush=True)
        results["flops"] = _spawn(args, "flops", "jax")
        print(json.dumps(results["flops"]), file=sys.stderr, flush=True)
    for runner in filter(None, args.runners.split(",")):
        backend = "torch" if runner == "peer" else RUNNERS[runner][0]
        print(f"running {runner} ...", file=sys.stderr, flush=True)
        results["runners"].append(_spawn(args, runner, backend))
    ours = [
        r for r in results["runners"] if "phases" in r and not r["runner"].startswith("peer") and "align" in r["phases"]
    ]
    if args.cache_epochs > 0 and (ours or args.cache_backend):
        backend = (
            args.cache_backend or RUNNERS[max(ours, key=lambda r: r["phases"]["align"]["images_per_s"])["runner"]][0]
        )
        print(f"cache epochs on {backend} ...", file=sys.stderr, flush=True)
        results["cache"] = _spawn(args, "cache", backend)
    results["loadavg_end"] = _loadavg()
    table = markdown(results)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return results


if __name__ == "__main__":
    main()
