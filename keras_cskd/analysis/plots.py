"""Per-layer charts of the attention statistics, one line per model."""

import os

import numpy as np

PLOTS = (
    ("mean_distance", "mean attention distance (pixels)", "attention_distance.png"),
    ("entropy", "attention entropy (nats)", "attention_entropy.png"),
)


def plot(stats_by_model, out_dir):
    """Per-layer distance and entropy charts, one line per model.

    Lines are the mean over heads; dots are the single heads.

    Args:
        stats_by_model: {name: attention_statistics(...)}.
        out_dir: folder for the PNG files (created if needed).

    Returns:
        The paths of the PNG files written.

    Example:
    >>> plot({"before": before_stats, "after": after_stats}, "out")  # doctest: +SKIP
    ['out/attention_distance.png', 'out/attention_entropy.png']
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key, label, filename in PLOTS:
        figure = Figure(figsize=(6.4, 4.2), layout="constrained")
        axes = figure.subplots()
        for index, (name, stats) in enumerate(stats_by_model.items()):
            color = f"C{index % 10}"
            per_layer = stats[key]
            depth = np.arange(1, len(per_layer) + 1)
            axes.plot(depth, [np.mean(h) for h in per_layer], "o-", color=color, label=name)
            for x, heads in zip(depth, per_layer):
                axes.scatter(np.full(len(heads), x), heads, s=12, alpha=0.35, color=color)
        axes.set_title("lines: mean over heads; dots: single heads", fontsize="small")
        axes.set_xlabel("layer")
        axes.set_ylabel(label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
        path = os.path.join(out_dir, filename)
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths
