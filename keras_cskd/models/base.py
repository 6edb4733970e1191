"""What the library's models share."""

import keras


class RestoresCompile:
    """Mixin: compile again when a `.keras` file is loaded.

    Keras skips `compile_from_config` for models that override `compile()`;
    ours only fill in defaults, so the saved arguments can be replayed.
    """

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)


class TracksEveryVariable:
    """Mixin: on torch, every variable of the model is one of its parameters.

    Keras's torch backend registers a model's variables as torch parameters
    keyed by variable path, at a moment our functional models cannot catch
    (before `__init__` ends). Two sub-models with same-named layers (two
    learners' projectors, a teacher's and a student's score head, two ViTs)
    share paths, and one of each pair is dropped; `zero_grad()` then never
    clears the dropped variables' gradients, which pile up from step to step.
    Here the parameters are keyed by position and registered as a module.
    """

    def _track_variables(self):
        import torch

        params = torch.nn.ParameterDict({str(i): v.value for i, v in enumerate(self.variables)})
        torch.nn.Module.__setattr__(self, "_torch_params", params)

    def _post_track_variable(self, variable):
        params = self.__dict__.get("_modules", {}).get("_torch_params")
        if params is not None and all(p is not variable.value for p in params.values()):
            params[str(max(map(int, params.keys()), default=-1) + 1)] = variable.value

    def _post_untrack_variable(self, variable):
        params = self.__dict__.get("_modules", {}).get("_torch_params")
        for key in [k for k, p in (params or {}).items() if p is variable.value]:
            params.pop(key)


def _serialize(value):
    """Keras objects (also inside dicts and lists) -> configs; None stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: _serialize(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_serialize(item) for item in value]
    return keras.saving.serialize_keras_object(value)


def _deserialize(config):
    """The inverse of `_serialize`."""
    if config is None:
        return None
    if isinstance(config, dict) and "class_name" not in config:
        return {key: _deserialize(item) for key, item in config.items()}
    if isinstance(config, list):
        return [_deserialize(item) for item in config]
    return keras.saving.deserialize_keras_object(config)


class ConfigFields:
    """Mixin: `get_config`/`from_config` from declared init arguments.

    `config_fields` names the init arguments kept as attributes of the same
    name; `object_fields` those among them that hold Keras objects (layers,
    models, losses; alone, in a dict or a list, or None), saved as nested
    configs. `get_config` chains to `super().get_config()`, which gives
    `name`, `trainable` and `dtype` (the policy), then adds the fields, as
    every Keras layer does.
    """

    config_fields = ()
    object_fields = ()

    def get_config(self):
        config = super().get_config()
        if "input_layers" in config:
            # Keras returned the graph of a functional model; that happens
            # only when `__init__` itself looks functional (inputs, outputs).
            raise TypeError(
                f"{type(self).__name__} must declare its own init arguments "
                "(not *args) to be saved by its `config_fields`."
            )
        for field in self.config_fields:
            value = getattr(self, field)
            config[field] = _serialize(value) if field in self.object_fields else value
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        for field in cls.object_fields:
            config[field] = _deserialize(config[field])
        return cls(**config)


class SubclassedModel(TracksEveryVariable, RestoresCompile, ConfigFields, keras.Model):
    """Base of the library's subclassed models (with their own `call`)."""


class FunctionalModel(TracksEveryVariable, RestoresCompile, ConfigFields, keras.Model):
    """Base of the library's functional models (built from inputs/outputs).

    Layers may be set as attributes before `super().__init__` on every backend
    (torch's `Module.__setattr__` refuses that otherwise), the way KerasHub's
    backbones and tasks do. A functional model ignores `dtype`; here it sets
    the model's policy, as in KerasHub's `Backbone`. Subclasses pass `dtype`
    to the layers they make. Subclassed (non-functional) models must not
    derive from it: Keras turns this class into a `Functional` subclass.
    """

    def __init__(self, *args, dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._initialized = True
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)

    def __setattr__(self, name, value):
        is_property = isinstance(getattr(type(self), name, None), property)
        uninitialized = not hasattr(self, "_initialized")
        if keras.config.backend() == "torch" and (is_property or uninitialized):
            return object.__setattr__(self, name, value)
        return super().__setattr__(name, value)
