"""CSKD's steps in plain PyTorch, written the way a PyTorch user writes the paper's pseudo-code.

The same architectures and sizes as keras-cskd's side of `benchmarks/throughput.py`:

- CLIP image encoder: patch embedding (conv), class token, positions, pre-LN,
  pre-norm transformer blocks with quick-GELU MLPs, post-LN, class token,
  linear projection without bias, L2 normalization (KerasHub's CLIPVisionEncoder
  + keras_cskd.CLIPImageTeacher);
- ViT teacher: KerasHub ViTBackbone's layout (class token, pre-norm blocks with
  GELU, final LN), tokens mean-pooled as `keras_cskd.backbones.get` pools them;
- Swin teacher (the paper's Swin-B): KerasHub SwinTransformerBackbone's layout
  (patch embedding + LN, shifted-window attention with relative position bias,
  GELU MLPs, stochastic depth to 0.1, patch merging, final LN), tokens mean-pooled;
- MobileNetV2 student: `keras.applications.MobileNetV2` (width 1.0), global
  average pooling (1280 features);
- projector: Linear-ReLU-Linear; score head: Linear + softmax; the squared EMD.

Nothing here uses torch.compile (eager, as the pseudo-code reads); `--peer-compile`
in the benchmark turns it on. Mixed precision is `torch.autocast` (`steps(...,
autocast_dtype=torch.bfloat16)`), PyTorch's counterpart of Keras's `mixed_bfloat16`.
No torchvision is needed.
"""

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Normalize(nn.Module):
    """Raw 0..255 NHWC images -> normalized NCHW, as the Keras models do inside."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, x):
        return (x.permute(0, 3, 1, 2) - self.mean) / self.std


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_dim, act):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), act(), nn.Linear(mlp_dim, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Pre-norm ViT. `clip=True`: CLIP's pre-LN, quick-GELU, class token + projection + L2 norm."""

    def __init__(
        self, image_size, patch_size, hidden_dim, num_layers, num_heads, mlp_dim, clip=False, projection_dim=None
    ):
        super().__init__()
        self.clip = clip
        self.norm = Normalize(CLIP_MEAN, CLIP_STD) if clip else Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.patch = nn.Conv2d(3, hidden_dim, patch_size, patch_size, bias=not clip)
        tokens = (image_size // patch_size) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, hidden_dim) * 0.02)
        self.pre_ln = nn.LayerNorm(hidden_dim) if clip else nn.Identity()
        act = QuickGELU if clip else nn.GELU
        self.blocks = nn.Sequential(*[Block(hidden_dim, num_heads, mlp_dim, act) for _ in range(num_layers)])
        self.ln = nn.LayerNorm(hidden_dim)
        self.proj = nn.Linear(hidden_dim, projection_dim, bias=False) if clip else None
        self.feature_dim = projection_dim if clip else hidden_dim

    def forward(self, images):
        x = self.patch(self.norm(images)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        x = self.ln(self.blocks(self.pre_ln(x)))
        if self.clip:
            return F.normalize(self.proj(x[:, 0]), dim=-1)
        return x.mean(1)


def drop_path(x, rate, training):
    """Stochastic depth: drop the whole residual branch of a random `rate` of the samples."""
    if rate == 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= rate
    return x * keep / (1.0 - rate)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim, heads, window):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("bias_index", (relative[..., 0] * (2 * window - 1) + relative[..., 1]).flatten())

    def forward(self, x, mask):
        # x: (batch, windows, tokens, dim); mask: (windows, tokens, tokens) or None.
        b, w, n, c = x.shape
        q, k, v = self.qkv(x).view(b, w, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        bias = self.bias_table[self.bias_index].view(n, n, -1).permute(2, 0, 1)
        if mask is not None:
            bias = bias + mask[:, None]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(x.transpose(2, 3).reshape(b, w, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, window, shift, resolution, drop_rate):
        super().__init__()
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        self.window, self.shift, self.resolution, self.drop_rate = window, shift, resolution, drop_rate
        self.ln1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        mask = None
        if shift:
            h, w = resolution
            regions = torch.zeros(h, w)
            edges = (0, -window, -shift, None)
            for i, (h0, h1) in enumerate(zip(edges, edges[1:])):
                for j, (w0, w1) in enumerate(zip(edges, edges[1:])):
                    regions[h0:h1, w0:w1] = 3 * i + j
            regions = self._windows(regions[None, :, :, None])[0, :, :, 0]
            mask = (regions[:, :, None] != regions[:, None, :]).float() * -100.0
        self.register_buffer("mask", mask)

    def _windows(self, x):
        b, h, w, c, s = *x.shape, self.window
        return x.view(b, h // s, s, w // s, s, c).transpose(2, 3).reshape(b, -1, s * s, c)

    def forward(self, x):
        (b, tokens, c), (h, w), s = x.shape, self.resolution, self.window
        y = self.ln1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = self.attn(self._windows(y), self.mask)
        y = y.view(b, h // s, w // s, s, s, c).transpose(2, 3).reshape(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + drop_path(y.reshape(b, tokens, c), self.drop_rate, self.training)
        return x + drop_path(self.mlp(self.ln2(x)), self.drop_rate, self.training)


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens -> one token of twice the width."""

    def __init__(self, dim, resolution):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        (b, _, c), (h, w) = x.shape, self.resolution
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class Swin(nn.Module):
    """Swin Transformer (KerasHub SwinTransformerBackbone's layout), tokens mean-pooled."""

    def __init__(self, image_size, patch_size, embed_dim, depths, num_heads, window_size, drop_path_rate=0.1):
        super().__init__()
        self.norm = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.patch = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.patch_ln = nn.LayerNorm(embed_dim)
        rates = torch.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        resolution, dim, layers = (image_size // patch_size,) * 2, embed_dim, []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            for j in range(depth):
                shift = window_size // 2 if j % 2 else 0
                layers.append(SwinBlock(dim, heads, window_size, shift, resolution, rates.pop(0)))
            if i < len(depths) - 1:
                layers.append(PatchMerging(dim, resolution))
                resolution, dim = (resolution[0] // 2, resolution[1] // 2), 2 * dim
        self.blocks = nn.Sequential(*layers)
        self.ln = nn.LayerNorm(dim)
        self.feature_dim = dim

    def forward(self, images):
        x = self.patch_ln(self.patch(self.norm(images)).flatten(2).transpose(1, 2))
        return self.ln(self.blocks(x)).mean(1)


def _conv_bn(cin, cout, k, s, groups=1, act=True):
    layers = [
        nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=1e-3, momentum=0.001),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 width 1.0 (the keras.applications / torchvision layout), pooled 1280 features."""

    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self):
        super().__init__()
        self.norm = Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # keras "tf" mode: x / 127.5 - 1
        layers, cin = [_conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.feature_dim = 1280

    def forward(self, images):
        return self.features(self.norm(images)).mean((2, 3))


class Learner(nn.Module):
    """Backbone + Linear-ReLU-Linear projector into CLIP space."""

    def __init__(self, backbone, hidden_dim, output_dim):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(
            nn.Linear(backbone.feature_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, output_dim)
        )

    def forward(self, x):
        return self.projector(self.backbone(x))


class Scorer(nn.Module):
    def __init__(self, backbone, num_bins=10):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_bins)

    def forward(self, x):
        return F.softmax(self.head(self.backbone(x)), dim=-1)


def fuse_batch_norms(model):
    """`model` (in eval mode) with each conv + batch norm pair fused into one conv, in place."""
    for module in model.modules():
        if isinstance(module, nn.Sequential) and len(module) > 1:
            if isinstance(module[0], nn.Conv2d) and isinstance(module[1], nn.BatchNorm2d):
                module[0] = torch.nn.utils.fuse_conv_bn_eval(module[0], module[1])
                module[1] = nn.Identity()
    return model


def squared_emd(p, q):
    return (torch.cumsum(p, -1) - torch.cumsum(q, -1)).pow(2).mean(-1).mean()


def build(config):
    """(clip, teacher_backbone_fn, student_backbone_fn) for a benchmark size config."""
    s = config["image_size"]
    c, t = config["clip"], config["teacher"]
    clip = ViT(
        s,
        c["patch_size"],
        c["hidden_dim"],
        c["num_layers"],
        c["num_heads"],
        c["mlp_dim"],
        clip=True,
        projection_dim=c["projection_dim"],
    )
    if t["kind"] == "vit":
        teacher = lambda: ViT(s, t["patch_size"], t["hidden_dim"], t["num_layers"], t["num_heads"], t["mlp_dim"])
    else:
        teacher = lambda: Swin(s, t["patch_size"], t["embed_dim"], t["depths"], t["num_heads"], t["window_size"])
    return clip, teacher, MobileNetV2


def steps(config, compile_models=False, device="cpu", autocast_dtype=None):
    """name -> (zero-argument step function, images per step), as a PyTorch user writes them.

    `autocast_dtype` (e.g. `torch.bfloat16`): forward passes under `torch.autocast`, float32 weights.
    """
    torch.manual_seed(0)
    device = torch.device(device)

    def amp():
        return torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None)

    b, s, bins = config["batch_size"], config["image_size"], config["num_bins"]
    clip, teacher_fn, student_fn = build(config)
    clip = clip.to(device).eval().requires_grad_(False)
    emb, hidden = config["clip"]["projection_dim"], config["projection_hidden_dim"]
    x = torch.rand(b, s, s, 3, device=device) * 255
    y = torch.softmax(torch.randn(b, bins, device=device), -1)
    maybe = (lambda m: torch.compile(m)) if compile_models else (lambda m: m)
    result = {}

    def alignment(learners, cached):
        learners = [maybe(l.to(device).train()) for l in learners]
        params = [p for l in learners for p in l.parameters()]
        opt = torch.optim.Adam(params, lr=1e-3)
        with torch.no_grad(), amp():
            fixed = clip(x)

        def step():
            with amp():
                if cached:
                    target = fixed
                else:
                    with torch.no_grad():
                        target = clip(x)
                loss = sum((1 - F.cosine_similarity(l(x).float(), target.float(), dim=-1)).mean() for l in learners)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        return step

    result["align"] = (alignment([Learner(teacher_fn(), hidden, emb), Learner(student_fn(), hidden, emb)], False), b)
    result["align_cached"] = (
        alignment([Learner(teacher_fn(), hidden, emb), Learner(student_fn(), hidden, emb)], True),
        b,
    )
    result["align_student"] = (alignment([Learner(student_fn(), hidden, emb)], False), b)
    result["align_student_cached"] = (alignment([Learner(student_fn(), hidden, emb)], True), b)

    teacher = Scorer(teacher_fn(), bins).to(device).train()
    t_step = maybe(teacher)
    t_opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)

    def finetune():
        with amp():
            loss = squared_emd(y, t_step(x).float())
        t_opt.zero_grad(set_to_none=True)
        loss.backward()
        t_opt.step()
        return loss.item()

    result["finetune"] = (finetune, b)

    def distillation(cached):
        frozen = maybe(Scorer(teacher_fn(), bins).to(device).eval().requires_grad_(False))
        student = Scorer(student_fn(), bins).to(device).train()
        s_step = maybe(student)
        opt = torch.optim.Adam(student.parameters(), lr=1e-3)
        x_u = torch.rand(b, s, s, 3, device=device) * 255
        with torch.no_grad(), amp():
            fixed = frozen(x_u).float()

        def step():
            with amp():
                if cached:
                    pseudo = fixed
                else:
                    with torch.no_grad():
                        pseudo = frozen(x_u).float()
                out = s_step(torch.cat([x, x_u])).float()
                loss = squared_emd(y, out[:b]) + squared_emd(pseudo, out[b:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        return step

    result["distill"] = (distillation(False), 2 * b)
    result["distill_cached"] = (distillation(True), 2 * b)

    student = maybe(Scorer(student_fn(), bins).to(device).eval())

    def inference():
        with torch.inference_mode(), amp():
            return student(x).sum().item()

    result["inference"] = (inference, b)
    folded = maybe(fuse_batch_norms(Scorer(student_fn(), bins).to(device).eval()))

    def inference_folded():
        with torch.inference_mode(), amp():
            return folded(x).sum().item()

    result["inference_folded"] = (inference_folded, b)

    def clip_forward():
        with torch.inference_mode(), amp():
            return clip(x).sum().item()

    result["clip_forward"] = (clip_forward, b)
    return result
