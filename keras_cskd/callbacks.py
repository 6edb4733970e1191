"""Callbacks that make a long `fit` resumable, exactly.

- `CheckpointEachEpoch`: a `keras.callbacks.BackupAndRestore` whose
  checkpoints are atomic folders holding the weights, the optimizer and the
  layers' random seed states (Dropout's, which `save_weights` leaves out), so a
  run killed at any moment resumes from its last completed epoch with the
  state an uninterrupted run had there. It never saves a non-finite state
  (it checks the logged values and every weight array) and stops training on one.
- `PassesFollowEpochs`: pins the `PassClock`s of `keras_cskd.data` pipelines
  (the `passes=` they were built with) to the epoch, so the resumed epochs
  read the same files, in the same order, with the same crops, as an
  uninterrupted run.

Together they make a resumed run end with the same weights as an
uninterrupted one (tested on the CPU on every backend to 1e-4 relative;
bit-identical on tensorflow and torch, float rounding apart on jax). The
clock is the caller's, so it keeps working whatever the dataset goes through
before `fit` (`map`, `distribute_dataset`).

Example:

>>> import keras, tempfile
>>> from keras_cskd.data import PassClock, labeled_dataset, read_ava, synthetic
>>> world = synthetic.make_world("/tmp/cskd_doc_world", num_labeled=40, num_unlabeled=0)
>>> model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
...                           keras.layers.Flatten(), keras.layers.Dropout(0.5),
...                           keras.layers.Dense(10, activation="softmax")])
>>> model.compile("sgd", "categorical_crossentropy")
>>> backup = tempfile.mkdtemp()
>>> clock = PassClock(seed=0)
>>> ds = labeled_dataset(read_ava(world.ava_root), "train", image_size=16, batch_size=8, passes=clock)
>>> callbacks = [PassesFollowEpochs(clock), CheckpointEachEpoch(backup)]
>>> _ = model.fit(ds, epochs=2, verbose=0, callbacks=callbacks)
>>> sorted(os.listdir(backup)), clock.current
(['epoch-00001', 'epoch-00002'], 1)
"""

import errno
import json
import math
import os
import re
import shutil

import keras
import numpy as np

_CHECKPOINT = re.compile(r"^epoch-(\d+)$")
SEED_STATE = "seed_generator_state"


def seed_states(model):
    """The state variables of the model's random seed generators (e.g. Dropout's)."""
    return [v for v in model.variables if v.path.endswith(SEED_STATE)]


def non_finite_weights(model):
    """One line naming the model's weight arrays that hold NaN or Inf, or None if all are finite.

    A loss can stay finite while weights diverge (a ReLU maps NaN features to
    0, and the cosine loss of a zero vector is 1), so a state is checked
    before it is saved as good.

    Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> non_finite_weights(model) is None
    True
    >>> _ = model.layers[0].kernel.assign(np.full((2, 1), np.nan))
    >>> non_finite_weights(model).split(" (e.g.")[0]
    '1 of 2 weight arrays hold NaN or Inf'
    """
    weights = [w for w in model.weights if keras.backend.is_float_dtype(w.dtype)]
    bad = [w.path for w in weights if not np.all(np.isfinite(keras.ops.convert_to_numpy(w)))]
    if not bad:
        return None
    return f"{len(bad)} of {len(weights)} weight arrays hold NaN or Inf (e.g. {bad[0]})"


def _megabytes(count):
    return f"{count / 2**20:.1f} MB"


def state_bytes(model):
    """Bytes of a model's variables and its optimizer's: about what a checkpoint or `.keras` file holds."""
    variables = list(model.variables)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    return sum(int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize for v in variables)


def ensure_free_space(folder, needed, what):
    """Raise a one-line `OSError` (ENOSPC) unless `folder`'s file system has `needed` bytes free, and some spare.

    The check runs before anything is written: a write that fails half-way
    inside the HDF5 or zip writers prints pages of errors and can crash the
    process, and the state in memory would be lost with it.

    Example:
    >>> ensure_free_space("/tmp", 1024, "a test file")
    """
    os.makedirs(folder, exist_ok=True)
    needed = int(needed * 1.05) + 2**18  # file format overhead, the small files beside it
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"No space left for {what} in {folder}: it needs about {_megabytes(needed)}, "
            f"{_megabytes(free)} free. Free some space and run the same command again to continue",
        )


class CheckpointEachEpoch(keras.callbacks.BackupAndRestore):
    """Atomic per-epoch checkpoints with seed states; stops on a non-finite loss.

    Each checkpoint is a folder `epoch-NNNNN` (weights and optimizer state,
    seed states, on torch the global generator's state that unseeded Dropout
    draws from, and `state.json`) written under a temporary name and renamed
    into place, so a kill at any moment leaves only complete checkpoints. The
    newest two are kept, also after training, so a stopped phase can resume;
    if the newest does not load, the one before it is used. Before writing,
    it checks the free space (dropping the older of the two if that makes
    room); too little stops training with a one-line `OSError` and the
    newest checkpoint intact.

    Args:
        backup_dir: folder of the checkpoints.
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir, delete_checkpoint=False)
        self.non_finite = None  # where training stopped on a non-finite value, and which
        self.non_finite_kind = "loss"

    # === Checkpoint folders ===

    def checkpoints(self):
        """Complete checkpoint folders, oldest first."""
        if not os.path.isdir(self.backup_dir):
            return []
        names = sorted(n for n in os.listdir(self.backup_dir) if _CHECKPOINT.match(n))
        return [os.path.join(self.backup_dir, n) for n in names]

    def _make_room(self, what):
        needed = state_bytes(self.model)
        try:
            ensure_free_space(self.backup_dir, needed, what)
        except OSError:
            older = self.checkpoints()[:-1]  # the newest stays whatever happens
            if not older:
                raise
            for old in older:
                shutil.rmtree(old, ignore_errors=True)
            ensure_free_space(self.backup_dir, needed, what)

    def _save_model(self):
        final = os.path.join(self.backup_dir, f"epoch-{self._current_epoch:05d}")
        partial = final + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        self._make_room(f"the checkpoint of epoch {self._current_epoch}")
        os.makedirs(partial)
        self.model.save_weights(os.path.join(partial, "model.weights.h5"))
        states = [keras.ops.convert_to_numpy(v) for v in seed_states(self.model)]  # each (2,)
        np.save(os.path.join(partial, "seed_states.npy"), np.array(states, "int64"))
        if keras.backend.backend() == "torch":  # unseeded torch Dropout draws from torch's global generator
            import torch

            np.save(os.path.join(partial, "torch_rng_state.npy"), torch.get_rng_state().numpy())
        with open(os.path.join(partial, "state.json"), "w") as file:
            json.dump({"epoch": self._current_epoch}, file)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in self.checkpoints()[:-2]:
            shutil.rmtree(old, ignore_errors=True)

    def _restore(self, path):
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        # The compiled learning rate wins over the checkpoint's: a run stopped
        # by a non-finite loss resumes with the lowered rate it is given.
        rate = optimizer.get_config().get("learning_rate") if optimizer is not None else None
        self.model.load_weights(os.path.join(path, "model.weights.h5"))
        if isinstance(rate, float):
            optimizer.learning_rate = rate
        saved = np.load(os.path.join(path, "seed_states.npy"))
        variables = seed_states(self.model)  # in model order; names differ from process to process
        if len(saved) != len(variables):
            raise ValueError(f"{len(saved)} seed states saved, the model has {len(variables)}")
        for variable, state in zip(variables, saved):
            variable.assign(state.reshape(variable.shape).astype(variable.dtype))
        torch_state = os.path.join(path, "torch_rng_state.npy")
        if keras.backend.backend() == "torch" and os.path.exists(torch_state):
            import torch

            torch.set_rng_state(torch.from_numpy(np.load(torch_state)))
        with open(os.path.join(path, "state.json")) as file:
            epoch = json.load(file)["epoch"]
        self.model._initial_epoch = self._current_epoch = epoch

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError("CheckpointEachEpoch needs a built model: call it on a batch before fit().")
        errors = []
        for path in reversed(self.checkpoints()):
            try:
                return self._restore(path)
            except (OSError, ValueError, KeyError) as error:  # cut short by a kill or a full disk
                errors.append(f"{path}: {error}")
        if errors:
            raise RuntimeError("No checkpoint could be restored:\n" + "\n".join(errors))

    # === Non-finite losses ===

    def _check(self, logs, where):
        bad = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float)) and not math.isfinite(v)}
        if bad and self.non_finite is None:
            self.non_finite = f"{where}: {', '.join(f'{k}={v}' for k, v in bad.items())}"
            self.model.stop_training = True
        return bool(bad)

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"batch {batch + 1} of epoch {self._current_epoch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        if self.non_finite is None and not self._check(logs, f"end of epoch {epoch + 1}"):
            weights = non_finite_weights(self.model)
            if weights is not None:  # a finite loss does not prove a finite state
                self.non_finite = f"end of epoch {epoch + 1}: {weights}"
                self.non_finite_kind = "weights"
                self.model.stop_training = True
                return
            super().on_epoch_end(epoch, logs)

    @property
    def completed_epochs(self):
        return self._current_epoch


class PassesFollowEpochs(keras.callbacks.Callback):
    """Numbers the passes of `keras_cskd.data` datasets by the epoch (see `keras_cskd.data.passes`).

    Args:
        *clocks: the `keras_cskd.data.PassClock`s the datasets were built
            with (`passes=clock`).

    Example:

    >>> from keras_cskd.data import PassClock
    >>> clock = PassClock(seed=0)
    >>> PassesFollowEpochs(clock).clocks == [clock]
    True
    >>> PassesFollowEpochs(["not", "a", "clock"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: PassesFollowEpochs takes PassClocks, got list: build the dataset with passes=clock ...
    """

    def __init__(self, *clocks):
        super().__init__()
        for clock in clocks:
            if not callable(getattr(clock, "pin", None)):
                raise TypeError(
                    f"PassesFollowEpochs takes PassClocks, got {type(clock).__name__}: build the dataset with "
                    "passes=clock (clock = keras_cskd.data.PassClock(seed)) and give the clock here"
                )
        self.clocks = list(clocks)

    def on_epoch_begin(self, epoch, logs=None):
        for clock in self.clocks:
            clock.pin(epoch)
