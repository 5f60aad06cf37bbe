"""Precision: what is computed in which dtype, and the tricks that lose bits, one bug each.

A correct kernel computes float32 inputs in (at least) float32 and float64 inputs in float64
(SPEC.md, tolerance model). The SDPA protocol has no float16 inputs, so the half-precision
bugs below are float32 calls that let a float16 or bfloat16 step in.
"""

import numpy as np

from mutants._common import (
    attend,
    inputs,
    masking,
    normalise,
    resolve_scale,
    safe_max,
    scores,
    weigh,
)

MUST, SHOULD = "MUST", "SHOULD"

MUTANTS = {
    "p_half_before_pv": (("ATT-N1",), MUST),
    "row_sum_in_half": (("ATT-N1",), MUST),
    "q_scaled_in_half": (("ATT-N1",), MUST),
    "scores_bfloat16": (("ATT-N1",), MUST),
    "exp_of_raw_scores": (("ATT-N2", "ATT-S4"), MUST),
    "float64_in_float32": (("ATT-N1",), MUST),
    "float64_long_in_float32": (("ATT-N1",), MUST),
    "softmax_in_float32_for_float64": (("ATT-N1",), MUST),
    "long_sequence_half_accumulator": (("ATT-N1",), MUST),
    "log2e_truncated": (("ATT-N1",), MUST),
    "default_scale_fast_rsqrt": (("ATT-N1", "ATT-S2"), MUST),
    "scale_rounded_to_float32": (("ATT-N1",), MUST),
}


def _masked_scores(query, key, value, attn_mask, is_causal, scale, enable_gqa, dtype=None):
    q, k, v = inputs(query, key, value, enable_gqa, dtype)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    return np.where(visible, s, -np.inf), visible, v


def p_half_before_pv(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the probabilities P are rounded to float16 before P·V (accumulated in float32).
    Imitates: FlashAttention's half P tile on the tensor-core path, used for a float32 call.
    Caught by: ATT-N1."""
    s, visible, v = _masked_scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    p = np.exp(s - safe_max(s.max(axis=-1, initial=-np.inf))[..., None])
    total = p.sum(axis=-1)
    p = p.astype(np.float16).astype(s.dtype)  # bug
    return normalise(weigh(p, v, visible), total).astype(query.dtype)


def row_sum_in_half(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the running row sum l is kept in float16 across key tiles of 16 (each tile summed
    in float32, then added into a half l). Imitates: a register-saving half accumulator for
    the softmax denominator. Caught by: ATT-N1."""
    s, visible, v = _masked_scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    p = np.exp(s - safe_max(s.max(axis=-1, initial=-np.inf))[..., None])
    total = np.zeros(p.shape[:-1], dtype=np.float16)
    for start in range(0, p.shape[-1], 16):
        total = (total + p[..., start : start + 16].sum(axis=-1)).astype(np.float16)  # bug
    return normalise(weigh(p, v, visible), total.astype(s.dtype)).astype(query.dtype)


def q_scaled_in_half(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the scale is folded into Q in float16, q' = half(q·scale), before Q·Kᵀ.
    Imitates: pre-scaling Q in the storage dtype of a half kernel. Caught by: ATT-N1."""
    q, k, v = inputs(query, key, value, enable_gqa)
    scale = resolve_scale(scale, q.shape[-1])
    with np.errstate(over="ignore"):
        q = (q * scale).astype(np.float16).astype(q.dtype)  # bug
    s = scores(q, k, 1.0)
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    return attend(s, visible, v).astype(query.dtype)


def _bfloat16(x):
    """x rounded to bfloat16 (8 significant bits), round to nearest even, kept as float32."""
    bits = x.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return np.where(np.isfinite(x), rounded.view(np.float32), x)


def scores_bfloat16(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the scores are rounded to bfloat16 (8 significant bits) before the softmax.
    Imitates: a bf16 matmul output for Q·Kᵀ (autocast around the score matmul).
    Caught by: ATT-N1."""
    s, visible, v = _masked_scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    with np.errstate(over="ignore", invalid="ignore"):
        s = _bfloat16(s).astype(s.dtype)  # bug
    return attend(s, visible, v).astype(query.dtype)


def exp_of_raw_scores(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: exp of the raw scores, without subtracting the row max: exp overflows past ~88
    (float32) or ~709 (float64), and inf/inf is NaN. Imitates: the textbook softmax
    exp(x) / Σ exp(x). Caught by: ATT-N2, ATT-S4."""
    s, visible, v = _masked_scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.exp(s)  # bug: exp(s - max)
        return normalise(weigh(p, v, visible), p.sum(axis=-1)).astype(query.dtype)


def float64_in_float32(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: float64 inputs are computed in float32 and the result cast back to float64.
    Imitates: a float32-only kernel behind a wrapper that accepts float64.
    Caught by: ATT-N1 (float64 calls)."""
    s, visible, v = _masked_scores(
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        enable_gqa,
        dtype=np.float32,  # bug
    )
    return attend(s, visible, v).astype(query.dtype)


def float64_long_in_float32(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: float64 calls with Lk > 128 take a 'long sequence' path that computes in float32
    (short ones stay float64). Imitates: a dispatch to a tiled kernel instantiated for
    float32 only. Caught by: ATT-N1 (float64, Lk > 128)."""
    dtype = np.float32 if key.shape[-2] > 128 else None  # bug: float64 throughout
    s, visible, v = _masked_scores(
        query, key, value, attn_mask, is_causal, scale, enable_gqa, dtype=dtype
    )
    return attend(s, visible, v).astype(query.dtype)


def softmax_in_float32_for_float64(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the matmuls run in float64 but exp and the row sum in float32. Imitates: a
    softmax routine with a float32 accumulator (`softmax(x, dtype=torch.float32)`) in a
    float64 pipeline. Caught by: ATT-N1 (float64 calls)."""
    s, visible, v = _masked_scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    m = safe_max(s.max(axis=-1, initial=-np.inf))
    p = np.exp((s - m[..., None]).astype(np.float32))  # bug
    total = p.sum(axis=-1)
    return normalise(weigh(p.astype(s.dtype), v, visible), total).astype(query.dtype)


def long_sequence_half_accumulator(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: for Lk > 256 the kernel switches to key tiles of 64 with the output accumulator
    in float16 (rescaled and rounded to half after every tile); shorter rows are right.
    Imitates: an accumulation-in-the-storage-dtype fast path for long sequences.
    Caught by: ATT-N1, when the strategies draw Lk > 256."""
    s, visible, v = _masked_scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    Lk = s.shape[-1]
    if Lk <= 256:
        return attend(s, visible, v).astype(query.dtype)
    m = np.full(s.shape[:-1], -np.inf, dtype=s.dtype)
    total = np.zeros_like(m)
    acc = np.zeros((*m.shape, v.shape[-1]), dtype=np.float16)
    for start in range(0, Lk, 64):
        cols = slice(start, start + 64)
        m_new = np.maximum(m, s[..., cols].max(axis=-1))
        shift = safe_max(m_new)
        alpha = np.exp(m - shift)
        p = np.exp(s[..., cols] - shift[..., None])
        total = alpha * total + p.sum(axis=-1)
        update = alpha[..., None] * acc + weigh(p, v[..., cols, :], visible[..., cols])
        acc = update.astype(np.float16)  # bug: keep acc in the compute dtype
        m = m_new
    return normalise(acc.astype(s.dtype), total).astype(query.dtype)


def log2e_truncated(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: exp(x) is computed as exp2(x·log2(e)) with log2(e) typed as 1.4427 (it is
    1.44269504...): every weight becomes exp(1.0000034·(s - m)), a tiny change of scale.
    Imitates: the exp2 trick of FlashAttention with a hand-typed constant.
    Caught by: ATT-N1."""
    s, visible, v = _masked_scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    m = safe_max(s.max(axis=-1, initial=-np.inf))
    p = np.exp2((s - m[..., None]) * 1.4427)  # bug: math.log2(math.e)
    return normalise(weigh(p, v, visible), p.sum(axis=-1)).astype(query.dtype)


def _fast_rsqrt(x):
    """1/sqrt(x) by the bit trick and one Newton step (relative error up to 0.175%)."""
    y = np.array([x], dtype=np.float32)
    i = np.uint32(0x5F3759DF) - (y.view(np.uint32) >> np.uint32(1))
    y = i.astype(np.uint32).view(np.float32)
    y = y * (np.float32(1.5) - np.float32(0.5) * np.float32(x) * y * y)
    return float(y[0])


def default_scale_fast_rsqrt(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the default scale 1/sqrt(Dk) is computed with the fast inverse square root (one
    Newton step, relative error up to 0.175%); an explicit scale is right. Imitates: an
    approximate rsqrt instruction (or the Quake trick) used for the softmax scale.
    Caught by: ATT-N1, ATT-S2."""
    if scale is None:
        scale = _fast_rsqrt(query.shape[-1])  # bug: Dk ** -0.5
    s, visible, v = _masked_scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    return attend(s, visible, v).astype(query.dtype)


def scale_rounded_to_float32(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: an explicit scale is passed to the kernel as a C float, so a float64 call's scale
    is rounded to float32 (a relative error up to 6e-8 in every score); the default scale is
    computed in float64 and is right. Imitates: a binding declaring `float softmax_scale`.
    Caught by: ATT-N1 (float64 calls with a scale)."""
    if scale is not None:
        scale = float(np.float32(scale))  # bug: keep the Python float
    s, visible, v = _masked_scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    return attend(s, visible, v).astype(query.dtype)
