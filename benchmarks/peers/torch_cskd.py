"""CSKD's steps in plain PyTorch, written the way a PyTorch user writes the paper's pseudo-code.

The same architectures and sizes as keras-cskd's side of `benchmarks/throughput.py`:

- CLIP image encoder: patch embedding (conv), class token, positions, pre-LN,
  pre-norm transformer blocks with quick-GELU MLPs, post-LN, class token,
  linear projection without bias, L2 normalization (KerasHub's CLIPVisionEncoder
  + keras_cskd.CLIPImageTeacher);
- ViT teacher: KerasHub ViTBackbone's layout (class token, pre-norm blocks with
  GELU, final LN), tokens mean-pooled as `keras_cskd.backbones.get` pools them;
- MobileNetV2 student: `keras.applications.MobileNetV2` (width 1.0), global
  average pooling (1280 features);
- projector: Linear-ReLU-Linear; score head: Linear + softmax; the squared EMD.

Nothing here uses torch.compile (eager, as the pseudo-code reads); `--peer-compile`
in the benchmark turns it on. No torchvision is needed.
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
    if t["kind"] != "vit":
        raise NotImplementedError(f"the torch peer has no {t['kind']!r} teacher (only 'vit')")
    teacher = lambda: ViT(s, t["patch_size"], t["hidden_dim"], t["num_layers"], t["num_heads"], t["mlp_dim"])
    return clip, teacher, MobileNetV2


def steps(config, compile_models=False, device="cpu"):
    """name -> (zero-argument step function, images per step), as a PyTorch user writes them."""
    torch.manual_seed(0)
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
        with torch.no_grad():
            fixed = clip(x)

        def step():
            if cached:
                target = fixed
            else:
                with torch.no_grad():
                    target = clip(x)
            loss = sum((1 - F.cosine_similarity(l(x), target, dim=-1)).mean() for l in learners)
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
        loss = squared_emd(y, t_step(x))
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
        with torch.no_grad():
            fixed = frozen(x_u)

        def step():
            if cached:
                pseudo = fixed
            else:
                with torch.no_grad():
                    pseudo = frozen(x_u)
            out = s_step(torch.cat([x, x_u]))
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
        with torch.inference_mode():
            return student(x).sum().item()

    result["inference"] = (inference, b)

    def clip_forward():
        with torch.inference_mode():
            return clip(x).sum().item()

    result["clip_forward"] = (clip_forward, b)
    return result
