"""Layers of CSKD: pixel normalization, the MLP projector, the score heads and a backend-aware depthwise convolution."""

import keras
import numpy as np
from keras import layers
from keras import ops


def bin_values_for(num_bins, bin_values=None):
    """The score each bin stands for: `bin_values`, or 1..num_bins."""
    if bin_values is None:
        return [float(i) for i in range(1, num_bins + 1)]
    if len(bin_values) != num_bins:
        raise ValueError(f"{len(bin_values)} bin values given for {num_bins} bins: {bin_values}.")
    return [float(v) for v in bin_values]


def mean_score(distribution, bin_values=None, centered=False):
    """Expected score of (batch, bins) distributions over `bin_values` (1..N).

    Accepts (batch,) or (batch, 1) scores too and returns them unchanged, so
    metrics work on either distributions or mean scores. `centered=True`
    measures a distribution's score from the middle bin value (the mean of
    `bin_values`), shifting the bins before the sum, so scores that differ by
    little keep their differences' digits in float32.

    Example:
    >>> float(mean_score([[0.5, 0.0, 0.5]])[0])
    2.0
    """
    distribution = ops.convert_to_tensor(distribution)
    if not keras.backend.is_float_dtype(distribution.dtype):
        distribution = ops.cast(distribution, "float32")
    weights = score_weights(distribution.shape, bin_values, centered)
    if weights is None:
        return distribution if len(distribution.shape) == 1 else distribution[:, 0]
    # A product and two sums, which XLA fuses into one loop; on the CPU a matmul is a library
    # call of its own there, costlier than the arithmetic (in a graph, both are five ops).
    total = ops.sum(distribution * ops.convert_to_tensor(weights, distribution.dtype), axis=-1)
    return total / ops.maximum(ops.sum(distribution, axis=-1), 1e-12)


def score_weights(shape, bin_values=None, centered=False):
    """(bins,) float32 array: each bin's score (minus their mean if `centered`).

    None when `shape` holds scores already: (batch,) and (batch, 1). A
    distribution's mean score is its weighted sum over its mass (`mean_score`).

    Example:
    >>> score_weights((4, 3)).tolist()
    [1.0, 2.0, 3.0]
    >>> score_weights((4, 3), centered=True).tolist()
    [-1.0, 0.0, 1.0]
    """
    if len(shape) == 1 or (len(shape) == 2 and shape[-1] == 1):
        return None
    if len(shape) != 2:
        raise ValueError(
            f"Expected score distributions of shape (batch, bins) or scores of shape (batch,), got shape {shape}."
        )
    values = np.asarray(bin_values_for(shape[-1], bin_values), "float64")
    if centered:
        values = values - values.mean()
    return values.astype("float32")


@keras.saving.register_keras_serializable(package="keras_cskd")
class PixelNormalization(layers.Layer):
    """Raw images 0..255 -> `x * scale + offset` per channel, as float.

    Covers every normalization a backbone expects: [-1, 1] (`scale=1/127.5,
    offset=-1`), mean/std (`scale=1/(255 std)`, `offset=-mean/std`), and
    Caffe's BGR mean subtraction (`reverse_channels=True`).

    Args:
        scale: float or 3 floats.
        offset: float or 3 floats.
        reverse_channels: bool. Flip RGB to BGR first.

    Example:
    >>> import numpy as np
    >>> layer = PixelNormalization(scale=1 / 127.5, offset=-1.0)
    >>> [float(v) for v in layer(np.array([[[[0.0, 255.0, 127.5]]]]))[0, 0, 0]]
    [-1.0, 1.0, 0.0]
    >>> bgr = PixelNormalization(offset=[-1.0, -2.0, -3.0], reverse_channels=True)
    >>> [float(v) for v in bgr(np.array([[[[10.0, 20.0, 30.0]]]]))[0, 0, 0]]
    [29.0, 18.0, 7.0]
    """

    def __init__(self, scale=1.0, offset=0.0, reverse_channels=False, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.offset = offset
        self.reverse_channels = reverse_channels

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.reverse_channels:
            images = ops.flip(images, axis=-1)
        scale = ops.convert_to_tensor(self.scale, self.compute_dtype)
        offset = ops.convert_to_tensor(self.offset, self.compute_dtype)
        return images * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "scale": self.scale,
                "offset": self.offset,
                "reverse_channels": self.reverse_channels,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_cskd")
class ProjectionHead(layers.Layer):
    """The CFA projector: Dense -> ReLU -> Dense, from backbone feature to CLIP space.

    Args:
        hidden_dim: int. Width of the hidden layer.
        output_dim: int. The CLIP embedding size.
        activation: the hidden activation.
        kernel_initializer: initializer of both kernels.

    Example:
    >>> import numpy as np
    >>> head = ProjectionHead(hidden_dim=32, output_dim=8)
    >>> tuple(head(np.zeros((2, 16))).shape)
    (2, 8)
    """

    def __init__(
        self,
        hidden_dim,
        output_dim,
        activation="relu",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.activation = activation
        self.kernel_initializer = kernel_initializer
        self.hidden = layers.Dense(
            hidden_dim,
            activation=activation,
            kernel_initializer=kernel_initializer,
            dtype=self.dtype_policy,
            name="hidden",
        )
        self.output_projection = layers.Dense(
            output_dim,
            kernel_initializer=kernel_initializer,
            dtype=self.dtype_policy,
            name="output_projection",
        )

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.output_projection.build(self.hidden.compute_output_shape(input_shape))

    def call(self, features):
        return self.output_projection(self.hidden(features))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "output_dim": self.output_dim,
                "activation": self.activation,
                "kernel_initializer": self.kernel_initializer,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_cskd")
class ScoreHead(layers.Layer):
    """Feature -> score distribution over `num_bins` (dropout, dense, softmax).

    The softmax runs in float32 so mixed precision keeps valid distributions.

    Args:
        num_bins: int. 10 for AVA's 1..10 votes.
        dropout: float. Dropout rate before the dense layer.

    Example:
    >>> import numpy as np
    >>> head = ScoreHead(num_bins=10)
    >>> probabilities = head(np.zeros((2, 16)))
    >>> tuple(probabilities.shape), round(float(ops.sum(probabilities[0])), 4)
    ((2, 10), 1.0)
    """

    def __init__(self, num_bins=10, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if num_bins < 2:
            raise ValueError(f"ScoreHead needs at least 2 bins, got num_bins={num_bins}.")
        self.num_bins = num_bins
        self.dropout = dropout
        self.dropout_layer = layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        self.logits = layers.Dense(num_bins, dtype=self.dtype_policy, name="logits")

    def build(self, input_shape):
        self.logits.build(input_shape)

    def call(self, features, training=None):
        logits = self.logits(self.dropout_layer(features, training=training))
        return ops.softmax(ops.cast(logits, "float32"), axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_bins,)

    def compute_output_spec(self, features, training=None):
        shape = self.compute_output_shape(features.shape)
        return keras.KerasTensor(shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update({"num_bins": self.num_bins, "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="keras_cskd")
class MeanScore(layers.Layer):
    """Score distribution (batch, bins) -> expected score (batch,).

    Args:
        bin_values: list of floats, the score of each bin; 1..N by default.

    Example:
    >>> import numpy as np
    >>> float(MeanScore()(np.array([[0.0, 0.5, 0.5]]))[0])
    2.5
    """

    def __init__(self, bin_values=None, **kwargs):
        super().__init__(**kwargs)
        self.bin_values = bin_values

    def call(self, distribution):
        return mean_score(distribution, self.bin_values)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        config = super().get_config()
        config.update({"bin_values": self.bin_values})
        return config


def shift_add_depthwise_conv(inputs, kernel, strides=(1, 1), padding="valid", dilation_rate=(1, 1)):
    """`keras.ops.depthwise_conv` (channels_last, 2D) as a sum of shifted, channel-scaled copies of `inputs`.

    One multiply-add per kernel tap, on strided slices of the padded input:
    plain elementwise work that XLA fuses into a loop or two. `kernel` is
    (kh, kw, channels, depth_multiplier), as `keras.layers.DepthwiseConv2D`
    holds it; the spatial sizes of `inputs` must be known.

    Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype("float32")
    >>> k = np.random.default_rng(1).normal(size=(3, 3, 3, 2)).astype("float32")
    >>> direct = ops.depthwise_conv(x, k, strides=2, padding="same")
    >>> shifted = shift_add_depthwise_conv(x, k, strides=(2, 2), padding="same")
    >>> bool(np.allclose(direct, shifted, atol=1e-5))
    True
    """
    kh, kw, channels, multiplier = kernel.shape
    if multiplier > 1:
        inputs = ops.repeat(inputs, multiplier, axis=-1)
        kernel = ops.reshape(kernel, (kh, kw, channels * multiplier))
    else:
        kernel = ops.reshape(kernel, (kh, kw, channels))
    pads, sizes = [], []
    for n, k, s, d in zip(inputs.shape[1:3], (kh, kw), strides, dilation_rate):
        reach = (k - 1) * d + 1
        size = -(-n // s) if padding == "same" else (n - reach) // s + 1
        total = max((size - 1) * s + reach - n, 0) if padding == "same" else 0
        pads.append((total // 2, total - total // 2))
        sizes.append(size)
    padded = ops.pad(inputs, ((0, 0), *pads, (0, 0))) if any(map(sum, pads)) else inputs
    (sh, sw), (dh, dw), (oh, ow) = strides, dilation_rate, sizes
    outputs = None
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw, :]
            tap = tap * kernel[i, j]
            outputs = tap if outputs is None else outputs + tap
    return outputs


def _shift_add_pays():
    """True where the shift-add depthwise convolution is the faster one: jax on a CPU.

    XLA's CPU grouped convolution takes many times the shift-add's time, forward
    and backward (`benchmarks/conv_kernels.py`, docs/performance.md);
    tensorflow's and torch's own depthwise kernels are fast, and on accelerators
    XLA's is left as it is.
    """
    return keras.backend.backend() == "jax" and keras.distribution.list_devices()[0].startswith("cpu")


@keras.saving.register_keras_serializable(package="keras_cskd")
class ShiftAddDepthwiseConv2D(layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` that runs as shifted multiply-adds where that is faster (jax on a CPU).

    The same weights, configuration and outputs (to float rounding) as the Keras
    layer on every backend; on jax's CPU it computes `shift_add_depthwise_conv`,
    elsewhere Keras's own kernel. `keras_cskd.backbones.use_shift_add_depthwise`
    puts it in a model built with Keras's layer.

    Example:
    >>> import numpy as np
    >>> layer = ShiftAddDepthwiseConv2D(3, padding="same")
    >>> tuple(layer(np.zeros((1, 8, 8, 4))).shape)
    (1, 8, 8, 4)
    """

    def call(self, inputs):
        static = None not in tuple(inputs.shape[1:3])
        if not (static and self.data_format == "channels_last" and _shift_add_pays()):
            return super().call(inputs)
        outputs = shift_add_depthwise_conv(inputs, self.kernel, self.strides, self.padding, self.dilation_rate)
        if self.use_bias:
            outputs = outputs + self.bias
        return outputs if self.activation is None else self.activation(outputs)
