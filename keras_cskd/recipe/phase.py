"""The recipe's phase table and the resumable `Phase` that runs one of them.

A finished phase leaves `done.json` and its `.keras` model and is never
recomputed. A phase killed at any moment (SIGKILL included) resumes from its
last completed epoch (`keras_cskd.callbacks.CheckpointEachEpoch`: atomic
checkpoints, the newest two kept) and, since each epoch's data is fixed by
(seed, epoch) (`PassesFollowEpochs`), ends with the weights an uninterrupted
run would have. A phase is done only if it trained: a non-finite loss or
weight stops it, keeps the last good checkpoint and raises `PhaseError` with a
command that resumes it (the learning rate may be lowered on resume); an
epoch with no training step raises `PhaseError` naming the data it needs.
Ctrl-C saves the current weights before it exits.
"""

import dataclasses
import json
import os
import shutil

import keras

from keras_cskd.callbacks import CheckpointEachEpoch
from keras_cskd.callbacks import PassesFollowEpochs
from keras_cskd.callbacks import ensure_free_space
from keras_cskd.callbacks import non_finite_weights
from keras_cskd.callbacks import state_bytes
from keras_cskd.recipe.config import ConfigError


class PhaseError(RuntimeError):
    """A phase stopped: non-finite values (its last good checkpoint kept) or no data to train on."""


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    """One row of `PHASE_TABLE`: what a phase writes, what runs it, what it reports.

    Args:
        name: str. The phase's name, as `run(phases=...)` takes it.
        folder: str. Its folder under the run's output folder.
        model_file: str or None. The `.keras` model it saves in `folder` when done.
        command: str. The `cskd` subcommand that runs it.
        help: str. What it does, for the subcommand's help (the phases of one
            subcommand are joined with ", then ").
        scorer_file: str or None. The `AestheticScorer` it leaves in `folder`,
            scored by the `evaluate` phase.
        report_name: str or None. That scorer's name in the evaluation report.
        data: str. The data it trains on, for the error when none arrives.

    Example:
    >>> [spec.report_name for spec in PHASE_TABLE if spec.scorer_file]
    ['teacher', 'student (labels only)', 'student (CSKD)']
    >>> phase_spec("teacher").command
    'train-teacher'
    """

    name: str
    folder: str
    model_file: str | None
    command: str
    help: str
    scorer_file: str | None = None
    report_name: str | None = None
    data: str = ""


_LABELED = "readable labeled training images ([data] ava_root), at least [data] batch_size of them"
PHASE_TABLE = (
    PhaseSpec(
        "align",
        "align",
        "aligner.keras",
        "align",
        "phase 1: align teacher and student learners to CLIP",
        data="readable unlabeled images ([data] unlabeled), at least [data] batch_size of them",
    ),
    PhaseSpec(
        "teacher",
        "teacher",
        "teacher.keras",
        "train-teacher",
        "phase 2a: fine-tune the aligned teacher on labels",
        scorer_file="teacher.keras",
        report_name="teacher",
        data=_LABELED,
    ),
    PhaseSpec(
        "baseline",
        "baseline",
        "student_labels_only.keras",
        "distill",
        "phase 2b: labels-only student",
        scorer_file="student_labels_only.keras",
        report_name="student (labels only)",
        data=_LABELED,
    ),
    PhaseSpec(
        "distill",
        "distill",
        "distiller.keras",
        "distill",
        "the distilled student",
        scorer_file="student.keras",
        report_name="student (CSKD)",
        data=_LABELED + " and readable unlabeled images ([data] unlabeled)",
    ),
    PhaseSpec("evaluate", "evaluate", None, "evaluate", "test metrics, report.md and plots of the trained scorers"),
)
PHASES = tuple(spec.name for spec in PHASE_TABLE)
_BY_NAME = {spec.name: spec for spec in PHASE_TABLE}


def phase_spec(name):
    """The `PHASE_TABLE` row of phase `name`."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown phase {name!r}; phases: {', '.join(PHASES)}") from None


def phase_commands():
    """`{cskd subcommand: (its phases, its help)}`, in `PHASE_TABLE` order.

    Example:
    >>> phase_commands()["distill"]
    (('baseline', 'distill'), 'phase 2b: labels-only student, then the distilled student')
    """
    commands = {}
    for spec in PHASE_TABLE:
        phases, helps = commands.get(spec.command, ((), ()))
        commands[spec.command] = (phases + (spec.name,), helps + (spec.help,))
    return {command: (phases, ", then ".join(helps)) for command, (phases, helps) in commands.items()}


def save_atomically(model, path):
    """`model.save(path)` through a temporary file, so `path` is never half written."""
    tmp = path[: -len(".keras")] + ".partial.keras"
    ensure_free_space(os.path.dirname(os.path.abspath(path)), state_bytes(model), os.path.basename(path))
    model.save(tmp)
    os.replace(tmp, path)


class Phase:
    """One resumable phase of a run: its folder, its saved model, its training.

    Args:
        out_dir: str. The run's output folder; the phase writes in its
            `PHASE_TABLE` folder there.
        name: str. A phase of `PHASE_TABLE`.
        log: callable taking one str, for progress lines.
        strategy: a `keras_cskd.distribute.DataParallel` or None. Training
            datasets go through its `distribute_dataset`.

    Example:
    >>> phase = Phase("runs/demo", "teacher")
    >>> phase.model_path
    'runs/demo/teacher/teacher.keras'
    >>> phase.done
    False
    """

    def __init__(self, out_dir, name, log=print, strategy=None):
        self.spec = phase_spec(name)
        self.name = name
        self.strategy = strategy
        self.dir = os.path.join(out_dir, self.spec.folder)
        self.model_path = os.path.join(self.dir, self.spec.model_file) if self.spec.model_file else None
        self.done_path = os.path.join(self.dir, "done.json")
        self.log = log

    @property
    def done(self):
        return self.model_path is not None and os.path.exists(self.done_path) and os.path.exists(self.model_path)

    def load(self):
        return keras.saving.load_model(self.model_path)

    def finished(self, may_train):
        """The saved model if the phase is done; None if it may train now."""
        if self.done:
            self.log(f"[{self.name}] already done: {self.model_path}")
            return self.load()
        if not may_train:
            out_dir = os.path.dirname(self.dir)
            raise ConfigError(f"phase {self.name!r} has not run in {out_dir}: run 'cskd {self.spec.command}' first")
        return None

    def run(self, train, seed, may_train=True):
        """The saved model if the phase is done, else `train(self)` from `seed`.

        Every phase of the recipe starts here: a finished phase is loaded, never
        recomputed; one that has not run raises `ConfigError` when `may_train`
        is False (it names the `cskd` subcommand to run first); otherwise the
        global random seed is set to `seed` and `train(self)` builds, compiles
        and trains the phase's model (with `Phase.train`).
        """
        done = self.finished(may_train)
        if done is not None:
            return done
        keras.utils.set_random_seed(seed)
        return train(self)

    def summary(self):
        with open(self.done_path) as file:
            return json.load(file)

    def train(self, model, dataset, epochs, summary_keys=("loss",), callbacks=(), *, passes=None):
        """Fit `model` (resuming from a checkpoint), save it, mark the phase done.

        `callbacks` run after the phase's own (checkpoint, CSV and TensorBoard logs).
        `passes` is the `PassClock` a `keras_cskd.data` dataset was built with
        (`passes=`): it is pinned to the epoch, so a resumed phase reads pass
        *epoch* in each epoch, the data an uninterrupted one would.

        The phase is done only if it trained: an epoch with no training step
        (no data arrived) raises `PhaseError` naming the data it needs, and a
        non-finite loss or weight raises `PhaseError` before anything is saved.
        """
        os.makedirs(self.dir, exist_ok=True)
        checkpoint = CheckpointEachEpoch(os.path.join(self.dir, "checkpoint"))
        steps = _StepCounter()
        callbacks = [
            *([PassesFollowEpochs(passes)] if passes is not None else []),
            checkpoint,
            steps,
            keras.callbacks.CSVLogger(os.path.join(self.dir, "history.csv"), append=True),
            keras.callbacks.TensorBoard(os.path.join(self.dir, "logs"), write_graph=False),
            *callbacks,
        ]
        if self.strategy is not None:
            dataset = self.strategy.distribute_dataset(dataset)
        try:
            # The recipe's datasets shuffle themselves (by seed and pass); fit's shuffle does not apply.
            history = model.fit(dataset, epochs=epochs, callbacks=callbacks, verbose=1, shuffle=False)
        except KeyboardInterrupt:
            path = os.path.join(self.dir, "interrupted.weights.h5")
            model.save_weights(path)
            self.log(
                f"\n[{self.name}] interrupted: weights saved to {path}; epochs 1..{checkpoint.completed_epochs} "
                "are checkpointed, run the same command to resume."
            )
            raise
        except Exception as error:
            if not steps.batch_began:  # jax / torch fail before any step on empty data
                raise PhaseError(self._no_step_message(1)) from error
            raise
        if checkpoint.non_finite:
            advice = self._advice(checkpoint)
            kind = checkpoint.non_finite_kind
            raise PhaseError(f"[{self.name}] non-finite {kind} at {checkpoint.non_finite}; stopped. {advice}")
        if steps.empty_epoch is not None:
            shutil.rmtree(checkpoint.backup_dir, ignore_errors=True)
            raise PhaseError(self._no_step_message(steps.empty_epoch + 1))
        weights = non_finite_weights(model)
        if weights is not None:
            raise PhaseError(f"[{self.name}] {weights}; not saved. {self._advice(checkpoint)}")
        save_atomically(model, self.model_path)
        last = {k: float(v[-1]) for k, v in history.history.items() if v}
        summary = {"phase": self.name, "epochs": epochs, "steps": steps.total, "final": last}
        with open(self.done_path, "w") as file:
            json.dump(summary, file, indent=1)
        shutil.rmtree(checkpoint.backup_dir, ignore_errors=True)
        shown = ", ".join(f"{k} {last[k]:.4f}" for k in summary_keys if k in last)
        self.log(f"[{self.name}] done in {epochs} epochs: {shown}. Saved {self.model_path}")
        return model

    def _no_step_message(self, epoch):
        return (
            f"[{self.name}] epoch {epoch} took no training step: no batch arrived. "
            f"The phase needs {self.spec.data or 'training data'}."
        )

    def _advice(self, checkpoint):
        """What to do after a non-finite stop: a command that works, and only checkpoints that exist."""
        out_dir = os.path.dirname(self.dir)
        config = os.path.join(out_dir, "config.toml")
        kept = checkpoint.checkpoints()
        where = (
            f"it resumes from the last good checkpoint (epoch {int(kept[-1].rsplit('-', 1)[-1])}), {kept[-1]}"
            if kept
            else "no epoch of this phase completed, so it starts over"
        )
        return (
            f"Lower learning_rate under [train] in {config} and run 'cskd run {config} --out {out_dir}': "
            f"finished phases are kept and {where}, with the new learning rate."
        )


class _StepCounter(keras.callbacks.Callback):
    """Counts the training steps `fit` takes; notes the first epoch that took none."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self.empty_epoch = None
        self._epoch_steps = 0

    batch_began = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_steps = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_began = True

    def on_train_batch_end(self, batch, logs=None):
        self._epoch_steps += 1
        self.total += 1

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch_steps == 0 and self.empty_epoch is None:
            self.empty_epoch = epoch
            self.model.stop_training = True
