"""What the measurements measure: the model a wrapper trains."""

from keras_tram.methods.sharpness_aware import SharpnessAware


def unwrapped(model):
    """The model a `SharpnessAware` wrapper trains, or `model` itself."""
    return model.model if isinstance(model, SharpnessAware) else model
