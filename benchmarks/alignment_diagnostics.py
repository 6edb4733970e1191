"""What alignment does to the ablation's learners, measured on each seed's test images.

For the ablation's worlds, stand-in CLIP, teacher and student
(`benchmarks/ablation.py`), per seed:

- `probe ...`: the test SRCC of a ridge probe (fitted on the 300 labeled
  training images) of a model's pooled features: CLIP's, each learner's at
  its initial weights and after 6 and 18 epochs of alignment: how much of the
  hidden score each feature carries linearly;
- `cos ...`: the mean cosine, on the test images, between a learner's
  projected feature and CLIP's embedding, before and after alignment: whether
  alignment moves the learner toward CLIP on images it never trained on;
- `teacher fine-tuned lr ...`: the aligned (6 epochs) teacher fine-tuned on
  the labels for 10 epochs at two learning rates: how much of the aligned
  features fine-tuning keeps.

    python benchmarks/alignment_diagnostics.py --seeds 0,1,2 --json out.json
    python benchmarks/alignment_diagnostics.py --clip-images 6000   # other options go to ablation.py's
"""

import argparse
import json
import os
import sys
import tempfile

import keras
import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ablation  # noqa: E402

from keras_cskd.data import FrozenOutputCache  # noqa: E402
from keras_cskd.data import labeled_dataset  # noqa: E402
from keras_cskd.models import AestheticScorer  # noqa: E402
from keras_cskd.models import CLIPFeatureAligner  # noqa: E402


def features(model, images):
    return np.asarray(model.predict(images, batch_size=128, verbose=0))


def probe_srcc(train_features, train_scores, test_features, test_scores, ridge=1.0):
    """Test SRCC of a ridge regression of the scores on standardized features."""
    mean, scale = train_features.mean(0), train_features.std(0) + 1e-6
    a, b = (train_features - mean) / scale, (test_features - mean) / scale
    weights = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ (train_scores - train_scores.mean()))
    return float(stats.spearmanr(b @ weights, test_scores)[0])


def mean_cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, 1)))


def diagnose(seed, clip, args, workdir):
    run = ablation.SeedRun(seed, clip, args, workdir)
    train = labeled_dataset(run.records, "train", image_size=args.image_size, batch_size=64, training=False)
    x_train = np.concatenate([np.asarray(x) for x, _ in train]).astype("float32")
    y_train = run.records.select("train").mean_scores
    x_test, y_test = run.x_test, run.test_means
    result = {"seed": seed}
    clip_train, clip_test = features(clip, x_train), features(clip, x_test)
    result["probe clip"] = probe_srcc(clip_train, y_train, clip_test, y_test)
    keras.utils.set_random_seed(seed)
    learners = {kind: run.backbone(kind, weights) for kind, weights in run.initial.items()}
    for kind, model in learners.items():
        result[f"probe {kind} initial"] = probe_srcc(features(model, x_train), y_train, features(model, x_test), y_test)
    aligner = CLIPFeatureAligner(clip, learners, projection_hidden_dim=64)
    aligner.compile(optimizer=keras.optimizers.Adam(1e-3))
    cache = FrozenOutputCache(
        clip, run.cache_dir, image_size=args.image_size, batch_size=128, model_view_size=clip.view_size
    )
    data = cache.dataset(run.world.unlabeled_dir, batch_size=args.batch_size, training=True, seed=seed)

    def cosine(kind):
        learner = aligner.learners[kind]
        return mean_cosine(np.asarray(learner.projector(learner.backbone(x_test))), clip_test)

    for kind in learners:
        result[f"cos {kind} initial"] = cosine(kind)
    aligned = None
    for done, epochs in ((6, 6), (18, 12)):
        aligner.fit(data, epochs=epochs, verbose=0)
        for kind, model in learners.items():
            result[f"cos {kind} aligned {done} epochs"] = cosine(kind)
            result[f"probe {kind} aligned {done} epochs"] = probe_srcc(
                features(model, x_train), y_train, features(model, x_test), y_test
            )
        if aligned is None:
            aligned = learners["teacher"].get_weights()
    for learning_rate in (1e-3, 2e-4):
        keras.utils.set_random_seed(seed + 1)
        scorer = AestheticScorer(run.backbone("teacher", aligned))
        scorer.compile(optimizer=keras.optimizers.Adam(learning_rate), metrics=[])
        labeled = labeled_dataset(
            run.records, "train", image_size=args.image_size, batch_size=args.batch_size, training=True, seed=seed
        )
        scorer.fit(labeled, epochs=args.teacher_epochs, verbose=0)
        result[f"teacher fine-tuned lr {learning_rate}"] = run.evaluate(scorer)[0]
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in result.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=ablation.seed_list, default=ablation.seed_list("0,1,2"))
    parser.add_argument("--json", default=None)
    options, rest = parser.parse_known_args()
    args = ablation.parse_args(rest)  # the ablation's defaults, or the options given
    workdir = tempfile.mkdtemp(prefix="cskd_alignment_")
    clip, clip_info = ablation.make_clip(args)
    rows = []
    for seed in options.seeds:
        rows.append(diagnose(seed, clip, args, workdir))
        print(json.dumps(rows[-1]), flush=True)
    if options.json:
        with open(options.json, "w") as file:
            json.dump({"clip": clip_info, "seeds": rows}, file, indent=1)


if __name__ == "__main__":
    main()
