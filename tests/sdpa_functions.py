"""Attention functions following the SDPA protocol, one correct and several deliberately buggy.

    fn(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False)

Each bug is one a real implementation has shipped; tests/test_buggy_functions.py checks that the
spec catches each with the invariant named in its docstring. They are loaded by name, as a user's
function is: `refattn conform sdpa_functions:causal_off_by_one` with tests/ on the path.
"""

import numpy as np


def _attention(
    query,
    key,
    value,
    attn_mask=None,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    *,
    diagonal=0,
    default_scale=None,
    hidden=-np.inf,
    repeat=np.repeat,
    shift_by_max=True,
    values_of_hidden_keys=False,
):
    """softmax(q·kᵀ·scale + mask)·v in float64, the knobs set to the correct choice by default.

    diagonal: causal keeps j <= i + diagonal. default_scale(Dk, Dv): the scale when None is
    given. hidden: the score of a hidden key. repeat(x, G, axis): how kv heads are repeated.
    shift_by_max: subtract the row maximum before exp. values_of_hidden_keys: weigh every
    value (weights @ v), not only those of visible keys.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # NaN and Inf inputs are tested too
        q, k, v = (x.astype(np.float64) for x in (query, key, value))
        Hq, Hkv = q.shape[-3], k.shape[-3]
        if Hq != Hkv:
            if not enable_gqa:
                raise ValueError(f"Hq = {Hq} != Hkv = {Hkv} needs enable_gqa=True")
            k, v = repeat(k, Hq // Hkv, axis=-3), repeat(v, Hq // Hkv, axis=-3)
        Lq, Lk, Dk, Dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
        if scale is None:
            scale = Dk**-0.5 if default_scale is None else default_scale(Dk, Dv)
        scores = q @ np.swapaxes(k, -1, -2) * scale
        visible = np.ones(scores.shape, dtype=bool)
        if is_causal:
            visible &= np.tril(np.ones((Lq, Lk), dtype=bool), k=diagonal)
        if attn_mask is not None:
            if attn_mask.dtype == np.bool_:
                visible &= attn_mask
            else:
                scores = scores + attn_mask
                visible &= attn_mask > -np.inf
        scores = np.where(visible, scores, hidden)
        top = np.max(scores, axis=-1, keepdims=True, initial=-np.inf)
        shift = np.where(np.isfinite(top), top, 0) if shift_by_max else 0
        weights = np.exp(scores - shift)
        total = weights.sum(axis=-1, keepdims=True)
        weights = weights / np.where(total > 0, total, 1)
        if values_of_hidden_keys:
            return (weights @ v).astype(query.dtype)
        # Hidden values must not reach a row even when they are NaN: 0·NaN is NaN.
        terms = np.where(visible[..., None], weights[..., None] * v[..., None, :, :], 0)
        return terms.sum(axis=-2).astype(query.dtype)


def correct(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """A correct SDPA-protocol function: conforms."""
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def without_gqa(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Correct, and declares no enable_gqa: the spec never gives it fewer kv heads."""
    return _attention(query, key, value, attn_mask, is_causal, scale)


def causal_off_by_one(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: the causal mask keeps j <= i + 1. Caught by ATT-M1 (the next token leaks)."""
    return _attention(query, key, value, attn_mask, is_causal, scale, diagonal=1)


def no_scaling(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: the default scale is 1, not 1/sqrt(Dk). Caught by ATT-N1."""
    return _attention(
        query, key, value, attn_mask, is_causal, scale, default_scale=lambda k, v: 1.0
    )


def scaled_by_dv(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: the default scale is 1/sqrt(Dv), the value's head dim. Caught by ATT-S2."""
    return _attention(
        query, key, value, attn_mask, is_causal, scale, default_scale=lambda k, v: v**-0.5
    )


def finite_mask(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: hidden keys score -1e9, so a row that sees none averages all values. Caught by
    ATT-W4."""
    return _attention(
        query, key, value, attn_mask, is_causal, scale, hidden=-1e9, values_of_hidden_keys=True
    )


def gqa_tiled(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """Bug: query head h uses kv head h % Hkv (np.tile), not h // G. Caught by ATT-H3."""

    def tile(x, group, axis):
        reps = [1] * x.ndim
        reps[axis] = group
        return np.tile(x, reps)

    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa, repeat=tile)


def no_max_shift(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: exp of the raw scores, without subtracting the row maximum: large scores overflow
    to inf/inf = NaN. Caught by ATT-N2."""
    return _attention(query, key, value, attn_mask, is_causal, scale, shift_by_max=False)


def float32_result(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: always returns float32, whatever the inputs. Caught by ATT-D1."""
    return _attention(query, key, value, attn_mask, is_causal, scale).astype(np.float32)


def mixes_batch(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: normalises the scale by the whole batch's largest query norm, so one element's
    inputs change another's output. Caught by ATT-H4."""
    if scale is None:
        scale = query.shape[-1] ** -0.5 / max(1.0, float(np.abs(query).max()))
    return _attention(query, key, value, attn_mask, is_causal, scale)


def weights_at_values(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Correct but for one SHOULD: out = weights @ v, the plain matrix product, so a NaN value of
    a hidden key reaches its row through weight 0 (0·NaN). Fails ATT-M8, a SHOULD, only."""
    return _attention(query, key, value, attn_mask, is_causal, scale, values_of_hidden_keys=True)


def returns_none(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: forgets to return. Every invariant fails, saying what came back."""
    _attention(query, key, value, attn_mask, is_causal, scale)


def returns_a_tuple(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: returns (out, weights) where the SDPA protocol returns out alone."""
    out = _attention(query, key, value, attn_mask, is_causal, scale)
    return out, None


def short_names(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """Correct, with its first parameters named q, k, v: they are passed by position."""
    return _attention(q, k, v, attn_mask, is_causal, scale)


def crashes(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: the process dies (abort, as heap corruption does) on a 1-D mask (one row of keys for
    every query, as ATT-M3 gives)."""
    if attn_mask is not None and np.ndim(attn_mask) == 1:
        import os

        os.abort()
    return _attention(query, key, value, attn_mask, is_causal, scale)


def hangs(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Bug: never returns when causal (a deadlock, say)."""
    if is_causal:
        import time

        time.sleep(3600)
    return _attention(query, key, value, attn_mask, is_causal, scale)


def slow(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Correct, and slow: a tenth of a second a call (for interrupting a run)."""
    import time

    time.sleep(0.1)
    return _attention(query, key, value, attn_mask, is_causal, scale)


def refattn_protocol(query, key, value, *, mask=None, causal=None, scale=None, return_lse=False):
    """Correct, in the refattn protocol (the reference's own signature), with some options."""
    from refattn import reference

    return reference.attention(
        query, key, value, mask=mask, causal=causal, scale=scale, return_lse=return_lse
    )


def _declared(query, key, value, attn_mask=None, is_causal=False, scale=None):
    return _attention(query, key, value, attn_mask, is_causal, scale)


def _declare():
    import refattn

    return refattn.declare(without=["float64", "empty"])(_declared)


declared_without_float64 = _declare()


def torch_sdpa(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """PyTorch's SDPA itself, on torch tensors: checked with --framework torch (no wrapper)."""
    import torch

    assert isinstance(query, torch.Tensor), f"got {type(query).__name__}, not a torch.Tensor"
    with torch.no_grad():
        return torch.nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attn_mask,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )


def jax_arrays(query, key, value, *, mask=None, scale=None):
    """Attention in jax.numpy on JAX arrays, refattn protocol: checked with --framework jax."""
    import jax
    import jax.numpy as jnp

    assert isinstance(query, jax.Array), f"got {type(query).__name__}, not a jax.Array"
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    group = query.shape[-3] // key.shape[-3]  # the refattn protocol carries GQA
    key, value = (jnp.repeat(x, group, axis=-3) for x in (key, value))
    s = jnp.einsum("...id,...jd->...ij", query, key) * scale
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    top = jnp.max(s, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0)
    e = jnp.exp(s - top)
    total = e.sum(axis=-1, keepdims=True)
    return (e / jnp.where(total > 0, total, 1)) @ value
