"""keras-tram: sharpness-aware and trust-region-aware fine-tuning for Keras 3."""

from keras_tram import analysis
from keras_tram import datasets
from keras_tram import descent
from keras_tram import geometry
from keras_tram import penalty
from keras_tram import radius
from keras_tram import recipes
from keras_tram import reduction
from keras_tram import reuse
from keras_tram import schedule
from keras_tram import selection
from keras_tram import tiny
from keras_tram import trust_region
from keras_tram.methods import ASAM
from keras_tram.methods import FSAM
from keras_tram.methods import GSAM
from keras_tram.methods import MESA
from keras_tram.methods import METHODS
from keras_tram.methods import R3F
from keras_tram.methods import SAM
from keras_tram.methods import TRPO
from keras_tram.methods import wrap
from keras_tram.tram import TRAM
from keras_tram.tram import TRAM_VARIANTS
from keras_tram.wrapper import SharpnessAware
from keras_tram.wrapper import Step

__version__ = "0.1.0"

__all__ = [
    "ASAM", "FSAM", "GSAM", "MESA", "METHODS", "R3F", "SAM", "TRAM", "TRAM_VARIANTS", "TRPO",
    "SharpnessAware", "Step", "analysis", "datasets", "descent", "geometry", "penalty",
    "radius", "recipes", "reduction", "reuse", "schedule", "selection", "tiny", "trust_region",
    "wrap",
]
