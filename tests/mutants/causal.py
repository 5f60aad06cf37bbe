"""Causal masking (is_causal=True: key j visible to query i iff j <= i, top-left), with one
bug each: the diagonal, the alignment, the special cases, and the tile-skipping of fused
kernels.
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
    "causal_excludes_diagonal": (("ATT-M5", "ATT-N1"), MUST),
    "causal_includes_next": (("ATT-M1",), MUST),
    "causal_bottom_right": (("ATT-M1", "ATT-M5"), MUST),
    "causal_triu_for_tril": (("ATT-M1",), MUST),
    "causal_ignored_for_one_query": (("ATT-M1",), MUST),
    "causal_only_square": (("ATT-M1", "ATT-M5"), MUST),
    "causal_or_mask": (("ATT-M9",), MUST),
    "causal_finite_penalty": (("ATT-N2",), MUST),
    "causal_one_masking_step": (("ATT-M1",), MUST),
    "causal_loop_stops_early": (("ATT-M5", "ATT-N1"), MUST),
}


def _with_visible(query, key, value, attn_mask, scale, enable_gqa, causal_visible):
    """Attention with the mutant's causal visibility (Lq, Lk) bool (None: not causal)."""
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, False, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    if causal_visible is not None:
        visible = visible & causal_visible
    return attend(s, visible, v).astype(query.dtype)


def _tril(Lq, Lk, diagonal=0):
    """j <= i + diagonal."""
    return np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + diagonal


def causal_excludes_diagonal(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the causal mask keeps j < i, leaving out the diagonal: a token does not see
    itself, and row 0 sees nothing. Imitates: `torch.tril(ones, diagonal=-1)`, or
    `triu(ones, diagonal=0)` as the hidden part. Caught by: ATT-M5, ATT-N1 (it hides
    more, so ATT-M1's no-leak check passes)."""
    Lq, Lk = query.shape[-2], key.shape[-2]
    causal = _tril(Lq, Lk, -1) if is_causal else None  # bug: diagonal 0
    return _with_visible(query, key, value, attn_mask, scale, enable_gqa, causal)


def causal_includes_next(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the causal mask keeps j <= i + 1: each token sees the next one. Imitates:
    hiding `triu(ones, diagonal=2)` where `diagonal=1` was meant. Caught by: ATT-M1."""
    Lq, Lk = query.shape[-2], key.shape[-2]
    causal = _tril(Lq, Lk, 1) if is_causal else None  # bug: diagonal 0
    return _with_visible(query, key, value, attn_mask, scale, enable_gqa, causal)


def causal_bottom_right(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: is_causal is aligned bottom-right, j <= i + Lk - Lq, as in decoding against a
    KV cache, where SDPA's is_causal means top-left: rows see Lk - Lq keys too many (or
    too few) when Lq != Lk. Imitates: FlashAttention >= 2.1's causal convention behind a
    PyTorch SDPA interface. Caught by: ATT-M1, ATT-M5."""
    Lq, Lk = query.shape[-2], key.shape[-2]
    causal = _tril(Lq, Lk, Lk - Lq) if is_causal else None  # bug: diagonal 0
    return _with_visible(query, key, value, attn_mask, scale, enable_gqa, causal)


def causal_triu_for_tril(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the visible part is the upper triangle, j >= i: each token sees itself and the
    future. Imitates: np.triu where np.tril was meant (the two differ by one letter).
    Caught by: ATT-M1."""
    Lq, Lk = query.shape[-2], key.shape[-2]
    causal = np.triu(np.ones((Lq, Lk), dtype=bool)) if is_causal else None  # bug: tril
    return _with_visible(query, key, value, attn_mask, scale, enable_gqa, causal)


def causal_ignored_for_one_query(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: with one query (Lq == 1) the causal mask is skipped, 'a decode step sees every
    key', which is bottom-right thinking: top-left, query 0 sees key 0 only. Imitates: the
    `if q_len == 1: is_causal = False` shortcut of decode paths. Caught by: ATT-M1."""
    Lq, Lk = query.shape[-2], key.shape[-2]
    causal = _tril(Lq, Lk) if is_causal and Lq > 1 else None  # bug: Lq == 1 too
    return _with_visible(query, key, value, attn_mask, scale, enable_gqa, causal)


def causal_only_square(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the causal mask is applied only when Lq == Lk (self-attention); otherwise
    is_causal is silently ignored. Imitates: `if is_causal and q_len == kv_len` guards
    written for training only. Caught by: ATT-M1, ATT-M5."""
    Lq, Lk = query.shape[-2], key.shape[-2]
    causal = _tril(Lq, Lk) if is_causal and Lq == Lk else None  # bug
    return _with_visible(query, key, value, attn_mask, scale, enable_gqa, causal)


def causal_or_mask(query, key, value, *, mask=None, causal=None, scale=None):
    """Bug: given both, the causal bound and a bool mask are combined with OR: a key either
    of them allows is attended. Imitates: `mask | causal` where `&` was meant.
    Written to the refattn protocol (keyword options mask, causal "top_left" or
    "bottom_right", scale; (B..., H, L, D) arrays), which passes a mask together with causal:
    the SDPA protocol never does, so no invariant could reach this bug through it.
    Caught by: ATT-M9 (combined masks: every masking option at once)."""
    q, k, v = inputs(query, key, value)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    Lq, Lk = s.shape[-2:]
    visible = np.ones(s.shape, dtype=bool)
    if mask is not None:
        visible = visible & mask
    if causal is not None:
        shift = 0 if causal == "top_left" else Lk - Lq  # bottom-right: the last query sees all
        bound = np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + shift
        visible = (visible | bound) if mask is not None else (visible & bound)  # bug: &
    return attend(s, visible, v).astype(query.dtype)


def causal_finite_penalty(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: future keys get an additive -1e4 instead of -inf: their weight e^-1e4 underflows
    to exactly 0 for ordinary scores, so the mask looks right, but scores of order 1e4 see
    the future. Imitates: GPT-2's `masked_bias = -1e4` in Hugging Face transformers.
    Caught by: ATT-N2 (scores near 1e4)."""
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    Lq, Lk = s.shape[-2:]
    visible, bias = masking(attn_mask, False, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    if is_causal:
        s = np.where(_tril(Lq, Lk), s, s - 1e4)  # bug: -inf
    return attend(s, visible, v).astype(query.dtype)


def _tiled_causal(q, k, v, visible, s, rows, blocks, masked):
    """The online softmax of query rows `rows` over the key blocks `blocks` (start, stop),
    in that order; `masked(b)` says whether block b gets the causal mask (an unmasked block
    is taken as fully visible)."""
    Lq = q.shape[-2]
    i = np.arange(Lq)[rows][:, None]
    m = np.full(s[..., rows, 0].shape, -np.inf, dtype=s.dtype)
    total = np.zeros_like(m)
    acc = np.zeros((*m.shape, v.shape[-1]), dtype=s.dtype)
    for b, (start, stop) in enumerate(blocks):
        seen = visible[..., rows, start:stop]
        if masked(b):
            seen = seen & (np.arange(start, stop)[None, :] <= i)
        tile = np.where(seen, s[..., rows, start:stop], -np.inf)
        m_new = np.maximum(m, tile.max(axis=-1))
        shift = safe_max(m_new)
        alpha = np.exp(m - shift)
        p = np.exp(tile - shift[..., None])
        total = alpha * total + p.sum(axis=-1)
        acc = alpha[..., None] * acc + weigh(p, v[..., start:stop, :], seen)
        m = m_new
    return normalise(acc, total)


def _prepare(query, key, value, attn_mask, scale, enable_gqa):
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, False, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    return q, k, v, s, visible


def causal_one_masking_step(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: with query tiles of 128 and key tiles of 64, the kernel walks each query tile's
    key blocks from the diagonal back and masks only the first one (n_masking_steps = 1,
    right only when BLOCK_M == BLOCK_N): the block before it, which the diagonal also
    crosses, is taken as fully visible (Lk > 64). Imitates: FlashAttention-2's
    `n_masking_steps = ceil_div(kBlockM, kBlockN)` hard-coded to 1. Caught by: ATT-M1."""
    if not is_causal:
        return _with_visible(query, key, value, attn_mask, scale, enable_gqa, None)
    q, k, v, s, visible = _prepare(query, key, value, attn_mask, scale, enable_gqa)
    Lq, Lk = s.shape[-2:]
    out = np.zeros((*q.shape[:-1], v.shape[-1]), dtype=s.dtype)
    for qs in range(0, Lq, 128):
        rows = slice(qs, min(qs + 128, Lq))
        last = min(qs + 128, Lk)  # keys past the tile's last row are never visited
        blocks = [(b, min(b + 64, last)) for b in range(0, last, 64)][::-1]
        out[..., rows, :] = _tiled_causal(
            q,
            k,
            v,
            visible,
            s,
            rows,
            blocks,
            masked=lambda b: b < 1,  # bug: b < 128 // 64
        )
    return out.astype(query.dtype)


def causal_loop_stops_early(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: with query tiles of 128 and key tiles of 64, the causal loop of query tile m
    ends at key m·128 + 64 (BLOCK_N) instead of (m + 1)·128 (BLOCK_M): rows 64..127 of each
    tile never see their keys from the tile's row 64 on (Lq > 64, Lk > 64). Imitates: the
    two block sizes swapped in the loop bound. Caught by: ATT-M5, ATT-N1 (it hides more, so
    ATT-M1 passes)."""
    if not is_causal:
        return _with_visible(query, key, value, attn_mask, scale, enable_gqa, None)
    q, k, v, s, visible = _prepare(query, key, value, attn_mask, scale, enable_gqa)
    Lq, Lk = s.shape[-2:]
    out = np.zeros((*q.shape[:-1], v.shape[-1]), dtype=s.dtype)
    for qs in range(0, Lq, 128):
        rows = slice(qs, min(qs + 128, Lq))
        last = min(qs + 64, Lk)  # bug: qs + 128
        blocks = [(b, min(b + 64, last)) for b in range(0, last, 64)]
        out[..., rows, :] = _tiled_causal(q, k, v, visible, s, rows, blocks, masked=lambda b: True)
    return out.astype(query.dtype)
