"""Attention with other similarity functions: additive (Bahdanau) and general (Luong).

Only step 1 changes; normalising and weighing are the reference's, with the same masks and the
same fully masked rule (output 0, weights 0).

    additive (Bahdanau et al., 2015):  s_ij = vᵀ·tanh(W_q·q_i + W_k·k_j)
    general  (Luong et al., 2015):     s_ij = q_iᵀ·W·k_j

Shapes: query (B..., Lq, Dq), key (B..., Lk, Dkey), value (B..., Lk, Dv) -> out (B..., Lq, Dv).
There are no heads here; masks broadcast to (B..., Lq, Lk) and kv_lengths to (B...).
"""

from __future__ import annotations

import numpy as np

from refattn import masks
from refattn._checks import (
    check_causal,
    check_flag,
    check_float_array,
    check_kv_lengths,
    check_mask,
    check_same_dtype,
    check_size,
    check_window,
    compute_dtype,
)
from refattn.reference import _masked_softmax, _weigh


def additive_attention(
    query,
    key,
    value,
    *,
    w_q,
    w_k,
    v,
    mask=None,
    causal=None,
    window=None,
    kv_lengths=None,
    return_weights=False,
):
    """Bahdanau attention: s_ij = vᵀ·tanh(W_q·q_i + W_k·k_j), softmax over visible keys.

    w_q (Dq, A), w_k (Dkey, A), v (A,) with A the attention's hidden size. Masks as in
    `refattn.reference.attention`. Returns out (B..., Lq, Dv), and the weights if asked.
    """
    query, key, value, dtype = _check_qkv(query, key, value)
    w_q = check_float_array("w_q", w_q, min_ndim=2)
    w_k = check_float_array("w_k", w_k, min_ndim=2)
    v = check_float_array("v", v, min_ndim=1)
    check_size("w_q.shape[0]", w_q.shape[0], query.shape[-1], "query's Dq")
    check_size("w_k.shape[0]", w_k.shape[0], key.shape[-1], "key's Dkey")
    check_size("w_k.shape[1]", w_k.shape[1], w_q.shape[1], "w_q's hidden size A")
    check_size("v.shape[0]", v.shape[0], w_q.shape[1], "w_q's hidden size A")
    projected_q = query.astype(dtype) @ w_q.astype(dtype)  # (B..., Lq, A)
    projected_k = key.astype(dtype) @ w_k.astype(dtype)  # (B..., Lk, A)
    hidden = np.tanh(projected_q[..., :, None, :] + projected_k[..., None, :, :])  # (.., Lq, Lk, A)
    scores = hidden @ v.astype(dtype)
    return _attend(scores, query, value, mask, causal, window, kv_lengths, return_weights)


def general_attention(
    query,
    key,
    value,
    *,
    w,
    mask=None,
    causal=None,
    window=None,
    kv_lengths=None,
    return_weights=False,
):
    """Luong's "general" attention: s_ij = q_iᵀ·W·k_j, softmax over visible keys.

    w (Dq, Dkey). Masks as in `refattn.reference.attention`. Returns out (B..., Lq, Dv), and
    the weights if asked.
    """
    query, key, value, dtype = _check_qkv(query, key, value)
    w = check_float_array("w", w, min_ndim=2)
    check_size("w.shape[0]", w.shape[0], query.shape[-1], "query's Dq")
    check_size("w.shape[1]", w.shape[1], key.shape[-1], "key's Dkey")
    scores = (query.astype(dtype) @ w.astype(dtype)) @ np.swapaxes(key.astype(dtype), -1, -2)
    return _attend(scores, query, value, mask, causal, window, kv_lengths, return_weights)


def _check_qkv(query, key, value):
    query = check_float_array("query", query, min_ndim=2)
    key = check_float_array("key", key, min_ndim=2)
    value = check_float_array("value", value, min_ndim=2)
    check_same_dtype("key", key, query.dtype, "query's")
    check_same_dtype("value", value, query.dtype, "query's")
    for name, x in (("key", key), ("value", value)):
        if x.shape[:-2] != query.shape[:-2]:
            raise ValueError(
                f"{name}.shape[:-2] should be {query.shape[:-2]} (query's batch dims), "
                f"but got {x.shape[:-2]}"
            )
    check_size("value.shape[-2]", value.shape[-2], key.shape[-2], "key's Lk")
    return query, key, value, compute_dtype(query.dtype)


def _attend(scores, query, value, mask, causal, window, kv_lengths, return_weights):
    """Steps 2 and 3 of the reference on scores (B..., Lq, Lk)."""
    *batch, Lq, Lk = scores.shape
    target = (*batch, Lq, Lk)
    seen = masks.visible(
        Lq,
        Lk,
        causal=check_causal(causal),
        window=check_window(window),
        kv_lengths=check_kv_lengths(kv_lengths, tuple(batch), Lk),
        mask=check_mask(mask, target, "(B..., Lq, Lk)"),
    )
    seen = np.broadcast_to(seen, target)
    weights, _ = _masked_softmax(scores, seen)
    out = _weigh(weights, value.astype(scores.dtype), seen).astype(query.dtype, copy=False)
    return (out, weights) if check_flag("return_weights", return_weights) else out
