"""The three benchmark models and their data, built with any Keras-2/3 API.

`build(name, keras)` takes the `keras` module to build with, so the same
architecture runs under Keras 3 (every backend) and under `tf_keras` (the
TensorFlow peer). Every model maps its input to 10 logits.
"""

import numpy as np

# name -> (batch size, input shape, input dtype, layer the input noise goes on)
SPECS = {
    "mlp": (128, (256,), "float32", None),
    "conv": (64, (32, 32, 3), "float32", None),
    "transformer": (64, (32,), "int32", "embedding"),
}
VOCABULARY = 1000
CLASSES = 10


def build(name, keras):
    """A fresh model `name` ("mlp", "conv", "transformer") built with `keras`."""
    _, shape, dtype, _ = SPECS[name]
    inputs = keras.Input(shape, dtype=dtype)
    layers = keras.layers
    if name == "mlp":  # 256 -> 512 x 3 -> 10
        hidden = inputs
        for _ in range(3):
            hidden = layers.Dense(512, activation="relu")(hidden)
    elif name == "conv":  # three 3x3 convolutions, global pooling
        hidden = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
        hidden = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(hidden)
        hidden = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(hidden)
        hidden = layers.GlobalAveragePooling2D()(hidden)
    else:  # one post-norm encoder block over 32 tokens, width 64, 4 heads
        hidden = layers.Embedding(VOCABULARY, 64, name="embedding")(inputs)
        attended = layers.MultiHeadAttention(num_heads=4, key_dim=16)(hidden, hidden)
        hidden = layers.LayerNormalization()(hidden + attended)
        fed = layers.Dense(64)(layers.Dense(128, activation="relu")(hidden))
        hidden = layers.LayerNormalization()(hidden + fed)
        hidden = layers.GlobalAveragePooling1D()(hidden)
    return keras.Model(inputs, layers.Dense(CLASSES)(hidden))


def data(name, steps, seed=0):
    """`steps` batches of random inputs and labels for model `name`."""
    batch, shape, dtype, _ = SPECS[name]
    rng = np.random.default_rng(seed)
    size = (batch * steps,) + shape
    if dtype == "int32":
        x = rng.integers(0, VOCABULARY, size=size).astype("int32")
    else:
        x = rng.normal(size=size).astype("float32")
    y = rng.integers(0, CLASSES, size=batch * steps).astype("int32")
    return x, y
