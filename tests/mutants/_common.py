"""The plumbing every mutant shares, written correctly: what a kernel receives, and the parts of
a kernel that no mutant in a given module is about.

Shape letters: B batch, Hq/Hkv query and key/value heads, Lq/Lk query and key lengths,
Dk/Dv head dims, G = Hq // Hkv the GQA group. Arrays are (B, H, L, D), the SDPA protocol's.

Independent of refattn: nothing here imports it, so a mutant is a user's kernel that the spec
has never seen. Each module's kernels are their own code; only these helpers are shared.
"""

import numpy as np


def compute_dtype(query):
    """float64 for float64 inputs, float32 otherwise: a kernel's accumulator type."""
    return np.float64 if query.dtype == np.float64 else np.float32


def inputs(query, key, value, enable_gqa=False, dtype=None):
    """q, k, v in the compute dtype (or `dtype`), k and v repeated to Hq heads: kv head
    h // G serves query head h."""
    dtype = compute_dtype(query) if dtype is None else dtype
    q, k, v = (np.asarray(x).astype(dtype) for x in (query, key, value))
    return q, repeat_kv(k, q.shape[-3]), repeat_kv(v, q.shape[-3])


def repeat_kv(x, Hq):
    """(B, Hkv, L, D) -> (B, Hq, L, D), each kv head repeated G times in a row."""
    Hkv = x.shape[-3]
    if Hq == Hkv:
        return x
    if Hq % Hkv:
        raise ValueError(f"Hq = {Hq} should be a multiple of Hkv = {Hkv}")
    return np.repeat(x, Hq // Hkv, axis=-3)


def resolve_scale(scale, Dk):
    """The scale as a Python float (a NumPy float64 would promote float32 arrays)."""
    return Dk**-0.5 if scale is None else float(scale)


def masking(attn_mask, is_causal, shape, dtype):
    """(visible, bias) for scores of `shape` (B, Hq, Lq, Lk).

    visible: bool of `shape`, True where the key may be attended (a bool mask, the causal
    bound j <= i, a -inf bias). bias: the float mask in `dtype`, broadcastable to `shape`,
    or None."""
    *_, Lq, Lk = shape
    visible = np.ones(shape, dtype=bool)
    bias = None
    if is_causal:
        visible &= np.arange(Lk)[None, :] <= np.arange(Lq)[:, None]
    if attn_mask is not None:
        attn_mask = np.asarray(attn_mask)
        if attn_mask.dtype == np.bool_:
            visible &= attn_mask
        else:
            bias = attn_mask.astype(dtype)
            visible &= bias > -np.inf
    return visible, bias


def scores(q, k, scale, bias=None):
    """scale·q·kᵀ (+ bias), (B, H, Lq, Lk), in q's dtype."""
    with np.errstate(invalid="ignore", over="ignore"):  # Inf and NaN inputs follow IEEE
        s = (q @ np.swapaxes(k, -1, -2)) * scale
        return s if bias is None else s + bias


def weigh(p, v, visible):
    """Σ_j p_ij·v_j over the visible keys only: (B, H, Lq, Lk) @ (B, H, Lk, Dv).

    p is 0 at hidden keys, but 0·NaN is NaN: where v holds NaN or Inf, the hidden terms are
    left out explicitly (SPEC.md, ATT-M8)."""
    if np.isfinite(v).all():
        return p @ v
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(visible[..., None], p[..., None] * v[..., None, :, :], 0)
        return terms.sum(axis=-2)


def safe_max(m):
    """The row maximum to shift by: 0 where a row has seen no key yet (max -inf), so that
    exp(-inf - shift) is 0 and never exp(-inf + inf) = NaN. A NaN or +inf max is kept: the
    row is NaN (SPEC.md, NaN and Inf)."""
    return np.where(m == -np.inf, 0, m)


def normalise(acc, total):
    """acc / total per row, 0 where the row saw no key (total 0): fully masked rows give 0."""
    return acc / np.where(total > 0, total, 1)[..., None]


def empty_output(query, value):
    """The (B, Hq, Lq, Dv) zeros of a call with no keys (or no queries)."""
    return np.zeros((*query.shape[:-1], value.shape[-1]), dtype=query.dtype)


def attend(s, visible, v):
    """The one-pass softmax over the visible keys and the weighed values, for kernels whose
    bug lies elsewhere: s (B, H, Lq, Lk) scores, visible bool of that shape, v (B, H, Lk, Dv)."""
    s = np.where(visible, s, -np.inf)
    m = safe_max(s.max(axis=-1, initial=-np.inf))
    p = np.exp(s - m[..., None])
    return normalise(weigh(p, v, visible), p.sum(axis=-1))
