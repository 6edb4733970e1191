"""The whole two-phase CSKD run from one config, resumable phase by phase.

Phases, each writing to its own folder under the run's output folder:

1. `align`: `CLIPFeatureAligner` trains the teacher and student learners
   against frozen CLIP on unlabeled images.
2. `teacher`: the aligned teacher backbone + `ScoreHead`, squared EMD on labels.
3. `baseline`: the student backbone without alignment, labels only (the
   reference the report compares against).
4. `distill`: `SemiSupervisedDistiller` trains the aligned student on labeled +
   unlabeled images with the teacher's pseudo-labels.
5. `evaluate`: SRCC, PLCC, accuracy and EMD of each scorer on the test split,
   `metrics.json`, `report.md` and PNG plots.

A finished phase leaves `done.json` and its `.keras` model and is never
recomputed. A phase killed at any moment (SIGKILL included) resumes from its
last completed epoch (`keras_cskd.callbacks.CheckpointEachEpoch`: atomic
checkpoints, the newest two kept) and, since each epoch's data is fixed by
(seed, epoch) (`PassesFollowEpochs`), ends with the weights an uninterrupted
run would have. A non-finite loss stops the phase, keeps the last good
checkpoint and raises `PhaseError`; Ctrl-C saves the current weights before
it exits.

Example:
>>> config = RecipeConfig()  # the built-in demo: synthetic world, small models
>>> config.train.align_epochs
3
>>> run(config, "runs/demo")  # doctest: +SKIP
"""

import dataclasses
import json
import os
import shutil
import tomllib

import keras
import numpy as np

from keras_cskd import backbones
from keras_cskd import data
from keras_cskd import distribute
from keras_cskd import metrics as cskd_metrics
from keras_cskd.callbacks import CheckpointEachEpoch
from keras_cskd.callbacks import PassesFollowEpochs
from keras_cskd.clip import CLIPImageTeacher
from keras_cskd.layers import bin_values_for
from keras_cskd.models import AestheticScorer
from keras_cskd.models import CLIPFeatureAligner
from keras_cskd.models import SemiSupervisedDistiller

PHASES = ("align", "teacher", "baseline", "distill", "evaluate")
# The `cskd` subcommand that runs each phase.
COMMANDS = {"align": "align", "teacher": "train-teacher", "baseline": "distill", "distill": "distill"}


def _field(default, help):
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class DataConfig:
    ava_root: str = _field("", "AVA-format dataset root (AVA.txt + images/); empty generates the synthetic world")
    test_list: str = _field("", "official AVA test list file; empty uses a seeded split")
    unlabeled: list = _field([], "unlabeled sources: folders, list files or 'tfds:name/split'; empty uses the synthetic pool")
    unlabeled_weights: list = _field([], "mixing weight per unlabeled source; empty weights by size")
    synthetic_labeled: int = _field(400, "labeled images in the synthetic world")
    synthetic_unlabeled: int = _field(400, "unlabeled images in the synthetic world")
    image_size: int = _field(64, "training and evaluation image size (pixels)")
    batch_size: int = _field(32, "labeled (and alignment) batch size")
    unlabeled_ratio: float = _field(1.0, "unlabeled images per labeled image in a distillation batch")


@dataclasses.dataclass
class ModelConfig:
    clip_preset: str = _field("", "KerasHub CLIP preset (hub name or local dir); empty builds a small random CLIP")
    teacher_backbone: str = _field("small_vit", "teacher: 'small_vit', 'small_cnn', a keras.applications name or a KerasHub preset")
    student_backbone: str = _field("small_cnn", "student: same choices as teacher_backbone")
    pretrained: bool = _field(False, "load pretrained weights for hub / keras.applications backbones (needs the hub)")
    projection_hidden_dim: int = _field(128, "hidden width of each alignment projector")
    num_bins: int = _field(10, "score bins (10 for AVA's 1..10 votes)")
    dropout: float = _field(0.1, "dropout before the score layer")


@dataclasses.dataclass
class TrainConfig:
    align_epochs: int = _field(3, "phase 1 epochs")
    teacher_epochs: int = _field(5, "teacher fine-tuning epochs")
    distill_epochs: int = _field(5, "student epochs (labels-only baseline and distillation)")
    learning_rate: float = _field(2e-3, "Adam learning rate of every phase")
    unlabeled_weight: float = _field(1.0, "weight of the distillation term")
    seed: int = _field(0, "seed of data generation, splits, shuffling and initialisation")
    distribute: bool = _field(False, "data-parallel over all local devices / processes (keras_cskd.distribute); batch_size is global")
    mixed_precision: str = _field("", "'' (float32), 'mixed_bfloat16' or 'mixed_float16'")
    xla: str = _field("auto", "XLA / jit compilation: 'auto' (the backend's default), 'on' or 'off'")


@dataclasses.dataclass
class RecipeConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, values, source="config"):
        """Build from nested dicts; unknown sections or fields are errors."""
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
                    raise ConfigError(
                        f"{source}: [{section.name}] {key} must be {expected.__name__}, got {value!r}"
                    )
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


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


class ConfigError(ValueError):
    """A config file or field a user must fix."""


class PhaseError(RuntimeError):
    """A phase stopped (non-finite loss) with its last good checkpoint kept."""


# === Models ===


def small_clip(image_size, seed=0):
    """A small random KerasHub CLIP for offline demos (ViT, 2 layers, 64 wide)."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=max(image_size // 8, 1), hidden_dim=64, num_layers=2, num_heads=4,
        intermediate_dim=128, image_shape=(image_size, image_size, 3),
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=1000, embedding_dim=64, hidden_dim=64, num_layers=1, num_heads=4,
        intermediate_dim=128, max_sequence_length=16,
    )
    return keras_hub.models.CLIPBackbone(vision, text, projection_dim=64)


def build_backbone(spec, image_size, pretrained=False):
    """A built-in small architecture ('small_vit', 'small_cnn') or `backbones.get(spec)`."""
    if spec == "small_vit":
        import keras_hub

        vit = keras_hub.models.ViTBackbone(
            image_shape=(image_size, image_size, 3), patch_size=max(image_size // 8, 1),
            num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
        )
        return backbones.get(vit, image_size=image_size, name="small_vit")
    if spec == "small_cnn":
        inputs = keras.Input((image_size, image_size, 3), name="images")
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
        for width in (16, 32, 64):
            x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
            # momentum 0.9: with the default 0.99, the few hundred steps of a small run leave the
            # moving statistics stale and evaluation noisy from seed to seed.
            x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, x, name="small_cnn")
    try:
        return backbones.get(spec, image_size=image_size, load_weights=True if pretrained else None)
    except ValueError as error:
        raise ConfigError(f"{error} (or use 'small_vit' / 'small_cnn')") from None


def clip_teacher(config):
    size = config.data.image_size
    if config.model.clip_preset:
        try:
            return CLIPImageTeacher.from_preset(config.model.clip_preset, image_size=size)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return CLIPImageTeacher.from_backbone(small_clip(size, config.train.seed), image_size=size)


# === Data ===


@dataclasses.dataclass
class Datasets:
    records: data.LabeledRecords
    unlabeled: list
    unlabeled_weights: list | None


def prepare_data(config, out_dir):
    """Records and unlabeled sources: the user's, or the synthetic world in `out_dir/world`."""
    cfg = config.data
    if cfg.ava_root:
        if not os.path.isdir(cfg.ava_root):
            raise ConfigError(f"[data] ava_root is not a folder: {cfg.ava_root}")
        records = data.read_ava(cfg.ava_root, test_list=cfg.test_list or None, seed=config.train.seed)
        unlabeled = list(cfg.unlabeled)
        if not unlabeled:
            raise ConfigError("[data] unlabeled must name at least one source when ava_root is set")
    else:
        world_dir = os.path.join(out_dir, "world")
        if not os.path.exists(os.path.join(world_dir, "world.json")):  # written last
            shutil.rmtree(world_dir, ignore_errors=True)  # a generation that was killed
            data.synthetic.make_world(
                world_dir, num_labeled=cfg.synthetic_labeled, num_unlabeled=cfg.synthetic_unlabeled,
                image_size=cfg.image_size, seed=config.train.seed,
            )
        ava_root = os.path.join(world_dir, "ava")
        test_list = os.path.join(ava_root, "aesthetics_image_lists", "generic_test.jpgl")
        records = data.read_ava(ava_root, test_list=test_list, seed=config.train.seed)
        unlabeled = cfg.unlabeled or [os.path.join(world_dir, "unlabeled")]
    for source in unlabeled:
        if not source.startswith("tfds:") and not os.path.exists(source):
            raise ConfigError(f"[data] unlabeled source not found: {source}")
    return Datasets(records, unlabeled, list(cfg.unlabeled_weights) or None)


# === Phases ===


def _save_atomically(model, path):
    tmp = path[:-len(".keras")] + ".partial.keras"
    model.save(tmp)
    os.replace(tmp, path)


class Phase:
    """One resumable phase: `run(build, fit_kwargs)` or the finished model."""

    def __init__(self, out_dir, name, model_file, log=print, door=None):
        self.name = name
        self.door = door
        self.dir = os.path.join(out_dir, name)
        self.model_path = os.path.join(self.dir, model_file)
        self.done_path = os.path.join(self.dir, "done.json")
        self.log = log

    @property
    def done(self):
        return os.path.exists(self.done_path) and os.path.exists(self.model_path)

    def load(self):
        return keras.saving.load_model(self.model_path)

    def finished(self, may_train):
        """The saved model if the phase is done; None if it may train now."""
        if self.done:
            self.log(f"[{self.name}] already done: {self.model_path}")
            return self.load()
        if not may_train:
            out_dir = os.path.dirname(self.dir)
            raise ConfigError(
                f"phase {self.name!r} has not run in {out_dir}: run 'cskd {COMMANDS[self.name]}' first"
            )
        return None

    def summary(self):
        with open(self.done_path) as file:
            return json.load(file)

    def train(self, model, dataset, epochs, summary_keys=("loss",), callbacks=()):
        """Fit `model` (resuming from a checkpoint), save it, mark the phase done.

        `callbacks` run after the phase's own (checkpoint, CSV and TensorBoard logs).
        A `keras_cskd.data` dataset reads pass *epoch* in each epoch, so a
        resumed phase sees the data an uninterrupted one would.
        """
        os.makedirs(self.dir, exist_ok=True)
        checkpoint = CheckpointEachEpoch(os.path.join(self.dir, "checkpoint"))
        callbacks = [
            PassesFollowEpochs(dataset),
            checkpoint,
            keras.callbacks.CSVLogger(os.path.join(self.dir, "history.csv"), append=True),
            keras.callbacks.TensorBoard(os.path.join(self.dir, "logs"), write_graph=False),
            *callbacks,
        ]
        if self.door is not None:
            dataset = self.door.distribute_dataset(dataset)
        try:
            history = model.fit(dataset, epochs=epochs, callbacks=callbacks, verbose=1)
        except KeyboardInterrupt:
            path = os.path.join(self.dir, "interrupted.weights.h5")
            model.save_weights(path)
            self.log(
                f"\n[{self.name}] interrupted: weights saved to {path}; epochs 1..{checkpoint.completed_epochs} "
                "are checkpointed, run the same command to resume."
            )
            raise
        if checkpoint.non_finite:
            raise PhaseError(
                f"[{self.name}] non-finite loss at {checkpoint.non_finite}; stopped. The last good checkpoint "
                f"(epoch {checkpoint.completed_epochs}) is kept in {checkpoint.backup_dir}. Lower the learning "
                "rate and run the same command to resume from it."
            )
        _save_atomically(model, self.model_path)
        last = {k: float(v[-1]) for k, v in history.history.items() if v}
        summary = {"phase": self.name, "epochs": epochs, "final": last}
        with open(self.done_path, "w") as file:
            json.dump(summary, file, indent=1)
        shutil.rmtree(checkpoint.backup_dir, ignore_errors=True)
        shown = ", ".join(f"{k} {last[k]:.4f}" for k in summary_keys if k in last)
        self.log(f"[{self.name}] done in {epochs} epochs: {shown}. Saved {self.model_path}")
        return model


def _optimizer(config):
    return keras.optimizers.Adam(config.train.learning_rate)


def _labeled(config, datasets, split, training):
    return data.labeled_dataset(
        datasets.records, split, image_size=config.data.image_size, batch_size=config.data.batch_size,
        training=training, seed=config.train.seed,
    )


def run_align(config, out_dir, datasets, log=print, may_train=True, door=None):
    phase = Phase(out_dir, "align", "aligner.keras", log, door)
    done = phase.finished(may_train)
    if done is not None:
        return done
    keras.utils.set_random_seed(config.train.seed)
    size = config.data.image_size
    aligner = CLIPFeatureAligner(
        clip_teacher(config),
        {
            "teacher": build_backbone(config.model.teacher_backbone, size, config.model.pretrained),
            "student": build_backbone(config.model.student_backbone, size, config.model.pretrained),
        },
        projection_hidden_dim=config.model.projection_hidden_dim,
    )
    aligner.compile(optimizer=_optimizer(config))
    dataset = data.unlabeled_dataset(
        datasets.unlabeled, weights=datasets.unlabeled_weights, image_size=size,
        batch_size=config.data.batch_size, training=True, seed=config.train.seed,
    )
    return phase.train(aligner, dataset, config.train.align_epochs, ("teacher_loss", "student_loss"))


def _scorer(config, backbone, name):
    scorer = AestheticScorer(backbone, num_bins=config.model.num_bins, dropout=config.model.dropout, name=name)
    scorer.compile(optimizer=_optimizer(config))
    return scorer


def run_teacher(config, out_dir, datasets, aligner, log=print, may_train=True, door=None):
    phase = Phase(out_dir, "teacher", "teacher.keras", log, door)
    done = phase.finished(may_train)
    if done is not None:
        return done
    keras.utils.set_random_seed(config.train.seed)
    teacher = _scorer(config, aligner.learners["teacher"].backbone, "teacher")
    dataset = _labeled(config, datasets, "train", True)
    return phase.train(teacher, dataset, config.train.teacher_epochs, ("loss", "srcc", "plcc"))


def run_baseline(config, out_dir, datasets, log=print, may_train=True, door=None):
    phase = Phase(out_dir, "baseline", "student_labels_only.keras", log, door)
    done = phase.finished(may_train)
    if done is not None:
        return done
    keras.utils.set_random_seed(config.train.seed)
    backbone = build_backbone(config.model.student_backbone, config.data.image_size, config.model.pretrained)
    student = _scorer(config, backbone, "student_labels_only")
    dataset = _labeled(config, datasets, "train", True)
    return phase.train(student, dataset, config.train.distill_epochs, ("loss", "srcc", "plcc"))


def run_distill(config, out_dir, datasets, aligner, teacher, log=print, may_train=True, door=None):
    phase = Phase(out_dir, "distill", "distiller.keras", log, door)
    done = phase.finished(may_train)
    if done is not None:
        return done
    keras.utils.set_random_seed(config.train.seed)
    student = AestheticScorer(
        aligner.learners["student"].backbone, num_bins=config.model.num_bins,
        dropout=config.model.dropout, name="student",
    )
    distiller = SemiSupervisedDistiller(teacher, student, unlabeled_weight=config.train.unlabeled_weight)
    distiller.compile(optimizer=_optimizer(config))
    dataset = data.semi_supervised_dataset(
        datasets.records, datasets.unlabeled, "train", image_size=config.data.image_size,
        batch_size=config.data.batch_size, unlabeled_ratio=config.data.unlabeled_ratio,
        unlabeled_weights=datasets.unlabeled_weights, seed=config.train.seed,
    )
    distiller = phase.train(
        distiller, dataset, config.train.distill_epochs, ("supervised_loss", "distillation_loss", "srcc")
    )
    student_path = os.path.join(phase.dir, "student.keras")
    if not os.path.exists(student_path):
        _save_atomically(distiller.student, student_path)
    return distiller


def predict_split(model, config, datasets, split="test"):
    """(true distributions, predicted distributions) over a split, in step."""
    true, pred = [], []
    for images, distributions in _labeled(config, datasets, split, False):
        pred.append(np.asarray(model.predict_on_batch(images.numpy())))
        true.append(distributions.numpy())
    if not true:
        raise ConfigError(f"the {split!r} split produced no images")
    return np.concatenate(true), np.concatenate(pred)


def score_metrics(true, pred, num_bins=10):
    """SRCC, PLCC, threshold accuracy and EMD of predicted distributions."""
    result = {}
    for metric in (cskd_metrics.SRCC(), cskd_metrics.PLCC(), cskd_metrics.ThresholdAccuracy(), cskd_metrics.EMD()):
        metric.update_state(true, pred)
        result[metric.name] = float(metric.result())
    return result


def run_evaluate(config, out_dir, datasets, scorers, log=print):
    """Metrics of each scorer on the test split, `metrics.json`, report and plots."""
    from keras_cskd import report

    results, predictions = {}, {}
    for name, scorer in scorers.items():
        true, pred = predict_split(scorer, config, datasets)
        results[name] = score_metrics(true, pred, config.model.num_bins)
        predictions[name] = (true, pred)
    eval_dir = os.path.join(out_dir, "evaluate")
    os.makedirs(eval_dir, exist_ok=True)
    with open(os.path.join(eval_dir, "metrics.json"), "w") as file:
        json.dump(results, file, indent=1)
    bins = np.asarray(bin_values_for(config.model.num_bins))
    report.write(out_dir, results, {n: (t @ bins, p @ bins) for n, (t, p) in predictions.items()}, PHASES[:-1])
    log(report.table(results))
    return results


def write_run_info(config, out_dir):
    import keras_hub

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "config.toml")
    if os.path.exists(path):
        if RecipeConfig.load(path) != config:
            raise ConfigError(
                f"{out_dir} holds a run with another config ({path}); resume with that config or use a new output folder"
            )
    else:
        with open(path, "w") as file:
            file.write(config.to_toml())
    versions = {
        "keras": keras.__version__, "backend": keras.backend.backend(), "keras_hub": keras_hub.__version__,
        "keras_cskd": __import__("keras_cskd").__version__,
    }
    with open(os.path.join(out_dir, "versions.json"), "w") as file:
        json.dump(versions, file, indent=1)


def run(config, out_dir, phases=PHASES, log=print):
    """Run (or resume) the recipe's phases into `out_dir`; returns test metrics."""
    if config.train.xla not in ("auto", "on", "off"):
        raise ConfigError(f"[train] xla must be 'auto', 'on' or 'off', got {config.train.xla!r}")
    if config.train.mixed_precision not in ("", "mixed_bfloat16", "mixed_float16"):
        raise ConfigError(
            f"[train] mixed_precision must be '', 'mixed_bfloat16' or 'mixed_float16', got {config.train.mixed_precision!r}"
        )
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ConfigError(f"unknown phase(s) {', '.join(sorted(unknown))}; phases: {', '.join(PHASES)}")
    door = distribute.data_parallel(
        enabled=config.train.distribute,
        mixed_precision=config.train.mixed_precision or None,
        jit_compile={"auto": None, "on": True, "off": False}[config.train.xla],
    )
    if not door.is_chief:  # Other processes keep their files apart from the chief's.
        out_dir = os.path.join(out_dir, f"process_{door.process_index}")
    write_run_info(config, out_dir)
    datasets = prepare_data(config, out_dir)
    with door.scope():
        return _run_phases(config, out_dir, datasets, phases, log, door)


def _run_phases(config, out_dir, datasets, phases, log, door):
    aligner = teacher = None
    if {"align", "teacher", "distill"} & set(phases):
        aligner = run_align(config, out_dir, datasets, log, may_train="align" in phases, door=door)
    if {"teacher", "distill"} & set(phases):
        teacher = run_teacher(config, out_dir, datasets, aligner, log, may_train="teacher" in phases, door=door)
    if "baseline" in phases:
        run_baseline(config, out_dir, datasets, log, door=door)
    if "distill" in phases:
        run_distill(config, out_dir, datasets, aligner, teacher, log, door=door)
    if "evaluate" not in phases:
        return None
    scorers = {}
    for name, phase_name, file in (
        ("teacher", "teacher", "teacher.keras"),
        ("student (labels only)", "baseline", "student_labels_only.keras"),
        ("student (CSKD)", "distill", "student.keras"),
    ):
        path = os.path.join(out_dir, phase_name, file)
        if os.path.exists(path):
            scorers[name] = keras.saving.load_model(path)
    if not scorers:
        raise ConfigError(f"nothing to evaluate in {out_dir}: run the training phases first")
    return run_evaluate(config, out_dir, datasets, scorers, log)
