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


class FunctionalModel(TracksEveryVariable, RestoresCompile, keras.Model):
    """Base of the library's functional models (built from inputs/outputs).

    Layers may be set as attributes before `super().__init__` on every backend
    (torch's `Module.__setattr__` refuses that otherwise), the way KerasHub's
    backbones and tasks do. Subclassed (non-functional) models must not derive
    from it: Keras turns this class into a `Functional` subclass.
    """

    # Init arguments kept as attributes of the same name: `get_config` saves
    # them, serializing those in `layer_fields` (nested layers and models).
    config_fields = ()
    layer_fields = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._initialized = True

    def get_config(self):
        config = {"name": self.name}
        for field in self.config_fields:
            value = getattr(self, field)
            if field in self.layer_fields:
                value = keras.layers.serialize(value)
            config[field] = value
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for field in cls.layer_fields:
            config[field] = keras.layers.deserialize(config[field])
        return cls(**config)

    def __setattr__(self, name, value):
        is_property = isinstance(getattr(type(self), name, None), property)
        uninitialized = not hasattr(self, "_initialized")
        if keras.config.backend() == "torch" and (is_property or uninitialized):
            return object.__setattr__(self, name, value)
        return super().__setattr__(name, value)
