"""Grouped-query attention: which key/value head serves query head h, with one bug each.

Right: G = Hq // Hkv, query head h uses kv head h // G (repeat-interleave, as PyTorch's
enable_gqa, JAX and ONNX >= 1.20). The spec's strategies draw at most 4 query heads, so the
GQA layouts it sees are (Hq, Hkv) = (2, 1), (3, 1), (4, 1) and (4, 2).
"""

import numpy as np

from mutants._common import attend, compute_dtype, masking, resolve_scale, scores

MUST, SHOULD = "MUST", "SHOULD"

MUTANTS = {
    "gqa_modulo": (("ATT-H3", "ATT-H2"), MUST),
    "gqa_values_tiled": (("ATT-H3", "ATT-H2"), MUST),
    "gqa_clamped_index": (("ATT-H3", "ATT-H2"), MUST),
    "gqa_hardcoded_group_two": (("ATT-H3", "ATT-H2"), MUST),
    "gqa_repeat_wrong_axis": (("ATT-H3",), MUST),
    "gqa_group_from_length": (("ATT-H3",), MUST),
    "gqa_broadcast_only": (("ATT-H3", "ATT-H2"), MUST),
    "gqa_large_group_tiled": (("ATT-H3", "ATT-H2"), MUST),
}


def _with_heads(query, key, value, attn_mask, is_causal, scale, key_heads, value_heads):
    """Attention with key head key_heads[h] and value head value_heads[h] for query head h,
    as indices into the flat (B·Hkv) head buffer (batch element b's heads start at b·Hkv);
    a read past the end of the buffer gives zeros (a guarded load)."""
    dtype = compute_dtype(query)
    q, k, v = (x.astype(dtype) for x in (query, key, value))
    B, Hkv = q.shape[0], k.shape[1]
    base = np.arange(B)[:, None] * Hkv

    def gather(x, heads):
        flat = x.reshape(B * Hkv, *x.shape[2:])
        flat = np.concatenate([flat, np.zeros((1, *x.shape[2:]), dtype=x.dtype)])
        return flat[np.minimum(base + heads[None, :], B * Hkv)]  # B·Hkv: the zero row

    k, v = gather(k, key_heads), gather(v, value_heads)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, dtype)
    if bias is not None:
        s = s + bias
    return attend(s, visible, v).astype(query.dtype)


def _heads(query, key):
    Hq, Hkv = query.shape[1], key.shape[1]
    return np.arange(Hq), Hq, Hkv


def gqa_modulo(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """Bug: query head h uses kv head h % Hkv (tiling the kv heads) instead of h // G.
    Imitates: ONNX Runtime's GQA before opset 20 / `kv.repeat(1, G, 1, 1)` where
    `repeat_interleave` was meant. Caught by: ATT-H3, ATT-H2 (Hkv > 1 and G > 1)."""
    h, _, Hkv = _heads(query, key)
    kv = h % Hkv  # bug: h // (Hq // Hkv)
    return _with_heads(query, key, value, attn_mask, is_causal, scale, kv, kv)


def gqa_values_tiled(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: keys are mapped h // G, values h % Hkv: the fix for a tiling bug applied to the
    keys only. Imitates: a half-finished fix in a model port. Caught by: ATT-H3, ATT-H2
    (Hkv > 1 and G > 1)."""
    h, Hq, Hkv = _heads(query, key)
    return _with_heads(
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        h // (Hq // Hkv),
        h % Hkv,  # bug
    )


def gqa_clamped_index(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: query head h uses kv head min(h, Hkv - 1): right for MHA (h < Hkv) and MQA
    (Hkv = 1), wrong whenever 1 < Hkv < Hq. Imitates: an out-of-bounds guard
    `kv_head = min(head, num_kv_heads - 1)` standing in for the mapping.
    Caught by: ATT-H3, ATT-H2 (only the (Hq, Hkv) = (4, 2) layout shows it)."""
    h, _, Hkv = _heads(query, key)
    kv = np.minimum(h, Hkv - 1)  # bug
    return _with_heads(query, key, value, attn_mask, is_causal, scale, kv, kv)


def gqa_hardcoded_group_two(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the kv head is h >> 1, hard-coding G = 2: right for G = 1 and 2, and for G = 3
    or 4 it reads past the batch element's kv heads into the next element's (zeros past
    the end of the buffer). Imitates: a kernel specialised for one model's head ratio.
    Caught by: ATT-H3, ATT-H2 (G = 3 or 4)."""
    h, Hq, Hkv = _heads(query, key)
    kv = h if Hq == Hkv else h >> 1  # bug: h // (Hq // Hkv)
    return _with_heads(query, key, value, attn_mask, is_causal, scale, kv, kv)


def gqa_repeat_wrong_axis(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: key and value are repeated G times along the sequence axis instead of the head
    axis (axis=2 for axis=1), and NumPy broadcasts the head axis: with Hkv = 1 and no mask
    that is harmless (each key counts G times, which the softmax cancels); a mask or causal
    then sees G·Lk keys, and Hkv > 1 cannot broadcast. Imitates: the (B, L, H, D) vs
    (B, H, L, D) layout confusion in `repeat_interleave(dim=...)`. Caught by: ATT-H3."""
    dtype = compute_dtype(query)
    q, k, v = (x.astype(dtype) for x in (query, key, value))
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)  # bug: axis=1
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, dtype)
    if bias is not None:
        s = s + bias
    return attend(s, visible, v).astype(query.dtype)


def gqa_group_from_length(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the number of kv heads is read from key.shape[2], which is Lk in the (B, H, L, D)
    layout, so G = Hq // Lk: 0 (no heads at all) for Lk > Hq, and right by accident when
    Lk = Hkv. Imitates: `num_key_value_heads = key.shape[2]` written for (B, L, H, D).
    Caught by: ATT-H3."""
    dtype = compute_dtype(query)
    q, k, v = (x.astype(dtype) for x in (query, key, value))
    if enable_gqa:
        G = q.shape[1] // k.shape[2]  # bug: k.shape[1]
        k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, dtype)
    if bias is not None:
        s = s + bias
    return attend(s, visible, v).astype(query.dtype)


def gqa_broadcast_only(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: enable_gqa is accepted and ignored; the head axis is left to NumPy broadcasting,
    which is right for Hkv = 1 (MQA) and Hkv = Hq, and fails for 1 < Hkv < Hq. Imitates:
    an MQA kernel (one kv head, broadcast) advertised as GQA. Caught by: ATT-H3, ATT-H2
    (only the (Hq, Hkv) = (4, 2) layout shows it)."""
    dtype = compute_dtype(query)
    q, k, v = (x.astype(dtype) for x in (query, key, value))  # bug: no repeat to Hq heads
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, dtype)
    if bias is not None:
        s = s + bias
    return attend(s, visible, v).astype(query.dtype)


def gqa_large_group_tiled(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: groups of up to 4 query heads per kv head are packed into one tile and mapped
    right (h // G); larger groups take a generic path that maps h % Hkv (G > 4, as in
    Llama-3-70B's 64 query heads over 8 kv heads). Imitates: a specialised small-group
    path beside a generic one written against the old tiling convention.
    Caught by: ATT-H3, ATT-H2, only if the strategies drew G > 4 (they draw Hq <= 4)."""
    h, Hq, Hkv = _heads(query, key)
    G = Hq // Hkv
    kv = h // G if G <= 4 else h % Hkv  # bug: h // G for every G
    return _with_heads(query, key, value, attn_mask, is_causal, scale, kv, kv)
