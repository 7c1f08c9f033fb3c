"""What `keras-tram demo` can run: its tasks, and its methods by name.

Plain data, with no import: the `keras-tram` command reads this file to check
its arguments before Keras (and a backend's start-up logging) is imported.
Each method is `name: (method, options)` for `keras_tram.wrap`: the paper's
hyper-parameters (the methods' defaults), and TRAM's trust-region variants a
second time in the formulation of the authors' released code.
"""

TASKS = ("digits", "lm")

METHODS = {
    "adam": ("adam", {}),
    "sam": ("sam", {}),
    "asam": ("asam", {}),
    "fsam": ("fsam", {}),
    "tram-previous_step": ("tram-previous_step", {}),
    "tram-pretrained": ("tram-pretrained", {}),
    "tram-input_noise": ("tram-input_noise", {}),
    "tram-fisher": ("tram-fisher", {}),
    "r3f": ("r3f", {}),
    "trpo": ("trpo", {}),
    "mesa": ("mesa", {}),
    "tram-previous_step-released": ("tram-previous_step", {"formulation": "released"}),
    "tram-pretrained-released": ("tram-pretrained", {"formulation": "released"}),
    "tram-input_noise-released": ("tram-input_noise", {"formulation": "released"}),
}
# LookSAM's reuse: the full step every `REUSE_EVERY` updates, for every
# perturbing method of the paper's comparison (`<name>-k5`).
REUSE_EVERY = 5
REUSED = ("sam", "asam", "tram-previous_step", "tram-pretrained", "tram-input_noise",
          "tram-fisher")
METHODS.update({
    f"{name}-k{REUSE_EVERY}": (METHODS[name][0], {"perturbation_every": REUSE_EVERY})
    for name in REUSED
})
QUICK_METHODS = ("adam", "sam", "asam", "tram-previous_step", "tram-input_noise")
# Every method is compared with these, seed by seed.
BASELINES = ("adam", "sam", "asam")

SEEDS = 5
QUICK_SEEDS = 2
SWEEP_SEEDS = 3

# `--sweep`: TRAM-θ_{t-1}'s `radius_scale` against ASAM's `rho`, each over a
# log grid, with plain Adam as the point both start from.
SWEEP = {
    "tram-previous_step": ("radius_scale", (1.0, 10.0, 100.0, 1000.0)),
    "asam": ("rho", (0.05, 0.15, 0.5, 1.5)),
}


# The comparison of a reusing method (`<name>-k5`) with `<name>` itself.
FULL_STEP_FORM = "k=1 form"


def full_step_form(method):
    """`<name>` for a reusing method `<name>-k<every>`, else None."""
    base, _, every = method.rpartition("-k")
    return base if base and every.isdigit() else None


def canonical(name):
    """A method's name as in `METHODS` (`"tram"` is TRAM-θ_{t-1})."""
    name = name.strip().lower()
    return "tram-previous_step" if name == "tram" else name


def sweep_methods():
    """`(label, method, options)` of every point of the sweep, Adam first."""
    points = [("adam", "adam", {})]
    for method, (argument, values) in SWEEP.items():
        for value in values:
            points.append((f"{method} {argument}={value:g}", method, {argument: value}))
    return points
