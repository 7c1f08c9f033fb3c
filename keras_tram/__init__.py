"""keras-tram: sharpness-aware and trust-region-aware fine-tuning for Keras 3."""

from keras_tram import geometry
from keras_tram import radius
from keras_tram.methods import ASAM
from keras_tram.methods import SAM
from keras_tram.wrapper import SharpnessAware
from keras_tram.wrapper import Step

__version__ = "0.1.0"

__all__ = ["ASAM", "SAM", "SharpnessAware", "Step", "geometry", "radius"]
