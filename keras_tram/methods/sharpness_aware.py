"""`SharpnessAware`: the model wrapper every method in this package is.

Its arguments, pieces and saving live here; the step itself is
`_step.Algorithm`, fitted into Keras's `train_step` by `_trainer.Trainer`
(one per backend), and a keras-hub task's preprocessing is `_pipeline.Pipeline`.
"""

import warnings

import keras

from keras_tram._keras import compat as _compat
from keras_tram._keras import pipeline as _pipeline
from keras_tram._keras import step_metric as _statistics
from keras_tram._keras import trainer as _trainer
from keras_tram._ops import backend as _backend
from keras_tram._step import algorithm as _step
from keras_tram._step import perturbation as _perturbation
from keras_tram._step.method import Method
from keras_tram.pieces import descent as descent_lib
from keras_tram.pieces import geometry as geometry_lib
from keras_tram.pieces import penalty as penalty_lib
from keras_tram.pieces import radius as radius_lib
from keras_tram.pieces import references
from keras_tram.pieces import reuse as reuse_lib
from keras_tram.pieces import selection
from keras_tram.pieces._validation import check_choice
from keras_tram.pieces._validation import check_instance
from keras_tram.pieces._validation import check_model
from keras_tram.pieces._validation import check_positive_int

PERTURBATION_SCOPES = ("global", "per_replica")


@keras.saving.register_keras_serializable(package="keras_tram")
class SharpnessAware(_pipeline.Pipeline, _trainer.Trainer, keras.Model):
    """Wraps a model so that `fit` runs a sharpness-aware step.

    Each step takes the clean gradient `g` at the weights `θ`, perturbs the
    weights to `θ + ε` with `ε = geometry.perturbation(g, θ, r)` and
    `r = radius(step)`, takes the gradient `g'` there, and lets the
    compiled optimizer apply `g'` at `θ`. The weights themselves are never
    perturbed: the second pass runs on perturbed copies. Metrics, the loss in
    the progress bar and the non-trainable state (BatchNorm statistics, seed
    generators) come from the clean pass. A step whose gradients, radius or
    divergence are not finite changes nothing (under a `LossScaleOptimizer`
    the optimizer itself skips it and lowers the loss scale).

    Without a geometry the step is a plain one on the penalized loss (TRPO,
    R3F, MESA). `call`, `predict` and `evaluate` run the wrapped model
    unchanged.

    Args:
        model: the `keras.Model` to train. Its weights are the ones trained.
        geometry: a `keras_tram.geometry.Geometry` (`Euclidean()` for SAM,
            `Adaptive(eta)` for ASAM and TRAM, `Fisher(eta)` for FSAM), or
            None for no perturbation.
        radius: a `keras_tram.radius.Radius` (`Constant(rho)`, or
            `TrustRegion(reference)` for TRAM); None exactly when `geometry`
            is None.
        penalty: an optional `keras_tram.penalty.Penalty` added to the loss
            of every pass.
        ascent_noise: an optional `keras_tram.references.NoisedInputs`: the
            first gradient, the one that shapes `ε`, is then taken on noised
            inputs (TRAM-Fisher); its loss and metrics are the ones logged.
        perturbation_scope: on several devices, `"global"` (default) sums the
            gradient and the divergence over the replicas before perturbing,
            so every replica takes the perturbation of the global batch and
            the weights are those of one device; `"per_replica"` lets each
            replica perturb from its own part of the batch (the original
            SAM's m-sharpness), which saves one all-reduce per step.
        perturbation_chunks: an integer >= 1: split each (per-replica) batch
            into this many consecutive parts, each perturbed from its own
            gradient and radius; the descent gradient is their size-weighted
            mean. Costs no extra gradient work, but smaller batches per pass.
        log_relative_perturbation: whether to log `relative_perturbation`,
            `‖ε‖ / ‖θ‖` over all trainable weights (how far each step really
            moves the weights), at the cost of two more norms per step.
        perturbation_every: an integer k >= 1: run the full step on every
            k-th optimizer update only (updates 0, k, 2k, ...) and reuse its
            sharpness direction on the others, at the cost of one
            forward-backward pass each (LookSAM; `keras_tram.reuse.Reuse`).
            The default, 1, is the method itself. With k > 1, `radius`,
            `divergence` and `relative_perturbation` are logged over the full
            steps only, and the direction is kept in one float32 copy of the
            trainable weights, saved with the model.
        reuse_strength: α, a finite number >= 0 (default 0.7, LookSAM's):
            the steps in between descend along `g + α (‖g‖ / ‖g_v‖) g_v`.
        perturb: which trainable weights the perturbation moves
            (`keras_tram.selection`): `"all"` (default), `"no_bias_norm"`
            (not the biases and normalization weights, as the original ASAM
            code), `"norm_only"` (SAM-ON), a callable `variable -> bool` or
            a list of trainable variables. The others get `ε = 0` and stay
            out of the geometry's norms; every weight descends.
        descent: an optional `keras_tram.descent.Descent`: how the descent
            gradient is formed from the clean and the perturbed gradient
            (`SurrogateGap(alpha)` for GSAM); None descends along the
            perturbed gradient.

    The named methods (`SAM`, `TRAM`, ...) take `perturbation_scope`,
    `perturbation_chunks`, `log_relative_perturbation`, `perturbation_every`,
    `reuse_strength` and `perturb` as keywords too; the methods without a
    perturbation (TRPO, R3F, MESA) ignore the first three and accept only
    `perturbation_every=1` and `perturb="all"`.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.SharpnessAware(
        model, keras_tram.geometry.Adaptive(eta=0.01), keras_tram.radius.Constant(0.5)
    )
    wrapped.compile(optimizer="sgd", loss="mse")
    history = wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    assert sorted(history.history) == ["grad_norm", "loss", "radius", "skipped_steps"]
    ```
    """

    def __init__(self, model, geometry=None, radius=None, penalty=None,
                 ascent_noise=None, perturbation_scope="global", perturbation_chunks=1,
                 log_relative_perturbation=False, perturbation_every=1, reuse_strength=0.7,
                 perturb="all", descent=None, **kwargs):
        super().__init__(**kwargs)
        self.model = check_model(model)
        _backend.seed_dropout(model)
        if geometry is not None:
            check_instance("geometry", geometry, geometry_lib.Geometry)
        if radius is not None:
            check_instance("radius", radius, radius_lib.Radius)
        if (geometry is None) != (radius is None):
            raise ValueError(
                "`geometry` and `radius` go together: pass both for a "
                "sharpness-aware step, or neither for a plain step on the "
                f"penalized loss; received geometry={geometry!r}, radius={radius!r}."
            )
        if penalty is not None:
            check_instance("penalty", penalty, penalty_lib.Penalty)
        if ascent_noise is not None:
            check_instance("ascent_noise", ascent_noise, references.NoisedInputs)
            if geometry is None:
                raise ValueError("`ascent_noise` needs a `geometry` to shape.")
        if geometry is None and penalty is None:
            raise ValueError(
                "Nothing to do: pass a `geometry` and `radius`, a `penalty`, or both."
            )
        self.perturbation_scope = check_choice(
            "perturbation_scope", perturbation_scope, PERTURBATION_SCOPES
        )
        self.perturbation_chunks = check_positive_int(
            "perturbation_chunks", perturbation_chunks
        )
        if not isinstance(log_relative_perturbation, bool):
            raise TypeError(
                "`log_relative_perturbation` must be True or False; received "
                f"{log_relative_perturbation!r}."
            )
        self.log_relative_perturbation = log_relative_perturbation
        self.reuse = reuse_lib.Reuse(perturbation_every, reuse_strength)
        if self.reuse.skips and geometry is None:
            raise ValueError(
                "`perturbation_every` > 1 reuses the direction of a perturbation, "
                f"but this method has none (no `geometry`); received "
                f"perturbation_every={perturbation_every!r}. Leave it at 1."
            )
        self.selection = selection.Selection(perturb)
        if geometry is None and not (isinstance(perturb, str) and perturb == "all"):
            raise ValueError(
                "`perturb` says which weights a perturbation moves, but this method "
                f"has none (no `geometry`); received perturb={perturb!r}. Leave it "
                "at 'all'."
            )
        if descent is not None:
            check_instance("descent", descent, descent_lib.Descent)
            if geometry is None:
                raise ValueError("`descent` needs a `geometry`: it combines the clean "
                                 "and the perturbed gradient.")
        self.descent = descent
        self.geometry = geometry
        self.radius = radius
        self.penalty = penalty
        self.ascent_noise = ascent_noise
        self._method = Method(
            geometry, radius, penalty, ascent_noise, descent, self.reuse,
            self.perturbation_scope, self.perturbation_chunks, log_relative_perturbation,
        )
        self.noise_seed_generator = None
        if self._method.uses_noise:
            self.noise_seed_generator = keras.random.SeedGenerator()
        self.statistics_tracker = _statistics.StatisticMeans(
            self._method.statistic_names, self._method.full_step_names
        )
        self._algorithm = None  # the step, made once the variables exist (`build`)
        if model.built:
            self.build(None)

    def build(self, input_shape=None):
        if not self.model.built:
            if input_shape is None:
                raise ValueError(
                    "The wrapped model is not built; build it (or give it an "
                    "`Input`) before wrapping, or call the wrapper on data."
                )
            # As Keras builds a layer without `build()`: one symbolic call.
            self.model(
                keras.tree.map_shape_structure(keras.KerasTensor, input_shape)
            )
        if self._algorithm is None:
            for component in self._method.components:
                component.build(self)
            self.reuse.build(self)
            self._algorithm = _step.Algorithm(
                self, self._method, self._perturbation(), self.noise_seed_generator
            )
        self.built = True

    def _perturbation(self):
        """Which trainable weights the geometry perturbs, embedding tables
        among them on the rows a batch looks up."""
        positions = self.selection.positions(self) if self.geometry is not None else None
        return _perturbation.Perturbation(
            positions, _perturbation.tables(self, positions), self.log_relative_perturbation
        )

    @property
    def statistic_names(self):
        """The step statistics this method logs, besides `skipped_steps`."""
        return self._method.statistic_names

    @property
    def perturb(self):
        """The weights the perturbation moves, as given (`keras_tram.selection`)."""
        return self.selection.perturb

    @property
    def uses_noise(self):
        """Whether the method draws input noise."""
        return self.noise_seed_generator is not None

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    # ------------------------------------------------------------- saving

    def _saved_variables(self):
        """The wrapper's own variables, then the wrapped model's seed states.

        Keras does not save seed-generator states; saving them here makes a
        resumed run draw the same dropout masks as an uninterrupted one.
        """
        seeds = [generator.state for generator in _compat.seed_generators(self)]
        return _compat.own_variables(self) + seeds

    def save_own_variables(self, store):
        for i, variable in enumerate(self._saved_variables()):
            store[str(i)] = variable

    def load_own_variables(self, store):
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expected {len(variables)} "
                f"saved variables of its own (states and seeds), but the file "
                f"holds {len(store.keys())}. Was it saved from a different model?"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])

    def _base_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "perturbation_scope": self.perturbation_scope,
            "perturbation_chunks": self.perturbation_chunks,
            "log_relative_perturbation": self.log_relative_perturbation,
            "perturbation_every": self.reuse.every,
            "reuse_strength": self.reuse.strength,
            "perturb": self.selection.get_config(),
        }

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **self._base_config(),
            "geometry": serialize(self.geometry),
            "radius": serialize(self.radius),
            "penalty": serialize(self.penalty),
            "ascent_noise": serialize(self.ascent_noise),
            "descent": serialize(self.descent),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("model", "geometry", "radius", "penalty", "ascent_noise", "descent"):
            if key in config:
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return cls(**config)


def __getattr__(name):
    if name == "Step":  # re-exported here in 0.1
        warnings.warn(
            "keras_tram.wrapper.Step is keras_tram.Step (defined in keras_tram._step.view).",
            DeprecationWarning, stacklevel=2,
        )
        from keras_tram._step.view import Step

        return Step
    if name == "StepStatistics":  # the metric's name in 0.1
        warnings.warn(
            "keras_tram.wrapper.StepStatistics is now "
            "keras_tram._keras.step_metric.StatisticMeans; keras_tram.analysis.StepStatistics "
            "is the callback that records step statistics.",
            DeprecationWarning, stacklevel=2,
        )
        return _statistics.StatisticMeans
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
