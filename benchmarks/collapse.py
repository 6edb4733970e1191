"""Feature collapse in the demo's ViT teacher: attention distance and entropy per layer.

The paper reports that a backbone fine-tuned on aesthetics labels alone lets
its attention collapse (heads of a layer attend alike), and that aligning it to
CLIP first alleviates that. This compares, on the test images of a `cskd demo`
run, four states of the demo's `small_vit` teacher:

- "random init": a freshly initialised `small_vit` (the architecture, seed 0);
- "aligned (phase 1)": the teacher learner of `align/aligner.keras`;
- "aligned + fine-tuned": the demo's teacher, `teacher/teacher.keras`;
- "fine-tuned, no alignment": `small_vit` fine-tuned here from random init on
  the same labels, with the run's config (the same epochs and learning rate).

    cskd demo --out cskd_demo
    python benchmarks/collapse.py cskd_demo --out docs/img/collapse

It writes `attention.json`, `attention_distance.png` and `attention_entropy.png`
(`keras_cskd.analysis`), plus `summary.json`: per model, the mean over layers of
the spread (standard deviation) of the heads' distances and entropies, the
number a collapse makes small.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import keras
import numpy as np

from keras_cskd import analysis
from keras_cskd import data
from keras_cskd import recipe
from keras_cskd.models import AestheticScorer


def head_spread(stats):
    """Mean over layers of the standard deviation over heads, for distance and entropy."""
    out = {}
    for key in ("mean_distance", "entropy"):
        values = np.asarray(stats[key], np.float64)  # (layers, heads)
        out[f"{key}_head_spread"] = round(float(values.std(axis=1).mean()), 4)
        out[f"{key}_mean"] = round(float(values.mean()), 4)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a `cskd demo` (or `cskd run`) output folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-images", type=int, default=128)
    args = parser.parse_args(argv)

    config = recipe.RecipeConfig.load(os.path.join(args.run, "config.toml"))
    size = config.data.image_size
    keras.utils.set_random_seed(0)
    random_init = recipe.build_backbone("small_vit", size)
    aligner = keras.saving.load_model(os.path.join(args.run, "align", "aligner.keras"))
    teacher = keras.saving.load_model(os.path.join(args.run, "teacher", "teacher.keras"))

    datasets = recipe.prepare_data(config, args.run)
    keras.utils.set_random_seed(config.train.seed)
    plain = AestheticScorer(recipe.build_backbone("small_vit", size), num_bins=config.model.num_bins)
    plain.compile(optimizer=keras.optimizers.Adam(config.train.learning_rate))
    train = data.labeled_dataset(
        datasets.records, "train", image_size=size, batch_size=config.data.batch_size, seed=config.train.seed
    )
    plain.fit(train, epochs=config.train.teacher_epochs, verbose=0)

    test = data.labeled_dataset(datasets.records, "test", image_size=size, batch_size=64, dtype="float32")
    images = np.concatenate([np.asarray(x) for x, _ in test])[: args.max_images]
    models = {
        "random init": random_init,
        "aligned (phase 1)": aligner.learners["teacher"].backbone,
        "aligned + fine-tuned": teacher,
        "fine-tuned, no alignment": plain,
    }
    stats = analysis.compare(models, images)
    os.makedirs(args.out, exist_ok=True)
    analysis.plot(stats, args.out)
    with open(os.path.join(args.out, "attention.json"), "w") as f:
        json.dump(stats, f, indent=1, default=lambda v: np.asarray(v).tolist())
    summary = {name: head_spread(s) for name, s in stats.items()}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(
            {"images": int(len(images)), "run": os.path.basename(os.path.normpath(args.run)), "models": summary},
            f,
            indent=1,
        )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
