"""A miniature, honest check of CSKD's mechanism on the synthetic aesthetics world.

Does aligning to a CLIP whose features carry the visible attributes, and/or
distilling a teacher on unlabeled images, help a small student that sees few
labels? The arms (the paper's ablation, in miniature):

- student: labels only; + alignment (CFA); + distillation (SKD, from the
  teacher fine-tuned *without* alignment); + both (full CSKD: aligned student,
  distilled from the aligned teacher);
- teacher: fine-tuned with and without alignment.

The "CLIP". No pretrained CLIP is reachable offline, and a random one carries
nothing. The stand-in is `keras_cskd.recipe.stand_in_clip`: a small KerasHub
CLIP vision encoder (+ projection, L2-normalized, `CLIPImageTeacher`) trained
once on `--clip-images` scenes rendered apart from every world's files, to
predict their caption words (`synthetic.caption_words`: exposure, sharpness,
both hues, hue distance, subject position on a 6 x 6 grid, subject size, each
named by a word). It never sees scores, votes or the qualities the hidden
score is made of. The script reports what it carries: the SRCC with the hidden
score of a ridge probe on its embedding fitted on 300 labeled scenes.

Everything else is the library: `synthetic.make_world`, `labeled_dataset`,
`CLIPFeatureAligner` fed by `FrozenOutputCache` (CLIP embeddings computed once),
`AestheticScorer`, `SemiSupervisedDistiller` fed cached teacher pseudo-labels.
Teacher: a small KerasHub ViT; student: a small MobileNetV2-style CNN
(inverted residual blocks). Metrics on the world's held-out test list: SRCC
and PLCC of the predicted mean score against the vote mean; mean and standard
deviation over seeds (each seed: a new world, new inits).

Defaults: 5 paired seeds (each a new world and new initial weights; every arm
of a seed starts from the same weights), 600 labeled images per world, half
of them the held-out test split, 2400 unlabeled; alignment 6 epochs, teachers
10, every student arm 16 fine-tuning epochs. For each step of the ordering
(student labels only < + alignment < CSKD, teacher labels only < + alignment)
the script reports the mean paired SRCC difference over seeds, its 95% t
interval and how many seeds agree.

    python benchmarks/ablation.py --json benchmarks/ablation_results.json --plot benchmarks/ablation.png
    python benchmarks/ablation.py --seeds 7,8,9           # these seeds
    python benchmarks/ablation.py --seeds 1 --epochs-scale 0.5   # a quick look
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import keras
import keras_hub
import numpy as np
from scipy import stats

from keras_cskd import backbones
from keras_cskd.data import FrozenOutputCache
from keras_cskd.data import labeled_dataset
from keras_cskd.data import list_images
from keras_cskd.data import read_ava
from keras_cskd.data import synthetic
from keras_cskd.models import AestheticScorer
from keras_cskd.models import CLIPFeatureAligner
from keras_cskd.models import SemiSupervisedDistiller
from keras_cskd.recipe import build_backbone
from keras_cskd.recipe import stand_in_clip
from keras_cskd.report import paired_difference

ARMS = [
    "student: labels only",
    "student: + alignment",
    "student: + distillation",
    "student: + both (CSKD)",
    "teacher: labels only",
    "teacher: + alignment",
]


def make_clip(args):
    """The library's stand-in CLIP, and what it carries: a linear probe of its embedding for the hidden score."""
    clip = stand_in_clip(
        args.image_size,
        seed=0,
        num_images=args.clip_images,
        epochs=args.clip_epochs,
        patch_size=args.clip_patch_size,
        grain=args.grain,
        readout=args.clip_readout,
    )
    rng = np.random.default_rng(777)  # scenes apart from the CLIP's and every world's
    a = synthetic.sample_attributes(1300, rng)
    scenes = synthetic.render(a, args.image_size, rng, args.grain).astype("float32")
    features = clip.predict(scenes, batch_size=128, verbose=0)
    x = np.c_[features, np.ones(len(features))]
    w = np.linalg.solve(x[:300].T @ x[:300] + 0.1 * np.eye(x.shape[1]), x[:300].T @ a["z"][:300])
    probe = float(stats.spearmanr(x[300:] @ w, a["z"][300:])[0])
    return clip, {"linear_probe_srcc_300_labels": round(probe, 3)}


def student_backbone(s):
    """The recipe's small MobileNetV2-style CNN (`small_mobilenet`, BatchNorm momentum 0.9)."""
    return build_backbone("small_mobilenet", s)


def teacher_backbone(s, patch_size=4):
    vit = keras_hub.models.ViTBackbone(
        image_shape=(s, s, 3),
        patch_size=patch_size,
        num_layers=3,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
    )
    return backbones.get(vit, image_size=s)


def evaluate(model, x, means):
    pred = model.score(x, batch_size=64)
    return float(stats.spearmanr(pred, means)[0]), float(stats.pearsonr(pred, means)[0])


class SeedRun:
    """One seed's world, test set and initial weights, and the training steps every arm is made of."""

    def __init__(self, seed, clip, args, workdir):
        self.seed, self.clip, self.args = seed, clip, args
        self.world = synthetic.make_world(
            os.path.join(workdir, f"world{seed}"),
            num_labeled=args.num_labeled,
            num_unlabeled=args.num_unlabeled,
            image_size=args.file_size,
            seed=seed,
            test_fraction=args.test_fraction,
            grain=args.grain,
        )
        # The world's own test list: `--test-fraction` of the labeled images.
        self.records = read_ava(self.world.ava_root, test_list=self.world.ava_test_list, val_fraction=0.0, seed=seed)
        test = labeled_dataset(self.records, "test", image_size=args.image_size, batch_size=64, training=False)
        self.x_test = np.concatenate([np.asarray(x) for x, _ in test]).astype("float32")
        self.test_means = self.records.select("test").mean_scores
        self.cache_dir = os.path.join(workdir, "cache")
        keras.utils.set_random_seed(seed)
        self.initial = {
            "teacher": teacher_backbone(args.image_size, args.teacher_patch_size).get_weights(),
            "student": student_backbone(args.image_size).get_weights(),
        }

    def epochs(self, n):
        return max(1, int(round(n * self.args.epochs_scale)))

    def backbone(self, kind, weights):
        size = self.args.image_size
        model = teacher_backbone(size, self.args.teacher_patch_size) if kind == "teacher" else student_backbone(size)
        model.set_weights(weights)
        return model

    def evaluate(self, scorer):
        return evaluate(scorer, self.x_test, self.test_means)

    def align(self, pool, epochs):
        """Teacher and student backbone weights aligned to the CLIP on `pool`, from cached CLIP embeddings."""
        keras.utils.set_random_seed(self.seed)
        learners = {kind: self.backbone(kind, weights) for kind, weights in self.initial.items()}
        aligner = CLIPFeatureAligner(self.clip, learners, projection_hidden_dim=64)
        aligner.compile(optimizer=keras.optimizers.Adam(1e-3))
        # CLIP's targets from CLIP's own view of each whole image; the learners train on random crops.
        cache = FrozenOutputCache(
            self.clip,
            self.cache_dir,
            image_size=self.args.image_size,
            batch_size=128,
            model_view_size=self.clip.view_size,
        )
        data = cache.dataset(pool, batch_size=self.args.batch_size, training=True, seed=self.seed)
        aligner.fit(data, epochs=epochs, verbose=0)
        return {kind: aligner.learners[kind].backbone.get_weights() for kind in self.initial}

    def fine_tune(self, kind, weights, epochs):
        """An `AestheticScorer` on the labeled train split, the same seed and steps for every arm.

        A teacher first trains its score head alone for `--teacher-head-epochs`
        (its backbone frozen), then everything at `--teacher-lr`.
        """
        keras.utils.set_random_seed(self.seed + (1 if kind == "teacher" else 2))
        scorer = AestheticScorer(self.backbone(kind, weights))
        data = labeled_dataset(
            self.records,
            "train",
            image_size=self.args.image_size,
            batch_size=self.args.batch_size,
            training=True,
            seed=self.seed,
        )
        teacher = kind == "teacher"
        if teacher and self.args.teacher_head_epochs > 0:  # `self.epochs` never gives 0
            scorer.backbone.trainable = False
            scorer.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=[])
            scorer.fit(data, epochs=self.epochs(self.args.teacher_head_epochs), verbose=0)
            scorer.backbone.trainable = True
        scorer.compile(optimizer=keras.optimizers.Adam(self.args.teacher_lr if teacher else 1e-3), metrics=[])
        scorer.fit(data, epochs=epochs, verbose=0)
        return scorer

    def distill(self, teacher, student_weights, pool):
        """A student from `student_weights` distilled from `teacher` on `pool`, from cached pseudo-labels."""
        keras.utils.set_random_seed(self.seed + 2)
        pseudo = FrozenOutputCache(teacher, self.cache_dir, image_size=self.args.image_size, batch_size=128)
        data = pseudo.semi_supervised_dataset(
            self.records,
            pool,
            batch_size=self.args.batch_size,
            unlabeled_ratio=self.args.unlabeled_ratio,
            seed=self.seed,
        )
        student = AestheticScorer(self.backbone("student", student_weights))
        distiller = SemiSupervisedDistiller(None, student)
        distiller.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=[])
        distiller.fit(data, epochs=self.epochs(self.args.student_epochs), verbose=0)
        return student


def run_seed(seed, clip, args, workdir):
    """Every arm of the ablation on one seed's world."""
    t0 = time.perf_counter()
    run = SeedRun(seed, clip, args, workdir)
    pool, teacher_epochs, student_epochs = (
        run.world.unlabeled_dir,
        run.epochs(args.teacher_epochs),
        run.epochs(args.student_epochs),
    )
    aligned = run.align(pool, run.epochs(args.align_epochs))
    results = {}
    teacher_plain = run.fine_tune("teacher", run.initial["teacher"], teacher_epochs)
    teacher_aligned = run.fine_tune("teacher", aligned["teacher"], teacher_epochs)
    results["teacher: labels only"] = run.evaluate(teacher_plain)
    results["teacher: + alignment"] = run.evaluate(teacher_aligned)
    results["student: labels only"] = run.evaluate(run.fine_tune("student", run.initial["student"], student_epochs))
    results["student: + alignment"] = run.evaluate(run.fine_tune("student", aligned["student"], student_epochs))
    results["student: + distillation"] = run.evaluate(run.distill(teacher_plain, run.initial["student"], pool))
    results["student: + both (CSKD)"] = run.evaluate(run.distill(teacher_aligned, aligned["student"], pool))
    return {
        "seed": seed,
        "oracle_srcc": run.world.oracle_srcc,
        "test_images": int(len(run.test_means)),
        "train_images": int(len(run.records.select("train").mean_scores)),
        "seconds": round(time.perf_counter() - t0, 1),
        "arms": {k: {"srcc": round(v[0], 4), "plcc": round(v[1], 4)} for k, v in results.items()},
    }


def run_pool_curve(seed, clip, args, workdir, sizes):
    """The CSKD student's SRCC for unlabeled pools of `sizes` (the first files of one world's pool).

    Alignment takes the same number of steps for every size (epochs scaled by
    largest / size), so a larger pool means more distinct images, not more
    training; distillation epochs follow the labeled split, as everywhere.
    """
    run = SeedRun(seed, clip, args, workdir)
    files = list_images(run.world.unlabeled_dir)
    if max(sizes) > len(files):
        raise SystemExit(f"--pool-sizes {max(sizes)} is larger than --num-unlabeled {len(files)}")
    points = {}
    for size in sizes:
        pool = files[:size]
        epochs = run.epochs(args.align_epochs * max(sizes) / size)
        aligned = run.align(pool, epochs)
        teacher = run.fine_tune("teacher", aligned["teacher"], run.epochs(args.teacher_epochs))
        student = run.distill(teacher, aligned["student"], pool)
        points[str(size)] = {"srcc": round(run.evaluate(student)[0], 4), "align_epochs": epochs}
    return {"seed": seed, "points": points}


def plot_pool_curve(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(k) for k in curves[0]["points"])
    values = np.array([[c["points"][str(n)]["srcc"] for n in sizes] for c in curves])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for c, row in zip(curves, values):
        ax.plot(sizes, row, color="gray", alpha=0.4, marker=".", linewidth=1)
    ax.errorbar(
        sizes,
        values.mean(0),
        yerr=values.std(0, ddof=1) if len(values) > 1 else None,
        marker="o",
        capsize=3,
        label=f"mean ± sd over {len(values)} seeds",
    )
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("unlabeled images (alignment and distillation)")
    ax.set_ylabel("CSKD student SRCC (300 test images)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# The steps of the paper's ordering, each a paired comparison (from, to).
STEPS = [
    ("student: labels only", "student: + alignment"),
    ("student: + alignment", "student: + both (CSKD)"),
    ("student: labels only", "student: + both (CSKD)"),
    ("student: labels only", "student: + distillation"),
    ("teacher: labels only", "teacher: + alignment"),
]


def paired_steps(runs):
    """For each step, the paired SRCC difference over seeds: mean, 95% t interval, seeds agreeing."""
    steps = {}
    for before, after in STEPS:
        a = [r["arms"][before]["srcc"] for r in runs]
        b = [r["arms"][after]["srcc"] for r in runs]
        steps[f"{before} -> {after}"] = {
            k: round(v, 4) if isinstance(v, float) else v for k, v in paired_difference(a, b).items()
        }
    return steps


def summarize(runs):
    table = {}
    for arm in ARMS:
        for metric in ("srcc", "plcc"):
            values = np.array([r["arms"][arm][metric] for r in runs])
            table.setdefault(arm, {})[metric] = (
                float(values.mean()),
                float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            )
    return table


def markdown(table, runs, args, clip_info):
    lines = ["| model | SRCC (mean ± sd) | PLCC (mean ± sd) |", "| --- | --- | --- |"]
    for arm in ARMS:
        (sm, ss), (pm, ps) = table[arm]["srcc"], table[arm]["plcc"]
        lines.append(f"| {arm} | {sm:.3f} ± {ss:.3f} | {pm:.3f} ± {ps:.3f} |")
    oracle = np.mean([r["oracle_srcc"] for r in runs])
    lines += [
        "",
        f"{len(runs)} seed(s); {args.num_labeled} labeled images ({runs[0]['test_images']} test), "
        f"{args.num_unlabeled} unlabeled, {args.image_size}px; epochs x{args.epochs_scale} "
        f"(align {args.align_epochs}, teacher {args.teacher_head_epochs} head-only + {args.teacher_epochs} "
        f"at lr {args.teacher_lr:g}, student {args.student_epochs}); "
        f"backend {keras.backend.backend()}. Oracle SRCC (perfect attribute reader) on these worlds: {oracle:.3f}. "
        f"Stand-in CLIP ({args.clip_readout} readout of its caption words): a linear probe of its embedding "
        f"on 300 labeled scenes reaches SRCC "
        f"{clip_info['linear_probe_srcc_300_labels']} with the hidden score.",
    ]
    lines += ["", "| step | mean SRCC difference | 95% interval | seeds agreeing |", "| --- | --- | --- | --- |"]
    for step, d in paired_steps(runs).items():
        lines.append(f"| {step} | {d['mean']:+.3f} | {d['low']:+.3f} .. {d['high']:+.3f} | {d['agree']}/{d['n']} |")
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


def write_results(args, clip_info, start, **results):
    """`--json`: the arguments, what the stand-in CLIP carries, `results` and the seconds taken."""
    if args.json:
        with open(args.json, "w") as f:
            record = {"args": vars(args), "clip": clip_info, **results}
            json.dump({**record, "seconds": round(time.perf_counter() - start, 1)}, f, indent=1)


def seed_list(text):
    """`"5"` -> [0, 1, 2, 3, 4]; `"7,8,9"` -> [7, 8, 9]."""
    if "," in text:
        return [int(v) for v in text.split(",") if v.strip()]
    return list(range(int(text)))


def parse_args(argv=None):
    """The script's options; `parse_args([])` gives its defaults."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=seed_list("5"),
        help="a count (5: seeds 0..4) or a comma-separated list (7,8,9)",
    )
    parser.add_argument("--num-labeled", type=int, default=600, help="labeled images, test split included")
    parser.add_argument("--num-unlabeled", type=int, default=2400)
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.5,
        help="of the labeled images, held out for evaluation only (cheap; SRCC on few is noise)",
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--file-size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--unlabeled-ratio", type=float, default=2.0)
    parser.add_argument("--clip-images", type=int, default=2000)
    parser.add_argument("--clip-epochs", type=int, default=8)
    parser.add_argument(
        "--clip-patch-size", type=int, default=None, help="the stand-in CLIP's patches; image size // 8 by default"
    )
    parser.add_argument(
        "--clip-readout",
        choices=["sigmoid", "softmax"],
        default="sigmoid",
        help="how the stand-in learns its caption words: each word alone, or one softmax per attribute",
    )
    parser.add_argument("--teacher-patch-size", type=int, default=4, help="the teacher ViT's patches")
    parser.add_argument(
        "--grain",
        type=float,
        default=0.0,
        help="fine texture in every scene, world and stand-in alike, so that blur shows everywhere (synthetic.render)",
    )
    parser.add_argument("--align-epochs", type=int, default=6)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument(
        "--teacher-head-epochs",
        type=int,
        default=0,
        help="before its --teacher-epochs, each teacher trains its score head alone (backbone frozen) this long",
    )
    parser.add_argument(
        "--teacher-lr", type=float, default=1e-3, help="Adam learning rate of the teachers' fine-tuning"
    )
    parser.add_argument(
        "--student-epochs",
        type=int,
        default=16,
        help="every student arm (aligned or not, distilled or not) gets these fine-tuning epochs",
    )
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every training phase's epochs")
    parser.add_argument(
        "--pool-sizes",
        type=lambda t: [int(v) for v in t.split(",")],
        default=None,
        help="instead of the arms: the CSKD student for these unlabeled pool sizes, e.g. 300,900,2400",
    )
    parser.add_argument(
        "--add-to",
        default=None,
        help="with --pool-sizes: a JSON this script wrote; its curves are kept and the seeds it lacks are added",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--plot", default=None)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    start = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="cskd_ablation_")
    clip, clip_info = make_clip(args)
    print(f"CLIP stand-in trained: {clip_info} ({time.perf_counter() - start:.0f}s)", flush=True)
    if args.pool_sizes:
        curves = []
        if args.add_to:
            with open(args.add_to) as file:
                curves = json.load(file)["curves"]
        done = {curve["seed"] for curve in curves}
        for seed in args.seeds:
            if seed not in done:
                curves.append(run_pool_curve(seed, clip, args, workdir, args.pool_sizes))
                print(json.dumps(curves[-1]), flush=True)
        args.seeds = [curve["seed"] for curve in curves]
        write_results(args, clip_info, start, curves=curves)
        if args.plot:
            plot_pool_curve(curves, args.plot)
        return curves
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, clip, args, workdir))
        print(json.dumps(runs[-1]), flush=True)
    table = summarize(runs)
    text = markdown(table, runs, args, clip_info)
    print(text)
    print(f"total {time.perf_counter() - start:.0f}s")
    write_results(args, clip_info, start, runs=runs, summary=table, paired_steps=paired_steps(runs))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.plot:
        plot(table, args.plot, f"CSKD ablation on the synthetic world ({len(runs)} seeds, mean ± sd)")
    return table


if __name__ == "__main__":
    main()
