"""The methods: `SharpnessAware`, the wrapper every method is, and the named
methods, each a small configuration of its pieces (one per file), with the
registry that finds them by name (`wrap`, `METHODS`)."""

from keras_tram.methods.asam import ASAM
from keras_tram.methods.fsam import FSAM
from keras_tram.methods.gsam import GSAM
from keras_tram.methods.penalized import MESA
from keras_tram.methods.penalized import R3F
from keras_tram.methods.penalized import TRPO
from keras_tram.methods.registry import METHODS
from keras_tram.methods.registry import parse_method
from keras_tram.methods.registry import PLAIN
from keras_tram.methods.registry import wrap
from keras_tram.methods.sam import SAM
from keras_tram.methods.sharpness_aware import SharpnessAware
from keras_tram.methods.tram import TRAM
from keras_tram.methods.tram import TRAM_VARIANTS
from keras_tram.methods.tram_fisher import TRAMFisher

__all__ = [
    "ASAM", "FSAM", "GSAM", "MESA", "METHODS", "PLAIN", "R3F", "SAM", "SharpnessAware",
    "TRAM", "TRAMFisher", "TRAM_VARIANTS", "TRPO", "parse_method", "wrap",
]
