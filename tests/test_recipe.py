import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_cskd import cli
from keras_cskd import data
from keras_cskd import recipe
from keras_cskd.models import AestheticScorer
from keras_cskd.models import SemiSupervisedDistiller
from keras_cskd.recipe import demo_models
from keras_cskd.recipe import steps
from tests import tiny


def tiny_config(**train):
    config = recipe.RecipeConfig()
    config.data.synthetic_labeled = 48
    config.data.synthetic_unlabeled = 32
    config.data.image_size = 32
    config.data.synthetic_test_fraction = 0.25
    config.model.stand_in_clip_images = 64
    config.model.stand_in_clip_epochs = 1
    config.data.batch_size = 8
    config.model.projection_hidden_dim = 16
    config.model.student_backbone = "small_cnn"  # cheaper to compile than the default small_mobilenet
    config.train.align_epochs = 1
    config.train.teacher_epochs = 1
    config.train.distill_epochs = 1
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """`tiny_config`'s synthetic world and trained stand-in CLIP, made once by the recipe's own steps."""
    out = str(tmp_path_factory.mktemp("prepared"))
    steps.prepare_data(tiny_config(), out)
    demo_models.clip_teacher(tiny_config(), out)  # trains it (~10 s): once, not once a run
    return os.path.join(out, "world")


def run_dir_with(world, path):
    """A new run folder under `path` that already holds `world`, as a rerun of the demo finds it."""
    shutil.copytree(world, path / "run" / "world")
    return str(path / "run")


def test_config_round_trips_and_rejects_bad_fields(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(recipe.RecipeConfig().to_toml())
    assert recipe.RecipeConfig.load(str(path)) == recipe.RecipeConfig()
    path.write_text("[train]\nalign_epoch = 3\n")
    with pytest.raises(recipe.ConfigError, match=r"unknown field \[train\] align_epoch"):
        recipe.RecipeConfig.load(str(path))
    path.write_text("[data]\nimage_size = 'big'\n")
    with pytest.raises(recipe.ConfigError, match=r"\[data\] image_size must be int"):
        recipe.RecipeConfig.load(str(path))
    path.write_text("[data\n")
    with pytest.raises(recipe.ConfigError, match="not valid TOML"):
        recipe.RecipeConfig.load(str(path))


@pytest.mark.parametrize("name", ["paper.toml", "cpu_small.toml"])
def test_example_configs_parse(name):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = recipe.RecipeConfig.load(os.path.join(root, "examples", name))
    assert config.train.align_epochs >= 1


def test_whole_recipe_writes_every_artifact_and_skips_finished_phases(tmp_path, world):
    out = run_dir_with(world, tmp_path)
    stand_in_clip = os.path.join(out, "world", "stand_in_clip.keras")
    trained_at = os.stat(stand_in_clip).st_mtime_ns
    results = recipe.run(tiny_config(), out, log=lambda *_: None)
    assert os.stat(stand_in_clip).st_mtime_ns == trained_at  # the world in the run folder is reused
    gain = results.pop("cskd_gain_over_labels_only")
    assert gain["ci95"][0] <= gain["srcc_difference"] <= gain["ci95"][1]
    assert gain["test_images"] == 12
    assert set(results) == {"teacher", "student (labels only)", "student (CSKD)"}
    for values in results.values():
        assert set(values) == {"srcc", "plcc", "accuracy", "emd"}
    results["cskd_gain_over_labels_only"] = gain
    for phase, model in [
        ("align", "aligner"),
        ("teacher", "teacher"),
        ("baseline", "student_labels_only"),
        ("distill", "student"),
    ]:
        assert os.path.exists(os.path.join(out, phase, f"{model}.keras"))
        assert os.path.exists(os.path.join(out, phase, "history.csv"))
        assert os.listdir(os.path.join(out, phase, "logs"))  # TensorBoard
    assert json.load(open(os.path.join(out, "evaluate", "metrics.json"))) == results
    assert json.load(open(os.path.join(out, "versions.json")))["backend"] == keras.backend.backend()
    report_text = open(os.path.join(out, "report.md")).read()
    assert "| student (CSKD) |" in report_text and "95% bootstrap interval" in report_text
    for png in ("scatter.png", "score_histogram.png", "align_curves.png", "distill_curves.png"):
        assert open(os.path.join(out, "plots", png), "rb").read(4) == b"\x89PNG"
    student = keras.saving.load_model(os.path.join(out, "distill", "student.keras"))
    assert isinstance(student, AestheticScorer)

    messages = []
    training_phases = [name for name in recipe.PHASES if name != "evaluate"]  # evaluating again: tested above
    recipe.run(tiny_config(), out, phases=training_phases, log=messages.append)
    assert sum("already done" in m for m in messages) == 4
    with pytest.raises(recipe.ConfigError, match="another config"):
        recipe.run(tiny_config(learning_rate=0.5), out)


def test_phase_commands_need_the_phase_before(tmp_path, capsys):
    assert cli.main(["train-teacher", "--out", str(tmp_path / "empty")]) == 1
    error = capsys.readouterr().err
    assert "phase 'align' has not run" in error
    assert "run 'cskd align' first" in error


def test_phase_table_drives_cli_and_evaluation():
    commands = recipe.phase_commands()
    assert commands == {
        "align": (("align",), "phase 1: align teacher and student learners to CLIP"),
        "train-teacher": (("teacher",), "phase 2a: fine-tune the aligned teacher on labels"),
        "distill": (("baseline", "distill"), "phase 2b: labels-only student, then the distilled student"),
        "evaluate": (("evaluate",), "test metrics, report.md and plots of the trained scorers"),
    }
    choices = cli.build_parser()._subparsers._group_actions[0].choices
    assert set(commands) <= set(choices)
    assert recipe.PHASES == tuple(spec.name for spec in recipe.PHASE_TABLE)
    scorers = {spec.report_name: spec.scorer_file for spec in recipe.PHASE_TABLE if spec.scorer_file}
    assert scorers == {
        "teacher": "teacher.keras",
        "student (labels only)": "student_labels_only.keras",
        "student (CSKD)": "student.keras",
    }


@pytest.mark.parametrize("xla", ["auto", "on", "off"])
def test_compile_takes_jit_from_config_and_prepares_for_the_strategy(xla):
    from keras_cskd import distribute
    from keras_cskd.recipe import steps

    prepared = []

    class Strategy:
        def prepare(self, model):
            prepared.append(model)
            return model

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    steps._compile(model, tiny_config(xla=xla), Strategy())
    assert prepared == [model]
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(tiny_config().train.learning_rate)
    default = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    default.compile(optimizer="adam")
    assert model.jit_compile == {"auto": default.jit_compile, "on": True, "off": False}[xla]
    steps._compile(model, tiny_config(xla=xla), distribute.data_parallel(enabled=False))  # the real one


def test_per_model_xla_compiles_models_without_depthwise_convolutions_on_tensorflows_cpu():
    from keras_cskd import distribute
    from keras_cskd.recipe import steps

    def compiled(*layers):
        model = keras.Sequential([keras.Input((8, 8, 4)), *layers, keras.layers.GlobalAveragePooling2D()])
        return steps._compile(model, tiny_config(xla="per_model"), distribute.data_parallel(enabled=False))

    nested = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.DepthwiseConv2D(3)])
    plain = compiled(keras.layers.Conv2D(4, 3), keras.layers.GroupNormalization(2))
    with_depthwise = [compiled(nested), compiled(keras.layers.Conv2D(4, 3, groups=4))]
    default = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    default.compile(optimizer="adam")
    if keras.backend.backend() == "tensorflow" and keras.distribution.list_devices()[0].startswith("cpu"):
        assert plain.jit_compile is True
        assert [model.jit_compile for model in with_depthwise] == [False, False]
    else:
        assert [m.jit_compile for m in [plain, *with_depthwise]] == [default.jit_compile] * 3


def test_remat_rematerializes_the_backbones_that_train_and_names_the_field_when_it_cannot():
    from keras_cskd import backbones
    from keras_cskd.recipe import steps

    learner = steps._learner_backbone(tiny_config(remat=True), "small_vit")
    assert tiny.recomputed_layers(learner) == ["transformer_block_1", "transformer_block_2"]
    assert steps._trained(tiny_config(), learner) is learner
    with pytest.raises(recipe.ConfigError, match=r"^\[train\] remat: .*drop_path.*draws random numbers"):
        steps._trained(tiny_config(remat=True), backbones.get(tiny.swin_backbone(drop_path=0.1)))


def test_cli_main_prints_one_line_for_any_subcommand_error(monkeypatch, capsys):
    import argparse

    def register_failing(subparsers):
        def fail(args):
            if args.usage:
                raise argparse.ArgumentError(None, "give a thing")
            raise FileNotFoundError("no such thing: x")

        parser = subparsers.add_parser("fail")
        parser.add_argument("--usage", action="store_true")
        parser.set_defaults(func=fail)

    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + (register_failing,))
    assert cli.main(["fail"]) == 1
    assert capsys.readouterr().err == "cskd fail: error: no such thing: x\n"
    assert cli.main(["fail", "--usage"]) == 2
    assert capsys.readouterr().err == "cskd fail: error: give a thing\n"


def test_cskd_script_prints_only_its_own_lines_unless_verbose(tmp_path):
    """The installed `cskd` script: no native start-up lines on stderr, the error in one line."""
    script = os.path.join(os.path.dirname(sys.executable), "cskd")
    missing = str(tmp_path / "missing.keras")
    done = subprocess.run([script, "predict", missing, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr == f"cskd predict: error: model not found: {missing}\n"
    parser = cli.build_parser()  # --verbose goes before or after the subcommand
    assert parser.parse_args(["--verbose", "predict", missing, "x"]).verbose
    assert parser.parse_args(["predict", missing, "x", "--verbose"]).verbose
    assert not parser.parse_args(["predict", missing, "x"]).verbose


def test_distribute_flag_goes_through_the_distribution_strategy(tmp_path):
    # In a subprocess: the strategy sets process-wide state (JAX's distribution, TF's strategy).
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config().to_toml())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_cskd.cli",
            "evaluate",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--distribute",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "nothing to evaluate" in result.stderr
    assert "distribute = true" in (tmp_path / "run" / "config.toml").read_text()


class Poison(keras.layers.Layer):
    """Multiplies by NaN once `poisoned` is set (by a callback after epoch 1)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.poisoned = self.add_weight(shape=(), initializer="zeros", trainable=False, name="poisoned")

    def call(self, x):
        return x * keras.ops.where(self.poisoned > 0, float("nan"), 1.0)


class PoisonAfterFirstEpoch(keras.callbacks.Callback):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def on_epoch_end(self, epoch, logs=None):
        self.layer.poisoned.assign(1.0)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    poison = Poison()
    backbone = keras.Sequential([tiny.conv_backbone(), poison])
    model = AestheticScorer(backbone)
    model.compile()
    x = tiny.images(8)
    dataset = (x, tiny.learnable_scores(x))
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(dataset).batch(4)
    phase = recipe.Phase(str(tmp_path), "teacher", log=lambda *_: None)
    with pytest.raises(recipe.PhaseError, match=r"non-finite loss at batch 1 of epoch 2.*\(epoch 1\)"):
        phase.train(model, dataset, epochs=3, callbacks=[PoisonAfterFirstEpoch(poison)])
    checkpoints = sorted(os.listdir(tmp_path / "teacher" / "checkpoint"))
    assert checkpoints == ["epoch-00001"]
    assert json.load(open(tmp_path / "teacher" / "checkpoint" / "epoch-00001" / "state.json")) == {"epoch": 1}
    assert not phase.done
    restored = AestheticScorer(keras.Sequential([tiny.conv_backbone(), Poison()]))
    restored.compile()
    restored.load_weights(str(tmp_path / "teacher" / "checkpoint" / "epoch-00001" / "model.weights.h5"))
    weights = restored.get_weights()
    assert all(np.all(np.isfinite(w)) for w in weights)
    assert any(np.any(w != 0) for w in weights)


KILL_TARGET = """
import sys
from keras_cskd import recipe
from tests.test_recipe import killable_config
recipe.run(killable_config(), sys.argv[1], phases=("align",))
"""


def killable_config():
    """The align phase alone, 2 epochs, two small CNN learners (cheap to compile)."""
    config = tiny_config(align_epochs=2)
    config.model.teacher_backbone = "small_cnn"
    return config


# The stated resume tolerance: float rounding only (a resume that reads other data or loses a
# seed state differs by 1e-3..1e-2 after one epoch). tensorflow and torch came out bit-identical;
# jax (XLA on the CPU) differed between processes by up to 6e-7 in single elements.
RESUME_RTOL, RESUME_ATOL = 1e-4, 1e-5


def test_sigkill_mid_phase_resumes_from_last_completed_epoch(tmp_path, world):
    out = run_dir_with(world, tmp_path)
    first_checkpoint = os.path.join(out, "align", "checkpoint", "epoch-00001")  # renamed into place when complete
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_TARGET, out], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 400
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(first_checkpoint):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not os.path.exists(os.path.join(out, "align", "done.json"))

    history = os.path.join(out, "align", "history.csv")
    rows_before = len(open(history).read().split()) - 1 if os.path.exists(history) else 0
    recipe.run(killable_config(), out, phases=("align",), log=lambda *_: None)
    epochs = [int(row.split(",")[0]) for row in open(history).read().split()[1:]]
    resumed = epochs[rows_before:]
    # The resumed run starts after the last checkpointed epoch (never at 0) and ends at 2.
    assert resumed == [1]
    assert json.load(open(os.path.join(out, "align", "done.json")))["epochs"] == 2
    assert not os.path.exists(os.path.join(out, "align", "checkpoint"))

    # The same weights as a run that was never killed: each epoch's data is fixed by (seed, epoch).
    uninterrupted = run_dir_with(world, tmp_path / "uninterrupted")
    recipe.run(killable_config(), uninterrupted, phases=("align",), log=lambda *_: None)
    resumed_model = keras.saving.load_model(os.path.join(out, "align", "aligner.keras"))
    whole_model = keras.saving.load_model(os.path.join(uninterrupted, "align", "aligner.keras"))
    for a, b in zip(tiny.weights_of(resumed_model), tiny.weights_of(whole_model), strict=True):
        np.testing.assert_allclose(a, b, rtol=RESUME_RTOL, atol=RESUME_ATOL)


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt  # as Ctrl-C or a kill right after the first checkpoint


def test_resumed_phase_trains_exactly_as_an_uninterrupted_one(tmp_path):
    """Dropout, shuffling, crops and unlabeled mixing all continue where they were."""
    world = data.synthetic.make_world(str(tmp_path / "world"), num_labeled=24, num_unlabeled=16, image_size=40)
    records = data.read_ava(world.ava_root)

    def train(folder, callbacks=()):
        keras.utils.set_random_seed(0)  # as every phase does; a resumed process starts over from here
        teacher = AestheticScorer(tiny.conv_backbone(), dropout=0.5)
        distiller = SemiSupervisedDistiller(teacher, AestheticScorer(tiny.conv_backbone(), dropout=0.5))
        distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
        clock = data.PassClock(seed=3)
        dataset = data.semi_supervised_dataset(
            records,
            [world.unlabeled_dir, world.unlabeled_dir],
            image_size=tiny.IMAGE_SIZE,
            batch_size=4,
            passes=clock,
        )
        phase = recipe.Phase(str(tmp_path / folder), "distill", log=lambda *_: None)
        phase.train(distiller, dataset, epochs=2, callbacks=callbacks, passes=clock)
        return tiny.weights_of(distiller)

    whole = train("whole")
    with pytest.raises(KeyboardInterrupt):
        train("resumed", [StopAfterFirstEpoch()])
    assert os.listdir(tmp_path / "resumed" / "distill" / "checkpoint") == ["epoch-00001"]
    resumed = train("resumed")
    for a, b in zip(resumed, whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=RESUME_RTOL, atol=RESUME_ATOL)
