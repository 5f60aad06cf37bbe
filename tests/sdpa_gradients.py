"""SDPA-protocol functions with a backward declared beside them (`fn.backward`), one correct and
several with a deliberate bug in the gradients; tests/test_gradients_spec.py checks that the
spec's gradient invariants catch each with the invariant named in its docstring. Loaded by name,
as a user's function is: `refattn conform sdpa_gradients:correct` with tests/ on the path.

    fn(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False)
    fn.backward(query, key, value, grad_out, attn_mask=None, is_causal=False, scale=None,
                enable_gqa=False) -> (dq, dk, dv), and d_attn_mask when attn_mask is a float one
"""

import numpy as np


def _prepared(query, key, attn_mask, is_causal, scale, enable_gqa, penalty):
    """q, k (kv heads repeated), the scores s, which keys are visible, and the scale."""
    q, k = query.astype(np.float64), key.astype(np.float64)
    Hq, Hkv = q.shape[-3], k.shape[-3]
    if Hq != Hkv and not enable_gqa:
        raise ValueError(f"Hq = {Hq} != Hkv = {Hkv} needs enable_gqa=True")
    k = np.repeat(k, Hq // Hkv, axis=-3)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with np.errstate(invalid="ignore", over="ignore"):
        s = (q @ np.swapaxes(k, -1, -2)) * scale
    visible = np.ones(s.shape, dtype=bool)
    if is_causal:
        visible &= np.tril(np.ones(s.shape[-2:], dtype=bool))
    if attn_mask is not None:
        if attn_mask.dtype == np.bool_:
            visible &= attn_mask
        else:
            s = s + attn_mask
            visible &= attn_mask > -np.inf
    if penalty is not None:  # the -1e9 habit: hidden keys score s - 1e9 instead of -inf
        s = np.where(visible, s, np.where(np.isfinite(s), s, 0) + penalty)
        visible = np.ones(s.shape, dtype=bool)
    return q, k, s, visible, scale


def _weights(s, visible):
    """The softmax of s over the visible keys, 0 elsewhere, and 0 for a row that sees none."""
    with np.errstate(invalid="ignore", over="ignore"):
        shown = np.where(visible, s, -np.inf)
        top = np.max(shown, axis=-1, keepdims=True, initial=-np.inf)
        e = np.where(visible, np.exp(shown - np.where(np.isfinite(top), top, 0)), 0)
        total = e.sum(axis=-1, keepdims=True)
        return e / np.where(total > 0, total, 1)


def _masked_product(a, b, visible):
    """Σ_j a_ij·b_j over the visible pairs only (0·NaN left out): (..., L, L') x (..., L', D)."""
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(visible[..., None], a[..., None] * b[..., None, :, :], 0)
    return terms.sum(axis=-2)


def _forward(
    query, key, value, attn_mask, is_causal, scale, enable_gqa, *, penalty=None, scale_error=1.0
):
    if scale is not None or scale_error != 1.0:
        scale = (query.shape[-1] ** -0.5 if scale is None else scale) * scale_error
    _, _, s, visible, _ = _prepared(query, key, attn_mask, is_causal, scale, enable_gqa, penalty)
    v = np.repeat(value.astype(np.float64), query.shape[-3] // value.shape[-3], axis=-3)
    return _masked_product(_weights(s, visible), v, visible).astype(query.dtype)


def _backward(
    query,
    key,
    value,
    grad_out,
    attn_mask,
    is_causal,
    scale,
    enable_gqa,
    *,
    penalty=None,
    unmasked_p=False,
    plain_products=False,
    clip=False,
    noise=False,
    group_mean=False,
):
    """The gradients of Σ grad_out·out, from the definition (SPEC.md, Gradients); the keywords
    plant the bugs."""
    q, k, s, visible, scale = _prepared(
        query, key, attn_mask, is_causal, scale, enable_gqa, penalty
    )
    Hq, Hkv = query.shape[-3], key.shape[-3]
    v = np.repeat(value.astype(np.float64), Hq // Hkv, axis=-3)
    g = grad_out.astype(np.float64)
    if clip:  # gradient clipping inside the kernel: not linear in dO
        g = np.clip(g, -1, 1)
    p = _weights(s, visible)
    with np.errstate(invalid="ignore", over="ignore"):
        out = _masked_product(p, v, visible)
        d_v = np.swapaxes(p, -1, -2) @ g
        d_p = np.where(visible, g @ np.swapaxes(v, -1, -2), 0)
        D = np.sum(g * out, axis=-1, keepdims=True)
        if unmasked_p:  # the softmax of every key, masks forgotten
            p = _weights(s, np.ones(s.shape, dtype=bool))
            d_p = g @ np.swapaxes(v, -1, -2)
        d_s = np.where(visible | unmasked_p, p * (d_p - D), 0)
        if plain_products:  # dense products: a hidden NaN key meets its 0 in d_s
            d_q = scale * (d_s @ k)
        else:
            d_q = scale * _masked_product(d_s, k, visible | unmasked_p)
        d_k = scale * (np.swapaxes(d_s, -1, -2) @ q)

    def per_kv_head(x):
        *batch, _, length, dim = x.shape
        grouped = x.reshape(*batch, Hkv, Hq // Hkv, length, dim)
        return grouped.mean(axis=-3) if group_mean else grouped.sum(axis=-3)

    d_k, d_v = per_kv_head(d_k), per_kv_head(d_v)
    if noise:  # a last-bit wobble that changes from call to call (atomics, say)
        d_v = d_v + np.random.default_rng().choice([-1, 1], d_v.shape) * np.spacing(d_v)
    grads = [d_q.astype(query.dtype), d_k.astype(key.dtype), d_v.astype(value.dtype)]
    if attn_mask is not None and attn_mask.dtype != np.bool_:  # d_attn_mask, in its shape
        grads.append(_summed_to(d_s, attn_mask.shape).astype(attn_mask.dtype))
    return tuple(grads)


def _summed_to(full, shape):
    """full (B, Hq, Lq, Lk) summed over the axes a mask of `shape` is broadcast along."""
    padded = (1,) * (full.ndim - len(shape)) + tuple(shape)
    ones = tuple(axis for axis, n in enumerate(padded) if n == 1)
    return full.sum(axis=ones, keepdims=True).reshape(shape)


def _with_backward(**bugs):
    """An SDPA-protocol function whose backward has the bugs given (the forward only those
    that change it: penalty, scale_error)."""
    forward_bugs = {n: bugs.pop(n) for n in ("penalty", "scale_error") if n in bugs}

    def fn(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        return _forward(query, key, value, attn_mask, is_causal, scale, enable_gqa, **forward_bugs)

    def backward(
        query, key, value, grad_out, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
    ):
        penalty = {"penalty": forward_bugs["penalty"]} if "penalty" in forward_bugs else {}
        return _backward(
            query, key, value, grad_out, attn_mask, is_causal, scale, enable_gqa, **penalty, **bugs
        )

    fn.backward = backward
    return fn


correct = _with_backward()
correct.__doc__ = "Correct forward and backward: every gradient invariant passes."

unmasked_p = _with_backward(unmasked_p=True)
unmasked_p.__doc__ = "Bug: dS, dK and dQ from the softmax of every key. Caught by ATT-G3."

finite_penalty = _with_backward(penalty=-1e9)
finite_penalty.__doc__ = """Bug: hidden keys score s - 1e9, forward and backward alike: a fully
masked row is a softmax of its shifted scores, whose dQ is not 0. Caught by ATT-G4."""

plain_products = _with_backward(plain_products=True)
plain_products.__doc__ = """Bug (a SHOULD): dQ = dS @ K, so a NaN key hidden from a row meets its
dS of 0 (0·NaN). Caught by ATT-G9."""

clipped = _with_backward(clip=True)
clipped.__doc__ = "Bug: grad_out clipped to [-1, 1] inside the kernel. Caught by ATT-G7."

wobbling = _with_backward(noise=True)
wobbling.__doc__ = """Bug (a SHOULD): dV moves by one ulp from call to call. Caught by ATT-G10,
and within every tolerance."""

group_mean = _with_backward(group_mean=True)
group_mean.__doc__ = "Bug: a GQA kv head's dK and dV are its group's mean. Caught by ATT-G8."

other_forward = _with_backward(scale_error=1.001)
other_forward.__doc__ = """Bug: the forward scales by 1.001 too much; the backward is the
definition's. ATT-G1 (against the definition) passes; ATT-G2 (against its own forward) fails."""


def without_gqa_keyword(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Declares enable_gqa, but its backward does not: loading refuses it."""
    return correct(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def _backward_without_gqa(query, key, value, grad_out, attn_mask=None, is_causal=False, scale=None):
    return correct.backward(query, key, value, grad_out, attn_mask, is_causal, scale)


without_gqa_keyword.backward = _backward_without_gqa


def returns_two(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Its backward returns (dq, dk) only: every gradient invariant fails, saying so."""
    return correct(query, key, value, attn_mask, is_causal, scale)


def _two(query, key, value, grad_out, attn_mask=None, is_causal=False, scale=None):
    return correct.backward(query, key, value, grad_out, attn_mask, is_causal, scale)[:2]


returns_two.backward = _two
