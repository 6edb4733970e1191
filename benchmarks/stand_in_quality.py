"""What the stand-in CLIP has learned to see, per caption attribute, for several training budgets.

For each budget (scenes x epochs) it trains `keras_cskd.recipe.stand_in_clip`
and measures on freshly rendered scenes (never trained on):

- `words`: per attribute of `synthetic.CAPTION_VOCABULARY`, the accuracy of a
  linear read-out of the embedding (least squares on one-hot words, fitted on
  1000 scenes, scored on 2000 others), beside chance (1 / words);
- `probe`: the test SRCC with the hidden score of a ridge probe of the
  embedding fitted on 300 labeled scenes (as `alignment_diagnostics.py`), per
  world seed, and the same probe of the true caption words (`caption words`:
  what a stand-in that read every word perfectly would carry).

With `--grain`, every scene carries the fine texture that makes blur visible
everywhere (`synthetic.render`); `laplacian_sharpness_spearman` says how
visible blur is to a hand-made measure (the scenes' mean absolute Laplacian).
`--patch-size` sets the stand-in ViT's patches, `--readout` how it learns its
words (`stand_in_clip`).

The scenes are rendered at the model's size (the worlds' files are JPEGs seen
through CLIP's resize; this skips both).

    python benchmarks/stand_in_quality.py --budgets 2000x8,6000x16 --json out.json
    python benchmarks/stand_in_quality.py --budgets 2000x8 --grain 0.08 --patch-size 2
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from alignment_diagnostics import probe_srcc  # noqa: E402

from keras_cskd.data import synthetic  # noqa: E402
from keras_cskd.recipe import stand_in_clip  # noqa: E402


def scenes(n, seed, image_size, grain):
    """Rendered scenes, their attributes and true mean scores (`mu`, as `make_world` draws it)."""
    rng = np.random.default_rng(seed)
    attributes = synthetic.sample_attributes(n, rng)
    images = synthetic.render(attributes, image_size, rng, grain).astype("float32")
    scores = 2.2 + 6.0 * attributes["z"] + rng.normal(0.0, synthetic.IMAGE_NOISE, n)
    return images, attributes, scores


def word_accuracy(train_features, train_words, test_features, test_words):
    """Per caption attribute: accuracy of a least-squares one-hot read-out of the features."""
    design = np.concatenate([train_features, np.ones((len(train_features), 1))], 1)
    weights = np.linalg.lstsq(design, train_words, rcond=None)[0]
    logits = np.concatenate([test_features, np.ones((len(test_features), 1))], 1) @ weights
    accuracy, start = {}, 0
    for name, _, _, count in synthetic.CAPTION_VOCABULARY:
        columns = slice(start, start + count)
        hits = logits[:, columns].argmax(1) == test_words[:, columns].argmax(1)
        accuracy[name] = {"accuracy": round(float(hits.mean()), 3), "chance": round(1.0 / count, 3)}
        start += count
    return accuracy


def words_probe(attributes, scores):
    """The probe of the true caption words: a stand-in that read every word perfectly."""
    words = synthetic.caption_words(attributes)
    return probe_srcc(words[:300], scores[:300], words[300:], scores[300:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="2000x8,6000x16", help="scenes x epochs, comma-separated")
    parser.add_argument("--world-seeds", default="0,1,2")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--grain", type=float, default=0.0, help="the scenes' fine texture (synthetic.render)")
    parser.add_argument("--patch-size", type=int, default=None, help="the stand-in ViT's; image size // 8 by default")
    parser.add_argument("--readout", choices=["sigmoid", "softmax"], default="sigmoid", help="as stand_in_clip's")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    size = args.image_size
    word_train, word_attributes, _ = scenes(1000, 9000, size, args.grain)
    word_test, test_attributes, _ = scenes(2000, 9001, size, args.grain)
    worlds = [scenes(2300, 100 + int(seed), size, args.grain) for seed in args.world_seeds.split(",")]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count()}
    report["load_average_start"] = os.getloadavg()[0]
    report.update(grain=args.grain, patch_size=args.patch_size or max(size // 8, 1), readout=args.readout)
    report["laplacian_sharpness_spearman"] = round(
        synthetic.blur_visibility(word_test, test_attributes["sharpness"]), 3
    )
    report["caption words"] = {"probe": [round(words_probe(a, s), 3) for _, a, s in worlds]}
    for budget in args.budgets.split(","):
        num_images, epochs = (int(v) for v in budget.split("x"))
        start = time.time()
        clip = stand_in_clip(
            size,
            seed=0,
            num_images=num_images,
            epochs=epochs,
            patch_size=args.patch_size,
            grain=args.grain,
            readout=args.readout,
        )

        def embed(images):
            return np.asarray(clip.predict(images, batch_size=256, verbose=0))

        words = word_accuracy(
            embed(word_train),
            synthetic.caption_words(word_attributes),
            embed(word_test),
            synthetic.caption_words(test_attributes),
        )
        probes = []
        for images, _, scores in worlds:
            features = embed(images)
            probes.append(round(probe_srcc(features[:300], scores[:300], features[300:], scores[300:]), 3))
        report[budget] = {"words": words, "probe": probes, "seconds": round(time.time() - start)}
        print(budget, json.dumps(report[budget]), flush=True)
    report["load_average_end"] = os.getloadavg()[0]
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
