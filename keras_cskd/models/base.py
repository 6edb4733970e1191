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


class FunctionalModel(RestoresCompile, keras.Model):
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
