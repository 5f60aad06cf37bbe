"""The spec's own statement of scores and visibility, in float64.

The reference is one of the implementations the spec checks, so the invariants that compare
against "the explicit mask" or "the capped scores" build those here, from the formulas in
SPEC.md, rather than borrowing them from refattn.
"""

from __future__ import annotations

import numpy as np


def visibility(query, key, options) -> np.ndarray:
    """(B..., Hq, Lq, Lk) bool: key j visible to query i under every mask of the call.

    causal:  j <= i + offset, offset = 0 (top-left) or Lk - Lq (bottom-right)
    window:  i + offset - left <= j <= i + offset + right (None: unbounded)
    kv_lengths: j < kv_lengths[b];  mask: mask[..., i, j];  bias: bias[..., i, j] > -inf
    """
    *batch, Hq, Lq, _ = query.shape
    Lk = key.shape[-2]
    i = np.arange(Lq).reshape(Lq, 1)
    j = np.arange(Lk).reshape(1, Lk)
    causal = options.get("causal")
    causal = "top_left" if causal is True else causal
    offset = Lk - Lq if causal == "bottom_right" else 0
    seen = np.ones((*batch, Hq, Lq, Lk), dtype=bool)
    if causal:
        seen &= j <= i + offset
    if options.get("window") is not None:
        left, right = options["window"]
        if left is not None:
            seen &= j >= i + offset - left
        if right is not None:
            seen &= j <= i + offset + right
    if options.get("kv_lengths") is not None:
        lengths = np.broadcast_to(options["kv_lengths"], tuple(batch))
        seen &= j < lengths.reshape(*batch, 1, 1, 1)
    if options.get("mask") is not None:
        seen &= options["mask"]
    if options.get("bias") is not None:
        seen &= options["bias"] > -np.inf
    return seen


def scores(query, key, options) -> np.ndarray:
    """(B..., Hq, Lq, Lk) float64: softcap·tanh(scale·q·k / softcap) + bias, before masking."""
    q = query.astype(np.float64)
    k = np.repeat(key.astype(np.float64), query.shape[-3] // key.shape[-3], axis=-3)
    scale = options.get("scale")
    s = np.einsum("...id,...jd->...ij", q, k) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if options.get("softcap") is not None:
        s = options["softcap"] * np.tanh(s / options["softcap"])
    if options.get("bias") is not None:
        s = s + options["bias"].astype(np.float64)
    return s


def softmax_attention(scores_: np.ndarray, visible: np.ndarray, value) -> np.ndarray:
    """Σ_j softmax_j(scores) v_j over visible keys, 0 for a row that sees none, in float64."""
    v = np.repeat(value.astype(np.float64), scores_.shape[-3] // value.shape[-3], axis=-3)
    s = np.where(visible, scores_, -np.inf)
    top = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
    e = np.exp(s - np.where(np.isfinite(top), top, 0))
    total = e.sum(axis=-1, keepdims=True)
    return (e / np.where(total > 0, total, 1)) @ v
