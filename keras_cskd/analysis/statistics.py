"""Mean attention distance and attention entropy of softmax attention (keras.ops, any backend).

See `keras_cskd.analysis` for the definitions.
"""

import functools

import keras
import numpy as np
from keras import ops

STATISTICS = ("mean_distance", "entropy", "prefix_attention")


def pairwise_distances(grid, token_size):
    """(P, P) pixel distances between the tokens of a row-major patch grid.

    Args:
        grid: (rows, columns) of patch tokens.
        token_size: (height, width) of one token in pixels.

    Example:
    >>> pairwise_distances((1, 2), (16, 16)).tolist()
    [[0.0, 16.0], [16.0, 0.0]]
    """
    rows, columns = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    positions = np.stack([rows.ravel() * token_size[0], columns.ravel() * token_size[1]], -1)
    gaps = positions[:, None, :] - positions[None, :, :]
    return np.sqrt(np.sum(np.square(gaps, dtype="float64"), -1)).astype("float32")


def attention_summary(probs, distances, num_prefix_tokens=0):
    """Per image and head: mean distance, entropy and prefix share of attention.

    Args:
        probs: (batch, heads, tokens, tokens) softmax attention, rows summing
            to 1. The first `num_prefix_tokens` tokens (CLS, registers) have
            no position; the others are the patches of `distances`.
        distances: (patches, patches) pixel distances, see `pairwise_distances`.
        num_prefix_tokens: int.

    Returns:
        A dict of (batch, heads) tensors: "mean_distance" (pixels, prefix keys
        left out and the rest renormalized), "entropy" (nats, over full rows),
        "prefix_attention" (share of attention on prefix tokens). All are
        means over the patch queries.

    Example:
    >>> import numpy as np
    >>> uniform = np.full((1, 1, 2, 2), 0.5, "float32")
    >>> summary = attention_summary(uniform, pairwise_distances((1, 2), (8, 8)))
    >>> float(summary["mean_distance"][0, 0]), float(summary["entropy"][0, 0])
    (4.0, 0.693147...)
    """
    probs = ops.cast(probs, "float32")
    rows = probs[:, :, num_prefix_tokens:, :]
    positive = ops.greater(rows, 0.0)
    entropy = -ops.sum(rows * ops.log(ops.where(positive, rows, 1.0)), axis=-1)
    on_patches = rows[:, :, :, num_prefix_tokens:]
    weighted = ops.sum(on_patches * ops.convert_to_tensor(distances, "float32"), axis=-1)
    distance = weighted / ops.maximum(ops.sum(on_patches, axis=-1), 1e-30)
    on_prefix = ops.sum(rows[:, :, :, :num_prefix_tokens], axis=-1)
    return {
        "mean_distance": ops.mean(distance, axis=-1),
        "entropy": ops.mean(entropy, axis=-1),
        "prefix_attention": ops.mean(on_prefix, axis=-1),
    }


@functools.cache
def summary_function():
    """`attention_summary`, compiled as one program on JAX.

    Eager JAX compiles every op for every new shape; one compiled summary per
    shape is much quicker. The other backends run it eagerly.
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(attention_summary, static_argnums=2)
    return attention_summary
