"""Methods by name: `METHODS`, `parse_method` and `wrap`."""

from keras_tram.methods.asam import ASAM
from keras_tram.methods.fsam import FSAM
from keras_tram.methods.gsam import GSAM
from keras_tram.methods.penalized import MESA
from keras_tram.methods.penalized import R3F
from keras_tram.methods.penalized import TRPO
from keras_tram.methods.sam import SAM
from keras_tram.methods.tram import TRAM
from keras_tram.methods.tram import TRAM_VARIANTS
from keras_tram.methods.tram_fisher import TRAMFisher
from keras_tram.pieces._validation import check_choice

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
    assert keras_tram.wrap(model, "tram-input_noise").variant == "input_noise"
    assert keras_tram.wrap(model, "adam") is model  # plain training: the model itself
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
    if name == "tram" and variant == "fisher":
        return TRAMFisher(model, **options)
    if name == "tram":
        options["variant"] = variant
    return _WRAPPERS[name](model, **options)
