"""Readers for AVA, AADB and PARA in their published on-disk layouts.

Each returns a `LabeledRecords` (paths, vote distributions, splits). Label
files are parsed strictly (a malformed row raises `LabelFormatError` with the
file and line); image files are not opened here: the pipelines skip and
report missing or broken ones.
"""

from __future__ import annotations

import os

import numpy as np

from keras_cskd.data.records import LabeledRecords
from keras_cskd.data.records import assign_splits
from keras_cskd.data.records import mean_to_distribution
from keras_cskd.data.records import nearest_bins
from keras_cskd.data.records import parse_csv_rows
from keras_cskd.data.records import parse_text_rows
from keras_cskd.data.records import read_id_list
from keras_cskd.data.records import votes_to_distribution

AVA_BINS = np.arange(1, 11, dtype=np.float32)
AADB_BINS = np.arange(1, 6, dtype=np.float32)
PARA_BINS = np.arange(1.0, 5.01, 0.5, dtype=np.float32)


def _need_file(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _first_dir(root, candidates):
    for name in candidates:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    return root


def _refuse_duplicate_ids(name, ids):
    """Raise a one-line `ValueError` if an image id appears more than once.

    Two rows for one image (often with different votes) leave no right label
    to keep, and would put the same image in two splits, so a label file with
    duplicates is refused: remove them and read it again.
    """
    seen, repeated = set(), {}
    for position, image_id in enumerate(ids):
        if image_id in seen:
            repeated.setdefault(image_id, position + 1)
        seen.add(image_id)
    if repeated:
        first = next(iter(repeated))
        raise ValueError(
            f"{name}: {len(repeated)} image id(s) appear on more than one row (e.g. {first!r}, again on row "
            f"{repeated[first]}); keep one row per image in the label file"
        )


def _records(name, ids, paths, distributions, bins, **split_args):
    _refuse_duplicate_ids(name, ids)
    return LabeledRecords(
        name=name,
        ids=np.asarray(ids, str),
        paths=np.asarray(paths, str),
        distributions=np.asarray(distributions, np.float32).reshape(len(ids), len(bins)),
        bin_values=np.asarray(bins, np.float32),
        splits=assign_splits(ids, **split_args),
    )


def read_ava(
    root,
    images_dir=None,
    labels_file="AVA.txt",
    test_list=None,
    val_fraction=0.05,
    test_fraction=0.1,
    seed=0,
):
    """Read AVA (Murray et al. 2012): `AVA.txt` plus a folder of `<id>.jpg`.

    `AVA.txt` rows are `index image_id v1 ... v10 tag1 tag2 challenge_id`,
    where `v_k` is the number of votes for score `k`; labels are those ten
    counts normalized to a distribution over bins 1..10.

    Args:
        root: folder holding `AVA.txt` (the `AVA_dataset` folder).
        images_dir: image folder; default `root/images` if it exists, else `root`.
        labels_file: label file name or path, relative to `root`.
        test_list: optional official test list (e.g.
            `aesthetics_image_lists/generic_test.jpgl`, one id per line). When
            given, it defines `"test"`; otherwise a seeded random
            `test_fraction` of the images does.
        val_fraction: fraction of all images drawn at random (seeded) for `"val"`.
        test_fraction: used only without `test_list`.
        seed: seed of the random splits.

    Returns:
        `LabeledRecords` with splits `"train"`, `"val"` (if `val_fraction > 0`), `"test"`.

    Example:

    >>> from keras_cskd.data import read_ava, synthetic
    >>> world = synthetic.make_world("/tmp/cskd_doc_world", num_labeled=40, num_unlabeled=0)
    >>> read_ava(world.ava_root, test_list=world.ava_test_list)
    LabeledRecords('ava', 40 images, 10 bins, train=34, test=4, val=2)
    """
    labels_path = _need_file(os.path.join(root, labels_file), "AVA label file")
    images_dir = images_dir or _first_dir(root, ["images", "image"])

    def parse(tokens):
        if len(tokens) != 15:
            raise ValueError(f"expected 15 columns, got {len(tokens)}")
        return tokens[1], votes_to_distribution([int(t) for t in tokens[2:12]], 10)

    rows = parse_text_rows(labels_path, parse)
    ids = [r[0] for r in rows]
    fixed = {"test": read_id_list(_need_file(test_list, "AVA test list"))} if test_list else None
    return _records(
        "ava",
        ids,
        [os.path.join(images_dir, f"{i}.jpg") for i in ids],
        [r[1] for r in rows],
        AVA_BINS,
        fixed=fixed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )


AADB_LISTS = {
    "train": ["imgListTrainRegression_score.txt"],
    "val": ["imgListValidationRegression_score.txt"],
    "test": ["imgListTestNewRegression_score.txt", "imgListTestRegression_score.txt"],
}
AADB_IMAGE_DIRS = ["datasetImages_originalSize", "datasetImages_warp256", "AADB_newtest", "images"]


def read_aadb(root, images_dir=None, labels_dir=None, val_fraction=0.05, seed=0):
    """Read AADB (Kong et al. 2016) in its published layout.

    Layout: `imgListFiles_label/imgList{Train,Validation,TestNew}Regression_score.txt`
    (lines `<file name> <score>`, score in [0, 1]) and images in
    `datasetImages_originalSize/` (or `datasetImages_warp256/`, `AADB_newtest/`,
    `images/`; each file is looked up in every one of these that exists).

    Score bins: 1..5, the raters' scale. AADB publishes only the mean of five
    ratings, rescaled to [0, 1]; it is mapped back to `mean = 1 + 4 * score` and
    turned into a two-hot distribution with exactly that mean (see
    `mean_to_distribution`), so the label's mean score is the published one.

    Splits: the official train / validation / test lists; without a
    validation list, a seeded random `val_fraction` of the images.

    Example:

    >>> from keras_cskd.data import read_aadb, synthetic
    >>> world = synthetic.make_world("/tmp/cskd_doc_aadb", num_labeled=40,
    ...                              num_unlabeled=0, formats=("aadb",))
    >>> read_aadb(world.aadb_root).num_bins
    5
    """
    labels_dir = labels_dir or _first_dir(root, ["imgListFiles_label"])
    found = {}
    for split, names in AADB_LISTS.items():
        for name in names:
            path = os.path.join(labels_dir, name)
            if os.path.isfile(path):
                found[split] = path
                break
    if "train" not in found:
        raise FileNotFoundError(f"AADB label list not found: {labels_dir}/{AADB_LISTS['train'][0]}")

    def parse(tokens):
        if len(tokens) != 2:
            raise ValueError(f"expected '<file name> <score>', got {len(tokens)} columns")
        score = float(tokens[1])
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score {score} is outside [0, 1]")
        return tokens[0], score

    rows, membership = [], {}
    for split, path in found.items():
        parsed = parse_text_rows(path, parse)
        rows += parsed
        membership[split] = {name for name, _ in parsed}
    names = [r[0] for r in rows]
    dirs = [images_dir] if images_dir else [os.path.join(root, d) for d in AADB_IMAGE_DIRS]
    return _records(
        "aadb",
        names,
        _locate(names, [d for d in dirs if os.path.isdir(d)] or [root]),
        mean_to_distribution(1.0 + 4.0 * np.array([r[1] for r in rows]), AADB_BINS),
        AADB_BINS,
        fixed={k: v for k, v in membership.items() if k != "train"},
        val_fraction=val_fraction,
        test_fraction=0.0,
        seed=seed,
    )


def _locate(names, dirs):
    """Path of each file name in the first of `dirs` that holds it (else the first dir)."""
    listing = [(d, set(os.listdir(d))) for d in dirs]
    return [next((os.path.join(d, n) for d, files in listing if n in files), os.path.join(dirs[0], n)) for n in names]


def read_para(root, images_dir=None, labels="auto", val_fraction=0.05, test_fraction=0.1, seed=0):
    """Read PARA (Yang et al. 2022) in its published layout.

    Layout: `annotation/PARA-GiaaAll.csv` (or `PARA-GiaaTrain.csv` +
    `PARA-GiaaTest.csv`) with one row per image (`sessionId`, `imageName`,
    `aestheticScore_1.0` ... `aestheticScore_5.0`, `aestheticScore_mean`, ...),
    `annotation/PARA-Images.csv` with one row per (user, image)
    (`sessionId`, `imageName`, `userId`, `aestheticScore`, ...), and images at
    `imgs/<sessionId>/<imageName>`.

    Score bins: 1.0, 1.5, ..., 5.0 (nine bins, the raters' scale).

    Args:
        root: the `PARA` folder.
        images_dir: default `root/imgs`.
        labels: where distributions come from:
            `"distribution"`: the nine `aestheticScore_<bin>` columns of the GIAA file;
            `"users"`: a histogram of the per-user `aestheticScore` values in
            `PARA-Images.csv` (a real vote histogram; each rating counts in
            the nearest bin);
            `"mean"`: the two-hot conversion of `aestheticScore_mean`
            (see `mean_to_distribution`);
            `"auto"`: the first of those the files allow.
        val_fraction, test_fraction, seed: as in `read_ava`; `"test"` is the
            official `PARA-GiaaTest.csv` list when that file exists.

    Example:

    >>> from keras_cskd.data import read_para, synthetic
    >>> world = synthetic.make_world("/tmp/cskd_doc_para", num_labeled=40,
    ...                              num_unlabeled=0, formats=("para",))
    >>> read_para(world.para_root, labels="users").num_bins
    9
    """
    ann = os.path.join(root, "annotation")
    images_dir = images_dir or os.path.join(root, "imgs")
    giaa_all, giaa_train, giaa_test, users_csv = (
        os.path.join(ann, f"PARA-{n}.csv") for n in ("GiaaAll", "GiaaTrain", "GiaaTest", "Images")
    )
    key_columns = ("sessionId", "imageName")
    bin_columns = [f"aestheticScore_{b:.1f}" for b in PARA_BINS]

    def parse_image(row):
        has_votes = all(row.get(c) not in (None, "") for c in bin_columns)
        mean = row.get("aestheticScore_mean")
        return (
            f"{row['sessionId'].strip()}/{row['imageName'].strip()}",
            votes_to_distribution([row[c] for c in bin_columns], len(PARA_BINS)) if has_votes else None,
            float(mean) if mean not in (None, "") else None,
        )

    giaa_files = [giaa_all] if os.path.isfile(giaa_all) else [p for p in (giaa_train, giaa_test) if os.path.isfile(p)]
    rows = [r for path in giaa_files for r in parse_csv_rows(path, parse_image, key_columns)]
    if not rows and not os.path.isfile(users_csv):
        raise FileNotFoundError(f"PARA annotation not found: {giaa_all} or {users_csv}")

    if labels == "auto":
        if rows and all(r[1] is not None for r in rows):
            labels = "distribution"
        elif os.path.isfile(users_csv):
            labels = "users"
        else:
            labels = "mean"
    ids = [r[0] for r in rows]
    if labels == "distribution":
        missing = next((r[0] for r in rows if r[1] is None), None) if rows else "(no GIAA file)"
        if missing:
            raise ValueError(f"PARA: no aestheticScore_<bin> columns for image {missing} in {giaa_files}")
        dists = [r[1] for r in rows]
    elif labels == "users":
        ids, dists = _para_user_histograms(_need_file(users_csv, "PARA per-user file"), ids)
    elif labels == "mean":
        missing = next((r[0] for r in rows if r[2] is None), None) if rows else "(no GIAA file)"
        if missing:
            raise ValueError(f"PARA: no aestheticScore_mean for image {missing} in {giaa_files}")
        dists = mean_to_distribution([r[2] for r in rows], PARA_BINS)
    else:
        raise ValueError(f"labels must be 'auto', 'distribution', 'users' or 'mean', got {labels!r}")

    fixed = None
    if os.path.isfile(giaa_test):
        fixed = {"test": {r[0] for r in parse_csv_rows(giaa_test, parse_image, key_columns)}}
    return _records(
        "para",
        ids,
        [os.path.join(images_dir, *i.split("/")) for i in ids],
        dists,
        PARA_BINS,
        fixed=fixed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )


def _para_user_histograms(path, order):
    """Per-image vote histograms from the per-user rows; `order` (if any) fixes the images.

    Each rating counts in the nearest bin; a rating outside 1..5 is an error.
    """
    low, high = PARA_BINS[0] - 0.25, PARA_BINS[-1] + 0.25

    def parse(row):
        score = float(row["aestheticScore"])
        if not low <= score <= high:
            raise ValueError(f"aestheticScore {score} is outside {PARA_BINS[0]}..{PARA_BINS[-1]}")
        return f"{row['sessionId'].strip()}/{row['imageName'].strip()}", score

    rows = parse_csv_rows(path, parse, ("sessionId", "imageName", "aestheticScore"))
    images, inverse = np.unique([r[0] for r in rows], return_inverse=True)
    counts = np.zeros((len(images), len(PARA_BINS)))
    np.add.at(counts, (inverse, nearest_bins([r[1] for r in rows], PARA_BINS)), 1)
    where = {image: k for k, image in enumerate(images)}
    ids = [i for i in order if i in where] if order else list(images)
    return ids, [counts[where[i]] / counts[where[i]].sum() for i in ids]
