"""The record type every reader returns, and the parse/validate helpers they share."""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np


class LabelFormatError(ValueError):
    """A label file row could not be parsed; the message names the file and line."""


@dataclasses.dataclass(frozen=True, eq=False)
class LabeledRecords:
    """Image paths with score distributions and named splits.

    Every reader (`read_ava`, `read_aadb`, `read_para`) returns one; the
    pipelines (`labeled_dataset`, `semi_supervised_dataset`) consume it.

    Attributes:
        name: dataset name, e.g. `"ava"`.
        ids: `(N,)` str array, the dataset's own image ids.
        paths: `(N,)` str array, image file paths (not checked for existence:
            the pipelines skip and report missing files).
        distributions: `(N, num_bins)` float32, each row sums to 1.
        bin_values: `(num_bins,)` float32, the score each bin stands for
            (AVA: 1..10).
        splits: dict split name -> int64 indices into the arrays. Every index
            is in exactly one split.

    Example:

    >>> import numpy as np
    >>> r = LabeledRecords.from_arrays(["a.jpg", "b.jpg"], [[1, 3], [2, 0]])
    >>> r.distributions.tolist(), r.mean_scores.tolist()
    ([[0.25, 0.75], [1.0, 0.0]], [1.75, 1.0])
    >>> len(r.select("train"))
    2
    """

    name: str
    ids: np.ndarray
    paths: np.ndarray
    distributions: np.ndarray
    bin_values: np.ndarray
    splits: dict

    @classmethod
    def from_arrays(cls, paths, weights, bin_values=None, ids=None, splits=None, name="custom"):
        """Records from paths and per-image vote counts or distributions.

        `bin_values` defaults to 1..num_bins, `ids` to the file names, `splits`
        to everything in `"train"`.
        """
        weights = np.asarray(weights, np.float64)
        if weights.ndim != 2 or len(weights) != len(paths):
            raise ValueError(f"weights must be (N, num_bins) with N={len(paths)}, got {weights.shape}")
        for i, row in enumerate(weights):
            _check_weights(row, f"row {i}")
        n = len(paths)
        bins = np.arange(1, weights.shape[1] + 1) if bin_values is None else bin_values
        return cls(
            name=name,
            ids=np.asarray(ids if ids is not None else [os.path.basename(str(p)) for p in paths], str),
            paths=np.asarray([str(p) for p in paths], str),
            distributions=(weights / weights.sum(1, keepdims=True)).astype(np.float32),
            bin_values=np.asarray(bins, np.float32),
            splits=splits if splits is not None else {"train": np.arange(n, dtype=np.int64)},
        )

    def __post_init__(self):
        n = len(self.paths)
        if n == 0:
            raise ValueError(f"dataset {self.name!r} is empty: no labeled images were found")
        if self.distributions.shape != (n, len(self.bin_values)):
            raise ValueError(
                f"distributions {self.distributions.shape} do not match {n} paths x {len(self.bin_values)} bins"
            )

    def __len__(self):
        return len(self.paths)

    @property
    def num_bins(self):
        return len(self.bin_values)

    @property
    def mean_scores(self):
        """`(N,)` float32 expected score of each image under its distribution."""
        return self.distributions @ self.bin_values

    def select(self, split):
        """The records of one split (a new `LabeledRecords` with that one split).

        Raises `ValueError` naming the available splits when `split` is unknown
        or selects no image.
        """
        index = self.splits.get(split)
        if index is None or len(index) == 0:
            sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
            raise ValueError(f"split {split!r} of dataset {self.name!r} selects no images (splits: {sizes})")
        return dataclasses.replace(
            self,
            ids=self.ids[index],
            paths=self.paths[index],
            distributions=self.distributions[index],
            splits={split: np.arange(len(index), dtype=np.int64)},
        )

    def __repr__(self):
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"LabeledRecords({self.name!r}, {len(self)} images, {self.num_bins} bins, {sizes})"


# === Parsing helpers shared by the readers ===


def _check_weights(weights, where):
    weights = np.asarray(weights, np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"{where}: votes must be finite and non-negative")
    if weights.sum() <= 0:
        raise ValueError(f"{where}: all vote counts are zero")
    return weights


def parse_text_rows(path, parse_row):
    """`parse_row(tokens)` for every non-blank, non-`#` line of a whitespace table.

    Any `ValueError`/`IndexError`/`KeyError` from `parse_row` becomes a
    `LabelFormatError` naming `path` and the 1-based line number.
    """
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            out.append(_parse(parse_row, tokens, path, lineno, line))
    return out


def parse_csv_rows(path, parse_row, required=()):
    """`parse_row(row_dict)` for every data row of a CSV file with a header."""
    out = []
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        if missing:
            raise LabelFormatError(f"{path}, line 1: missing column(s) {missing}")
        for row in reader:
            if not any(v and v.strip() for v in row.values() if isinstance(v, str)):
                continue
            out.append(_parse(parse_row, row, path, reader.line_num, row))
    return out


def _parse(parse_row, row, path, lineno, shown):
    try:
        return parse_row(row)
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise LabelFormatError(f"{path}, line {lineno}: {e} (row: {shown!r})") from None


def read_id_list(path):
    """Image ids from a list file, one per line; extensions are dropped."""
    ids = parse_text_rows(path, lambda t: os.path.splitext(os.path.basename(t[0]))[0])
    return set(ids)


def votes_to_distribution(votes, expected_bins):
    """Validated, normalized distribution from one row of vote counts."""
    if len(votes) != expected_bins:
        raise ValueError(f"expected {expected_bins} vote counts, got {len(votes)}")
    weights = _check_weights([float(v) for v in votes], "vote counts")
    return weights / weights.sum()


def nearest_bins(scores, bin_values):
    """Index of the bin nearest to each score (individual ratings -> histogram bins)."""
    bins = np.asarray(bin_values, np.float64)
    return np.abs(np.asarray(scores, np.float64)[:, None] - bins[None]).argmin(1)


def mean_to_distribution(mean, bin_values):
    """Two-hot distribution with exactly the given mean score.

    Used where a dataset publishes only a mean score (AADB): the mass is split
    between the two bins around the mean, in proportion to the distance, so
    `distribution @ bin_values == mean` (SRCC/PLCC on predicted means are
    unaffected) while the spread is the smallest any distribution with that
    mean can have. EMD values on such labels are therefore not comparable to
    EMD on real vote histograms (AVA, PARA).

    >>> mean_to_distribution([2.25], [1, 2, 3]).round(2).tolist()
    [[0.0, 0.75, 0.25]]
    """
    bins = np.asarray(bin_values, np.float64)
    mean = np.clip(np.asarray(mean, np.float64), bins[0], bins[-1])
    hi = np.clip(np.searchsorted(bins, mean, side="right"), 1, len(bins) - 1)
    lo = hi - 1
    frac = (mean - bins[lo]) / (bins[hi] - bins[lo])
    out = np.zeros(mean.shape + (len(bins),))
    rows = np.arange(mean.size)
    out.reshape(-1, len(bins))[rows, lo.ravel()] = 1 - frac.ravel()
    out.reshape(-1, len(bins))[rows, hi.ravel()] += frac.ravel()
    return out.astype(np.float32)


def assign_splits(ids, fixed=None, val_fraction=0.05, test_fraction=0.1, seed=0):
    """Split names -> index arrays.

    `fixed` maps `"test"`/`"val"` to sets of ids from official list files;
    a split without one is drawn at random (seeded) from the images not yet
    assigned, `fraction * N` images. Everything left is `"train"`.
    """
    ids = np.asarray(ids)
    n = len(ids)
    free = np.ones(n, bool)
    splits = {}
    rng = np.random.default_rng(seed)
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        chosen = (fixed or {}).get(name)
        if chosen is not None:
            index = np.flatnonzero(free & np.isin(ids, list(chosen)))
        else:
            if not 0 <= fraction < 1:
                raise ValueError(f"{name}_fraction must be in [0, 1), got {fraction}")
            pool = np.flatnonzero(free)
            index = np.sort(rng.permutation(pool)[: int(round(fraction * n))])
        free[index] = False
        splits[name] = index.astype(np.int64)
    splits = {"train": np.flatnonzero(free).astype(np.int64), **splits}
    return {k: v for k, v in splits.items() if len(v)}
