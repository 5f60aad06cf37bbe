"""Correct kernels, written differently from refattn.reference: the suite's controls.

A mutation suite is worth the bugs it catches and the correct code it leaves alone. These must
pass every invariant (PASS or SKIP, never FAIL); a FAIL here is a false alarm of the spec.

    two_pass_float64   pass 1 the log-sum-exp of each row, pass 2 exp(s - lse)·v, in float64
    online_k16, online_k64_q32, online_k128
                       FlashAttention-2's forward: key tiles with a running max and sum (and
                       query tiles), in the compute dtype (float32 for float32 inputs)
    split_kv_lse       FlashDecoding: key chunks of 48, each normalised with its lse, merged
                       with the lse formula, in the compute dtype
"""

import functools

import numpy as np

from mutants._common import (
    compute_dtype,
    empty_output,
    inputs,
    masking,
    normalise,
    resolve_scale,
    safe_max,
    scores,
    weigh,
)


def _ieee(kernel):
    """NaN and Inf inputs follow IEEE arithmetic through the kernel (SPEC.md, NaN and Inf):
    the invalid operations they make are the answer, not something to warn about."""

    @functools.wraps(kernel)
    def wrapped(*args, **kwargs):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return kernel(*args, **kwargs)

    return wrapped


@_ieee
def two_pass_float64(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Two passes in float64: lse_i = m_i + log Σ_visible exp(s_ij - m_i), then
    o_i = Σ_visible exp(s_ij - lse_i)·v_j. Correct: passes every invariant."""
    q, k, v = inputs(query, key, value, enable_gqa, dtype=np.float64)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, np.float64)
    if bias is not None:
        s = s + bias
    s = np.where(visible, s, -np.inf)
    # pass 1: each row's log-sum-exp over its visible keys (-inf for a row that sees none)
    m = safe_max(s.max(axis=-1, initial=-np.inf))
    with np.errstate(divide="ignore"):
        lse = m + np.log(np.exp(s - m[..., None]).sum(axis=-1))
    # pass 2: the weights from the lse, the values weighed by them; a row whose lse is -inf
    # (it sees no key, or only -inf scores) weighs nothing: exp(-inf - -inf) would be NaN
    with np.errstate(invalid="ignore"):
        seen = visible & (lse[..., None] != -np.inf)  # a NaN row keeps its NaN
        p = np.where(seen, np.exp(s - lse[..., None]), 0.0)
    return weigh(p, v, visible).astype(query.dtype)


def _online(query, key, value, attn_mask, is_causal, scale, key_tile, query_tile=None):
    """Tiles of `key_tile` keys (and `query_tile` queries), running max m, sum l and
    accumulator acc per row, in the compute dtype; rescaled by exp(m_old - m_new)."""
    q, k, v = inputs(query, key, value)
    Lq, Lk = q.shape[-2], k.shape[-2]
    if Lq == 0 or Lk == 0:
        return empty_output(query, value)
    scale = resolve_scale(scale, q.shape[-1])
    full = (*q.shape[:-1], Lk)
    visible, bias = masking(attn_mask, is_causal, full, compute_dtype(query))
    if bias is not None:
        bias = np.broadcast_to(bias, full)
    out = np.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype)
    query_tile = query_tile or Lq
    for qs in range(0, Lq, query_tile):
        rows = slice(qs, min(qs + query_tile, Lq))
        m = np.full(q[..., rows, 0].shape, -np.inf, dtype=q.dtype)
        total = np.zeros_like(m)
        acc = np.zeros((*m.shape, v.shape[-1]), dtype=q.dtype)
        for ks in range(0, Lk, key_tile):
            cols = slice(ks, min(ks + key_tile, Lk))
            seen = visible[..., rows, cols]
            # pass 1 of the tile: its scores, hidden keys at -inf, and the new running max
            s = scores(q[..., rows, :], k[..., cols, :], scale)
            if bias is not None:
                s = s + bias[..., rows, cols]
            s = np.where(seen, s, -np.inf)
            m_new = np.maximum(m, s.max(axis=-1))
            shift = safe_max(m_new)
            # pass 2: rescale what was accumulated, add the tile
            alpha = np.exp(m - shift)
            p = np.exp(s - shift[..., None])
            total = alpha * total + p.sum(axis=-1)
            acc = alpha[..., None] * acc + weigh(p, v[..., cols, :], seen)
            m = m_new
        out[..., rows, :] = normalise(acc, total)
    return out.astype(query.dtype)


@_ieee
def online_k16(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """Online softmax over key tiles of 16. Correct: passes every invariant."""
    return _online(query, key, value, attn_mask, is_causal, scale, key_tile=16)


@_ieee
def online_k64_q32(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Online softmax over key tiles of 64 and query tiles of 32. Correct: passes every
    invariant."""
    return _online(query, key, value, attn_mask, is_causal, scale, key_tile=64, query_tile=32)


@_ieee
def online_k128(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """Online softmax over key tiles of 128. Correct: passes every invariant."""
    return _online(query, key, value, attn_mask, is_causal, scale, key_tile=128)


@_ieee
def split_kv_lse(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """Split-KV (FlashDecoding): chunks of 48 keys, each normalised with its own lse, merged
    with lse = log Σ_c exp(lse_c), o = Σ_c exp(lse_c - lse)·o_c. Correct: passes every
    invariant."""
    q, k, v = inputs(query, key, value)
    Lk = k.shape[-2]
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, compute_dtype(query))
    if bias is not None:
        s = s + bias
    s = np.where(visible, s, -np.inf)
    outs, lses = [], []
    for start in range(0, Lk, 48):
        cols = slice(start, min(start + 48, Lk))
        chunk = s[..., cols]
        m = safe_max(chunk.max(axis=-1, initial=-np.inf))
        p = np.exp(chunk - m[..., None])
        total = p.sum(axis=-1)
        outs.append(normalise(weigh(p, v[..., cols, :], visible[..., cols]), total))
        with np.errstate(divide="ignore"):
            lses.append(m + np.log(total))  # -inf for a chunk the row sees nothing of
    if not outs:
        return empty_output(query, value)
    lse_c = np.stack(lses)
    top = safe_max(lse_c.max(axis=0))
    share = np.exp(lse_c - top)  # 0 for a chunk that saw nothing
    total = share.sum(axis=0)
    merged = sum(share_c[..., None] * out_c for share_c, out_c in zip(share, outs, strict=True))
    return normalise(merged, total).astype(query.dtype)
