"""Which keys each query may see: the structural masks, spelled out as bool arrays.

True means "may attend". Query i and key j are 0-based positions in their own sequences.

- causal, top-left:     j <= i            (PyTorch's is_causal, JAX's is_causal)
- causal, bottom-right: j <= i + Lk - Lq  (the queries are the *last* Lq of the Lk tokens,
                                           as when decoding against a KV cache)
- window (left, right): i + offset - left <= j <= i + offset + right, offset from the causal
                        alignment (top-left, 0, when there is no causal mask); None = unbounded
- kv_lengths:           j < kv_lengths[b]  (the rest of the keys are padding)

All masks compose: a key is visible only if every mask given allows it.
"""

from __future__ import annotations

import numpy as np

from refattn._checks import check_causal, check_window


def alignment_offset(Lq: int, Lk: int, alignment: str | None) -> int:
    """How far key positions run ahead of query positions: 0 top-left, Lk - Lq bottom-right."""
    return Lk - Lq if alignment == "bottom_right" else 0


def _diagonal_distance(Lq: int, Lk: int, alignment: str | None) -> np.ndarray:
    """(Lq, Lk) array of j - (i + offset): how far key j lies ahead of query i's diagonal."""
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    return j - (i + alignment_offset(Lq, Lk, alignment))


def causal_mask(Lq: int, Lk: int, alignment="top_left") -> np.ndarray:
    """(Lq, Lk) bool: key j visible to query i iff j <= i + offset."""
    return _diagonal_distance(Lq, Lk, check_causal(alignment)) <= 0


def window_mask(Lq: int, Lk: int, window, alignment="top_left") -> np.ndarray:
    """(Lq, Lk) bool: key j visible iff -left <= j - (i + offset) <= right."""
    left, right = check_window(window)
    distance = _diagonal_distance(Lq, Lk, check_causal(alignment))
    visible = np.ones((Lq, Lk), dtype=bool)
    if left is not None:
        visible &= distance >= -left
    if right is not None:
        visible &= distance <= right
    return visible


def padding_mask(kv_lengths, Lk: int) -> np.ndarray:
    """(B..., 1, Lk) bool: key j visible iff j < kv_lengths[b]; broadcasts over queries."""
    lengths = np.asarray(kv_lengths)
    return np.arange(Lk) < lengths[..., None, None]


def visible(Lq: int, Lk: int, *, causal=None, window=None, kv_lengths=None, mask=None):
    """Bool array broadcastable to (..., Lq, Lk): every mask given, composed.

    kv_lengths holds one length per leading index of the scores, (...) without (Lq, Lk);
    causal and window are checked values (see `refattn._checks`).
    """
    seen = np.ones((Lq, Lk), dtype=bool)
    if causal is not None:
        seen = seen & causal_mask(Lq, Lk, causal)
    if window is not None:
        seen = seen & window_mask(Lq, Lk, window, causal or "top_left")
    if kv_lengths is not None:
        seen = seen & padding_mask(kv_lengths, Lk)
    if mask is not None:
        seen = seen & mask
    return seen
