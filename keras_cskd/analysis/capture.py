"""Recording attention while a model runs: hooks on the attention layers of its backbone."""

import contextlib
import math

import keras
import numpy as np
from keras import ops

from keras_cskd.analysis.sites import family
from keras_cskd.analysis.sites import find_attention_backbone
from keras_cskd.analysis.statistics import STATISTICS
from keras_cskd.analysis.statistics import summary_function

_MISSING = object()


def _mha_probabilities(layer, query, key, attention_mask):
    """The softmax weights of a MultiHeadAttention, from its projected q and k.

    This is the layer's own explicit-scores path (`_compute_attention` with
    `return_attention_scores=True`) without dropout.
    """
    query = ops.multiply(query, ops.cast(layer._inverse_sqrt_key_dim, query.dtype))
    scores = ops.einsum(layer._dot_product_equation, key, query)
    return layer._masked_softmax(scores, attention_mask)


class AttentionCapture:
    """Records attention statistics while a model runs; see `capture_attention`."""

    def __init__(self, model, backbone=None):
        self.model = model
        self.backbone_path, self.backbone = find_attention_backbone(model, backbone)
        self.sites = family(self.backbone)(self.backbone)
        self._sums = [None] * len(self.sites)
        self._counts = [0] * len(self.sites)
        self._compiled_calls = 0
        self._installed = []

    def _record(self, index, probs):
        site = self.sites[index]
        summary = summary_function()(probs, site.distances, site.num_prefix_tokens)
        try:
            values = np.stack([ops.convert_to_numpy(summary[k]) for k in STATISTICS])
        except Exception:  # a compiled call (tracers, graph tensors): no values.
            # Raising here would abort e.g. `predict` mid-trace, which on JAX
            # leaves the model's variables unusable; `statistics` reports it.
            self._compiled_calls += 1
            return
        # (statistics, images * windows, heads) -> mean over each image's windows
        values = values.astype("float64")
        values = values.reshape(len(STATISTICS), -1, site.windows, values.shape[-1]).mean(axis=2)
        previous = 0.0 if self._sums[index] is None else self._sums[index]
        self._sums[index] = previous + values.sum(axis=1)
        self._counts[index] += values.shape[1]

    def _hook(self, index):
        site = self.sites[index]
        if site.kind == "global":
            original = site.layer._compute_attention

            def compute_attention(query, key, value, attention_mask=None, *args, **kwargs):
                if not keras.backend.is_keras_tensor(query):  # symbolic: nothing to measure
                    probs = _mha_probabilities(site.layer, query, key, attention_mask)
                    self._record(index, probs)
                return original(query, key, value, attention_mask, *args, **kwargs)

            return "_compute_attention", compute_attention
        original = site.layer.call

        def call(x, mask=None, return_attns=False):
            outputs, probs = original(x, mask=mask, return_attns=True)
            if not keras.backend.is_keras_tensor(probs):
                self._record(index, probs)
            return (outputs, probs) if return_attns else outputs

        return "call", call

    def __enter__(self):
        try:
            for index, site in enumerate(self.sites):
                name, hook = self._hook(index)
                previous = site.layer.__dict__.get(name, _MISSING)
                object.__setattr__(site.layer, name, hook)
                self._installed.append((site.layer, name, previous))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info):
        while self._installed:
            layer, name, previous = self._installed.pop()
            if previous is _MISSING:
                object.__delattr__(layer, name)
            else:
                object.__setattr__(layer, name, previous)
        return False

    def run(self, images):
        """Runs the model eagerly in inference mode on a batch; returns its outputs."""
        images = ops.convert_to_tensor(np.asarray(images, "float32"))
        with _no_grad():
            return self.model(images, training=False)

    def statistics(self):
        """The per-layer, per-head statistics recorded so far (JSON-ready)."""
        if not all(self._counts):
            missing = [s.name for s, c in zip(self.sites, self._counts) if not c]
            hint = (
                " It only ran compiled (predict, jit, tf.function): run it eagerly, e.g. `capture.run(images)`."
                if self._compiled_calls
                else " Run the model first."
            )
            raise RuntimeError(f"No attention recorded for layers {missing}.{hint}")
        means = [total / count for total, count in zip(self._sums, self._counts)]
        result = {
            "backbone": type(self.backbone).__name__,
            "backbone_path": self.backbone_path,
            "num_images": min(self._counts),
            "layers": [site.name for site in self.sites],
            "token_size_pixels": [list(site.token_size) for site in self.sites],
            "num_prefix_tokens": [site.num_prefix_tokens for site in self.sites],
            "max_entropy": [math.log(site.num_keys) for site in self.sites],
        }
        for position, key in enumerate(STATISTICS):
            result[key] = [mean[position].tolist() for mean in means]
        return result


def capture_attention(model, backbone=None):
    """Context manager that records attention while `model` runs eagerly.

    The hooks exist only inside the `with` block and leave the model's outputs
    unchanged. Run the model with `capture.run(images)` (or call it eagerly);
    compiled calls such as `predict` are not recorded.

    Example:
    >>> import keras_hub
    >>> import numpy as np
    >>> vit = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...     num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    >>> with capture_attention(vit) as capture:
    ...     _ = capture.run(np.zeros((2, 32, 32, 3)))
    >>> len(capture.statistics()["entropy"])
    2
    """
    return AttentionCapture(model, backbone)


@contextlib.contextmanager
def _no_grad():
    """PyTorch would otherwise record a graph for the eager forward pass."""
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            yield
    else:
        yield


def _batches(images, batch_size):
    if hasattr(images, "shape") and len(images.shape) == 4:
        images = ops.convert_to_numpy(images)
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]
        return
    for batch in images:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def attention_statistics(model, images, batch_size=16, backbone=None):
    """Mean attention distance and entropy per layer and head, over images.

    Args:
        model: a `keras.Model` that takes images and contains a supported
            backbone (see `SUPPORTED_BACKBONES`), at any depth.
        images: (N, H, W, 3) array of what `model` takes (0..255 for
            `keras_cskd` models), or an iterable of such batches.
        batch_size: int. Batch size when `images` is an array.
        backbone: str or None. Which backbone, if the model holds several.

    Returns:
        A JSON-ready dict: "mean_distance" (pixels) and "entropy" (nats) and
        "prefix_attention", each a list over layers of a list over heads;
        "layers" (names), "max_entropy" (log of keys per query),
        "token_size_pixels", "num_prefix_tokens", "num_images", "backbone".

    Example:
    >>> import keras_hub
    >>> import numpy as np
    >>> vit = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...     num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    >>> stats = attention_statistics(vit, np.zeros((3, 32, 32, 3)))
    >>> np.array(stats["mean_distance"]).shape, stats["num_images"]
    ((2, 2), 3)
    """
    with capture_attention(model, backbone) as capture:
        for batch in _batches(images, batch_size):
            capture.run(batch)
    return capture.statistics()


def compare(models, images, batch_size=16, backbone=None):
    """`attention_statistics` of each model in a {name: model} dict, same images.

    Example:
    >>> stats = compare({"before": vit, "after": aligned_vit}, images)  # doctest: +SKIP
    >>> plot(stats, "out/")  # doctest: +SKIP
    """
    return {name: attention_statistics(model, images, batch_size, backbone) for name, model in models.items()}
