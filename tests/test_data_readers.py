"""Readers (AVA, AADB, PARA), label helpers, file listing and the synthetic world."""

import filecmp
import json
import os

import numpy as np
import pytest
from scipy import stats

from keras_cskd.data import LabeledRecords
from keras_cskd.data import LabelFormatError
from keras_cskd.data import list_images
from keras_cskd.data import mean_to_distribution
from keras_cskd.data import read_aadb
from keras_cskd.data import read_ava
from keras_cskd.data import read_para
from keras_cskd.data import synthetic
from keras_cskd.data.records import assign_splits


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return synthetic.make_world(
        tmp_path_factory.mktemp("world"),
        num_labeled=60,
        num_unlabeled=12,
        image_size=32,
        seed=3,
        formats=("ava", "aadb", "para"),
    )


def _check(records, name, n, bins):
    assert isinstance(records, LabeledRecords)
    assert records.name == name and len(records) == n and records.num_bins == bins
    assert records.distributions.dtype == np.float32
    np.testing.assert_allclose(records.distributions.sum(1), 1.0, atol=1e-5)
    assert (records.distributions >= 0).all()
    index = np.sort(np.concatenate(list(records.splits.values())))
    np.testing.assert_array_equal(index, np.arange(n))  # every image in exactly one split
    assert all(os.path.isfile(p) for p in records.paths)


# === AVA ===


def test_ava_reads_synthetic_world_with_random_split(world):
    r = read_ava(world.ava_root, val_fraction=0.1, test_fraction=0.2, seed=1)
    _check(r, "ava", 60, 10)
    assert {k: len(v) for k, v in r.splits.items()} == {"train": 42, "test": 12, "val": 6}
    np.testing.assert_array_equal(r.bin_values, np.arange(1, 11))
    # Labels are the vote counts of AVA.txt, normalized.
    first = open(os.path.join(world.ava_root, "AVA.txt")).readline().split()
    votes = np.array(first[2:12], float)
    np.testing.assert_allclose(r.distributions[0], votes / votes.sum(), rtol=1e-6)
    assert r.paths[0].endswith(f"images/{first[1]}.jpg")
    # Seeded: same seed same split, other seed other split.
    again = read_ava(world.ava_root, val_fraction=0.1, test_fraction=0.2, seed=1)
    other = read_ava(world.ava_root, val_fraction=0.1, test_fraction=0.2, seed=2)
    np.testing.assert_array_equal(r.splits["test"], again.splits["test"])
    assert not np.array_equal(r.splits["test"], other.splits["test"])


def test_ava_official_test_list(world):
    r = read_ava(world.ava_root, test_list=world.ava_test_list, val_fraction=0.0)
    listed = set(open(world.ava_test_list).read().split())
    assert set(r.select("test").ids) == listed
    assert set(r.splits) == {"train", "test"}
    assert len(r.select("train")) == 60 - len(listed)


def test_ava_select_and_mean_scores(world):
    r = read_ava(world.ava_root)
    test = r.select("test")
    assert list(test.splits) == ["test"] and len(test) == len(r.splits["test"])
    np.testing.assert_allclose(r.mean_scores, r.distributions @ np.arange(1, 11), rtol=1e-5)
    with pytest.raises(ValueError, match="split 'holdout' of dataset 'ava' selects no images"):
        r.select("holdout")
    no_val = read_ava(world.ava_root, val_fraction=0.0)
    with pytest.raises(ValueError, match="split 'val'.*selects no images.*train="):
        no_val.select("val")


def _ava_copy(tmp_path, world, lines):
    (tmp_path / "images").mkdir()
    (tmp_path / "AVA.txt").write_text("".join(lines))
    return str(tmp_path)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("3 100003 1 2 3\n", "expected 15 columns, got 5"),
        ("3 100003 1 2 3 4 5 6 7 8 9 x 0 0 1\n", "invalid literal"),
        ("3 100003 0 0 0 0 0 0 0 0 0 0 0 0 1\n", "all vote counts are zero"),
        ("3 100003 1 2 3 4 5 6 7 8 9 -1 0 0 1\n", "non-negative"),
    ],
)
def test_ava_malformed_row_names_file_and_line(tmp_path, world, bad_line, message):
    lines = open(os.path.join(world.ava_root, "AVA.txt")).readlines()[:5]
    root = _ava_copy(tmp_path, world, lines[:2] + ["\n", bad_line] + lines[2:])
    with pytest.raises(LabelFormatError, match=rf"AVA.txt, line 4: .*{message}"):
        read_ava(root)


def test_ava_empty_and_missing(tmp_path):
    (tmp_path / "AVA.txt").write_text("\n# nothing here\n")
    with pytest.raises(ValueError, match="dataset 'ava' is empty"):
        read_ava(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="AVA label file"):
        read_ava(str(tmp_path / "nowhere"))


# === AADB ===


def test_aadb_published_layout_and_mean_conversion(world):
    r = read_aadb(world.aadb_root)
    _check(r, "aadb", 60, 5)
    labels = os.path.join(world.aadb_root, "imgListFiles_label")
    published = {}
    for split, name in [("train", "Train"), ("val", "Validation"), ("test", "TestNew")]:
        rows = [line.split() for line in open(os.path.join(labels, f"imgList{name}Regression_score.txt"))]
        published.update({n: float(s) for n, s in rows})
        assert set(r.select(split).ids) == {n for n, _ in rows}  # official splits
    scores = np.array([published[i] for i in r.ids])
    # The distribution's mean is the published mean, mapped back to 1..5.
    np.testing.assert_allclose(r.mean_scores, 1 + 4 * scores, atol=1e-5)
    assert ((r.distributions > 0).sum(1) <= 2).all()  # two-hot


def test_aadb_finds_images_in_any_published_folder(tmp_path, world):
    root = tmp_path / "aadb"
    (root / "imgListFiles_label").mkdir(parents=True)
    (root / "datasetImages_warp256").mkdir()
    (root / "AADB_newtest").mkdir()
    src = read_aadb(world.aadb_root).paths
    os.link(src[0], root / "datasetImages_warp256" / "a.jpg")
    os.link(src[1], root / "AADB_newtest" / "b.jpg")
    (root / "imgListFiles_label" / "imgListTrainRegression_score.txt").write_text(
        "a.jpg 0.5\nc.jpg 1.0\n" + "".join(f"x{i}.jpg 0.25\n" for i in range(20))
    )
    (root / "imgListFiles_label" / "imgListTestNewRegression_score.txt").write_text(" b.jpg 0.0\n")
    r = read_aadb(str(root))
    paths = dict(zip(r.ids, r.paths))
    assert paths["a.jpg"].endswith("datasetImages_warp256/a.jpg")
    assert paths["b.jpg"].endswith("AADB_newtest/b.jpg")
    assert paths["c.jpg"].endswith("datasetImages_warp256/c.jpg")  # missing: left to the pipeline
    assert set(r.splits) == {"train", "val", "test"}  # no val list: random val
    (root / "imgListFiles_label" / "imgListTestNewRegression_score.txt").write_text("b.jpg 1.5\n")
    with pytest.raises(LabelFormatError, match=r"imgListTestNewRegression_score.txt, line 1: score 1.5"):
        read_aadb(str(root))


# === PARA ===


def test_para_distribution_users_and_mean(world):
    dist = read_para(world.para_root)  # auto: the GIAA histogram columns
    users = read_para(world.para_root, labels="users")
    mean = read_para(world.para_root, labels="mean")
    for r in (dist, users, mean):
        _check(r, "para", 60, 9)
        np.testing.assert_allclose(r.bin_values, np.arange(1.0, 5.01, 0.5))
    # Per-user scores give the real histogram, the same as the GIAA columns.
    np.testing.assert_allclose(users.distributions, dist.distributions, atol=1e-6)
    # The mean conversion keeps the published mean exactly.
    giaa_all = os.path.join(world.para_root, "annotation", "PARA-GiaaAll.csv")
    giaa = np.genfromtxt(giaa_all, delimiter=",", names=True, dtype=None, encoding=None)
    means = {f"{s}/{n}": m for s, n, m in zip(giaa["sessionId"], giaa["imageName"], giaa["aestheticScore_mean"])}
    np.testing.assert_allclose(mean.mean_scores, [means[i] for i in mean.ids], atol=1e-3)
    test_rows = open(os.path.join(world.para_root, "annotation", "PARA-GiaaTest.csv")).read().splitlines()[1:]
    assert len(dist.select("test")) == len(test_rows)  # official test split
    assert dist.paths[0].endswith(os.path.join("imgs", *dist.ids[0].split("/")))


def test_para_users_only_and_bad_score(tmp_path, world):
    root = tmp_path / "para"
    (root / "annotation").mkdir(parents=True)
    src = os.path.join(world.para_root, "annotation", "PARA-Images.csv")
    lines = open(src).read().splitlines()
    (root / "annotation" / "PARA-Images.csv").write_text("\n".join(lines) + "\n")
    r = read_para(str(root))  # auto falls back to per-user rows
    assert len(r) == 60
    full = read_para(world.para_root)
    expected = dict(zip(full.ids, full.distributions))
    np.testing.assert_allclose(r.distributions, [expected[i] for i in r.ids], atol=1e-6)
    parts = lines[5].split(",")
    parts[3] = "7.0"
    (root / "annotation" / "PARA-Images.csv").write_text("\n".join(lines[:5] + [",".join(parts)] + lines[6:]) + "\n")
    with pytest.raises(LabelFormatError, match=r"PARA-Images.csv, line 6: aestheticScore 7.0 is outside 1.0..5.0"):
        read_para(str(root))


def test_para_missing_column_is_reported(tmp_path):
    (tmp_path / "annotation").mkdir()
    (tmp_path / "annotation" / "PARA-GiaaAll.csv").write_text("imageName,aestheticScore_mean\na.jpg,3.0\n")
    with pytest.raises(LabelFormatError, match=r"PARA-GiaaAll.csv, line 1: missing column\(s\) \['sessionId'\]"):
        read_para(str(tmp_path))


# === Helpers ===


def test_mean_to_distribution_keeps_mean():
    bins = np.arange(1, 11)
    means = np.array([1.0, 2.3, 5.5, 9.99, 10.0, 12.0])
    d = mean_to_distribution(means, bins)
    np.testing.assert_allclose(d.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(d @ bins, np.clip(means, 1, 10), atol=1e-5)


def test_assign_splits_fixed_and_random():
    ids = [f"i{k}" for k in range(20)]
    s = assign_splits(ids, fixed={"test": {"i0", "i1", "nope"}}, val_fraction=0.25, seed=0)
    assert s["test"].tolist() == [0, 1] and len(s["val"]) == 5 and len(s["train"]) == 13
    with pytest.raises(ValueError, match="val_fraction"):
        assign_splits(ids, val_fraction=1.5)


def test_from_arrays_validates():
    r = LabeledRecords.from_arrays(["a.jpg", "b.jpg"], [[1, 1, 2], [0, 0, 5]], bin_values=[1, 2, 3])
    np.testing.assert_allclose(r.mean_scores, [2.25, 3.0])
    with pytest.raises(ValueError, match="row 1: all vote counts are zero"):
        LabeledRecords.from_arrays(["a.jpg", "b.jpg"], [[1, 1], [0, 0]])
    with pytest.raises(ValueError, match="is empty"):
        LabeledRecords.from_arrays([], np.zeros((0, 3)))


def test_list_images(tmp_path):
    names = ["b.JPG", "a.jpeg", "sub/c.png", "sub/deep/d.webp", "e.bmp", "f.gif"]
    names += ["notes.txt", ".hidden.jpg", ".cache/g.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    rel = lambda paths: [os.path.relpath(p, tmp_path) for p in paths]  # noqa: E731
    assert rel(list_images(tmp_path)) == ["a.jpeg", "b.JPG", "e.bmp", "f.gif", "sub/c.png", "sub/deep/d.webp"]
    assert rel(list_images(tmp_path, recursive=False)) == ["a.jpeg", "b.JPG", "e.bmp", "f.gif"]
    (tmp_path / "list.txt").write_text("# some images\nsub/c.png\n\na.jpeg\n")
    assert rel(list_images(tmp_path / "list.txt", tmp_path / "e.bmp")) == ["a.jpeg", "e.bmp", "sub/c.png"]
    with pytest.raises(ValueError, match="not a folder, list file or image file"):
        list_images(tmp_path / "missing_dir")


# === Synthetic world ===


def test_synthetic_world_is_deterministic(tmp_path):
    a = synthetic.make_world(tmp_path / "a", num_labeled=12, num_unlabeled=5, image_size=24, seed=7)
    b = synthetic.make_world(tmp_path / "b", num_labeled=12, num_unlabeled=5, image_size=24, seed=7)
    c = synthetic.make_world(tmp_path / "c", num_labeled=12, num_unlabeled=5, image_size=24, seed=8)
    same = lambda x, y: filecmp.cmp(x, y, shallow=False)  # noqa: E731
    assert same(f"{a.ava_root}/AVA.txt", f"{b.ava_root}/AVA.txt")
    assert not same(f"{a.ava_root}/AVA.txt", f"{c.ava_root}/AVA.txt")
    for x, y in zip(list_images(a.root), list_images(b.root)):
        assert same(x, y)
    assert len(list_images(a.unlabeled_dir)) == 5
    assert json.load(open(os.path.join(a.root, "world.json")))["seed"] == 7


def test_synthetic_votes_follow_visible_attributes(world, tmp_path):
    r = read_ava(world.ava_root)
    table = np.genfromtxt(os.path.join(world.ava_root, "attributes.csv"), delimiter=",", names=True)
    assert [str(int(i)) for i in table["image_id"]] == r.ids.tolist()
    srcc = stats.spearmanr(table["z"], r.mean_scores)[0]
    assert srcc > 0.75 and abs(srcc - world.oracle_srcc) < 0.01  # table rounds z
    # What is visible moves the votes: exposure quality vs image brightness.
    from PIL import Image

    brightness = np.array([np.asarray(Image.open(p)).mean() for p in r.paths])
    assert stats.spearmanr(table["exposure"], brightness)[0] > 0.8
    # Votes look like AVA: 50..150 votes, spread around 1.4.
    votes = np.array([line.split()[2:12] for line in open(os.path.join(world.ava_root, "AVA.txt"))], int)
    assert votes.sum(1).min() >= 50 and votes.sum(1).max() <= 150
    spread = np.sqrt((r.distributions * (np.arange(1, 11) - r.mean_scores[:, None]) ** 2).sum(1))
    assert 1.0 < spread.mean() < 1.8


def test_grain_makes_blur_visible_everywhere_and_none_keeps_the_old_scenes():
    """Without grain blur shows only at the subject's edge; `grain=0` draws nothing extra."""
    a = synthetic.sample_attributes(400, np.random.default_rng(3))
    plain = synthetic.render(a, 32, np.random.default_rng(4))
    np.testing.assert_array_equal(plain, synthetic.render(a, 32, np.random.default_rng(4), grain=0.0))
    grainy = synthetic.render(a, 32, np.random.default_rng(4), grain=0.08)
    assert synthetic.blur_visibility(plain, a["sharpness"]) < 0.5
    assert synthetic.blur_visibility(grainy, a["sharpness"]) > 0.7


# === Docstring examples ===


@pytest.mark.parametrize("module", ["records", "readers", "images", "synthetic", "pipelines", "passes", "cache"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("backend-independent; runs under KERAS_BACKEND=tensorflow")
    result = doctest.testmod(importlib.import_module(f"keras_cskd.data.{module}"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_synthetic_world_never_deletes_other_folders(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic world"):
        synthetic.make_world(tmp_path, num_labeled=3, num_unlabeled=0)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="num_labeled"):
        synthetic.make_world(tmp_path / "w", num_labeled=0)
