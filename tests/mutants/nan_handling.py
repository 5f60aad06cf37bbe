"""Fully masked rows, NaN and Inf (SPEC.md: "Fully masked rows", "NaN and Inf"), one bug each.

A row that sees no key is output 0. NaN or Inf in keys and values that are hidden never reach
the row (ATT-M8, a SHOULD). A NaN or +inf score at a visible key makes the row NaN, and NaN
in a visible value makes its component NaN: rules of the Definition, which no conform
invariant draws (only ATT-M8 puts NaN and Inf into the inputs, at hidden keys).
"""

import numpy as np

from mutants._common import attend, inputs, masking, normalise, resolve_scale, scores, weigh

MUST, SHOULD = "MUST", "SHOULD"

MUTANTS = {
    "fully_masked_nan": (("ATT-W4",), MUST),
    "fully_masked_mean": (("ATT-W4",), MUST),
    "masked_fill_minus_1e9": (("ATT-W4",), MUST),
    "max_over_hidden_keys": (("ATT-N2",), MUST),
    "hidden_nan_via_matmul": (("ATT-M8",), SHOULD),
    "additive_log_mask": (("ATT-M8",), SHOULD),
    "plus_inf_score_selects_key": (("ATT-N1",), MUST),
    "output_nan_to_num": (("ATT-N1",), MUST),
}


def _parts(query, key, value, attn_mask, is_causal, scale, enable_gqa):
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    return s, visible, v


def fully_masked_nan(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the softmax of a row of -inf scores is computed as it comes, exp(-inf - -inf) =
    NaN: a row that sees no key is NaN. Imitates: PyTorch's SDPA before 2.5, ONNX Attention
    before 1.23. Caught by: ATT-W4."""
    s, visible, v = _parts(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    s = np.where(visible, s, -np.inf)
    with np.errstate(invalid="ignore"):
        m = s.max(axis=-1, keepdims=True, initial=-np.inf)  # bug: no guard for -inf
        p = np.exp(s - m)
        return (weigh(p, v, visible) / p.sum(axis=-1)[..., None]).astype(query.dtype)


def fully_masked_mean(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: hidden keys score the dtype's lowest finite value instead of -inf, so a row that
    sees no key softmaxes a row of equal scores: the mean of V. Imitates: JAX's
    `jnp.finfo(dtype).min` masking in jax.nn.dot_product_attention. Caught by: ATT-W4."""
    s, visible, v = _parts(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    s = np.where(visible, s, np.finfo(s.dtype).min)  # bug
    m = s.max(axis=-1, keepdims=True, initial=np.finfo(s.dtype).min)
    with np.errstate(over="ignore"):
        p = np.exp(s - m)
    return normalise(p @ v, p.sum(axis=-1)).astype(query.dtype)


def masked_fill_minus_1e9(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: a bool mask is applied as `scores.masked_fill(~mask, -1e9)`: exact zeros beside
    any visible key, but a row the mask hides entirely averages the values it may not see.
    Imitates: the Annotated Transformer's and countless model files' masking.
    Caught by: ATT-W4."""
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    if attn_mask is not None and attn_mask.dtype == np.bool_:
        s = np.where(attn_mask, s, -1e9)  # bug: -inf
        attn_mask = None
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    return attend(s, visible, v).astype(query.dtype)


def max_over_hidden_keys(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the row max used for the shift is taken over every key, hidden ones included:
    exact in exact arithmetic, but when a hidden key outscores the visible ones by more than
    ~87 (float32) or ~708 (float64) every visible weight underflows and the row comes out 0;
    a NaN or Inf in a hidden key makes the whole row NaN. Imitates: `rowmax(qk)` computed
    before the mask is applied. Caught by: ATT-N2 (scores near 1e4), ATT-M8."""
    s, visible, v = _parts(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    with np.errstate(invalid="ignore", over="ignore"):
        m = s.max(axis=-1, keepdims=True, initial=-np.inf)  # bug: over visible keys only
        m = np.where(np.isinf(m), 0, m)
        p = np.where(visible, np.exp(s - m), 0)
        return normalise(weigh(p, v, visible), p.sum(axis=-1)).astype(query.dtype)


def hidden_nan_via_matmul(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the weights (0 at hidden keys) are multiplied into all the values with one
    matmul, and 0·NaN = NaN: a NaN or Inf value at a key the row may not see reaches it.
    Imitates: every dense `weights @ v` (the reason ATT-M8 is a SHOULD).
    Caught by: ATT-M8 (SHOULD)."""
    s, visible, v = _parts(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    s = np.where(visible, s, -np.inf)
    m = s.max(axis=-1, initial=-np.inf)
    p = np.exp(s - np.where(np.isfinite(m), m, 0)[..., None])
    with np.errstate(invalid="ignore"):
        return normalise(p @ v, p.sum(axis=-1)).astype(query.dtype)  # bug: 0·NaN


def additive_log_mask(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: a bool mask is turned into an additive log(mask) (0 / -inf) and added to the
    scores: a hidden key whose score is NaN or +inf stays NaN (NaN + -inf, inf + -inf), and
    the row goes NaN; a NaN query in a fully masked row reaches the output the same way.
    Imitates: `scores + torch.log(mask)` or `mask.float().masked_fill(~mask, -inf)` added.
    Caught by: ATT-M8 (SHOULD); the NaN query, by no invariant."""
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = s + np.log(visible.astype(s.dtype))  # bug: np.where(visible, s, -inf)
        if bias is not None:
            s = s + np.where(np.isfinite(bias), bias, 0)
        m = s.max(axis=-1, keepdims=True, initial=-np.inf)
        p = np.exp(s - np.where(m == -np.inf, 0, m))
        return normalise(weigh(p, v, visible), p.sum(axis=-1)).astype(query.dtype)


def plus_inf_score_selects_key(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: non-finite scores are sanitised first, NaN to the lowest and +inf to the largest
    finite value, so a +inf score selects its key (weight 1) and a NaN score is ignored,
    where SPEC.md makes either row NaN. Imitates: `torch.nan_to_num(scores)` before the
    softmax. Caught by: no invariant (the NaN and Inf rules have none); ATT-N1 would, if it
    drew non-finite queries or keys."""
    s, visible, v = _parts(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    finfo = np.finfo(s.dtype)
    s = np.where(visible, s, -np.inf)
    s = np.nan_to_num(s, nan=finfo.min, posinf=finfo.max, neginf=-np.inf)  # bug
    return attend(s, visible, v).astype(query.dtype)


def output_nan_to_num(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: NaN in the output is replaced by 0 (and ±Inf by the largest finite values):
    fully masked rows of a 0/0 kernel come out right, but a NaN or Inf that SPEC.md says
    must show is hidden. Imitates: `torch.nan_to_num(attn_output)` after attention, a common
    patch for masked-row NaNs. Caught by: no invariant (no conform invariant draws NaN or Inf
    at visible keys); ATT-N1 would, if it did."""
    s, visible, v = _parts(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    s = np.where(visible, s, -np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        m = s.max(axis=-1, keepdims=True, initial=-np.inf)
        p = np.exp(s - m)
        out = weigh(np.where(visible, p, 0), v, visible) / p.sum(axis=-1)[..., None]
    return np.nan_to_num(out).astype(query.dtype)  # bug: the rows' NaN is the answer
