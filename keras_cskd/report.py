"""The run report: a Markdown metric table and PNG plots.

`write(out_dir, ...)` writes `report.md` and `plots/`: training curves per
phase (from each phase's `history.csv`), predicted vs. true mean score per
model, and histograms of the scores.
"""

import csv
import json
import os

import numpy as np
from scipy import stats

METRIC_COLUMNS = (("srcc", "SRCC"), ("plcc", "PLCC"), ("accuracy", "accuracy"), ("emd", "EMD"))
# What a correlation of constant predictions is reported as, in metrics.json and the report.
CONSTANT_PREDICTIONS = "n/a (constant predictions)"


def is_constant(scores):
    """True where predicted scores do not vary (a correlation with them means nothing).

    Example:
    >>> is_constant(np.full(5, 5.53)), is_constant(np.array([5.5, 5.6, 5.4]))
    (True, False)
    """
    scores = np.asarray(scores, np.float64)
    return bool(np.ptp(scores) <= 1e-6 * max(1.0, float(np.abs(scores).max())))


def _srcc_rows(true, pred):
    """SRCC of each row of `pred` (n_rows, n) against the same row of `true`."""
    a, b = stats.rankdata(true, axis=-1), stats.rankdata(pred, axis=-1)
    a, b = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
    return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def bootstrap_srcc_difference(true, pred_a, pred_b, samples=2000, seed=0):
    """SRCC(b) - SRCC(a) on the same images, with a 95% bootstrap interval over images.

    Returns `(difference, low, high)`; the images are resampled with
    replacement, both models scored on the same resample.

    Example:
    >>> rng = np.random.default_rng(0)
    >>> true = rng.normal(size=300)
    >>> diff, low, high = bootstrap_srcc_difference(true, true + rng.normal(size=300), true + 0.1 * rng.normal(size=300))
    >>> low < diff < high and low > 0
    True
    """
    true, pred_a, pred_b = (np.asarray(v, np.float64) for v in (true, pred_a, pred_b))
    rows = np.random.default_rng(seed).integers(0, len(true), (samples, len(true)))
    diffs = _srcc_rows(true[rows], pred_b[rows]) - _srcc_rows(true[rows], pred_a[rows])
    point = float(stats.spearmanr(true, pred_b)[0] - stats.spearmanr(true, pred_a)[0])
    low, high = np.nanpercentile(diffs, [2.5, 97.5])
    return point, float(low), float(high)


def paired_difference(a, b):
    """Mean of `b - a` over paired runs (seeds), its 95% t interval, and how many pairs agree in sign.

    Returns a dict `{mean, low, high, agree, n}`.

    Example:
    >>> paired_difference([0.40, 0.42, 0.45], [0.45, 0.46, 0.47])["agree"]
    3
    """
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    n = len(d)
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    mean = float(d.mean())
    agree = int((np.sign(d) == np.sign(mean)).sum()) if mean != 0 else 0
    return {"mean": mean, "low": mean - half, "high": mean + half, "agree": agree, "n": n}


def _cell(value):
    return value if isinstance(value, str) else f"{value:.3f}"


def table(results):
    """Markdown table of {model: {srcc, plcc, accuracy, emd}}.

    Example:
    >>> print(table({"teacher": {"srcc": 0.5, "plcc": 0.6, "accuracy": 0.7, "emd": 0.1}}))
    | model | SRCC | PLCC | accuracy | EMD |
    | --- | --- | --- | --- | --- |
    | teacher | 0.500 | 0.600 | 0.700 | 0.100 |
    """
    lines = ["| model | " + " | ".join(t for _, t in METRIC_COLUMNS) + " |"]
    lines.append("| --- " * (len(METRIC_COLUMNS) + 1) + "|")
    for name, values in results.items():
        lines.append(f"| {name} | " + " | ".join(_cell(values[k]) for k, _ in METRIC_COLUMNS) + " |")
    return "\n".join(lines)


def read_history(path):
    """Columns of a `keras.callbacks.CSVLogger` file as {name: [float]}."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))

    def number(text):
        return float(text) if text not in ("", "NA") else float("nan")

    return {key: [number(row[key]) for row in rows] for key in (rows[0] if rows else {}) if key != "epoch"}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history, title, path):
    plt = _figure()
    losses = {k: v for k, v in history.items() if k.endswith("loss")}
    others = {k: v for k, v in history.items() if not k.endswith("loss")}
    fig, axes = plt.subplots(1, 2 if others else 1, figsize=(10 if others else 5, 3.5), squeeze=False)
    for ax, group, label in zip(axes[0], (losses, others), ("loss", "metric")):
        for key, values in group.items():
            ax.plot(range(1, len(values) + 1), values, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_scores(mean_scores, path_scatter, path_hist):
    plt = _figure()
    names = list(mean_scores)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        true, pred = mean_scores[name]
        ax.scatter(true, pred, s=8, alpha=0.6)
        low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([low, high], [low, high], color="gray", linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("true mean score")
        ax.set_ylabel("predicted mean score")
    fig.tight_layout()
    fig.savefig(path_scatter, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    first_true = mean_scores[names[0]][0]
    bins = np.linspace(1, 10, 37)
    ax.hist(first_true, bins=bins, alpha=0.5, label="true")
    for name in names:
        ax.hist(mean_scores[name][1], bins=bins, histtype="step", linewidth=1.5, label=name)
    ax.set_xlabel("mean score")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_hist, dpi=90)
    plt.close(fig)


def write(out_dir, results, mean_scores, phases, notes=()):
    """Write `report.md` and `plots/*.png` for a run; returns the report path.

    `notes` are lines printed under the metric table (e.g. the CSKD gain).
    """
    plots = os.path.join(out_dir, "plots")
    os.makedirs(plots, exist_ok=True)
    sections = ["# CSKD run report", "", "## Test metrics", "", table(results), "", *notes, ""]
    world = os.path.join(out_dir, "world", "world.json")
    if os.path.exists(world):
        with open(world) as file:
            oracle = json.load(file).get("oracle_srcc")
        if oracle is not None:
            sections += [f"Synthetic world: a perfect reader of its hidden attributes reaches SRCC {oracle:.3f}.", ""]
    sections += ["## Training curves", ""]
    for phase in phases:
        history_path = os.path.join(out_dir, phase, "history.csv")
        if os.path.exists(history_path):
            history = read_history(history_path)
            if history:
                plot_history(history, phase, os.path.join(plots, f"{phase}_curves.png"))
                sections.append(f"![{phase}](plots/{phase}_curves.png)")
    plot_scores(mean_scores, os.path.join(plots, "scatter.png"), os.path.join(plots, "score_histogram.png"))
    sections += [
        "",
        "## Predicted vs. true mean score",
        "",
        "![scatter](plots/scatter.png)",
        "",
        "## Score histograms",
        "",
        "![histogram](plots/score_histogram.png)",
        "",
    ]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as file:
        file.write("\n".join(sections))
    return path
