"""Why a method generalizes: ε-sharpness, linear CKA, and the step statistics.

The two measurements of the TRAM paper's analysis: how sharp the loss surface
is around the trained weights (Keskar et al., 2017), and how close the trained
model's representations stay to the pre-trained model's (linear CKA,
Kornblith et al., 2019), with `fit` callbacks that record them.

    >>> import numpy as np
    >>> from keras_tram import analysis
    >>> features = np.random.default_rng(0).normal(size=(50, 8))
    >>> round(analysis.linear_cka(features, 3.0 * features), 6)
    1.0
"""

from keras_tram.analysis.callbacks import SharpnessAndCKA
from keras_tram.analysis.callbacks import StepStatistics
from keras_tram.analysis.cka import linear_cka
from keras_tram.analysis.cka import MinibatchCKA
from keras_tram.analysis.cka import representations
from keras_tram.analysis.plots import plot_accuracy_vs_sharpness
from keras_tram.analysis.plots import plot_traces
from keras_tram.analysis.sharpness import epsilon_sharpness

__all__ = [
    "MinibatchCKA", "SharpnessAndCKA", "StepStatistics", "epsilon_sharpness", "linear_cka",
    "plot_accuracy_vs_sharpness", "plot_traces", "representations",
]
