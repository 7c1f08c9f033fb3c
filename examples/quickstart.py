"""Quickstart: plain Adam, SAM, ASAM and TRAM on real handwritten digits, with a domain shift.

    pip install -e ".[jax]" scikit-learn
    KERAS_BACKEND=jax python examples/quickstart.py [--epochs 30] [--seed 0]

Trains the same small network on scikit-learn's 8x8 handwritten digits with
each method, then reports accuracy on held-out digits (in domain) and on the
same held-out digits shifted by one pixel with added noise (out of domain).
Runs offline in well under a minute on a CPU, on any Keras backend.
"""

import argparse

import keras
import numpy as np

import keras_tram


def load_digits(seed):
    from sklearn.datasets import load_digits as sklearn_digits

    images, labels = sklearn_digits(return_X_y=True)
    images = images.reshape(-1, 8, 8).astype("float32") / 16.0
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], labels[order]
    split = int(0.6 * len(images))
    rng = np.random.default_rng(seed + 1)
    shifted = np.roll(images[split:], shift=1, axis=2)
    shifted = np.clip(shifted + rng.normal(0, 0.15, shifted.shape), 0, 1).astype("float32")
    return (images[:split], labels[:split]), {
        "in-domain": (images[split:], labels[split:]),
        "shifted+noise": (shifted, labels[split:]),
    }


def build_model():
    return keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(10),
        ]
    )


METHODS = {
    "adam": lambda model: model,
    "sam": lambda model: keras_tram.SAM(model, rho=0.05),
    "asam": lambda model: keras_tram.ASAM(model, rho=0.5),
    "tram-θ_{t-1}": lambda model: keras_tram.TRAM(model, variant="previous_step"),
    "tram-x": lambda model: keras_tram.TRAM(model, variant="input_noise", noise_stddev=0.1),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    (x_train, y_train), domains = load_digits(args.seed)
    print(f"backend: {keras.backend.backend()}, {len(x_train)} training digits")
    print(f"{'method':<14}" + "".join(f"{name:>16}" for name in domains))
    for name in args.methods.split(","):
        if name not in METHODS:
            parser.error(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
        wrap = METHODS[name]
        keras.utils.set_random_seed(args.seed)
        trainer = wrap(build_model())
        trainer.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        trainer.fit(x_train, y_train, batch_size=32, epochs=args.epochs, verbose=0)
        accuracies = [
            trainer.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
            for x, y in domains.values()
        ]
        print(f"{name:<14}" + "".join(f"{a:>16.3f}" for a in accuracies))


if __name__ == "__main__":
    main()
