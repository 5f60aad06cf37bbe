"""The spec's own statement of attention, in float64: where every expected value comes from.

The reference (refattn.reference) is one of the implementations the spec checks, so nothing
here comes from it: this module is written from SPEC.md's Definition, its fully masked rule
and its NaN and Inf rules, in another way than the reference (each row's fate decided first,
then its softmax over the visible keys alone), and always in float64. A bug planted in the
reference makes `refattn conform reference` fail (tests/test_oracle.py).

    visible(i, j)  every mask of the call allows key j for query i (a -inf bias hides it)
    s_ij           softcap·tanh(scale·q_i·k_j / softcap) + bias_ij
    row i          NaN if a visible score is NaN or +inf; fully masked if it sees no key or
                   only -inf scores (out 0, weights 0, lse -inf); otherwise
    p_ij           exp(s_ij - m_i) / Σ_visible exp(s_il - m_i), 0 at hidden keys
    o_i            Σ_visible p_ij·v_j (IEEE: 0·NaN is NaN, so a visible key's NaN value counts)
    lse_i          m_i + log Σ_visible exp(s_ij - m_i)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Attention(NamedTuple):
    """What the definition gives for a call, in float64."""

    out: np.ndarray  # (B..., Hq, Lq, Dv)
    lse: np.ndarray  # (B..., Hq, Lq)
    weights: np.ndarray  # (B..., Hq, Lq, Lk)


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
        # A side longer than Lq + Lk hides nothing; clamped, it stays a machine integer.
        left, right = (None if w is None else min(int(w), Lq + Lk) for w in options["window"])
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


def _per_query_head(x: np.ndarray, Hq: int) -> np.ndarray:
    """(B..., Hkv, L, D) in float64 with kv head h // G serving query head h, G = Hq // Hkv."""
    group = Hq // x.shape[-3]
    return np.repeat(x.astype(np.float64), group, axis=-3)


def scores(query, key, options) -> np.ndarray:
    """(B..., Hq, Lq, Lk) float64: softcap·tanh(scale·q·k / softcap) + bias, before masking."""
    q = query.astype(np.float64)
    k = _per_query_head(key, query.shape[-3])
    scale = options.get("scale")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    with np.errstate(invalid="ignore", over="ignore"):  # Inf·0 is NaN: the rules say so
        s = np.einsum("...id,...jd->...ij", q, k) * scale
        if options.get("softcap") is not None:
            cap = float(options["softcap"])
            s = cap * np.tanh(s / cap)
        if options.get("bias") is not None:
            s = s + options["bias"].astype(np.float64)
    return s


def softmax_attention(scores_: np.ndarray, visible: np.ndarray, value) -> Attention:
    """The softmax of the scores over the visible keys, and the weighted values: the row rules
    of SPEC.md ("Fully masked rows", "NaN and Inf"), row by row in a vectorised form."""
    v = _per_query_head(value, scores_.shape[-3])  # (B..., Hq, Lk, Dv)
    shown = np.where(visible, scores_, -np.inf)  # hidden keys take no part at all
    # 1. Each row's fate: NaN (a visible NaN or +inf score), fully masked, or ordinary.
    poisoned = (visible & (np.isnan(scores_) | (scores_ == np.inf))).any(axis=-1)
    finite = np.where(np.isnan(shown), -np.inf, shown)
    top = finite.max(axis=-1, initial=-np.inf)  # the largest visible score, NaN left aside
    masked = ~poisoned & (top == -np.inf)
    ordinary = ~poisoned & ~masked
    # 2. The softmax of ordinary rows: shifted by their (finite) maximum.
    shift = np.where(ordinary, top, 0.0)[..., None]
    with np.errstate(invalid="ignore", over="ignore"):
        exps = np.where(ordinary[..., None] & visible, np.exp(finite - shift), 0.0)
    total = exps.sum(axis=-1)
    weights = exps / np.where(ordinary, total, 1.0)[..., None]
    with np.errstate(divide="ignore"):
        lse = np.where(ordinary, top + np.log(np.where(ordinary, total, 1.0)), -np.inf)
    # 3. The weighted sum over visible keys only: a hidden key's value never enters it.
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(visible[..., None], weights[..., None] * v[..., None, :, :], 0.0)
        out = terms.sum(axis=-2)  # (B..., Hq, Lq, Dv)
    out = np.where(masked[..., None], 0.0, out)
    # 4. NaN rows are NaN everywhere: output, lse and the weights of every key.
    out = np.where(poisoned[..., None], np.nan, out)
    weights = np.where(poisoned[..., None], np.nan, weights)
    lse = np.where(poisoned, np.nan, lse)
    return Attention(out, lse, weights)


def attention(query, key, value, options, semantics=None) -> Attention:
    """The definition for one call: out, lse and weights in float64; under an implementation's
    declared `semantics` (refattn.capabilities.Semantics; None: the spec's own) what its
    choices give instead."""
    s = scores(query, key, options)
    if semantics is None or not semantics.differing():
        return softmax_attention(s, visibility(query, key, options), value)
    if semantics.fill is not None:
        return _filled(s, query, key, value, options, semantics.fill)
    found = softmax_attention(s, visibility(query, key, options), value)
    if semantics.fully_masked == "nan":  # a row that sees no key: 0/0 of a plain softmax
        empty = ~visibility(query, key, options).any(axis=-1)
        found = Attention(
            np.where(empty[..., None], np.nan, found.out),
            np.where(empty, np.nan, found.lse),
            np.where(empty[..., None], np.nan, found.weights),
        )
    return found


def _filled(s, query, key, value, options, fill: float) -> Attention:
    """Attention whose masks give hidden keys the finite score `fill` rather than hiding them
    (as `where(mask, s, fill)` does), then a plain softmax over every key not at -inf: a key a
    mask hides weighs exp(fill - max), 0 until scores are huge, and a row that sees no key
    averages all its keys (lse = fill + log n); a row whose every score is -inf (a -inf bias
    everywhere) has out and weights 0/0, NaN, and lse log Σ_j exp(-inf) = log 0 = -inf (NaN
    only from a shift by its -inf maximum, which is not the definition of the lse). The spec's
    NaN rules hold otherwise; a hidden key's value reaches the row only where it weighs more
    than 0."""
    masked_options = {n: x for n, x in options.items() if n != "bias"}
    shown = visibility(query, key, masked_options)  # what the masks alone let through
    filled = np.where(shown, s, fill)
    keys = ~(filled == -np.inf)  # every key but those a -inf bias hides (NaN scores included)
    found = softmax_attention(filled, keys, value)
    # A row whose every key a -inf bias hides: 0/0 in a plain softmax. A row with no key at all
    # (Lk = 0) sums nothing: 0 and -inf, as the spec's rule.
    nothing = ~(filled > -np.inf).any(axis=-1) & ~np.isnan(filled).any(axis=-1)
    nothing &= filled.shape[-1] > 0
    return Attention(
        np.where(nothing[..., None], np.nan, found.out),
        found.lse,  # -inf there: softmax_attention's rule for a row whose every score is -inf
        np.where(nothing[..., None], np.nan, found.weights),
    )


def merge(outs, lses) -> tuple[np.ndarray, np.ndarray]:
    """Attention over all keys from attention over disjoint chunks of them, in float64:
    lse = log Σ_c exp(lse_c), out = Σ_c exp(lse_c - lse)·out_c; a chunk with lse -inf weighs 0."""
    lse_c = np.stack([np.asarray(x, dtype=np.float64) for x in lses])  # (C, ..., Lq)
    out_c = np.stack([np.asarray(x, dtype=np.float64) for x in outs])  # (C, ..., Lq, Dv)
    top = lse_c.max(axis=0)
    shift = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.exp(lse_c - shift)  # 0 for a chunk that saw nothing
        total = share.sum(axis=0)
        lse = shift + np.log(total)
        weights = share / np.where(total > 0, total, 1.0)
        counts = ~(weights == 0)  # NaN counts: a NaN chunk makes the row NaN
        out = np.where(counts[..., None], weights[..., None] * out_c, 0.0).sum(axis=0)
    return out, lse


def projections(x, params, *, num_heads, num_kv_heads):
    """Q, K, V of a multi-head layer in float64: x·W + b split into heads, (B..., H, L, D)."""
    x64 = x.astype(np.float64)

    def heads(w, b, count):  # (B..., L, count·D) -> (B..., count, L, D)
        y = x64 @ getattr(params, w).astype(np.float64)
        if getattr(params, b) is not None:
            y = y + getattr(params, b).astype(np.float64)
        *batch, length, width = y.shape
        return np.moveaxis(y.reshape(*batch, length, count, width // count), -2, -3)

    return (
        heads("w_q", "b_q", num_heads),
        heads("w_k", "b_k", num_kv_heads),
        heads("w_v", "b_v", num_kv_heads),
    )


def layer(x, params, *, num_heads, num_kv_heads, **options) -> np.ndarray:
    """A multi-head attention layer in float64 (self-attention of x, (B..., L, Dm)): Q, K, V
    projected, attention per head, heads concatenated, then y = o·W_o + b_o."""
    q, k, v = projections(x, params, num_heads=num_heads, num_kv_heads=num_kv_heads)
    out = attention(q, k, v, options).out  # (B..., Hq, L, Dv)
    *batch, _, length, Dv = out.shape
    merged = np.moveaxis(out, -3, -2).reshape(*batch, length, num_heads * Dv)
    y = merged @ params.w_o.astype(np.float64)
    return y if params.b_o is None else y + params.b_o.astype(np.float64)


class Gradients(NamedTuple):
    """What the definition gives for the gradients of a loss, in float64."""

    query: np.ndarray  # (B..., Hq, Lq, Dk)
    key: np.ndarray  # (B..., Hkv, Lk, Dk)
    value: np.ndarray  # (B..., Hkv, Lk, Dv)
    bias: np.ndarray | None  # the bias's shape; None when the call has none


def attention_backward(query, key, value, grad_out, options, grad_lse=None) -> Gradients:
    """The gradients of L = Σ grad_out·out + Σ grad_lse·lse for one call, in float64, row by row
    (SPEC.md, "Gradients"): each row's fate first, then the chain rule over its visible keys.

    For an ordinary row i with visible keys j (p its weights, o its output, dO_i = grad_out_i):
        g_j   = dO_i·v_j                        ∂L/∂p_ij
        ds    = J·g + grad_lse_i·p              J = diag(p) - p·pᵀ, ∂p_il/∂s_ij (symmetric)
        dx    = ds / cosh²(x/c)                 x = scale·q_i·k_j; the softcap's slope (none: 1)
        dq_i  = scale·Σ_j dx_j·k_j,   dk_j += scale·dx_j·q_i,   dv_j += p_j·dO_i
        dbias_ij = ds_j
    A fully masked row contributes nothing (its out is 0 whatever its inputs hold); a NaN row
    makes dq_i NaN, and dk_j, dv_j and dbias_ij NaN at every key j it sees; a hidden key is never
    touched by the row it is hidden from. Ordinary rows follow IEEE arithmetic through the
    formulas above (an Inf may come out NaN here where another form gives ±Inf: the spec says
    only "not finite" there). A key/value head's gradient is the sum over the query
    heads that use it; the bias's is summed over the axes it is broadcast along.
    """
    q = query.astype(np.float64)
    Hq = q.shape[-3]
    k, v = _per_query_head(key, Hq), _per_query_head(value, Hq)
    d_out = np.asarray(grad_out, dtype=np.float64)
    d_lse = np.zeros(q.shape[:-1]) if grad_lse is None else np.asarray(grad_lse, np.float64)
    visible = visibility(query, key, options)
    forward = attention(query, key, value, options)
    x = scores(query, key, {"scale": options.get("scale")})  # scale·q·kᵀ: no softcap, no bias
    cap = options.get("softcap")
    scale = _scale_of(options, q)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)  # dk, dv per query head
    ds_all = np.zeros(visible.shape)  # (B..., Hq, Lq, Lk)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and Inf follow IEEE: the rules
        for row in np.ndindex(*visible.shape[:-1]):  # row = (b..., h, i)
            head = row[:-1]
            seen = np.flatnonzero(visible[row])
            if forward.lse[row] == -np.inf:  # fully masked: no gradient, whatever it holds
                continue
            if np.isnan(forward.lse[row]):  # a NaN row: NaN wherever it reaches
                dq[row] = np.nan
                dk[head][seen] = np.nan
                dv[head][seen] = np.nan
                ds_all[row][seen] = np.nan
                continue
            p = forward.weights[row][seen]
            g = v[head][seen] @ d_out[row]
            jacobian = np.diag(p) - np.outer(p, p)
            ds = jacobian @ g + d_lse[row] * p
            dx = ds if cap is None else ds / np.cosh(x[row][seen] / float(cap)) ** 2
            ds_all[row][seen] = ds
            dq[row] = scale * (dx @ k[head][seen])
            dk[head][seen] += scale * np.outer(dx, q[row])
            dv[head][seen] += np.outer(p, d_out[row])
    bias = options.get("bias")
    with np.errstate(invalid="ignore", over="ignore"):
        return Gradients(
            query=dq,
            key=_per_kv_head(dk, key.shape[-3]),
            value=_per_kv_head(dv, key.shape[-3]),
            bias=None if bias is None else to_bias_shape(ds_all, np.shape(bias)),
        )


def _scale_of(options, q) -> float:
    scale = options.get("scale")
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def _per_kv_head(grad: np.ndarray, Hkv: int) -> np.ndarray:
    """(B..., Hq, L, D) -> (B..., Hkv, L, D): query head h used kv head h // G, G = Hq // Hkv."""
    Hq = grad.shape[-3]
    summed = np.zeros((*grad.shape[:-3], Hkv, *grad.shape[-2:]))
    for h in range(Hq):
        summed[..., h // (Hq // Hkv), :, :] += grad[..., h, :, :]
    return summed


def to_bias_shape(full: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The gradient of a bias of `shape` broadcast to full's shape: full summed over every axis
    where the bias, padded on the left with 1s, has size 1."""
    padded = (1,) * (full.ndim - len(shape)) + tuple(shape)
    ones = tuple(axis for axis, n in enumerate(padded) if n == 1)
    return full.sum(axis=ones, keepdims=True).reshape(shape)


# The cube root of float64's machine epsilon: the step of a central difference, relative to
# the size of the entry it moves (see finite_differences).
_STEP = float(np.finfo(np.float64).eps) ** (1 / 3)


def difference_step(x: float) -> float:
    """The step h that finite_differences moves an entry of value x by: ε^(1/3)·max(|x|, 1)."""
    return _STEP * max(abs(float(x)), 1.0)


def finite_differences(f, x, *, where=None) -> np.ndarray:
    """∂f/∂x by central differences in float64: f maps an array of x's shape (float64) to a
    number, and the result has x's shape. Entries outside `where` (bool, x's shape; default
    every entry) are not moved and come back NaN: not measured (a -inf bias entry, say).

    Entry x_k moves by h_k = ε^(1/3)·max(|x_k|, 1), ε = 2^-52. A central difference
    (f(x + h) - f(x - h)) / 2h errs by h²·|f'''|/6 (truncation) plus about ε·|f|/h (f's own
    rounding, divided by h): the sum is smallest near h = ε^(1/3) in units of the entry's own
    size (or 1 for entries smaller than 1), where both terms are about ε^(2/3) ≈ 4e-11 times
    the function's scale. The step is the exact distance between the two points evaluated
    (x_k ± h_k rounded to float64), so rounding the step costs nothing.
    """
    x = np.array(x, dtype=np.float64)  # a copy of its own, contiguous: a broadcast view too
    where = np.ones(x.shape, dtype=bool) if where is None else np.broadcast_to(where, x.shape)
    grad = np.full(x.shape, np.nan)
    for index in np.ndindex(x.shape):
        if not where[index]:
            continue
        centre = x[index]
        h = difference_step(centre)
        up, down = centre + h, centre - h
        x[index] = up
        f_up = float(f(x))
        x[index] = down
        f_down = float(f(x))
        x[index] = centre
        grad[index] = (f_up - f_down) / (up - down)
    return grad
