"""`TRAM`: the paper's method, its variants and its released formulation."""

import warnings

import keras

from keras_tram.methods.sharpness_aware import SharpnessAware
from keras_tram.pieces import schedule
from keras_tram.pieces._validation import check_choice
from keras_tram.pieces._validation import check_fraction
from keras_tram.pieces.geometry import Adaptive
from keras_tram.pieces.geometry import Released
from keras_tram.pieces.radius import TrustRegion
from keras_tram.pieces.reduction import ElementMean
from keras_tram.pieces.references import InitialWeights
from keras_tram.pieces.references import NoisedInputs
from keras_tram.pieces.references import PreviousWeights

TRAM_VARIANTS = ("previous_step", "pretrained", "input_noise", "fisher")
FORMULATIONS = ("paper", "released")
# The trust-region variants: the reference `d` is measured against.
_REFERENCES = {
    "previous_step": PreviousWeights,
    "pretrained": InitialWeights,
    "input_noise": NoisedInputs,
}


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

    TRAM-Fisher, FSAM's perturbation with a constant radius, is another
    method: `keras_tram.TRAMFisher` (`variant="fisher"` still makes one).

    Args:
        model: the `keras.Model` to train.
        variant: one of the above.
        noise_stddev: σ for `"input_noise"` (default 0.1); not allowed for
            the others.
        eta: ASAM's offset added to `|θ|` (default 0, the paper's form).
        divergence: `"kl"` (`KL(reference ‖ current)`, the paper's),
            `"reverse_kl"` or `"symmetric_kl"`.
        radius_scale: multiplies `d` (default 1, the paper's method); a
            number or a schedule (`keras_tram.schedule`). 0 gives the
            optimizer's plain step.
        max_radius: caps the radius (default None, no cap); a number or a
            schedule.
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
    # d per epoch (0 at the very first step); the radius is d itself.
    assert history.history["radius"] == history.history["divergence"]
    ```
    """

    def __new__(cls, model=None, variant="previous_step", *args, **kwargs):
        if cls is TRAM and variant == "fisher":  # 0.1's spelling of TRAMFisher
            return _fisher(model, *args, **kwargs)
        return super().__new__(cls, model, variant, *args, **kwargs)

    def __init__(self, model, variant="previous_step", noise_stddev=None, eta=None,
                 divergence="kl", radius_scale=1.0, max_radius=None, noise_layer=None,
                 from_logits=True, output_key="logits", divergence_batch_fraction=1.0,
                 formulation="paper", logit_scale=None, **kwargs):
        arguments = dict(
            variant=variant, noise_stddev=noise_stddev, eta=eta, rho=None,
            divergence=divergence, radius_scale=radius_scale, max_radius=max_radius,
            noise_layer=noise_layer, from_logits=from_logits, output_key=output_key,
            divergence_batch_fraction=divergence_batch_fraction,
        )
        if formulation == "released":  # left out otherwise, so that configs read as before
            arguments.update(formulation=formulation, logit_scale=logit_scale)
        if "rho" in kwargs:
            arguments["rho"] = kwargs.pop("rho")
        _check(arguments, formulation, logit_scale)
        released = formulation == "released"
        if variant == "input_noise":
            reference = NoisedInputs(0.1 if noise_stddev is None else noise_stddev, noise_layer)
        else:
            reference = _REFERENCES[variant]()
        radius = TrustRegion(
            reference, divergence=divergence, radius_scale=radius_scale,
            max_radius=max_radius, from_logits=from_logits, output_key=output_key,
            batch_fraction=divergence_batch_fraction,
            reduction=ElementMean(1.0 if logit_scale is None else logit_scale)
            if released else None,
        )
        geometry = Released() if released else Adaptive(0.0 if eta is None else eta)
        super().__init__(model, geometry=geometry, radius=radius, **kwargs)
        if isinstance(noise_layer, keras.layers.Layer):
            arguments["noise_layer"] = noise_layer.name
        self._arguments = arguments

    @property
    def variant(self):
        return self._arguments["variant"]

    @property
    def formulation(self):
        return self._arguments.get("formulation", "paper")

    def get_config(self):
        arguments = dict(self._arguments)
        for name in ("radius_scale", "max_radius", "rho"):
            if arguments[name] is not None:
                arguments[name] = schedule.serialize(getattr(self.radius, name, arguments[name]))
        return {**self._base_config(), **arguments}


def _check(arguments, formulation, logit_scale):
    """Raises for a combination of TRAM's arguments that means nothing."""
    variant = check_choice("variant", arguments["variant"], TRAM_VARIANTS[:3])
    check_fraction("divergence_batch_fraction", arguments["divergence_batch_fraction"])
    check_choice("formulation", formulation, FORMULATIONS)
    released = formulation == "released"
    if released and arguments["eta"] is not None:
        raise ValueError(
            "`eta` is not part of the released formulation (its perturbation "
            "scales by |θ| alone); leave it out with formulation='released'."
        )
    if logit_scale is not None and not released:
        raise ValueError(
            "`logit_scale` scales the released formulation's divergence; pass "
            "formulation='released' with it, or leave it out."
        )
    if variant != "input_noise" and arguments["noise_stddev"] is not None:
        raise ValueError(
            "`noise_stddev` applies to the variants ('input_noise', 'fisher'); "
            f"variant={variant!r} takes none."
        )
    if arguments["rho"] is not None:
        raise ValueError(
            f"`rho` applies to variant='fisher' only; variant={variant!r} "
            "takes its radius from the trust region."
        )


def _fisher(model, noise_stddev=None, eta=None, rho=None, divergence="kl", radius_scale=1.0,
            max_radius=None, noise_layer=None, from_logits=True, output_key="logits",
            divergence_batch_fraction=1.0, formulation="paper", logit_scale=None, **kwargs):
    """`TRAM(model, variant="fisher", ...)`, as 0.1 took it: a `TRAMFisher`."""
    from keras_tram.methods.tram_fisher import TRAMFisher

    if formulation != "paper" or logit_scale is not None:
        check_choice("formulation", formulation, FORMULATIONS)
        raise ValueError(
            "`formulation`='released' applies to the trust-region variants "
            "'previous_step', 'pretrained' and 'input_noise'; variant='fisher' "
            "takes the paper's formulation only."
        )
    if (divergence != "kl" or radius_scale != 1.0 or max_radius is not None
            or divergence_batch_fraction != 1.0):
        raise ValueError(
            "`divergence`, `radius_scale`, `max_radius` and "
            "`divergence_batch_fraction` shape the trust-region radius; "
            "variant='fisher' has the constant radius `rho`."
        )
    warnings.warn(
        "TRAM(variant='fisher') is keras_tram.TRAMFisher(rho, eta, noise_stddev, "
        "noise_layer), another method; use it directly.",
        DeprecationWarning, stacklevel=3,
    )
    return TRAMFisher(
        model, rho=0.1 if rho is None else rho, eta=0.1 if eta is None else eta,
        noise_stddev=0.1 if noise_stddev is None else noise_stddev,
        noise_layer=noise_layer, **kwargs,
    )
