"""Bases for the small serializable pieces (geometries, radii, references)."""

import keras


class Configurable:
    """`get_config` returns the constructor's arguments, nested pieces
    serialized with `keras.saving.serialize_keras_object`; `from_config` and
    `repr` follow from it."""

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**{key: _deserialize(value) for key, value in config.items()})

    def __repr__(self):
        return _render({"class_name": type(self).__name__, "config": self.get_config()})


class Component(Configurable):
    """A piece that may keep state in variables of the wrapper: it creates them
    in `build(wrapper)`, fills them when training starts in
    `fill(trainable_variables)`, and returns end-of-step updates from
    `update(step)` as `[(variable, new_value), ...]`. `uses_noise` says
    whether it draws input noise."""

    def build(self, wrapper):
        pass

    def fill(self, trainable_variables):
        pass

    def update(self, step):
        return []

    @property
    def uses_noise(self):
        return False


def _is_serialized(value):
    return isinstance(value, dict) and "class_name" in value and "config" in value


def _deserialize(value):
    return keras.saving.deserialize_keras_object(value) if _is_serialized(value) else value


def _render(value):
    if not _is_serialized(value):
        return repr(value)
    arguments = ", ".join(f"{k}={_render(v)}" for k, v in value["config"].items())
    return f"{value['class_name']}({arguments})"
