"""The KL divergence between two tensors of logits, a position at a time,
in float32 and in pieces of the vocabulary: what a language model's trust
region costs in memory is then less than one tensor of its logits' size.

    >>> import numpy as np
    >>> z = np.log(np.array([[0.5, 0.5]], "float32"))
    >>> y = np.log(np.array([[0.9, 0.1]], "float32"))
    >>> round(float(kl_of_logits(z, y)[0]), 4)  # KL(softmax(z) ‖ softmax(y))
    0.5108
"""

from keras import ops

# A vocabulary longer than this is taken in pieces (see `kl_of_logits`).
_WHOLE_VOCABULARY = 512
_PIECES = 8
_LONGEST_PIECE = 8192


def _vocabulary_pieces(size):
    """`(start, stop)` of the pieces the last axis is taken in: the whole of a
    short one (a classifier's classes), else at least `_PIECES` pieces of at
    most `_LONGEST_PIECE` entries."""
    if size <= _WHOLE_VOCABULARY:
        return [(0, size)]
    count = max(_PIECES, -(-size // _LONGEST_PIECE))
    length = -(-size // count)
    return [(start, min(start + length, size)) for start in range(0, size, length)]


def kl_of_logits(z, y):
    """`KL(softmax(z) ‖ softmax(y))` at each position, in float32, as
    `Σ e (z − y) / s_z − (max z − max y) − (log s_z − log s_y)` with
    `e = exp(z − max z)` and `s_z = Σ e`.

    Every term is computed at the size of the differences, not of the
    logits (`z − y` is formed before it meets `e`: `Σ e z − Σ e y` would
    lose ~1e-5 at GPT-2's logit scale of −80), and a long vocabulary is
    taken in pieces of an eighth of it or less, so what is alive at once
    besides `z` and `y` (a piece of each cast to float32, `e`, `z − y`) stays
    under one tensor of the logits' size: a `(batch, time, vocabulary)`
    tensor of GPT-2 at 8 × 128 is 206 MB. Written whole it kept five
    (`log p`, `log q`, `p`, `log p − log q`, its product with `p`)."""
    max_z = ops.cast(ops.max(z, axis=-1), "float32")
    max_y = ops.cast(ops.max(y, axis=-1), "float32")
    s_z = s_y = cross = 0.0
    size = ops.shape(z)[-1]
    pieces = _vocabulary_pieces(size) if isinstance(size, int) else [(0, size)]
    for start, stop in pieces:
        z_piece = ops.cast(z[..., start:stop], "float32")
        y_piece = ops.cast(y[..., start:stop], "float32")
        e = ops.exp(z_piece - ops.expand_dims(_after(max_z, cross), -1))
        s_z = s_z + ops.sum(e, axis=-1)
        cross = cross + ops.sum(e * (z_piece - y_piece), axis=-1)
        del e
        s_y = s_y + ops.sum(ops.exp(y_piece - ops.expand_dims(_after(max_y, s_z), -1)), axis=-1)
    return cross / s_z - (max_z - max_y) - (ops.log(s_z) - ops.log(s_y))


def _after(value, previous):
    """`value`, made to depend on `previous`: a compiler (XLA) or a graph
    executor (TensorFlow's) then forms one piece's exponentials only once
    the piece before is summed, instead of all pieces at once (2.2 tensors
    of the logits' size under XLA on a CPU, against 0.3 in sequence)."""
    return value if isinstance(previous, float) else value + 0.0 * previous
