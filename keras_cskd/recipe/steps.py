"""The recipe's run: its data, one function per phase of `PHASE_TABLE`, evaluation.

Every phase starts with `Phase.run` (load it if done, else seed and train) and
compiles its model with `_compile`, the one place that reads `[train]
learning_rate` and `[train] xla` and hands the model to the distribution
strategy.
"""

import dataclasses
import json
import os
import shutil

import keras
import numpy as np

from keras_cskd import backbones
from keras_cskd import data
from keras_cskd import distribute
from keras_cskd import metrics as cskd_metrics
from keras_cskd import report
from keras_cskd.layers import bin_values_for
from keras_cskd.models import AestheticScorer
from keras_cskd.models import CLIPFeatureAligner
from keras_cskd.models import SemiSupervisedDistiller
from keras_cskd.recipe.config import ConfigError
from keras_cskd.recipe.config import RecipeConfig
from keras_cskd.recipe.demo_models import build_backbone
from keras_cskd.recipe.demo_models import clip_teacher
from keras_cskd.recipe.phase import PHASE_TABLE
from keras_cskd.recipe.phase import PHASES
from keras_cskd.recipe.phase import Phase
from keras_cskd.recipe.phase import phase_spec
from keras_cskd.recipe.phase import save_atomically

# `[train] xla` -> `compile(jit_compile=...)`; "auto" is Keras's own default.
_JIT_COMPILE = {"auto": "auto", "on": True, "off": False}


def _jit_compile(model, xla):
    """`compile(jit_compile=...)` of `model` for `[train] xla`.

    "per_model": on tensorflow without an accelerator, XLA for a model without
    depthwise or grouped convolutions (a ViT or Swin teacher: faster) and not for
    one with them (MobileNets: XLA's CPU grouped convolution is many times slower,
    docs/performance.md); elsewhere Keras's default, as "auto".
    """
    if xla != "per_model":
        return _JIT_COMPILE[xla]
    if keras.backend.backend() != "tensorflow" or not keras.distribution.list_devices()[0].startswith("cpu"):
        return "auto"
    return not any(_is_grouped_convolution(layer) for layer in model._flatten_layers(recursive=True))


def _is_grouped_convolution(layer):
    """Depthwise, separable or grouped: what XLA runs as a grouped convolution."""
    if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
        return True
    return isinstance(layer, keras.layers.Conv2D) and layer.groups > 1


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
                world_dir,
                num_labeled=cfg.synthetic_labeled,
                num_unlabeled=cfg.synthetic_unlabeled,
                image_size=cfg.image_size,
                seed=config.train.seed,
                test_fraction=cfg.synthetic_test_fraction,
            )
        ava_root = os.path.join(world_dir, "ava")
        test_list = os.path.join(ava_root, "aesthetics_image_lists", "generic_test.jpgl")
        records = data.read_ava(ava_root, test_list=test_list, seed=config.train.seed)
        unlabeled = cfg.unlabeled or [os.path.join(world_dir, "unlabeled")]
    for source in unlabeled:
        if not source.startswith("tfds:") and not os.path.exists(source):
            raise ConfigError(f"[data] unlabeled source not found: {source}")
    return Datasets(records, unlabeled, list(cfg.unlabeled_weights) or None)


def _labeled(config, datasets, split, training, passes=None, shard=None):
    return data.labeled_dataset(
        datasets.records,
        split,
        image_size=config.data.image_size,
        batch_size=config.data.batch_size,
        training=training,
        passes=passes or data.PassClock(config.train.seed),
        shard=shard,
    )


# === Phases ===


def _compile(model, config, strategy):
    """Compile a recipe model: Adam at `[train] learning_rate`, jit from `[train] xla`, then `strategy.prepare`."""
    model.compile(
        optimizer=keras.optimizers.Adam(config.train.learning_rate),
        jit_compile=_jit_compile(model, config.train.xla),
    )
    strategy.prepare(model)
    return model


@dataclasses.dataclass
class _Run:
    """What every phase of one run reads."""

    config: RecipeConfig
    out_dir: str
    datasets: Datasets
    log: object
    strategy: distribute.DataParallel

    def phase(self, name, train, *inputs, may_train=True):
        """Phase `name`'s model: loaded if done, else `train(self, phase, *inputs)`."""
        phase = Phase(self.out_dir, name, self.log, self.strategy)
        return phase.run(lambda phase: train(self, phase, *inputs), self.config.train.seed, may_train)

    def compile(self, model):
        return _compile(model, self.config, self.strategy)


def _learner_backbone(config, spec):
    model = config.model
    return _trained(config, build_backbone(spec, config.data.image_size, model.pretrained, model.batch_norm_momentum))


def _trained(config, backbone):
    """`backbone` as a phase trains it: its transformer blocks rematerialized if `[train] remat`."""
    if not config.train.remat:
        return backbone
    try:
        return backbones.rematerialize(backbone)
    except ValueError as error:
        raise ConfigError(f"[train] remat: {error}") from None


def _align(run, phase):
    config = run.config
    size = config.data.image_size
    clip = clip_teacher(config, run.out_dir)
    # The learners start from the same weights whether the stand-in CLIP was trained just now or loaded.
    keras.utils.set_random_seed(config.train.seed)
    aligner = CLIPFeatureAligner(
        clip,
        {
            "teacher": _learner_backbone(config, config.model.teacher_backbone),
            "student": _learner_backbone(config, config.model.student_backbone),
        },
        projection_hidden_dim=config.model.projection_hidden_dim,
    )
    run.compile(aligner)
    clock = data.PassClock(config.train.seed)
    # The learners see the pipeline's training crops; CLIP sees its own view of each whole image.
    dataset = data.unlabeled_dataset(
        run.datasets.unlabeled,
        weights=run.datasets.unlabeled_weights,
        image_size=size,
        batch_size=config.data.batch_size,
        training=True,
        passes=clock,
        clip_view_size=clip.view_size,
        shard=run.strategy.shard,
    )
    return phase.train(aligner, dataset, config.train.align_epochs, ("teacher_loss", "student_loss"), passes=clock)


def _scorer(config, backbone, name):
    return AestheticScorer(backbone, num_bins=config.model.num_bins, dropout=config.model.dropout, name=name)


def _teacher(run, phase, aligner):
    backbone = _trained(run.config, aligner.learners["teacher"].backbone)
    teacher = run.compile(_scorer(run.config, backbone, "teacher"))
    clock = data.PassClock(run.config.train.seed)
    dataset = _labeled(run.config, run.datasets, "train", True, passes=clock, shard=run.strategy.shard)
    return phase.train(teacher, dataset, run.config.train.teacher_epochs, ("loss", "srcc", "plcc"), passes=clock)


def _baseline(run, phase):
    config = run.config
    backbone = _learner_backbone(config, config.model.student_backbone)
    student = run.compile(_scorer(config, backbone, "student_labels_only"))
    clock = data.PassClock(config.train.seed)
    dataset = _labeled(config, run.datasets, "train", True, passes=clock, shard=run.strategy.shard)
    return phase.train(student, dataset, config.train.distill_epochs, ("loss", "srcc", "plcc"), passes=clock)


def _distill(run, phase, aligner, teacher):
    config = run.config
    student = _scorer(config, _trained(config, aligner.learners["student"].backbone), "student")
    distiller = SemiSupervisedDistiller(teacher, student, unlabeled_weight=config.train.unlabeled_weight)
    run.compile(distiller)
    clock = data.PassClock(config.train.seed)
    dataset = data.semi_supervised_dataset(
        run.datasets.records,
        run.datasets.unlabeled,
        "train",
        image_size=config.data.image_size,
        batch_size=config.data.batch_size,
        unlabeled_ratio=config.data.unlabeled_ratio,
        unlabeled_weights=run.datasets.unlabeled_weights,
        passes=clock,
        shard=run.strategy.shard,
    )
    distiller = phase.train(
        distiller,
        dataset,
        config.train.distill_epochs,
        ("supervised_loss", "distillation_loss", "srcc"),
        passes=clock,
    )
    student_path = os.path.join(phase.dir, phase.spec.scorer_file)
    if not os.path.exists(student_path):
        save_atomically(distiller.student, student_path)
    return distiller


# === Evaluation ===


def predict_split(model, config, datasets, split="test"):
    """(true distributions, predicted distributions) over a split, in step."""
    true, pred = [], []
    batch_size = config.data.batch_size
    for images, distributions in _labeled(config, datasets, split, False):
        images = images.numpy()
        count = len(images)
        if count < batch_size:  # pad the last batch: one traced shape, no retracing (inference mode, rows independent)
            images = np.concatenate([images, np.repeat(images[-1:], batch_size - count, axis=0)])
        pred.append(np.asarray(model.predict_on_batch(images))[:count])
        true.append(distributions.numpy())
    if not true:
        raise ConfigError(f"the {split!r} split produced no images")
    return np.concatenate(true), np.concatenate(pred)


def score_metrics(true, pred, num_bins=10):
    """SRCC, PLCC, threshold accuracy and EMD of predicted distributions.

    Correlations of constant predicted scores are `report.CONSTANT_PREDICTIONS`
    ("n/a (constant predictions)"), not 0.
    """
    result = {}
    for metric in (cskd_metrics.SRCC(), cskd_metrics.PLCC(), cskd_metrics.ThresholdAccuracy(), cskd_metrics.EMD()):
        metric.update_state(true, pred)
        result[metric.name] = float(metric.result())
    if report.is_constant(pred @ np.asarray(bin_values_for(num_bins))):
        result["srcc"] = result["plcc"] = report.CONSTANT_PREDICTIONS
    return result


def load_scorers(out_dir):
    """`{report name: scorer}` of every scorer file of `PHASE_TABLE` found in `out_dir`."""
    scorers = {}
    for spec in PHASE_TABLE:
        if spec.scorer_file:
            path = os.path.join(out_dir, spec.folder, spec.scorer_file)
            if os.path.exists(path):
                scorers[spec.report_name] = keras.saving.load_model(path)
    return scorers


def run_evaluate(config, out_dir, datasets, scorers, log=print):
    """Metrics of each scorer on the test split, `metrics.json`, report and plots."""
    results, predictions = {}, {}
    bins = np.asarray(bin_values_for(config.model.num_bins))
    for name, scorer in scorers.items():
        true, pred = predict_split(scorer, config, datasets)
        results[name] = score_metrics(true, pred, config.model.num_bins)
        predictions[name] = (true @ bins, pred @ bins)
        if results[name]["srcc"] == report.CONSTANT_PREDICTIONS:
            log(f"warning: {name} predicts the same score ({predictions[name][1][0]:.3f}) for every test image")
    notes = []
    baseline, cskd = phase_spec("baseline").report_name, phase_spec("distill").report_name
    if baseline in predictions and cskd in predictions:
        true = predictions[baseline][0]
        diff, low, high = report.bootstrap_srcc_difference(true, predictions[baseline][1], predictions[cskd][1])
        gain = {"srcc_difference": diff, "ci95": [low, high], "test_images": int(len(true))}
        results["cskd_gain_over_labels_only"] = gain
        notes.append(
            f"{cskd} - {baseline}: SRCC {diff:+.3f} (95% bootstrap interval over the {len(true)} test images "
            f"{low:+.3f} .. {high:+.3f})"
        )
    eval_dir = os.path.join(out_dir, phase_spec("evaluate").folder)
    os.makedirs(eval_dir, exist_ok=True)
    with open(os.path.join(eval_dir, "metrics.json"), "w") as file:
        json.dump(results, file, indent=1)
    trained = [spec.folder for spec in PHASE_TABLE if spec.model_file]
    scores = {n: v for n, v in results.items() if n in predictions}
    report.write(out_dir, scores, predictions, trained, notes)
    log(report.table(scores))
    for note in notes:
        log(note)
    return results


# === Run ===


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
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "keras_hub": keras_hub.__version__,
        "keras_cskd": __import__("keras_cskd").__version__,
    }
    with open(os.path.join(out_dir, "versions.json"), "w") as file:
        json.dump(versions, file, indent=1)


def run(config, out_dir, phases=PHASES, log=print):
    """Run (or resume) the recipe's phases into `out_dir`; returns test metrics."""
    config.validate()
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ConfigError(f"unknown phase(s) {', '.join(sorted(unknown))}; phases: {', '.join(PHASES)}")
    strategy = distribute.data_parallel(
        enabled=config.train.distribute, mixed_precision=config.train.mixed_precision or None
    )
    if not strategy.is_chief:  # Other processes keep their files apart from the chief's.
        out_dir = os.path.join(out_dir, f"process_{strategy.process_index}")
    write_run_info(config, out_dir)
    datasets = prepare_data(config, out_dir)
    with strategy.scope():
        return _run_phases(_Run(config, out_dir, datasets, log, strategy), set(phases))


def _run_phases(run, phases):
    aligner = teacher = None
    if {"align", "teacher", "distill"} & phases:
        aligner = run.phase("align", _align, may_train="align" in phases)
    if {"teacher", "distill"} & phases:
        teacher = run.phase("teacher", _teacher, aligner, may_train="teacher" in phases)
    if "baseline" in phases:
        run.phase("baseline", _baseline)
    if "distill" in phases:
        run.phase("distill", _distill, aligner, teacher)
    if "evaluate" not in phases:
        return None
    scorers = load_scorers(run.out_dir)
    if not scorers:
        raise ConfigError(f"nothing to evaluate in {run.out_dir}: run the training phases first")
    return run_evaluate(run.config, run.out_dir, run.datasets, scorers, run.log)
