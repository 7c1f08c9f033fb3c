"""The named methods: small configurations of `SharpnessAware`."""

import keras

from keras_tram import schedule
from keras_tram._validation import check_choice
from keras_tram.descent import SurrogateGap
from keras_tram.geometry import Adaptive
from keras_tram.geometry import Euclidean
from keras_tram.geometry import Fisher
from keras_tram.penalty import Penalty
from keras_tram.radius import Constant
from keras_tram.trust_region import MovingAverageWeights
from keras_tram.trust_region import NoisedInputs
from keras_tram.trust_region import PreviousWeights
from keras_tram.tram import TRAM
from keras_tram.tram import TRAM_VARIANTS
from keras_tram.wrapper import SharpnessAware


@keras.saving.register_keras_serializable(package="keras_tram")
class SAM(SharpnessAware):
    """Sharpness-Aware Minimization (Foret et al., 2021): `ε = ρ g / ‖g‖`.

    Args:
        model: the `keras.Model` to train.
        rho: the radius of the Euclidean ball: a finite number >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule` over the updates,
            or a `keras_tram.schedule.FollowLearningRate`. With `rho=0` the
            step is the optimizer's plain step.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.SAM(model, rho=0.05)
    wrapped.compile(optimizer="sgd", loss="mse")
    wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)

    # ρ decaying linearly from 0.1 to 0 over 4 updates; the logged radius is
    # the one used (here the mean over the epoch's 4 updates).
    rho = keras.optimizers.schedules.PolynomialDecay(0.1, decay_steps=4, end_learning_rate=0.0)
    wrapped = keras_tram.SAM(model, rho=rho)
    wrapped.compile(optimizer="sgd", loss="mse")
    history = wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), batch_size=2, verbose=0)
    assert abs(history.history["radius"][0] - np.mean([0.1, 0.075, 0.05, 0.025])) < 1e-6
    ```
    """

    def __init__(self, model, rho=0.05, **kwargs):
        super().__init__(model, geometry=Euclidean(), radius=Constant(rho), **kwargs)

    @property
    def rho(self):
        return self.radius.rho

    def get_config(self):
        return {**self._base_config(), "rho": schedule.serialize(self.rho)}


@keras.saving.register_keras_serializable(package="keras_tram")
class ASAM(SharpnessAware):
    """Adaptive SAM (Kwon et al., 2021): `ε = ρ T² g / ‖T g‖`, `T = |θ| + η`.

    `eta=0` is the form the TRAM paper uses and compares against.
    `ASAM(model, rho=0.5, eta=0.01, perturb="no_bias_norm")` is the form of
    the original ASAM code, which leaves biases and normalization weights
    unperturbed. With keras-hub's LoRA, `eta=0` does not perturb LoRA's
    zero-initialised matrices (`T = 0` there) until they move: use `eta > 0`.

    Args:
        model: the `keras.Model` to train.
        rho: the radius, a finite number >= 0 (the paper uses 0.5), or a
            schedule of it (`keras_tram.schedule`).
        eta: the offset added to `|θ|`, a finite number >= 0.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.ASAM(model, rho=0.5, eta=0.0)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    history.history["radius"]

    # The original ASAM code's form: biases and normalization weights unperturbed.
    wrapped = keras_tram.ASAM(model, rho=0.5, eta=0.01, perturb="no_bias_norm")
    [v.path for v in keras_tram.selection.selected(wrapped, wrapped.perturb)]
    # ['dense/kernel']
    ```
    """

    def __init__(self, model, rho=0.5, eta=0.0, **kwargs):
        super().__init__(model, geometry=Adaptive(eta), radius=Constant(rho), **kwargs)

    @property
    def rho(self):
        return self.radius.rho

    @property
    def eta(self):
        return self.geometry.eta

    def get_config(self):
        return {**self._base_config(), "rho": schedule.serialize(self.rho), "eta": self.eta}


@keras.saving.register_keras_serializable(package="keras_tram")
class FSAM(SharpnessAware):
    """Fisher SAM (Kim et al., 2022): `ε = ρ D g / sqrt(gᵀ D g)`, `D = (1 + η g²)⁻¹`.

    Args:
        model: the `keras.Model` to train.
        rho: the radius, a finite number >= 0, or a schedule of it
            (`keras_tram.schedule`).
        eta: the weight of the diagonal Fisher estimate `g²`, >= 0.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.FSAM(model, rho=0.1, eta=0.1)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    history.history["grad_norm"]
    ```
    """

    def __init__(self, model, rho=0.1, eta=0.1, **kwargs):
        super().__init__(model, geometry=Fisher(eta), radius=Constant(rho), **kwargs)

    def get_config(self):
        return {
            **self._base_config(),
            "rho": schedule.serialize(self.radius.rho),
            "eta": self.geometry.eta,
        }


@keras.saving.register_keras_serializable(package="keras_tram")
class GSAM(SharpnessAware):
    """Surrogate Gap Guided SAM (Zhuang et al., ICLR 2022).

    SAM's perturbation `ε = ρ_t g / ‖g‖`, then a descent along
    `g_p − α · g_⊥`, where `g_p = ∇L(θ + ε)` and `g_⊥` is the component of
    the clean gradient `g` orthogonal to `g_p`
    (`keras_tram.descent.SurrogateGap`). By default ρ follows the learning
    rate (`keras_tram.schedule.FollowLearningRate(rho_max=0.05,
    rho_min=0.0)`): ρ_max at the optimizer's initial learning rate, falling
    with it, so that with a constant learning rate ρ is 0.05 throughout.

    Args:
        model: the `keras.Model` to train.
        rho: the radius: None (the default above), a number, a
            `LearningRateSchedule` or a `FollowLearningRate`.
        alpha: α, a finite number >= 0 (default 0.4); 0 is SAM.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    rho = keras_tram.schedule.FollowLearningRate(rho_max=0.1, rho_min=0.02)
    wrapped = keras_tram.GSAM(model, rho=rho, alpha=0.3)
    lr = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=8)
    wrapped.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    history = wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), batch_size=2, epochs=2, verbose=0)
    assert history.history["radius"][1] < history.history["radius"][0]
    ```
    """

    def __init__(self, model, rho=None, alpha=0.4, **kwargs):
        if rho is None:
            rho = schedule.FollowLearningRate(rho_max=0.05, rho_min=0.0)
        super().__init__(
            model, geometry=Euclidean(), radius=Constant(rho),
            descent=SurrogateGap(alpha), **kwargs,
        )

    @property
    def rho(self):
        return self.radius.rho

    @property
    def alpha(self):
        return self.descent.alpha

    def get_config(self):
        config = self._base_config()
        return {**config, "rho": schedule.serialize(self.rho), "alpha": self.alpha}


class _PenaltyMethod(SharpnessAware):
    """A plain step on `L + weight · d(reference ‖ current)`."""

    def __init__(self, model, reference, weight, divergence, from_logits, output_key,
                 **kwargs):
        penalty = Penalty(reference, weight, divergence, from_logits, output_key)
        super().__init__(model, penalty=penalty, **kwargs)

    def _penalty_config(self):
        config = self.penalty.get_config()
        del config["reference"]  # each method names its reference's arguments
        return config


@keras.saving.register_keras_serializable(package="keras_tram")
class TRPO(_PenaltyMethod):
    """Trust-region penalty on the previous step: `L + λ · KL(θ_{t-1} ‖ θ)`.

    Args:
        model: the `keras.Model` to train.
        weight: λ, >= 0.
        divergence: `"kl"`, `"reverse_kl"` or `"symmetric_kl"`.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.TRPO(model, weight=0.1)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    history.history["penalty"]
    ```
    """

    def __init__(self, model, weight=0.1, divergence="kl", from_logits=True,
                 output_key="logits", **kwargs):
        super().__init__(model, PreviousWeights(), weight, divergence, from_logits,
                         output_key, **kwargs)

    def get_config(self):
        return {**self._base_config(), **self._penalty_config()}


@keras.saving.register_keras_serializable(package="keras_tram")
class R3F(_PenaltyMethod):
    """R3F (Aghajanyan et al., 2021): `L + λ · KL(x + z ‖ x)`, `z ~ N(0, σ²)`.

    The noise goes on float inputs or on the token embeddings, as in
    `TRAM(variant="input_noise")`. The original R3F uses
    `divergence="symmetric_kl"`.

    Args:
        model: the `keras.Model` to train.
        noise_stddev: σ, >= 0.
        weight: λ, >= 0.
        divergence: `"kl"`, `"reverse_kl"` or `"symmetric_kl"`.
        noise_layer: where the noise goes for token-id models.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.R3F(model, noise_stddev=0.1, weight=0.1)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    history.history["divergence"]
    ```
    """

    def __init__(self, model, noise_stddev=0.1, weight=0.1, divergence="kl",
                 noise_layer=None, from_logits=True, output_key="logits", **kwargs):
        reference = NoisedInputs(noise_stddev, noise_layer)
        super().__init__(model, reference, weight, divergence, from_logits,
                         output_key, **kwargs)

    def get_config(self):
        reference = self.penalty.reference.get_config()
        return {
            **self._base_config(),
            "noise_stddev": reference["stddev"],
            "noise_layer": reference["noise_layer"],
            **self._penalty_config(),
        }


@keras.saving.register_keras_serializable(package="keras_tram")
class MESA(_PenaltyMethod):
    """MESA (Du et al., 2022): `L + λ · KL(EMA ‖ θ)` with an EMA of the weights.

    Args:
        model: the `keras.Model` to train.
        decay: the EMA decay, in [0, 1].
        weight: λ, >= 0.
        divergence: `"kl"`, `"reverse_kl"` or `"symmetric_kl"`.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.MESA(model, decay=0.999, weight=0.1)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    history.history["penalty"]
    ```
    """

    def __init__(self, model, decay=0.999, weight=0.1, divergence="kl",
                 from_logits=True, output_key="logits", **kwargs):
        super().__init__(model, MovingAverageWeights(decay), weight, divergence,
                         from_logits, output_key, **kwargs)

    def get_config(self):
        return {
            **self._base_config(),
            "decay": self.penalty.reference.decay,
            **self._penalty_config(),
        }


_WRAPPERS = {
    "sam": SAM, "asam": ASAM, "fsam": FSAM, "gsam": GSAM, "tram": TRAM,
    "trpo": TRPO, "r3f": R3F, "mesa": MESA,
}
PLAIN = ("adam", "sgd")
METHODS = PLAIN + tuple(_WRAPPERS)


def parse_method(method, variant=None):
    """`(name, variant)` for a method name; `"tram-input_noise"` names both.

    Raises:
        ValueError: for a name not in `METHODS`, a variant of a method other
            than TRAM, or a variant named twice.
    """
    if not isinstance(method, str):
        raise TypeError(f"`method` must be a string, one of {METHODS}; got {method!r}.")
    name = method.lower()
    if name.startswith("tram-"):
        if variant is not None:
            raise ValueError(
                f"`method`={method!r} names the variant already; do not pass `variant` too."
            )
        name, variant = "tram", name[len("tram-"):]
    check_choice("method", name, METHODS)
    if name == "tram":
        check_choice("variant", variant or "previous_step", TRAM_VARIANTS)
        return name, variant or "previous_step"
    if variant is not None:
        raise ValueError(f"`variant` applies to method='tram' only; got method={method!r}.")
    return name, None


def wrap(model, method, variant=None, **options):
    """`model` wrapped for `method`, or `model` itself for a plain optimizer.

    Args:
        model: the `keras.Model` to train.
        method: one of `METHODS`: `"adam"` or `"sgd"` (plain training: the
            model is returned as is), `"sam"`, `"asam"`, `"fsam"`, `"gsam"`, `"tram"`,
            `"trpo"`, `"r3f"`, `"mesa"`; or `"tram-<variant>"`.
        variant: TRAM's variant, one of `TRAM_VARIANTS` (default
            `"previous_step"`).
        **options: the method's own arguments (`rho`, `noise_stddev`, ...).

    Example:

    ```python
    import keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    keras_tram.wrap(model, "tram-input_noise").variant  # 'input_noise'
    keras_tram.wrap(model, "adam") is model  # True
    ```
    """
    name, variant = parse_method(method, variant)
    if name in PLAIN:
        if options:
            raise ValueError(
                f"method={method!r} trains the model as it is and takes no "
                f"options; got {sorted(options)}."
            )
        return model
    if name == "tram":
        options["variant"] = variant
    return _WRAPPERS[name](model, **options)
