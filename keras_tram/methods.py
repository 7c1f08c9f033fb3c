"""The named methods: small configurations of `SharpnessAware`."""

import keras

from keras_tram._validation import check_choice
from keras_tram._validation import check_fraction
from keras_tram.geometry import Adaptive
from keras_tram.geometry import Euclidean
from keras_tram.geometry import Fisher
from keras_tram.geometry import Released
from keras_tram.penalty import Penalty
from keras_tram.radius import Constant
from keras_tram.radius import TrustRegion
from keras_tram.reduction import ElementMean
from keras_tram.trust_region import InitialWeights
from keras_tram.trust_region import MovingAverageWeights
from keras_tram.trust_region import NoisedInputs
from keras_tram.trust_region import PreviousWeights
from keras_tram.wrapper import SharpnessAware


@keras.saving.register_keras_serializable(package="keras_tram")
class SAM(SharpnessAware):
    """Sharpness-Aware Minimization (Foret et al., 2021): `ε = ρ g / ‖g‖`.

    Args:
        model: the `keras.Model` to train.
        rho: the radius of the Euclidean ball, a finite number >= 0.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.SAM(model, rho=0.05)
    wrapped.compile(optimizer="sgd", loss="mse")
    wrapped.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    ```
    """

    def __init__(self, model, rho=0.05, **kwargs):
        super().__init__(model, geometry=Euclidean(), radius=Constant(rho), **kwargs)

    @property
    def rho(self):
        return self.radius.rho

    def get_config(self):
        return {**self._base_config(), "rho": self.rho}


@keras.saving.register_keras_serializable(package="keras_tram")
class ASAM(SharpnessAware):
    """Adaptive SAM (Kwon et al., 2021): `ε = ρ T² g / ‖T g‖`, `T = |θ| + η`.

    `eta=0` is the form the TRAM paper uses and compares against.

    Args:
        model: the `keras.Model` to train.
        rho: the radius, a finite number >= 0 (the paper uses 0.5).
        eta: the offset added to `|θ|`, a finite number >= 0.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.ASAM(model, rho=0.5, eta=0.0)
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    history.history["radius"]
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
        return {**self._base_config(), "rho": self.rho, "eta": self.eta}


@keras.saving.register_keras_serializable(package="keras_tram")
class FSAM(SharpnessAware):
    """Fisher SAM (Kim et al., 2022): `ε = ρ D g / sqrt(gᵀ D g)`, `D = (1 + η g²)⁻¹`.

    Args:
        model: the `keras.Model` to train.
        rho: the radius, a finite number >= 0.
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
        return {**self._base_config(), "rho": self.radius.rho, "eta": self.geometry.eta}


TRAM_VARIANTS = ("previous_step", "pretrained", "input_noise", "fisher")
_NOISE_VARIANTS = ("input_noise", "fisher")
FORMULATIONS = ("paper", "released")


@keras.saving.register_keras_serializable(package="keras_tram")
class TRAM(SharpnessAware):
    """Trust Region Aware Minimization (Sherborne et al., ICLR 2024).

    ASAM's perturbation with a trust-region radius:
    `ε = d · θ² ⊙ g / ‖θ ⊙ g‖`, where `d` is the divergence on the current
    batch between reference predictions and the clean predictions, taken
    with no gradient and no penalty in the loss.

    Variants (the reference):
    - `"previous_step"` (TRAM-θ_{t-1}): the weights of the previous step.
    - `"pretrained"` (TRAM-θ_0): the weights when training started.
    - `"input_noise"` (TRAM-x): the same weights on inputs (or token
      embeddings) plus `N(0, noise_stddev²)` noise.
    - `"fisher"` (TRAM-Fisher): FSAM's perturbation with radius `rho`, its
      Fisher estimate taken from the gradient on noised inputs (two passes).

    Args:
        model: the `keras.Model` to train.
        variant: one of the above.
        noise_stddev: σ for the noise variants (default 0.1); not allowed for
            the others.
        eta: ASAM's offset added to `|θ|` (default 0, the paper's form), or
            FSAM's Fisher weight for `"fisher"` (default 0.1).
        rho: the radius of the `"fisher"` variant (default 0.1).
        divergence: `"kl"` (`KL(reference ‖ current)`, the paper's),
            `"reverse_kl"` or `"symmetric_kl"`.
        radius_scale: multiplies `d` (default 1, the paper's method).
        max_radius: caps the radius (default None, no cap).
        noise_layer: where the noise goes for token-id models (a layer or its
            name); found automatically for keras-hub backbones and models
            with a `keras.layers.Embedding`.
        from_logits: whether the model outputs logits (else probabilities).
        output_key: the entry of a dict output that holds the logits.
        divergence_batch_fraction: in (0, 1]: measure `d` on the first
            `ceil(fraction · batch)` examples, so the reference's forward
            pass costs that fraction of a full one (default 1, the paper's).
        formulation: `"paper"` (the default: the equations above) or
            `"released"`, the authors' released code, which differs from the
            paper and exists to reproduce published numbers: its perturbation
            is `ε = d · θ² / (‖θ ⊙ g‖ + 1e-12)` (the gradient enters only
            through the norm; `keras_tram.geometry.Released`) and its `d` is
            the mean of the KL over every element (batch × classes, ×
            positions, padding included) divided by the batch size again,
            times `logit_scale` (`keras_tram.reduction.ElementMean`). For the
            trust-region variants only, without `eta`.
        logit_scale: multiplies the released formulation's `d` (default 1);
            only with `formulation="released"`.

    Example:

    ```python
    import numpy as np, keras, keras_tram
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    wrapped = keras_tram.TRAM(model, variant="previous_step")
    wrapped.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wrapped.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    history.history["divergence"]   # d per epoch; 0 at the very first step
    ```
    """

    def __init__(self, model, variant="previous_step", noise_stddev=None, eta=None,
                 rho=None, divergence="kl", radius_scale=1.0, max_radius=None,
                 noise_layer=None, from_logits=True, output_key="logits",
                 divergence_batch_fraction=1.0, formulation="paper", logit_scale=None,
                 **kwargs):
        check_choice("variant", variant, TRAM_VARIANTS)
        check_fraction("divergence_batch_fraction", divergence_batch_fraction)
        check_choice("formulation", formulation, FORMULATIONS)
        released = formulation == "released"
        if released and variant == "fisher":
            raise ValueError(
                "`formulation`='released' applies to the trust-region variants "
                "'previous_step', 'pretrained' and 'input_noise'; variant='fisher' "
                "takes the paper's formulation only."
            )
        if released and eta is not None:
            raise ValueError(
                "`eta` is not part of the released formulation (its perturbation "
                "scales by |θ| alone); leave it out with formulation='released'."
            )
        if logit_scale is not None and not released:
            raise ValueError(
                "`logit_scale` scales the released formulation's divergence; pass "
                "formulation='released' with it, or leave it out."
            )
        if variant not in _NOISE_VARIANTS and noise_stddev is not None:
            raise ValueError(
                f"`noise_stddev` applies to the variants {_NOISE_VARIANTS}; "
                f"variant={variant!r} takes none."
            )
        noise = None
        if variant in _NOISE_VARIANTS:
            noise = NoisedInputs(0.1 if noise_stddev is None else noise_stddev, noise_layer)
        if variant == "fisher":
            if (divergence != "kl" or radius_scale != 1.0 or max_radius is not None
                    or divergence_batch_fraction != 1.0):
                raise ValueError(
                    "`divergence`, `radius_scale`, `max_radius` and "
                    "`divergence_batch_fraction` shape the trust-region radius; "
                    "variant='fisher' has the constant radius `rho`."
                )
            parts = dict(
                geometry=Fisher(0.1 if eta is None else eta),
                radius=Constant(0.1 if rho is None else rho),
                ascent_noise=noise,
            )
        else:
            if rho is not None:
                raise ValueError(
                    f"`rho` applies to variant='fisher' only; variant={variant!r} "
                    "takes its radius from the trust region."
                )
            reference = {
                "previous_step": PreviousWeights,
                "pretrained": InitialWeights,
                "input_noise": lambda: noise,
            }[variant]()
            radius = TrustRegion(
                reference, divergence=divergence, radius_scale=radius_scale,
                max_radius=max_radius, from_logits=from_logits, output_key=output_key,
                batch_fraction=divergence_batch_fraction,
                reduction=ElementMean(1.0 if logit_scale is None else logit_scale)
                if released else None,
            )
            geometry = Released() if released else Adaptive(0.0 if eta is None else eta)
            parts = dict(geometry=geometry, radius=radius)
        super().__init__(model, **parts, **kwargs)
        if isinstance(noise_layer, keras.layers.Layer):
            noise_layer = noise_layer.name
        arguments = dict(
            variant=variant, noise_stddev=noise_stddev, eta=eta, rho=rho,
            divergence=divergence, radius_scale=radius_scale, max_radius=max_radius,
            noise_layer=noise_layer, from_logits=from_logits, output_key=output_key,
            divergence_batch_fraction=divergence_batch_fraction,
        )
        if released:  # left out otherwise, so that configs read as before
            arguments.update(formulation=formulation, logit_scale=logit_scale)
        self._arguments = arguments

    @property
    def variant(self):
        return self._arguments["variant"]

    @property
    def formulation(self):
        return self._arguments.get("formulation", "paper")

    def get_config(self):
        return {**self._base_config(), **self._arguments}


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
    "sam": SAM, "asam": ASAM, "fsam": FSAM, "tram": TRAM,
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
            model is returned as is), `"sam"`, `"asam"`, `"fsam"`, `"tram"`,
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
