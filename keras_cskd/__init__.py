"""keras-cskd: CLIP-aligned aesthetics learners (CSKD) in Keras 3, any backend.

Example:
    >>> import keras_cskd
    >>> teacher = keras_cskd.CLIPImageTeacher.from_preset("clip_vit_base_patch16")  # doctest: +SKIP
    >>> aligner = keras_cskd.models.CLIPFeatureAligner(teacher, {"student": "MobileNetV2"})  # doctest: +SKIP
"""


def _hide_native_log_lines():
    """For the `cskd` script only, unless --verbose: native libraries' stderr goes to /dev/null.

    TensorFlow's C++ start-up lines (CUDA probing, oneDNN notes) are written by
    its native logger straight to file descriptor 2, while it loads and at its
    first op, whatever TF_CPP_MIN_LOG_LEVEL says. So the script points that
    descriptor at /dev/null and gives Python a `sys.stderr` on a copy of the
    real one: the library's lines, warnings and tracebacks still show, native
    log lines do not. `import keras_cskd` in a user's program changes nothing.
    """
    import os
    import sys

    if os.path.basename(sys.argv[0]) != "cskd" or "--verbose" in sys.argv:
        return
    sys.stderr.flush()
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _check_backend_installed():
    """Name the extra to install when the chosen Keras backend's package is missing."""
    import importlib.util
    import json
    import os

    backend = os.environ.get("KERAS_BACKEND")
    if backend is None:
        config = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "keras.json")
        try:
            with open(config) as file:
                backend = json.load(file).get("backend")
        except (OSError, ValueError):
            backend = None
    package = {"jax": "jax", "torch": "torch"}.get(backend)
    if package and importlib.util.find_spec(package) is None:
        raise ImportError(
            f'KERAS_BACKEND={backend} needs {package}, which is not installed: pip install "keras-cskd[{backend}]"'
        )


_hide_native_log_lines()
_check_backend_installed()

from keras_cskd import backbones
from keras_cskd import layers
from keras_cskd import losses
from keras_cskd import metrics
from keras_cskd import models
from keras_cskd.clip import CLIPImageTeacher

__version__ = "0.1.0"
