"""A miniature, honest check of CSKD's mechanism on the synthetic aesthetics world.

Does aligning to a CLIP whose features carry the visible attributes, and/or
distilling a teacher on unlabeled images, help a small student that sees few
labels? The arms (the paper's ablation, in miniature):

- student: labels only; + alignment (CFA); + distillation (SKD, from the
  teacher fine-tuned *without* alignment); + both (full CSKD: aligned student,
  distilled from the aligned teacher);
- teacher: fine-tuned with and without alignment.

The "CLIP". No pretrained CLIP is reachable offline, and a random one carries
nothing. The stand-in is a small KerasHub CLIP vision encoder (+ projection,
L2-normalized, wrapped as `CLIPImageTeacher`) trained in this script, once,
on `--clip-images` *separate* images rendered by the world's renderer
(`synthetic.sample_attributes` + `synthetic.render`, never the world's own
files), to regress their raw visible attributes: exposure, sharpness, subject
and background hue (as cos/sin), hue distance, subject position. That is what
captions naming those attributes would teach a CLIP. It never sees scores,
votes or the attribute qualities the hidden score is made of; the student must
still learn how attributes map to aesthetics from the labels.

Everything else is the library: `synthetic.make_world`, `labeled_dataset`,
`CLIPFeatureAligner` fed by `FrozenOutputCache` (CLIP embeddings computed once),
`AestheticScorer`, `SemiSupervisedDistiller` fed cached teacher pseudo-labels.
Teacher: a small KerasHub ViT; student: a small MobileNetV2-style CNN
(inverted residual blocks). Metrics on the world's held-out test list: SRCC
and PLCC of the predicted mean score against the vote mean; mean and standard
deviation over seeds (each seed: a new world, new inits).

Defaults are sized for 3 seeds in under ~25 minutes on 2 CPU cores (816 s measured): the stand-in
CLIP is trained once and shared by all seeds; 600 labeled images per world, half
of them a held-out test split (evaluation is cheap, and SRCC on 30 images is
noise), 600 unlabeled; alignment 6 epochs, teachers 10, every student arm 16
fine-tuning epochs (the same budget with or without alignment/distillation, and
enough for an aligned student to move off its CLIP-space start).

    python benchmarks/ablation.py                          # 3 seeds; ~14 min on 2 shared CPU cores (load 3-4)
    python benchmarks/ablation.py --seeds 1 --epochs-scale 0.5   # a quick look
    python benchmarks/ablation.py --json ablation.json --plot ablation.png --markdown ablation.md
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from keras_cskd import CLIPImageTeacher, backbones  # noqa: E402
from keras_cskd.data import FrozenOutputCache, labeled_dataset, read_ava, synthetic  # noqa: E402
from keras_cskd.models import AestheticScorer, CLIPFeatureAligner, SemiSupervisedDistiller  # noqa: E402

ARMS = ["student: labels only", "student: + alignment", "student: + distillation", "student: + both (CSKD)",
        "teacher: labels only", "teacher: + alignment"]


def attribute_targets(a):
    hue, subject = 2 * np.pi * a["hue"], 2 * np.pi * (a["hue"] + a["hue_distance"])
    t = np.stack([a["exposure"], a["sharpness"], np.cos(hue), np.sin(hue), np.cos(subject), np.sin(subject),
                  a["hue_distance"], a["cx"], a["cy"]], 1)
    return ((t - t.mean(0)) / (t.std(0) + 1e-6)).astype("float32")


def make_clip(args):
    """A small KerasHub CLIP vision tower trained to read the world's visible attributes."""
    s = args.image_size
    rng = np.random.default_rng(12345)
    a = synthetic.sample_attributes(args.clip_images, rng)
    images = synthetic.render(a, s, rng).astype("float32")
    targets = attribute_targets(a)
    keras.utils.set_random_seed(12345)
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=4, hidden_dim=64, num_layers=3, num_heads=4, intermediate_dim=128, image_shape=(s, s, 3)
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=64, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
        intermediate_dim=32, max_sequence_length=8,
    )
    clip = CLIPImageTeacher.from_backbone(keras_hub.models.CLIPBackbone(vision, text, projection_dim=32), image_size=s)
    clip.trainable = True
    inputs = keras.Input((s, s, 3))
    readout = keras.Model(inputs, keras.layers.Dense(targets.shape[1])(clip(inputs)))
    readout.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse")
    split = int(0.9 * len(images))
    history = readout.fit(images[:split], targets[:split], validation_data=(images[split:], targets[split:]),
                          epochs=args.clip_epochs, batch_size=64, verbose=0)
    clip.trainable = False
    pred = readout.predict(images[split:], verbose=0)
    r2 = 1 - ((pred - targets[split:]) ** 2).mean(0) / targets[split:].var(0)
    return clip, {"val_mse": round(float(history.history["val_loss"][-1]), 4),
                  "val_r2_per_attribute": [round(float(v), 3) for v in r2]}


def _batch_norm():
    # momentum 0.9, not Keras's 0.99: ~160 training steps leave 0.99's moving statistics stale,
    # and the student's test SRCC then swung by +-0.3 with the initial weights alone.
    return keras.layers.BatchNormalization(momentum=0.9)


def student_backbone(s):
    """A small MobileNetV2-style CNN: stem, inverted residual blocks, 1x1 head, pooled."""
    inputs = keras.Input((s, s, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU(6.0)(_batch_norm()(x))
    for filters, stride in [(16, 1), (24, 2), (24, 1), (32, 2), (32, 1)]:
        y = keras.layers.Conv2D(x.shape[-1] * 4, 1, use_bias=False)(x)
        y = keras.layers.ReLU(6.0)(_batch_norm()(y))
        y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
        y = keras.layers.ReLU(6.0)(_batch_norm()(y))
        y = _batch_norm()(keras.layers.Conv2D(filters, 1, use_bias=False)(y))
        x = keras.layers.Add()([x, y]) if stride == 1 and x.shape[-1] == filters else y
    x = keras.layers.ReLU(6.0)(_batch_norm()(keras.layers.Conv2D(128, 1, use_bias=False)(x)))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="student_backbone")


def teacher_backbone(s):
    vit = keras_hub.models.ViTBackbone(
        image_shape=(s, s, 3), patch_size=4, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=128,
    )
    return backbones.get(vit, image_size=s)


def evaluate(model, x, means):
    pred = model.score(x, batch_size=64)
    return float(stats.spearmanr(pred, means)[0]), float(stats.pearsonr(pred, means)[0])


def run_seed(seed, clip, args, workdir):
    s, b = args.image_size, args.batch_size
    e = lambda n: max(1, int(round(n * args.epochs_scale)))  # noqa: E731
    world = synthetic.make_world(
        os.path.join(workdir, f"world{seed}"), num_labeled=args.num_labeled, num_unlabeled=args.num_unlabeled,
        image_size=args.file_size, seed=seed, test_fraction=args.test_fraction,
    )
    # The world's own test list: `--test-fraction` of the labeled images (without it, read_ava
    # would draw its default 10%, which is how the first run ended up with 30 test images).
    records = read_ava(world.ava_root, test_list=world.ava_test_list, val_fraction=0.0, seed=seed)
    test = labeled_dataset(records, "test", image_size=s, batch_size=64, training=False)
    x_test = np.concatenate([np.asarray(x) for x, _ in test]).astype("float32")
    test_means = records.select("test").mean_scores
    train = lambda: labeled_dataset(records, "train", image_size=s, batch_size=b, training=True, seed=seed)  # noqa: E731
    cache_dir = os.path.join(workdir, "cache")
    results, t0 = {}, time.perf_counter()
    phases, clock = {}, [t0]

    def lap(name):
        now = time.perf_counter()
        phases[name] = round(now - clock[0], 1)
        clock[0] = now

    # Phase 1: align teacher and student to the CLIP, from cached CLIP embeddings.
    keras.utils.set_random_seed(seed)
    init_t, init_s = teacher_backbone(s), student_backbone(s)
    init_weights = (init_t.get_weights(), init_s.get_weights())
    aligner = CLIPFeatureAligner(clip, {"teacher": init_t, "student": init_s}, projection_hidden_dim=64)
    aligner.compile(optimizer=keras.optimizers.Adam(1e-3))
    clip_cache = FrozenOutputCache(clip, cache_dir, image_size=s, batch_size=128)
    aligner.fit(clip_cache.dataset(world.unlabeled_dir, batch_size=b, training=True, seed=seed),
                epochs=e(args.align_epochs), verbose=0)
    lap("world+align")
    aligned = (aligner.learners["teacher"].backbone.get_weights(), aligner.learners["student"].backbone.get_weights())

    def fresh(kind, weights):
        model = teacher_backbone(s) if kind == "teacher" else student_backbone(s)
        model.set_weights(weights)
        return model

    def fit_scorer(backbone, epochs):
        scorer = AestheticScorer(backbone)
        scorer.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=[])
        scorer.fit(train(), epochs=epochs, verbose=0)
        return scorer

    # Teachers, with and without alignment (same init).
    keras.utils.set_random_seed(seed + 1)
    teacher_plain = fit_scorer(fresh("teacher", init_weights[0]), e(args.teacher_epochs))
    results["teacher: labels only"] = evaluate(teacher_plain, x_test, test_means)
    keras.utils.set_random_seed(seed + 1)
    teacher_aligned = fit_scorer(fresh("teacher", aligned[0]), e(args.teacher_epochs))
    results["teacher: + alignment"] = evaluate(teacher_aligned, x_test, test_means)
    lap("teachers")

    # Students.
    keras.utils.set_random_seed(seed + 2)
    results["student: labels only"] = evaluate(fit_scorer(fresh("student", init_weights[1]), e(args.student_epochs)), x_test, test_means)
    keras.utils.set_random_seed(seed + 2)
    results["student: + alignment"] = evaluate(fit_scorer(fresh("student", aligned[1]), e(args.student_epochs)), x_test, test_means)
    lap("students")

    def distill(teacher, student_weights):
        pseudo = FrozenOutputCache(teacher, cache_dir, image_size=s, batch_size=128)
        data = pseudo.semi_supervised_dataset(records, world.unlabeled_dir, batch_size=b,
                                              unlabeled_ratio=args.unlabeled_ratio, seed=seed)
        student = AestheticScorer(fresh("student", student_weights))
        distiller = SemiSupervisedDistiller(None, student)
        distiller.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=[])
        distiller.fit(data, epochs=e(args.student_epochs), verbose=0)
        return student

    keras.utils.set_random_seed(seed + 2)
    results["student: + distillation"] = evaluate(distill(teacher_plain, init_weights[1]), x_test, test_means)
    keras.utils.set_random_seed(seed + 2)
    results["student: + both (CSKD)"] = evaluate(distill(teacher_aligned, aligned[1]), x_test, test_means)
    lap("distilled students")
    return {
        "seed": seed, "oracle_srcc": world.oracle_srcc, "test_images": int(len(test_means)),
        "train_images": int(len(records.select("train").mean_scores)),
        "seconds": round(time.perf_counter() - t0, 1), "phase_seconds": phases,
        "arms": {k: {"srcc": round(v[0], 4), "plcc": round(v[1], 4)} for k, v in results.items()},
    }


def summarize(runs):
    table = {}
    for arm in ARMS:
        for metric in ("srcc", "plcc"):
            values = np.array([r["arms"][arm][metric] for r in runs])
            table.setdefault(arm, {})[metric] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return table


def markdown(table, runs, args, clip_info):
    lines = ["| model | SRCC (mean ± sd) | PLCC (mean ± sd) |", "| --- | --- | --- |"]
    for arm in ARMS:
        (sm, ss), (pm, ps) = table[arm]["srcc"], table[arm]["plcc"]
        lines.append(f"| {arm} | {sm:.3f} ± {ss:.3f} | {pm:.3f} ± {ps:.3f} |")
    oracle = np.mean([r["oracle_srcc"] for r in runs])
    lines += ["", f"{len(runs)} seed(s); {args.num_labeled} labeled images ({runs[0]['test_images']} test), "
              f"{args.num_unlabeled} unlabeled, {args.image_size}px; epochs x{args.epochs_scale} "
              f"(align {args.align_epochs}, teacher {args.teacher_epochs}, student {args.student_epochs}); "
              f"backend {keras.backend.backend()}. Oracle SRCC (perfect attribute reader) on these worlds: {oracle:.3f}. "
              f"CLIP stand-in attribute R^2 (held out): {clip_info['val_r2_per_attribute']}."]
    return "\n".join(lines)


def plot(table, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(ARMS))
    for k, metric in enumerate(("srcc", "plcc")):
        means = [table[a][metric][0] for a in ARMS]
        sds = [table[a][metric][1] for a in ARMS]
        ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=sds, capsize=3, label=metric.upper())
    ax.set_xticks(x, [a.replace(": ", ":\n") for a in ARMS], fontsize=8)
    ax.set_ylabel("correlation with vote mean")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num-labeled", type=int, default=600, help="labeled images, test split included")
    parser.add_argument("--num-unlabeled", type=int, default=600)
    parser.add_argument("--test-fraction", type=float, default=0.5,
                        help="of the labeled images, held out for evaluation only (cheap; SRCC on few is noise)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--file-size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--unlabeled-ratio", type=float, default=2.0)
    parser.add_argument("--clip-images", type=int, default=2000)
    parser.add_argument("--clip-epochs", type=int, default=8)
    parser.add_argument("--align-epochs", type=int, default=6)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--student-epochs", type=int, default=16,
                        help="every student arm (aligned or not, distilled or not) gets these fine-tuning epochs")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every training phase's epochs")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="cskd_ablation_")
    clip, clip_info = make_clip(args)
    print(f"CLIP stand-in trained: {clip_info} ({time.perf_counter() - start:.0f}s)", flush=True)
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(seed, clip, args, workdir))
        print(json.dumps(runs[-1]), flush=True)
    table = summarize(runs)
    text = markdown(table, runs, args, clip_info)
    print(text)
    print(f"total {time.perf_counter() - start:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "clip": clip_info, "runs": runs, "summary": table,
                       "seconds": round(time.perf_counter() - start, 1)}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.plot:
        plot(table, args.plot, f"CSKD ablation on the synthetic world ({len(runs)} seeds, mean ± sd)")
    return table


if __name__ == "__main__":
    main()
