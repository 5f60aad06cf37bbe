"""Layout translations shared by the adapters: refattn's (B..., H, L, D) to a peer's 4-D arrays.

refattn takes any number of batch dims; PyTorch's flash kernel, JAX and ONNX take exactly one.
Flattening the batch dims into one B (B = 1 when there are none) and back is a pure change of
layout: every batch element is computed on its own in all of them.
"""

from __future__ import annotations

import math

import numpy as np


def batch_of(query: np.ndarray) -> tuple[int, ...]:
    """The batch dims B... of a (B..., H, L, D) array."""
    return tuple(query.shape[:-3])


def to_4d(x: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """(B..., H, L, D) -> (B, H, L, D) with B = prod(B...), 1 without batch dims."""
    return x.reshape(math.prod(batch), *x.shape[len(batch) :])


def from_4d(x: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """(B, ...) -> (B..., ...): undo `to_4d` on an output."""
    return x.reshape(*batch, *x.shape[1:])


def scores_to_4d(x: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """A mask or bias broadcastable to (B..., Hq, Lq, Lk) as one broadcastable to (B, Hq, Lq, Lk).

    Without batch dims of its own, x is returned as it is: it broadcasts the same way against
    (B, Hq, Lq, Lk). Otherwise its batch dims are flattened into one (1 when each was 1), and
    the Hq, Lq and Lk dims keep their size, so a peer sees the broadcast as given.
    """
    if x.ndim <= 3:
        return x
    x = x.reshape((1,) * (len(batch) + 3 - x.ndim) + x.shape)
    leading, rest = x.shape[: len(batch)], x.shape[len(batch) :]
    if math.prod(leading) == 1:
        return x.reshape(1, *rest)
    return np.broadcast_to(x, (*batch, *rest)).reshape(math.prod(batch), *rest)


def lengths_to_1d(kv_lengths, batch: tuple[int, ...]) -> np.ndarray:
    """kv_lengths broadcastable to (B...) as a (B,) int64 array."""
    return np.broadcast_to(np.asarray(kv_lengths), batch).reshape(-1).astype(np.int64)


def scores_from_4d(grad: np.ndarray, shape: tuple[int, ...], batch: tuple[int, ...]) -> np.ndarray:
    """The gradient with respect to an x of `shape` that was given to a peer as
    scores_to_4d(x, batch), from the gradient with respect to what the peer was given: back in
    x's shape, summed over the batch dims that scores_to_4d broadcast x along."""
    if len(shape) <= 3:
        return grad
    padded = (1,) * (len(batch) + 3 - len(shape)) + tuple(shape)
    leading, rest = padded[: len(batch)], padded[len(batch) :]
    if math.prod(leading) == 1:
        return grad.reshape(shape)
    grad = grad.reshape(*batch, *rest)
    spread = tuple(axis for axis, n in enumerate(leading) if n == 1)
    return grad.sum(axis=spread, keepdims=True).reshape(shape)
