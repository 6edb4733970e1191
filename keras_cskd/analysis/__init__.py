"""Feature-collapse analysis: mean attention distance and attention entropy.

CSKD (arXiv 2307.15640) shows that aligning a backbone to CLIP eases feature
collapse by comparing, layer by layer and head by head, how far and how
broadly the attention of a vision transformer looks, before and after the
alignment. This module measures both for any model that contains a supported
KerasHub backbone, at any depth of nesting (a bare backbone, a
`keras_cskd.backbones.get(...)` feature model, an aligned learner, a
`CLIPImageTeacher`):

| backbone                                  | attention               | prefix tokens |
|-------------------------------------------|-------------------------|---------------|
| `keras_hub.models.ViTBackbone`            | global                  | CLS (if used) |
| `keras_hub.models.DeiTBackbone`           | global                  | CLS, distill. |
| `keras_hub.models.CLIPVisionEncoder`      | global                  | CLS           |
| `keras_hub.models.DINOV2Backbone`         | global                  | CLS, registers|
| `keras_hub.models.SwinTransformerBackbone`| local (shifted) windows | none          |

Anything else (a CNN, DINOv3, a KerasHub model not listed) raises a
`ValueError` that names the model and lists the supported backbones.

Definitions (ViT paper, Dosovitskiy et al. 2021, appendix D.7), for each
layer and head, with `a_ij` the softmax attention of query token i on key
token j:

- mean attention distance (pixels) = mean over queries i of
  `sum_j a_ij * ||pos_i - pos_j||`, where `pos` is a token's (row, column)
  on the patch grid times the token's size in pixels. Prefix tokens (CLS,
  distillation, registers) have no position: they are left out as queries,
  and each query's attention on the patch tokens is renormalized to sum 1,
  so the value is the expected pixel distance to the patch attended to.
  The share of attention that went to prefix tokens is reported separately
  as `prefix_attention`.
- attention entropy (nats) = mean over queries i of `-sum_j a_ij log a_ij`,
  over each query's full attention row (prefix tokens included as keys: that
  is the distribution the layer applies). Queries are the patch tokens, as
  for the distance. Uniform attention over K keys gives `log K`
  (`max_entropy`), attention on a single key gives 0.

Both are averaged over the images. Swin attends inside local windows:
distances are between token positions inside their window, and a token's size
in pixels is the patch size times 2 per patch merging before its stage
(`patch_size * 2**stage`). In shifted windows, pairs that wrap around the
image border are masked by Swin itself (weight about e^-100), so every pair
that carries weight has its window distance equal to its image distance.
Where a stage's resolution is not a multiple of the window, Swin attends over
zero-padded tokens too, and so does this measurement.

How the weights are obtained: the model runs as usual while the supported
attention layers are hooked for the duration of the run only. For
`keras.layers.MultiHeadAttention` (ViT, DeiT, CLIP, DINOv2) the hook takes the
layer's own projected queries and keys and applies the layer's own scaling,
einsum and masked softmax (the layer's explicit-scores code path) next to the
layer's unchanged computation; for Swin's `WindowAttention` the layer's own
`call` returns the weights it used. The hooks are instance attributes removed
afterwards, so the model is never modified and its predictions stay
bit-identical.

Command line: `cskd analyze before.keras after.keras --images imgs/ --out DIR`
(or `cskd analyze before.keras after.keras imgs/ --out DIR`) writes
`attention.json` and the plots `attention_distance.png` and
`attention_entropy.png`, one line per model.

The package holds one module per job: `statistics` (the two measures, any
backend), `sites` (where each family keeps its attention layers), `capture`
(hooks that record attention while a model runs), `plots` and `command`
(`cskd analyze`).
"""

from keras_cskd.analysis.capture import AttentionCapture
from keras_cskd.analysis.capture import attention_statistics
from keras_cskd.analysis.capture import capture_attention
from keras_cskd.analysis.capture import compare
from keras_cskd.analysis.command import JSON_NAME
from keras_cskd.analysis.command import analyze
from keras_cskd.analysis.command import image_batches
from keras_cskd.analysis.command import load_model
from keras_cskd.analysis.command import register_command
from keras_cskd.analysis.command import run_command
from keras_cskd.analysis.plots import plot
from keras_cskd.analysis.sites import SUPPORTED_BACKBONES
from keras_cskd.analysis.sites import find_attention_backbone
from keras_cskd.analysis.statistics import attention_summary
from keras_cskd.analysis.statistics import pairwise_distances
