"""What a user runs today instead, on the same model, data and batch.

Each peer trains with Adam (1e-3) and, for SAM, rho 0.05, and exposes
`epoch()` (one pass over the data, batch by batch, in order; returns the
seconds per step after the first, so that the epoch's setup is left out) and
`state_bytes()` (the weights and optimizer state it keeps between steps).

- TensorFlow: `tf_keras.models.experimental.SharpnessAwareMinimization`
  around the same architecture built with `tf_keras`, trained with `fit`.
- JAX: `optax.contrib.sam` (opaque mode: both gradients in one `update`)
  driving the Keras model through `stateless_call` in a jitted step.
- PyTorch: a plain loop over the Keras model (a `torch.nn.Module` on this
  backend) with SAM written from its equation: `g = ∇L(θ)`,
  `ε = ρ g / ‖g‖`, descend along `∇L(θ + ε)` taken at `θ`.
"""

import time

import numpy as np

import models

RHO = 0.05
LEARNING_RATE = 1e-3


def step_timer(callback_class):
    """A `fit` callback (of `callback_class`) timing the steps after the first,
    so that an epoch's setup is left out: `.seconds()` per step."""

    class StepTimer(callback_class):
        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def on_epoch_begin(self, epoch, logs=None):
            self.ends = []

        def seconds(self):
            return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)

    return StepTimer()


def nbytes(arrays):
    """Total bytes of Keras variables or TensorFlow, JAX or torch arrays."""
    return int(sum(int(np.prod(a.shape)) * _itemsize(a.dtype) for a in arrays))


def _itemsize(dtype):
    if isinstance(dtype, str):  # Keras variables name their dtype
        return np.dtype(dtype).itemsize
    return getattr(dtype, "itemsize", None) or dtype.size  # torch / NumPy, or tf.DType


class TfKeras:
    """tf_keras `fit`, plain or wrapped in its experimental SAM model."""

    def __init__(self, model_name, x, y, sam, jit_compile):
        import tf_keras

        model = models.build(model_name, tf_keras)
        if sam:
            model = tf_keras.models.experimental.SharpnessAwareMinimization(model, rho=RHO)
        model.compile(
            optimizer=tf_keras.optimizers.Adam(LEARNING_RATE),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        self.model, self.x, self.y = model, x, y
        self.batch = models.SPECS[model_name][0]
        self.timer = step_timer(tf_keras.callbacks.Callback)

    def epoch(self):
        self.model.fit(self.x, self.y, batch_size=self.batch, epochs=1, verbose=0,
                       shuffle=False, callbacks=[self.timer])
        return self.timer.seconds()

    def state_bytes(self):
        return nbytes(self.model.weights + self.model.optimizer.variables())


class Optax:
    """A jitted optax step over `model.stateless_call`."""

    def __init__(self, model, model_name, x, y, sam):
        import jax
        import optax

        batch = models.SPECS[model_name][0]
        self.batches = [
            (jax.numpy.asarray(x[i:i + batch]), jax.numpy.asarray(y[i:i + batch]))
            for i in range(0, len(x), batch)
        ]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss(trainable, x, y):
            logits, _ = model.stateless_call(trainable, non_trainable, x, training=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        adam = optax.adam(LEARNING_RATE)
        if sam:
            ascent = optax.chain(optax.contrib.normalize(), optax.sgd(RHO))
            optimizer = optax.contrib.sam(adam, ascent, opaque_mode=True)
        else:
            optimizer = adam

        def step(trainable, state, x, y):
            grads = jax.grad(loss)(trainable, x, y)
            extra = {"grad_fn": lambda p, _: jax.grad(loss)(p, x, y)} if sam else {}
            updates, state = optimizer.update(grads, state, trainable, **extra)
            return optax.apply_updates(trainable, updates), state

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.trainable = [v.value for v in model.trainable_variables]
        self.state = optimizer.init(self.trainable)

    def epoch(self):
        for i, (x, y) in enumerate(self.batches):
            self.trainable, self.state = self.step(self.trainable, self.state, x, y)
            if i == 0:
                self.trainable[0].block_until_ready()
                start = time.perf_counter()
        self.trainable[0].block_until_ready()
        return (time.perf_counter() - start) / (len(self.batches) - 1)

    def state_bytes(self):
        import jax

        return nbytes(jax.tree.leaves((self.trainable, self.state)))


class Torch:
    """A plain PyTorch loop over the Keras model; SAM from its equation."""

    def __init__(self, model, model_name, x, y, sam):
        import torch

        batch = models.SPECS[model_name][0]
        self.batches = [
            (torch.as_tensor(x[i:i + batch]), torch.as_tensor(y[i:i + batch]).long())
            for i in range(0, len(x), batch)
        ]
        self.model, self.sam = model, sam
        self.params = [v.value for v in model.trainable_variables]
        self.optimizer = torch.optim.Adam(self.params, lr=LEARNING_RATE)

    def _backward(self, x, y):
        import torch

        loss = torch.nn.functional.cross_entropy(self.model(x, training=True), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def epoch(self):
        import torch

        for i, (x, y) in enumerate(self.batches):
            if i == 1:
                start = time.perf_counter()
            self._backward(x, y)
            if self.sam:
                with torch.no_grad():
                    grads = [p.grad for p in self.params]
                    norm = torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                    eps = torch._foreach_mul(grads, RHO / (norm + 1e-12))
                    torch._foreach_add_(self.params, eps)
                self._backward(x, y)
                with torch.no_grad():
                    torch._foreach_sub_(self.params, eps)
            self.optimizer.step()
        return (time.perf_counter() - start) / (len(self.batches) - 1)

    def state_bytes(self):
        state = [t for s in self.optimizer.state.values() for t in s.values()
                 if hasattr(t, "shape") and t.ndim > 0]
        return nbytes(self.params + state)


def build(backend, model_name, keras_model, x, y, sam, jit_compile):
    """The peer of `backend`, on a fresh copy of the benchmark model."""
    if backend == "tensorflow":
        return TfKeras(model_name, x, y, sam, jit_compile)
    if backend == "jax":
        return Optax(keras_model, model_name, x, y, sam)
    return Torch(keras_model, model_name, x, y, sam)
