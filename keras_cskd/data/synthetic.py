"""A synthetic aesthetics world: real image files whose votes depend on what is visible.

`make_world` renders small scenes (a coloured subject disk on a graded,
textured background) from a seed and writes them as JPEG files with an
AVA-format `AVA.txt`, an official-style test list, and a pool of unlabeled
images; optionally the same labeled images in the AADB and PARA layouts.
The readers load it through exactly the code paths used for the real data.

Hidden score function. Each image has four visible attributes, each turned
into a quality in [0, 1]:

- exposure `e ~ U(-1, 1)`, a gain of `2 ** (1.6 e)` on the whole image:
  `q_exposure = 1 - e ** 2` (best unchanged, worst blown out or dark);
- sharpness `s ~ U(0, 1)`, a blend of the scene and its Gaussian blur:
  `q_sharpness = s`;
- colour harmony, the hue distance `d` (in turns, 0..0.5) between subject and
  background: `q_harmony = (1 + cos(4 pi d)) / 2` (1 for analogous or
  complementary hues, 0 at a right angle on the colour wheel);
- composition, the distance `r` (in image widths) from the subject's centre to
  the nearest rule-of-thirds point: `q_composition = exp(-(r / 0.12) ** 2)`
  (symmetric, so horizontal flips do not change it).

`z = 0.3 q_exposure + 0.25 q_sharpness + 0.2 q_harmony + 0.25 q_composition`
and the image's true mean score is `mu = 2.2 + 6 z + eps` with
`eps ~ N(0, 0.4)` (taste the attributes do not explain). Each image gets
`V ~ U{50..150}` rater votes, each `round(mu + N(0, 1.4))` clipped to 1..10;
the vote counts are the AVA histogram. Vote means average about 5.5 with a
standard deviation of about 1.0 across images (AVA: 5.4 and 0.7), and each
image's votes spread by about 1.4 (AVA: 1.4).

A perfect reader of the four attributes (predicting `z`) reaches SRCC about
0.90 against the vote means (measured on 3 x 20,000 images; `make_world`
stores the value for its own images in `world.json` as `oracle_srcc`). No
model can beat that on average; a model that reads the pixels well gets close.

Caption words. `caption_words(attributes)` names what a caption of each
scene would say, one word per attribute from a small vocabulary
(`CAPTION_VOCABULARY`: exposure, sharpness, the two hues, their distance,
the subject's cell on a 6 x 6 grid, its size): the signal a CLIP learns from.
The words name visible attributes, never the qualities or the score; the
offline stand-in CLIP of the demo and the ablation
(`keras_cskd.recipe.stand_in_clip`) is trained on them.

Generation is vectorised numpy plus one JPEG encode per image: well over
ten thousand 64x64 images per minute on one core.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy import special
from scipy import stats

WEIGHTS = {"exposure": 0.3, "sharpness": 0.25, "harmony": 0.2, "composition": 0.25}
IMAGE_NOISE = 0.4
RATER_NOISE = 1.4
_BATCH = 256


@dataclasses.dataclass(frozen=True)
class World:
    """Paths of a generated world (`None` for layouts not written)."""

    root: str
    ava_root: str
    ava_test_list: str
    unlabeled_dir: str | None
    aadb_root: str | None = None
    para_root: str | None = None
    oracle_srcc: float | None = None


def _hsv_to_rgb(h, s, v):
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def sample_attributes(n, rng):
    """Random visible attributes and their qualities for `n` images (dict of arrays)."""
    thirds = np.array([1 / 3, 2 / 3])
    near = rng.random(n) < 0.5
    anchor = np.stack([rng.choice(thirds, n), rng.choice(thirds, n)], 1)
    centre = np.where(near[:, None], anchor + rng.normal(0, 0.06, (n, 2)), rng.uniform(0.15, 0.85, (n, 2)))
    centre = np.clip(centre, 0.12, 0.88)
    a = {
        "exposure": rng.uniform(-1, 1, n),
        "sharpness": rng.uniform(0, 1, n),
        "hue": rng.random(n),
        "hue_distance": rng.uniform(0, 0.5, n),
        "cx": centre[:, 0],
        "cy": centre[:, 1],
        "radius": rng.uniform(0.1, 0.18, n),
    }
    d = np.abs(centre[:, None, :] - np.stack(np.meshgrid(thirds, thirds), -1).reshape(1, 4, 2))
    r = np.sqrt((d**2).sum(-1)).min(1)
    a["q_exposure"] = 1 - a["exposure"] ** 2
    a["q_sharpness"] = a["sharpness"]
    a["q_harmony"] = (1 + np.cos(4 * np.pi * a["hue_distance"])) / 2
    a["q_composition"] = np.exp(-((r / 0.12) ** 2))
    a["z"] = sum(w * a[f"q_{k}"] for k, w in WEIGHTS.items())
    return a


# === Caption words ===

# What a caption of a rendered scene would name, each attribute in words from a small
# vocabulary ("a dark photo", "slightly blurry", "a red disk on a teal background",
# "colours a quarter turn apart", "subject at the upper left", "a small subject"):
# (attribute, low, high, words). Position is named by the cell of a 6 x 6 grid.
CAPTION_VOCABULARY = (
    ("exposure", -1.0, 1.0, 8),
    ("sharpness", 0.0, 1.0, 6),
    ("hue", 0.0, 1.0, 12),
    ("subject_hue", 0.0, 1.0, 12),
    ("hue_distance", 0.0, 0.5, 8),
    ("position", 0.0, 1.0, 36),
    ("radius", 0.1, 0.18, 3),
)


def _word(values, low, high, count):
    return np.clip(((values - low) / (high - low) * count).astype(int), 0, count - 1)


def caption_words(a):
    """Multi-hot caption words `(n, 85)` of attributes from `sample_attributes`.

    Each attribute is named by one word of its group in `CAPTION_VOCABULARY`:
    the kind of description a CLIP learns from. Words name what is visible,
    never the qualities or the score.

    Example:

    >>> words = caption_words(sample_attributes(4, np.random.default_rng(0)))
    >>> words.shape, words.sum(axis=1).tolist()
    ((4, 85), [7.0, 7.0, 7.0, 7.0])
    """
    cells = _word(a["cy"], 0.0, 1.0, 6) * 6 + _word(a["cx"], 0.0, 1.0, 6)
    values = {**a, "subject_hue": (a["hue"] + a["hue_distance"]) % 1.0}
    n = len(a["z"])
    words = np.zeros((n, sum(count for *_, count in CAPTION_VOCABULARY)), "float32")
    offset = 0
    for name, low, high, count in CAPTION_VOCABULARY:
        index = cells if name == "position" else _word(values[name], low, high, count)
        words[np.arange(n), offset + index] = 1.0
        offset += count
    return words


def render(a, size, rng, grain=0.0):
    """Images `(n, size, size, 3)` uint8 showing the attributes `a`.

    `grain` > 0 adds a fine luminance texture of that standard deviation to
    the whole scene before the blur, on a grid of 1/32 of the image (a pixel
    at 32 px): the blur then shows everywhere, as in a photograph, not only
    at the subject's edge. `grain=0` draws no extra random numbers, so the
    same seed renders the same scenes as before the option existed.

    Example:
    >>> a = sample_attributes(2, np.random.default_rng(0))
    >>> render(a, 32, np.random.default_rng(0), grain=0.08).shape
    (2, 32, 32, 3)
    """
    n = len(a["z"])
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    stripes = np.sin(2 * np.pi * (rng.uniform(1, 3, (n, 1, 1)) * xx + rng.random((n, 1, 1))))
    bg_v = 0.35 + 0.3 * (1 - yy)[None] + 0.05 * stripes
    background = _hsv_to_rgb(np.broadcast_to(a["hue"][:, None, None], bg_v.shape), np.full(bg_v.shape, 0.45), bg_v)
    subject = _hsv_to_rgb((a["hue"] + a["hue_distance"]) % 1.0, np.full(n, 0.85), np.full(n, 0.9))
    dist = np.sqrt((xx[None] - a["cx"][:, None, None]) ** 2 + (yy[None] - a["cy"][:, None, None]) ** 2)
    mask = np.clip((a["radius"][:, None, None] - dist) * size / 1.5 + 0.5, 0, 1)[..., None]
    img = background * (1 - mask) + subject[:, None, None, :] * mask
    if grain:
        field = ndimage.zoom(rng.normal(0, grain, (n, 32, 32)), (1, size / 32, size / 32), order=1)
        img = img + field[:, :size, :size, None]
    blurred = ndimage.gaussian_filter(img, sigma=(0, 2.5 * size / 64, 2.5 * size / 64, 0))
    s = a["sharpness"][:, None, None, None]
    img = s * img + (1 - s) * blurred
    img = img * 2.0 ** (1.6 * a["exposure"])[:, None, None, None] + rng.normal(0, 0.015, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def blur_visibility(images, sharpness):
    """Spearman of the images' mean absolute Laplacian (a hand-made sharpness measure) with `sharpness`.

    How visible blur is in rendered scenes, without any learning: about 0.3
    in plain scenes (blur shows only at the subject's edge), about 0.8 with
    `grain=0.08`.
    """
    gray = np.asarray(images, "float64").mean(-1)
    laplacian = (
        4 * gray[:, 1:-1, 1:-1] - gray[:, :-2, 1:-1] - gray[:, 2:, 1:-1] - gray[:, 1:-1, :-2] - gray[:, 1:-1, 2:]
    )
    return float(stats.spearmanr(np.abs(laplacian).mean((1, 2)), sharpness)[0])


def sample_votes(mu, bin_values, noise, num_votes, rng):
    """Vote counts `(n, len(bin_values))`: each vote is `mu + N(0, noise)` rounded to a bin."""
    bins = np.asarray(bin_values, np.float64)
    edges = np.concatenate([[-np.inf], (bins[1:] + bins[:-1]) / 2, [np.inf]])
    cdf = special.ndtr((edges[None] - mu[:, None]) / noise)
    p = np.diff(cdf, axis=1)
    return rng.multinomial(num_votes, p / p.sum(1, keepdims=True))


def _write_jpegs(images, paths, quality):
    for image, path in zip(images, paths):
        Image.fromarray(image).save(path, "JPEG", quality=quality)


def _generate(n, size, rng, paths, quality, grain):
    """Render and write `n` images in batches; returns their attributes."""
    parts = []
    for start in range(0, n, _BATCH):
        a = sample_attributes(min(_BATCH, n - start), rng)
        _write_jpegs(render(a, size, rng, grain), paths[start : start + _BATCH], quality)
        parts.append(a)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def make_world(
    out_dir,
    num_labeled=200,
    num_unlabeled=200,
    image_size=64,
    seed=0,
    test_fraction=0.1,
    formats=("ava",),
    jpeg_quality=90,
    overwrite=True,
    grain=0.0,
):
    """Write a synthetic aesthetics dataset to `out_dir` and return its paths.

    Layout: `ava/AVA.txt`, `ava/images/<id>.jpg`,
    `ava/aesthetics_image_lists/generic_test.jpgl` (a seeded `test_fraction`
    of the ids), `ava/attributes.csv` (the hidden attributes, for analysis),
    `unlabeled/<shard>/<n>.jpg`, `world.json`; with `formats` containing
    `"aadb"` / `"para"`, also `aadb/` and `para/` in those datasets' layouts
    (same images; AADB gets five 1..5 ratings per image published as a
    normalized mean, PARA 25 raters on its 1.0..5.0 half-point scale).

    The same arguments always produce the same files.

    Args:
        out_dir: folder to write (created). An existing folder must be empty
            or an earlier world (it has `world.json`); nothing else is deleted.
        num_labeled: labeled images.
        num_unlabeled: unlabeled images (`0` for none).
        image_size: side of the square JPEGs.
        seed: random seed.
        test_fraction: fraction of ids in the official-style test list.
        formats: any of `"ava"` (always written), `"aadb"`, `"para"`.
        jpeg_quality: JPEG quality.
        overwrite: replace an earlier world in `out_dir`.
        grain: standard deviation of the fine texture that makes blur visible
            everywhere (`render`); 0 for none.

    Returns:
        `World` with `ava_root`, `ava_test_list`, `unlabeled_dir`, `aadb_root`,
        `para_root`, `oracle_srcc`.

    Example:

    >>> from keras_cskd.data import read_ava, synthetic
    >>> world = synthetic.make_world("/tmp/cskd_doc_world", num_labeled=40, num_unlabeled=20)
    >>> len(read_ava(world.ava_root))
    40
    """
    if num_labeled < 1:
        raise ValueError("num_labeled must be at least 1")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not (overwrite and os.path.isfile(os.path.join(out_dir, "world.json"))):
            raise FileExistsError(f"{out_dir} is not empty and not a synthetic world to overwrite")
        shutil.rmtree(out_dir)
    ava = os.path.join(out_dir, "ava")
    os.makedirs(os.path.join(ava, "images"), exist_ok=True)
    os.makedirs(os.path.join(ava, "aesthetics_image_lists"), exist_ok=True)
    rng_labeled, rng_votes, rng_unlabeled, rng_split = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )

    ids = np.arange(1, num_labeled + 1) + 100000
    image_paths = [os.path.join(ava, "images", f"{i}.jpg") for i in ids]
    a = _generate(num_labeled, image_size, rng_labeled, image_paths, jpeg_quality, grain)
    mu = 2.2 + 6.0 * a["z"] + rng_votes.normal(0, IMAGE_NOISE, num_labeled)
    num_votes = rng_votes.integers(50, 151, num_labeled)
    votes = sample_votes(mu, np.arange(1, 11), RATER_NOISE, num_votes, rng_votes)
    tags = rng_votes.integers(0, 66, (num_labeled, 2))
    with open(os.path.join(ava, "AVA.txt"), "w") as f:
        for k, (i, v, t) in enumerate(zip(ids, votes, tags)):
            f.write(f"{k + 1} {i} {' '.join(map(str, v))} {t[0]} {t[1]} {1 + k % 50}\n")
    test_ids = ids[rng_split.permutation(num_labeled)[: int(round(test_fraction * num_labeled))]]
    test_list = os.path.join(ava, "aesthetics_image_lists", "generic_test.jpgl")
    with open(test_list, "w") as f:
        f.writelines(f"{i}\n" for i in sorted(test_ids))
    vote_means = votes @ np.arange(1, 11) / votes.sum(1)
    oracle = float(stats.spearmanr(a["z"], vote_means)[0]) if num_labeled > 2 else None
    _write_table(os.path.join(ava, "attributes.csv"), ids, a, mu, vote_means)

    unlabeled_dir = None
    if num_unlabeled:
        unlabeled_dir = os.path.join(out_dir, "unlabeled")
        paths = [os.path.join(unlabeled_dir, f"{j // 1000:03d}", f"{j}.jpg") for j in range(num_unlabeled)]
        for shard in sorted({os.path.dirname(p) for p in paths}):
            os.makedirs(shard, exist_ok=True)
        _generate(num_unlabeled, image_size, rng_unlabeled, paths, jpeg_quality, grain)

    roots, writers = {}, {"aadb": _write_aadb, "para": _write_para}
    for fmt in formats:
        if fmt in writers:
            root = os.path.join(out_dir, fmt)
            roots[f"{fmt}_root"] = writers[fmt](root, ids, image_paths, mu, set(test_ids), rng_votes)
        elif fmt != "ava":
            raise ValueError(f"unknown format {fmt!r}; use 'ava', 'aadb' or 'para'")
    world = World(out_dir, ava, test_list, unlabeled_dir, oracle_srcc=oracle, **roots)
    with open(os.path.join(out_dir, "world.json"), "w") as f:
        json.dump(
            {
                **dataclasses.asdict(world),
                "num_labeled": num_labeled,
                "num_unlabeled": num_unlabeled,
                "image_size": image_size,
                "seed": seed,
                "grain": grain,
                "weights": WEIGHTS,
            },
            f,
            indent=1,
        )
    return world


def _write_table(path, ids, a, mu, vote_means):
    columns = ["exposure", "sharpness", "hue_distance", "cx", "cy"]
    columns += ["q_exposure", "q_sharpness", "q_harmony", "q_composition", "z"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", *columns, "mu", "vote_mean"])
        for k, i in enumerate(ids):
            w.writerow([i, *(f"{a[c][k]:.5f}" for c in columns), f"{mu[k]:.4f}", f"{vote_means[k]:.4f}"])


def _link(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_aadb(root, ids, image_paths, mu, test_ids, rng):
    """AADB layout: five raters on 1..5, published as the normalized mean."""
    images = os.path.join(root, "datasetImages_originalSize")
    labels = os.path.join(root, "imgListFiles_label")
    os.makedirs(images, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    votes = sample_votes(1 + (mu - 1) * 4 / 9, np.arange(1, 6), 0.8, 5, rng)
    score = (votes @ np.arange(1, 6) / 5 - 1) / 4
    val = set(ids[rng.permutation(len(ids))[: max(1, len(ids) // 20)]]) - test_ids
    files = {"Train": [], "Validation": [], "TestNew": []}
    for i, src, s in zip(ids, image_paths, score):
        name = f"farm1_{i}_synthetic_b.jpg"
        _link(src, os.path.join(images, name))
        files["TestNew" if i in test_ids else "Validation" if i in val else "Train"].append(f"{name} {s:.6f}\n")
    for split, lines in files.items():
        with open(os.path.join(labels, f"imgList{split}Regression_score.txt"), "w") as f:
            f.writelines(lines)
    return root


def _write_para(root, ids, image_paths, mu, test_ids, rng, num_users=25):
    """PARA layout: per-user 1.0..5.0 half-point scores and GIAA histograms."""
    bins = np.arange(1.0, 5.01, 0.5)
    ann = os.path.join(root, "annotation")
    os.makedirs(ann, exist_ok=True)
    votes = sample_votes(1 + (mu - 1) * 4 / 9, bins, 0.6, num_users, rng)
    rows, giaa = [], {"Train": [], "Test": []}
    header = ["imageName", "sessionId", "semantic", *(f"aestheticScore_{b:.1f}" for b in bins)]
    header += ["aestheticScore_mean", "aestheticScore_std"]
    for k, (i, src, v) in enumerate(zip(ids, image_paths, votes)):
        session, name = f"session{1 + k // 70}", f"iaa_pub{i}_.jpg"
        os.makedirs(os.path.join(root, "imgs", session), exist_ok=True)
        _link(src, os.path.join(root, "imgs", session, name))
        scores = rng.permutation(np.repeat(bins, v))
        rows += [[session, name, f"A{u:04d}", f"{s:.1f}", f"{s:.1f}"] for u, s in enumerate(scores)]
        row = [name, session, "synthetic", *map(str, v), f"{scores.mean():.4f}", f"{scores.std():.4f}"]
        giaa["Test" if i in test_ids else "Train"].append(row)
    user_header = ["sessionId", "imageName", "userId", "aestheticScore", "qualityScore"]
    _write_csv(os.path.join(ann, "PARA-Images.csv"), user_header, rows)
    for split, split_rows in giaa.items():
        _write_csv(os.path.join(ann, f"PARA-Giaa{split}.csv"), header, split_rows)
    _write_csv(os.path.join(ann, "PARA-GiaaAll.csv"), header, giaa["Train"] + giaa["Test"])
    return root


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
