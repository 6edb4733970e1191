"""The recipe's config: three sections of typed fields, read from and written to TOML."""

import dataclasses
import json
import math
import tomllib

# The values `[train] xla` and `[train] mixed_precision` accept.
XLA_CHOICES = ("auto", "on", "off", "per_model")
MIXED_PRECISION_CHOICES = ("", "mixed_bfloat16", "mixed_float16")


class ConfigError(ValueError):
    """A config file or field a user must fix."""


def _field(default, help):
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class DataConfig:
    ava_root: str = _field("", "AVA-format dataset root (AVA.txt + images/); empty generates the synthetic world")
    test_list: str = _field("", "official AVA test list file; empty uses a seeded split")
    unlabeled: list = _field(
        [], "unlabeled sources: folders, list files or 'tfds:name/split'; empty uses the synthetic pool"
    )
    unlabeled_weights: list = _field([], "mixing weight per unlabeled source; empty weights by size")
    synthetic_labeled: int = _field(600, "labeled images in the synthetic world (test split included)")
    synthetic_unlabeled: int = _field(2400, "unlabeled images in the synthetic world")
    synthetic_test_fraction: float = _field(0.5, "of the synthetic world's labeled images, the test split")
    image_size: int = _field(32, "training and evaluation image size (pixels)")
    batch_size: int = _field(32, "labeled (and alignment) batch size")
    unlabeled_ratio: float = _field(2.0, "unlabeled images per labeled image in a distillation batch")


@dataclasses.dataclass
class ModelConfig:
    clip_preset: str = _field(
        "",
        "KerasHub CLIP preset (hub name or local dir); empty: the stand-in CLIP on the synthetic world, else a small random one",
    )
    stand_in_clip_images: int = _field(2000, "scenes the synthetic world's stand-in CLIP learns caption words from")
    stand_in_clip_epochs: int = _field(8, "training epochs of the stand-in CLIP")
    teacher_backbone: str = _field(
        "small_vit",
        "teacher: 'small_vit', 'small_cnn', 'small_mobilenet', a keras.applications name or a KerasHub preset",
    )
    student_backbone: str = _field("small_mobilenet", "student: same choices as teacher_backbone")
    pretrained: bool = _field(False, "load pretrained weights for hub / keras.applications backbones (needs the hub)")
    projection_hidden_dim: int = _field(128, "hidden width of each alignment projector")
    num_bins: int = _field(10, "score bins (10 for AVA's 1..10 votes)")
    dropout: float = _field(0.1, "dropout before the score layer")
    batch_norm_momentum: float = _field(
        0.9,
        "BatchNormalization momentum of the learners' backbones (0 keeps each backbone's own; "
        "keras.applications' 0.999 leaves short runs with stale statistics and constant predictions)",
    )


@dataclasses.dataclass
class TrainConfig:
    align_epochs: int = _field(6, "phase 1 epochs")
    teacher_epochs: int = _field(10, "teacher fine-tuning epochs")
    distill_epochs: int = _field(16, "student epochs (labels-only baseline and distillation)")
    learning_rate: float = _field(2e-3, "Adam learning rate of every phase")
    unlabeled_weight: float = _field(1.0, "weight of the distillation term")
    seed: int = _field(0, "seed of data generation, splits, shuffling and initialisation")
    distribute: bool = _field(
        False, "data-parallel over all local devices / processes (keras_cskd.distribute); batch_size is global"
    )
    mixed_precision: str = _field("", "'' (float32), 'mixed_bfloat16' or 'mixed_float16'")
    xla: str = _field(
        "auto",
        "XLA / jit compilation: 'auto' (the backend's default), 'on', 'off' or 'per_model' "
        "(tensorflow's CPU: XLA for models without depthwise convolutions; elsewhere 'auto')",
    )
    remat: bool = _field(
        False,
        "recompute the transformer blocks of the backbones that train in their backward pass instead of keeping "
        "their activations (less memory, one more forward per block); needs dropout and drop path 0 in those blocks",
    )


@dataclasses.dataclass
class RecipeConfig:
    """The whole recipe's settings: `[data]`, `[model]` and `[train]`.

    The defaults are the built-in demo (a synthetic world, small models).
    `cskd config --example` prints every field with its description.

    Args:
        data: `DataConfig`. Datasets, image and batch sizes.
        model: `ModelConfig`. CLIP preset, backbones, head.
        train: `TrainConfig`. Epochs, learning rate, seed, distribution.

    Example:
    >>> config = RecipeConfig()
    >>> config.train.align_epochs
    6
    >>> RecipeConfig.from_dict({"train": {"align_epochs": 1}}).train.align_epochs
    1
    >>> print(config.to_toml(comments=False).splitlines()[0])
    [data]
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, values, source="config"):
        """Build from nested dicts; unknown sections or fields are errors."""
        values = dict(values)
        sections = {}
        for section in dataclasses.fields(cls):
            given = dict(values.pop(section.name, {}) or {})
            known = {f.name: f for f in dataclasses.fields(section.type)}
            for key, value in given.items():
                if key not in known:
                    raise ConfigError(f"{source}: unknown field [{section.name}] {key}; known: {', '.join(known)}")
                expected = type(known[key].default) if known[key].default is not dataclasses.MISSING else list
                if expected is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
                    raise ConfigError(f"{source}: [{section.name}] {key} must be {expected.__name__}, got {value!r}")
                given[key] = value
            sections[section.name] = section.type(**given)
        if values:
            raise ConfigError(f"{source}: unknown section(s) {', '.join(values)}; known: data, model, train")
        return cls(**sections)

    @classmethod
    def load(cls, path):
        """Read a TOML config file (see `cskd config --example`)."""
        try:
            with open(path, "rb") as file:
                values = tomllib.load(file)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
        return cls.from_dict(values, source=path)

    def to_toml(self, comments=True):
        """The config as TOML, each field with its one-line description."""
        lines = []
        for section in dataclasses.fields(self):
            lines.append(f"[{section.name}]")
            part = getattr(self, section.name)
            for field in dataclasses.fields(part):
                if comments:
                    lines.append(f"# {field.metadata['help']}")
                lines.append(f"{field.name} = {_toml_value(getattr(part, field.name))}")
            lines.append("")
        return "\n".join(lines)

    def validate(self):
        """Raise `ConfigError` (one line) for the first field whose value cannot work.

        Checks every field that some phase would otherwise reject only when it
        reaches it (or not at all), so a bad config fails before any work starts.
        """
        for section, name, ok, need in _RULES:
            value = getattr(getattr(self, section), name)
            if not ok(value):
                raise ConfigError(f"[{section}] {name} must be {need}, got {value!r}")
        weights, sources = self.data.unlabeled_weights, self.data.unlabeled
        if weights and len(weights) != len(sources):
            raise ConfigError(
                f"[data] unlabeled_weights has {len(weights)} value(s) for {len(sources)} unlabeled source(s)"
            )


def _positive(value):
    return value > 0


def _finite_positive(value):
    return math.isfinite(value) and value > 0


# (section, field, check, what it must be): every numeric field of the recipe.
_RULES = (
    ("data", "synthetic_labeled", _positive, "a positive number of images"),
    ("data", "synthetic_unlabeled", _positive, "a positive number of images"),
    ("data", "synthetic_test_fraction", lambda v: 0.0 < v < 1.0, "in (0, 1)"),
    ("data", "image_size", lambda v: v >= 8, "at least 8 (pixels)"),
    ("data", "batch_size", _positive, "a positive number of images"),
    ("data", "unlabeled_ratio", _finite_positive, "a positive number"),
    (
        "data",
        "unlabeled_weights",
        lambda v: all(isinstance(w, (int, float)) and w >= 0 for w in v) and (not v or sum(v) > 0),
        "non-negative numbers, not all 0",
    ),
    ("model", "projection_hidden_dim", _positive, "a positive width"),
    ("model", "num_bins", lambda v: v >= 2, "at least 2 bins"),
    ("model", "dropout", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("model", "batch_norm_momentum", lambda v: 0.0 <= v < 1.0, "in [0, 1) (0 keeps each backbone's own)"),
    ("model", "stand_in_clip_images", _positive, "a positive number of scenes"),
    ("model", "stand_in_clip_epochs", _positive, "a positive number of epochs"),
    ("train", "align_epochs", _positive, "a positive number of epochs"),
    ("train", "teacher_epochs", _positive, "a positive number of epochs"),
    ("train", "distill_epochs", _positive, "a positive number of epochs"),
    ("train", "learning_rate", _finite_positive, "a positive number"),
    ("train", "unlabeled_weight", lambda v: math.isfinite(v) and v >= 0, "a non-negative number"),
    ("train", "seed", lambda v: v >= 0, "a non-negative integer"),
    ("train", "xla", lambda v: v in XLA_CHOICES, "'auto', 'on', 'off' or 'per_model'"),
    ("train", "mixed_precision", lambda v: v in MIXED_PRECISION_CHOICES, "'', 'mixed_bfloat16' or 'mixed_float16'"),
)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)
