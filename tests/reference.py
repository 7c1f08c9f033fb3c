"""Independent NumPy closed forms (float64) for the tests.

The model is a two-layer MLP, `softmax(tanh(x W1 + b1) W2 + b2)`, trained with
sparse categorical cross-entropy (Keras's `sum_over_batch_size` reduction:
`Σ w_i l_i / n`) plus an optional L2 penalty `l2 · Σ W1²` on the first kernel.
"""

import numpy as np


def mlp_loss_and_grads(weights, x, y, sample_weight=None, l2=0.0, dropout=None):
    """Loss and gradients; `dropout` is an optional scaled mask on the hidden layer."""
    w1, b1, w2, b2 = weights
    n = x.shape[0]
    sample_weight = np.ones(n) if sample_weight is None else sample_weight
    dropout = np.ones((n, w1.shape[1])) if dropout is None else dropout
    h = np.tanh(x @ w1 + b1)
    z = (h * dropout) @ w2 + b2
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    onehot = np.eye(z.shape[1])[y]
    losses = -np.log((p * onehot).sum(axis=1))
    loss = (sample_weight * losses).sum() / n + l2 * (w1**2).sum()
    dz = (p - onehot) * sample_weight[:, None] / n
    dw2 = (h * dropout).T @ dz
    db2 = dz.sum(axis=0)
    da = (dz @ w2.T) * dropout * (1 - h**2)
    dw1 = x.T @ da + 2 * l2 * w1
    db1 = da.sum(axis=0)
    return loss, [dw1, db1, dw2, db2]


def global_norm(tensors):
    return np.sqrt(sum((t**2).sum() for t in tensors))


def sam_epsilon(grads, weights, rho):
    norm = global_norm(grads)
    if norm == 0:
        return [np.zeros_like(g) for g in grads]
    return [rho * g / norm for g in grads]


def asam_epsilon(grads, weights, rho, eta):
    t = [np.abs(w) + eta for w in weights]
    norm = global_norm([ti * g for ti, g in zip(t, grads)])
    if norm == 0:
        return [np.zeros_like(g) for g in grads]
    return [rho * ti**2 * g / norm for ti, g in zip(t, grads)]


def train_sgd(weights, batches, epsilon_fn, learning_rates, l2=0.0, dropout=None,
              clip=None, accumulate=1):
    """Sharpness-aware SGD over `batches` of `(x, y, sample_weight)`.

    `learning_rates` is one number, or one per update. Both gradients of a
    step see the same `dropout` mask. `clip` maps the descent gradient before
    the update; with `accumulate` > 1 the descent gradients of that many
    batches, each taken at the same weights, are averaged into one update.
    Returns the final weights and, per batch, the clean gradient norm.
    """
    weights = [np.array(w, dtype=np.float64) for w in weights]
    learning_rates = np.broadcast_to(learning_rates, (len(batches) // accumulate,))
    grad_norms, pending = [], []
    for index, (x, y, sample_weight) in enumerate(batches):
        _, grads = mlp_loss_and_grads(weights, x, y, sample_weight, l2, dropout)
        grad_norms.append(global_norm(grads))
        eps = epsilon_fn(grads, weights)
        perturbed = [w + e for w, e in zip(weights, eps)]
        _, descent = mlp_loss_and_grads(perturbed, x, y, sample_weight, l2, dropout)
        pending.append(descent)
        if len(pending) == accumulate:
            descent = [np.mean(parts, axis=0) for parts in zip(*pending)]
            descent = clip(descent) if clip else descent
            lr = learning_rates[index // accumulate]
            weights = [w - lr * g for w, g in zip(weights, descent)]
            pending = []
    return weights, grad_norms


def clip_global_norm(tensors, limit):
    return [t * min(1.0, limit / global_norm(tensors)) for t in tensors]


def clip_each_norm(tensors, limit):
    return [t * min(1.0, limit / global_norm([t])) for t in tensors]


# ---------------------------------------------------------------- trust region


def mlp_logits(weights, x):
    w1, b1, w2, b2 = weights
    return np.tanh(x @ w1 + b1) @ w2 + b2


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl(reference_logits, current_logits, sample_weight=None):
    """Mean over examples (weighted: Σ w KL / Σ w) of KL(reference ‖ current)."""
    log_p, log_q = log_softmax(reference_logits), log_softmax(current_logits)
    per_example = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    if sample_weight is None:
        return per_example.mean()
    return (sample_weight * per_example).sum() / sample_weight.sum()


def kl_grads(weights, x, reference_logits):
    """Gradient of `kl(reference_logits, mlp_logits(weights, x))` in `weights`."""
    w1, b1, w2, b2 = weights
    h = np.tanh(x @ w1 + b1)
    q = np.exp(log_softmax(h @ w2 + b2))
    dz = (q - np.exp(log_softmax(reference_logits))) / x.shape[0]
    da = (dz @ w2.T) * (1 - h**2)
    return [x.T @ da, da.sum(axis=0), h.T @ dz, dz.sum(axis=0)]


def fsam_epsilon(grads, weights, rho, eta):
    inverse = [1.0 / (1.0 + eta * g**2) for g in grads]
    norm = np.sqrt(sum((d * g * g).sum() for d, g in zip(inverse, grads)))
    return [rho * d * g / norm for d, g in zip(inverse, grads)]


def train_tram(weights, x, y, steps, learning_rate, variant, scale=1.0, max_radius=None,
               accumulate=1, fraction=1.0):
    """Full-batch TRAM-θ_{t-1} / TRAM-θ_0 with SGD; returns weights and d per step.

    With `accumulate` > 1, the descent gradients of that many steps are
    averaged into one update, and θ_{t-1} is the weights before the last
    update (the reference moves with the updates, not with the micro-steps).
    With `fraction` < 1, d is measured on the first ceil(fraction · n) examples.
    `scale` is one number or one per step.
    """
    weights = [np.array(w, dtype=np.float64) for w in weights]
    initial = [w.copy() for w in weights]
    reference = initial
    divergences, pending = [], []
    for step in range(steps):
        _, grads = mlp_loss_and_grads(weights, x, y)
        k = int(np.ceil(fraction * len(x)))
        d = kl(mlp_logits(reference, x[:k]), mlp_logits(weights, x[:k]))
        divergences.append(d)
        s = scale[step] if np.ndim(scale) else scale  # one per step, if scheduled
        radius = s * d if max_radius is None else min(s * d, max_radius)
        eps = asam_epsilon(grads, weights, radius, 0.0)
        _, descent = mlp_loss_and_grads([w + e for w, e in zip(weights, eps)], x, y)
        pending.append(descent)
        if len(pending) < accumulate:
            continue
        descent = [np.mean(parts, axis=0) for parts in zip(*pending)]
        pending = []
        previous = weights
        weights = [w - learning_rate * g for w, g in zip(weights, descent)]
        reference = previous if variant == "previous_step" else initial
    return weights, divergences


def train_penalty(weights, x, y, steps, learning_rate, weight, decay):
    """Full-batch SGD on `L + weight · KL(reference ‖ current)`.

    The reference is an EMA of past weights, `v ← decay·v + (1-decay)·θ_t`
    (the weights themselves at the first step); `decay=0` is TRPO's previous
    step. Returns weights and d per step.
    """
    weights = [np.array(w, dtype=np.float64) for w in weights]
    average = [w.copy() for w in weights]
    divergences = []
    for _ in range(steps):
        reference_logits = mlp_logits(average, x)
        divergences.append(kl(reference_logits, mlp_logits(weights, x)))
        _, grads = mlp_loss_and_grads(weights, x, y)
        penalty = kl_grads(weights, x, reference_logits)
        average = [decay * v + (1 - decay) * w for v, w in zip(average, weights)]
        weights = [
            w - learning_rate * (g + weight * p) for w, g, p in zip(weights, grads, penalty)
        ]
    return weights, divergences


# ------------------------------------------------- the released formulation


def released_epsilon(grads, weights, radius, adaptive=True):
    """The authors' released perturbation: `r · θ² / (‖|θ| g‖ + 1e-12)`, or
    `r / (‖g‖ + 1e-12)` on every weight when not adaptive."""
    if adaptive:
        norm = global_norm([np.abs(w) * g for w, g in zip(weights, grads)])
        return [radius * w**2 / (norm + 1e-12) for w in weights]
    norm = global_norm(grads)
    return [radius * np.ones_like(g) / (norm + 1e-12) for g in grads]


def released_kl(reference_logits, current_logits, logit_scale=1.0):
    """torch's `kl_div(log_softmax(current), log_softmax(reference),
    log_target=True, reduction="mean")`, the mean over every element, divided
    by the batch size, times `logit_scale` (padding, if any, included)."""
    log_p, log_q = log_softmax(reference_logits), log_softmax(current_logits)
    elementwise = np.exp(log_p) * (log_p - log_q)
    return logit_scale * elementwise.mean() / reference_logits.shape[0]


def train_released_tram(weights, x, y, steps, learning_rate, variant, logit_scale=1.0):
    """Full-batch TRAM-θ_{t-1} / TRAM-θ_0 with SGD in the released formulation;
    returns the weights and d per step."""
    weights = [np.array(w, dtype=np.float64) for w in weights]
    initial = [w.copy() for w in weights]
    reference = initial
    divergences = []
    for _ in range(steps):
        _, grads = mlp_loss_and_grads(weights, x, y)
        d = released_kl(mlp_logits(reference, x), mlp_logits(weights, x), logit_scale)
        divergences.append(d)
        eps = released_epsilon(grads, weights, d)
        _, descent = mlp_loss_and_grads([w + e for w, e in zip(weights, eps)], x, y)
        previous = weights
        weights = [w - learning_rate * g for w, g in zip(weights, descent)]
        reference = previous if variant == "previous_step" else initial
    return weights, divergences


def linear_sequence_loss_and_grads(weights, x, y, sample_weight):
    """A `Dense` layer over time, `z = x W + b` of shape `(batch, time,
    classes)`, with Keras's sparse cross-entropy: `Σ w·l / (batch · time)`."""
    kernel, bias = weights
    z = x @ kernel + bias
    p = np.exp(log_softmax(z))
    onehot = np.eye(z.shape[-1])[y]
    count = y.size
    loss = (sample_weight * -np.log((p * onehot).sum(-1))).sum() / count
    dz = (p - onehot) * sample_weight[..., None] / count
    return loss, [np.einsum("btf,btc->fc", x, dz), dz.sum(axis=(0, 1))]


# ---------------------------------------------------------------- reuse


def reuse_direction(grads, perturbed, tolerance=1e-5):
    """LookSAM's `g_v = g_s − (⟨g, g_s⟩ / ‖g‖²) g` (0 where `g = 0`, and
    where it is below `tolerance · ‖g_s‖`, float32's rounding)."""
    squared = sum((g * g).sum() for g in grads)
    coefficient = 0.0 if squared == 0 else sum((g * s).sum() for g, s in zip(grads, perturbed)) / squared
    direction = [s - coefficient * g for g, s in zip(grads, perturbed)]
    if global_norm(direction) <= tolerance * global_norm(perturbed):
        return [np.zeros_like(d) for d in direction]
    return direction


def train_reuse(weights, batches, every, strength, learning_rate, epsilon_fn=None,
                accumulate=1, scale=1.0):
    """SGD with the full sharpness-aware step on updates `t % every == 0`
    and LookSAM's reuse on the others, over `batches` of `(x, y, sample_weight)`.

    The full step perturbs by `epsilon_fn(g, w)`, or, without one, is
    TRAM-θ_{t-1}'s (ASAM's ε with η = 0 and radius `scale · KL(θ_{t-1} ‖ θ)`
    on the batch, θ_{t-1} the weights before the last update). With `accumulate` >
    1 the micro-steps of an update are averaged, and so are their `g_v`.
    Returns the final weights and TRAM's radius at each full step (None
    for each full step with `epsilon_fn`).
    """
    weights = [np.array(w, dtype=np.float64) for w in weights]
    previous = weights
    direction = [np.zeros_like(w) for w in weights]
    radii, pending, directions = [], [], []
    for index, (x, y, sample_weight) in enumerate(batches):
        update = index // accumulate
        _, grads = mlp_loss_and_grads(weights, x, y, sample_weight)
        if update % every == 0:
            if epsilon_fn is None:
                radius = scale * kl(mlp_logits(previous, x), mlp_logits(weights, x))
                eps = asam_epsilon(grads, weights, radius, 0.0)
                radii.append(radius)
            else:
                eps = epsilon_fn(grads, weights)
                radii.append(None)
            _, descent = mlp_loss_and_grads(
                [w + e for w, e in zip(weights, eps)], x, y, sample_weight
            )
            directions.append(reuse_direction(grads, descent))
        else:
            norm = global_norm(direction)
            reused = 0.0 if norm == 0 else strength * global_norm(grads) / norm
            descent = [g + reused * v for g, v in zip(grads, direction)]
        pending.append(descent)
        if len(pending) < accumulate:
            continue
        if directions:
            direction = [np.mean(parts, axis=0) for parts in zip(*directions)]
        descent = [np.mean(parts, axis=0) for parts in zip(*pending)]
        pending, directions = [], []
        previous = weights
        weights = [w - learning_rate * g for w, g in zip(weights, descent)]
    return weights, radii


def polynomial_decay(initial, decay_steps, end, step):
    """Keras's `PolynomialDecay` with power 1 (no cycle) at `step`."""
    fraction = min(step, decay_steps) / decay_steps
    return (initial - end) * (1 - fraction) + end


def cosine_decay(initial, decay_steps, step, alpha=0.0):
    """Keras's `CosineDecay` (no warmup) at `step`."""
    fraction = min(step, decay_steps) / decay_steps
    return initial * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * fraction)) + alpha)


def follow_learning_rate(rho_max, rho_min, lr, lr_max, lr_min=0.0):
    """GSAM's `ρ_t = ρ_min + (ρ_max − ρ_min)(lr_t − lr_min)/(lr_max − lr_min)`."""
    if lr_max == lr_min:
        return rho_max
    return max(rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min), 0.0)


def selected_epsilon(epsilon_fn, selected):
    """`epsilon_fn` over the weights at positions `selected` only; ε = 0 elsewhere."""

    def epsilon(grads, weights):
        parts = epsilon_fn([grads[i] for i in selected], [weights[i] for i in selected])
        eps = [np.zeros_like(w) for w in weights]
        for i, e in zip(selected, parts):
            eps[i] = e
        return eps

    return epsilon


def train_gsam(weights, batches, rhos, alpha, learning_rates):
    """GSAM with SGD over `batches`: `ε = ρ_t g / ‖g‖`, `g_p = ∇L(θ + ε)`,
    descent `g_p − α (g − (⟨g, g_p⟩ / ‖g_p‖²) g_p)`; `rhos` and
    `learning_rates` hold one value per update."""
    weights = [np.array(w, dtype=np.float64) for w in weights]
    for t, (x, y, sample_weight) in enumerate(batches):
        _, grads = mlp_loss_and_grads(weights, x, y, sample_weight)
        eps = sam_epsilon(grads, weights, rhos[t])
        _, g_p = mlp_loss_and_grads([w + e for w, e in zip(weights, eps)], x, y, sample_weight)
        squared = sum((p * p).sum() for p in g_p)
        ratio = 0.0 if squared == 0 else sum((g * p).sum() for g, p in zip(grads, g_p)) / squared
        descent = [p - alpha * (g - ratio * p) for g, p in zip(grads, g_p)]
        weights = [w - learning_rates[t] * d for w, d in zip(weights, descent)]
    return weights
