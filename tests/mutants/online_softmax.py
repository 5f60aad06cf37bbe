"""Blocked online softmax (FlashAttention-2's forward pass), with one bug each.

The correct loop, per row, over tiles of T keys (controls._online):

    m_new = max(m, rowmax(s_tile));  alpha = exp(m - m_new);  p = exp(s_tile - m_new)
    l = alpha·l + rowsum(p);  acc = alpha·acc + p·V_tile;  m = m_new
    out = acc / l  after the last tile (0 where l = 0)

Each mutant below writes that loop with one mistake that has shipped in a real kernel or a
port of one. Many only show past a threshold: with more keys than one tile (Lk > T), a tail
tile (Lk % T != 0), or more queries than one query tile.
"""

import numpy as np

from mutants._common import inputs, masking, normalise, resolve_scale, safe_max, scores, weigh

MUST, SHOULD = "MUST", "SHOULD"

# name -> (the invariants expected to catch it, the level of the strongest of them)
MUTANTS = {
    "stale_max_rescale": (("ATT-N1",), MUST),
    "stale_max_rescale_t256": (("ATT-N1",), MUST),
    "stale_sum_rescale": (("ATT-N1",), MUST),
    "rescale_inverted": (("ATT-N1",), MUST),
    "rescale_by_tile_max": (("ATT-N1",), MUST),
    "max_frozen_after_first_tile": (("ATT-N2",), MUST),
    "normalised_every_tile": (("ATT-N1",), MUST),
    "fully_masked_tile_nan": (("ATT-W4", "ATT-N1"), MUST),
    "tail_tile_dropped": (("ATT-N1",), MUST),
    "tail_last_key_dropped": (("ATT-N1",), MUST),
    "tail_padded_with_zero": (("ATT-N1",), MUST),
    "tail_mask_local_index": (("ATT-N1",), MUST),
    "tail_reads_next_head": (("ATT-N1", "ATT-H4"), MUST),
    "loop_bound_lk_minus_one": (("ATT-N1",), MUST),
    "query_tail_rows_zero": (("ATT-N1",), MUST),
    "query_tile_causal_local_row": (("ATT-M5", "ATT-N1"), MUST),
    "query_tile_mask_not_advanced": (("ATT-N1",), MUST),
    "head_dim_over_128_half_dropped": (("ATT-N1",), MUST),
}


def _setup(query, key, value, attn_mask, is_causal, scale, enable_gqa):
    """q, k, v in the compute dtype (kv repeated to Hq heads), visible (B, Hq, Lq, Lk), the
    bias broadcast to it (or None) and the scale."""
    q, k, v = inputs(query, key, value, enable_gqa)
    full = (*q.shape[:-1], k.shape[-2])
    visible, bias = masking(attn_mask, is_causal, full, q.dtype)
    bias = None if bias is None else np.broadcast_to(bias, full)
    return q, k, v, visible, bias, resolve_scale(scale, q.shape[-1])


def _tile(q, k, visible, bias, scale, cols, rows=slice(None)):
    """The scores of one tile, hidden keys at -inf."""
    s = scores(q[..., rows, :], k[..., cols, :], scale)
    if bias is not None:
        s = s + bias[..., rows, cols]
    return np.where(visible[..., rows, cols], s, -np.inf)


def _state(q, v, rows=slice(None)):
    """The running max m, sum l and accumulator acc of a block of rows, before any tile."""
    m = np.full(q[..., rows, 0].shape, -np.inf, dtype=q.dtype)
    return m, np.zeros_like(m), np.zeros((*m.shape, v.shape[-1]), dtype=q.dtype)


def _stale_acc(query, key, value, attn_mask, is_causal, scale, enable_gqa, tile):
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    m, total, acc = _state(q, v)
    for ks in range(0, k.shape[-2], tile):
        cols = slice(ks, ks + tile)
        s = _tile(q, k, visible, bias, scale, cols)
        m_new = np.maximum(m, s.max(axis=-1))
        shift = safe_max(m_new)
        alpha = np.exp(m - shift)
        p = np.exp(s - shift[..., None])
        total = alpha * total + p.sum(axis=-1)
        acc = acc + weigh(p, v[..., cols, :], visible[..., cols])  # bug: acc *= alpha missing
        m = m_new
    return normalise(acc, total).astype(query.dtype)


def stale_max_rescale(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: when a later key tile raises the running max, the sum is rescaled by
    exp(m_old - m_new) but the output accumulator is not. Imitates: a FlashAttention-2 port
    that drops `acc *= alpha[:, None]` (tiles of 64: shows for Lk > 64). Caught by: ATT-N1."""
    return _stale_acc(query, key, value, attn_mask, is_causal, scale, enable_gqa, tile=64)


def stale_max_rescale_t256(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: as stale_max_rescale, with tiles of 256 keys: shows only for Lk > 256.
    Imitates: the same missing rescale in a kernel tuned for long rows (BLOCK_N = 256).
    Caught by: ATT-N1, when the strategies draw Lk > 256."""
    return _stale_acc(query, key, value, attn_mask, is_causal, scale, enable_gqa, tile=256)


def stale_sum_rescale(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the accumulator is rescaled when the running max grows, the running sum is not
    (l += rowsum(p) instead of l = alpha·l + rowsum(p)). Imitates: the FlashAttention-1 to -2
    rewrite that moved the rescale and forgot l (tiles of 32: Lk > 32). Caught by: ATT-N1."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    m, total, acc = _state(q, v)
    for ks in range(0, k.shape[-2], 32):
        cols = slice(ks, ks + 32)
        s = _tile(q, k, visible, bias, scale, cols)
        m_new = np.maximum(m, s.max(axis=-1))
        shift = safe_max(m_new)
        alpha = np.exp(m - shift)
        p = np.exp(s - shift[..., None])
        total = total + p.sum(axis=-1)  # bug: not rescaled by alpha
        acc = alpha[..., None] * acc + weigh(p, v[..., cols, :], visible[..., cols])
        m = m_new
    return normalise(acc, total).astype(query.dtype)


def rescale_inverted(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the rescale factor is exp(m_new - m_old), the inverse of the right one (the first
    tile is peeled, so it only shows from the second tile on: Lk > 64). Imitates: a sign
    slip in a hand-written CUDA port of the online softmax. Caught by: ATT-N1."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    Lk = k.shape[-2]
    # first tile, peeled: no rescale needed
    s = _tile(q, k, visible, bias, scale, slice(0, 64))
    m = s.max(axis=-1, initial=-np.inf)
    p = np.exp(s - safe_max(m)[..., None])
    total = p.sum(axis=-1)
    acc = weigh(p, v[..., :64, :], visible[..., :64])
    for ks in range(64, Lk, 64):
        cols = slice(ks, ks + 64)
        s = _tile(q, k, visible, bias, scale, cols)
        m_new = np.maximum(m, s.max(axis=-1))
        shift = safe_max(m_new)
        with np.errstate(over="ignore", invalid="ignore"):
            alpha = np.exp(shift - safe_max(m))  # bug: exp(m_old - m_new) is right
            p = np.exp(s - shift[..., None])
            total = alpha * total + p.sum(axis=-1)
            acc = alpha[..., None] * acc + weigh(p, v[..., cols, :], visible[..., cols])
        m = m_new
    return normalise(acc, total).astype(query.dtype)


def rescale_by_tile_max(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the rescale factor uses the tile's own max, exp(m_old - rowmax(s_tile)), instead
    of the new running max: wrong whenever a later tile's max is below the running one.
    Imitates: a kernel that confuses m_ij (tile max) with m_i_new, as in early Triton
    tutorials' variable names (tiles of 128: Lk > 128). Caught by: ATT-N1."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    m, total, acc = _state(q, v)
    for ks in range(0, k.shape[-2], 128):
        cols = slice(ks, ks + 128)
        s = _tile(q, k, visible, bias, scale, cols)
        tile_max = s.max(axis=-1)
        m_new = np.maximum(m, tile_max)
        with np.errstate(over="ignore", invalid="ignore"):
            alpha = np.exp(m - safe_max(tile_max))  # bug: m_new, not tile_max
            alpha = np.where(np.isfinite(m), alpha, 0)  # nothing accumulated yet
            p = np.exp(s - safe_max(m_new)[..., None])
            total = alpha * total + p.sum(axis=-1)
            acc = alpha[..., None] * acc + weigh(p, v[..., cols, :], visible[..., cols])
        m = m_new
    return normalise(acc, total).astype(query.dtype)


def max_frozen_after_first_tile(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the running max is taken from the first key tile and never updated, so nothing
    is ever rescaled: exact in exact arithmetic, but a later tile whose scores exceed the
    first tile's max by more than ~88 (float32) or ~709 (float64) overflows to inf/inf.
    Imitates: a 'the first tile is representative' shortcut (tiles of 64: Lk > 64).
    Caught by: ATT-N2 (scores near 1e4)."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    _, total, acc = _state(q, v)
    shift = None
    with np.errstate(over="ignore", invalid="ignore"):
        for ks in range(0, k.shape[-2], 64):
            cols = slice(ks, ks + 64)
            s = _tile(q, k, visible, bias, scale, cols)
            if shift is None:
                shift = safe_max(s.max(axis=-1))  # bug: frozen from here on
            p = np.exp(s - shift[..., None])
            total = total + p.sum(axis=-1)
            acc = acc + weigh(p, v[..., cols, :], visible[..., cols])
        return normalise(acc, total).astype(query.dtype)


def normalised_every_tile(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the accumulator is divided by the running sum at the end of every tile instead of
    once after the last, and then rescaled as if it were still unnormalised: right with one
    tile, wrong from two (tiles of 128: Lk > 128). Imitates: the epilogue's `acc / l` moved
    into the loop while fusing it. Caught by: ATT-N1."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    m, total, acc = _state(q, v)
    for ks in range(0, k.shape[-2], 128):
        cols = slice(ks, ks + 128)
        s = _tile(q, k, visible, bias, scale, cols)
        m_new = np.maximum(m, s.max(axis=-1))
        shift = safe_max(m_new)
        alpha = np.exp(m - shift)
        p = np.exp(s - shift[..., None])
        total = alpha * total + p.sum(axis=-1)
        acc = alpha[..., None] * acc + weigh(p, v[..., cols, :], visible[..., cols])
        acc = normalise(acc, total)  # bug: belongs after the loop
        m = m_new
    return acc.astype(query.dtype)


def fully_masked_tile_nan(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: no guard for a row that has seen no key yet: its running max is -inf, and
    exp(-inf - -inf) = NaN poisons the row for good (fully masked rows come out NaN, and so
    does any row whose first 16 keys are all hidden). Imitates: FlashAttention's NaN for
    fully masked rows (and PyTorch < 2.5's). Caught by: ATT-W4, ATT-N1."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    m, total, acc = _state(q, v)
    with np.errstate(invalid="ignore"):
        for ks in range(0, k.shape[-2], 16):
            cols = slice(ks, ks + 16)
            s = _tile(q, k, visible, bias, scale, cols)
            m_new = np.maximum(m, s.max(axis=-1))
            alpha = np.exp(m - m_new)  # bug: no safe_max
            p = np.exp(s - m_new[..., None])
            total = alpha * total + p.sum(axis=-1)
            acc = alpha[..., None] * acc + weigh(p, v[..., cols, :], visible[..., cols])
            m = m_new
        return (acc / total[..., None]).astype(query.dtype)


def _loop(q, k, v, visible, bias, scale, starts, tile, rows=slice(None)):
    """The correct update over key tiles starting at `starts` (each `tile` long, clipped to
    Lk): the part of a kernel the tail mutants below do not touch."""
    m, total, acc = _state(q, v, rows)
    for ks in starts:
        cols = slice(ks, min(ks + tile, k.shape[-2]))
        s = _tile(q, k, visible, bias, scale, cols, rows)
        m_new = np.maximum(m, s.max(axis=-1, initial=-np.inf))
        shift = safe_max(m_new)
        alpha = np.exp(m - shift)
        p = np.exp(s - shift[..., None])
        total = alpha * total + p.sum(axis=-1)
        acc = alpha[..., None] * acc + weigh(p, v[..., cols, :], visible[..., rows, cols])
        m = m_new
    return normalise(acc, total)


def tail_tile_dropped(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: rows longer than one tile are cut into Lk // 64 tiles, so the last Lk % 64 keys
    are never read (Lk > 64, Lk % 64 != 0; a single-tile fast path covers Lk <= 64).
    Imitates: `num_blocks = seqlen_k / BLOCK_N` with integer division instead of a ceil.
    Caught by: ATT-N1."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    Lk = k.shape[-2]
    if Lk <= 64:
        out = _loop(q, k, v, visible, bias, scale, [0], 64)
    else:
        out = _loop(q, k, v, visible, bias, scale, range(0, (Lk // 64) * 64, 64), 64)
    return out.astype(query.dtype)


def tail_last_key_dropped(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: in rows longer than one tile of 128, the tail tile is (Lk - 1) % 128 keys long,
    the index of the last key taken for a count: the last key is never read (Lk > 128).
    Imitates: an off-by-one in the tail length of a hand-tiled CPU kernel.
    Caught by: ATT-N1."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    Lk = k.shape[-2]
    if Lk <= 128:
        return _loop(q, k, v, visible, bias, scale, [0], 128).astype(query.dtype)
    m, total, acc = _state(q, v)
    for ks in range(0, Lk, 128):
        last = ks + 128 >= Lk
        cols = slice(ks, ks + ((Lk - 1) % 128) if last else ks + 128)  # bug: Lk - ks
        s = _tile(q, k, visible, bias, scale, cols)
        m_new = np.maximum(m, s.max(axis=-1, initial=-np.inf))
        shift = safe_max(m_new)
        alpha = np.exp(m - shift)
        p = np.exp(s - shift[..., None])
        total = alpha * total + p.sum(axis=-1)
        acc = alpha[..., None] * acc + weigh(p, v[..., cols, :], visible[..., cols])
        m = m_new
    return normalise(acc, total).astype(query.dtype)


def _padded(x, start, tile):
    """Rows [start, start + tile) of x along axis -2, zero-padded past its end (a masked
    load with other=0)."""
    block = np.zeros((*x.shape[:-2], tile, x.shape[-1]), dtype=x.dtype)
    part = x[..., start : start + tile, :]
    block[..., : part.shape[-2], :] = part
    return block


def _padded_loop(q, k, v, visible, bias, scale, is_causal, tile, in_bounds):
    """Key tiles loaded zero-padded to `tile` keys; `in_bounds(start, n)` says which of the
    tile's positions the kernel treats as real keys (a correct kernel: start + n < Lk)."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    rows = np.arange(Lq)[:, None]
    m, total, acc = _state(q, v)
    for ks in range(0, Lk, tile):
        n = np.arange(tile)
        real = ks + n < Lk
        kt, vt = _padded(k, ks, tile), _padded(v, ks, tile)
        s = scores(q, kt, scale)
        seen = np.zeros(s.shape, dtype=bool)
        seen[..., real] = visible[..., ks : ks + tile]
        if bias is not None:
            s[..., real] += bias[..., ks : ks + tile]
        # positions past Lk: whatever the bounds check lets through, under the causal bound
        padding = in_bounds(ks, n) & ~real
        seen[..., padding] = (ks + n[padding] <= rows) if is_causal else True
        s = np.where(seen, s, -np.inf)
        m_new = np.maximum(m, s.max(axis=-1))
        shift = safe_max(m_new)
        alpha = np.exp(m - shift)
        p = np.exp(s - shift[..., None])
        total = alpha * total + p.sum(axis=-1)
        acc = alpha[..., None] * acc + weigh(p, vt, seen)
        m = m_new
    return normalise(acc, total)


def tail_padded_with_zero(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the tail tile is loaded zero-padded to 32 keys and the padding is not masked to
    -inf: each padded key scores 0 and adds a zero value (Lk % 32 != 0). Imitates: a Triton
    kernel's `tl.load(k_ptrs, mask=offs_n < N, other=0.0)` without
    `qk = tl.where(offs_n < N, qk, float('-inf'))`. Caught by: ATT-N1."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    out = _padded_loop(q, k, v, visible, bias, scale, is_causal, 32, lambda ks, n: n >= 0)
    return out.astype(query.dtype)


def tail_mask_local_index(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the bounds check of the key tiles compares the tile-local offset with Lk
    (offs_n < Lk instead of start_n + offs_n < Lk): right in the first tile, but the zero
    padding of a tail tile is attended (Lk > 64 and Lk % 64 != 0). Imitates: the classic
    Triton offset bug. Caught by: ATT-N1."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    Lk = k.shape[-2]
    out = _padded_loop(q, k, v, visible, bias, scale, is_causal, 64, lambda ks, n: n < Lk)
    return out.astype(query.dtype)


def tail_reads_next_head(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: key tiles of 16 are read from the flat (B·Hkv·Lk, D) buffer without a bounds
    check, so a tail tile runs on into the next head's (or batch element's) first keys and
    values, and past the end of the buffer reads zeros (Lk % 16 != 0). Imitates: pointer
    arithmetic `k_ptr + (bh * Lk + start_n + offs_n) * D` with the mask left out.
    Caught by: ATT-N1, ATT-H4."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    *lead, Lq, Dk = q.shape
    Lk, Dv = k.shape[-2], v.shape[-1]
    tile = 16
    padded_lk = -(-Lk // tile) * tile
    # The flat buffers, with the tiles' overrun: each head's row runs into the next head's.
    flat_k = np.concatenate([k.reshape(-1, Dk), np.zeros((tile, Dk), dtype=k.dtype)])
    flat_v = np.concatenate([v.reshape(-1, Dv), np.zeros((tile, Dv), dtype=v.dtype)])
    heads = int(np.prod(lead, dtype=np.int64))
    index = (np.arange(heads)[:, None] * Lk + np.arange(padded_lk)[None, :]).reshape(-1)
    k_read = flat_k[index].reshape(*lead, padded_lk, Dk)
    v_read = flat_v[index].reshape(*lead, padded_lk, Dv)
    seen = np.ones((*lead, Lq, padded_lk), dtype=bool)
    seen[..., :Lk] = visible
    if is_causal:
        seen[..., Lk:] = np.arange(Lk, padded_lk)[None, :] <= np.arange(Lq)[:, None]
    if bias is not None:
        bias = np.concatenate([bias, np.zeros((*lead, Lq, padded_lk - Lk), bias.dtype)], -1)
    return _loop(q, k_read, v_read, seen, bias, scale, range(0, padded_lk, tile), tile).astype(
        query.dtype
    )


def loop_bound_lk_minus_one(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the key loop runs `for start in range(0, Lk - 1, 64)` (guarded for Lk = 1), so a
    last tile holding exactly one key is skipped: wrong only when Lk % 64 == 1 and Lk > 64
    (65, 129, 193, 257, ...). Imitates: a `start_n < seqlen_k - 1` loop condition.
    Caught by: ATT-N1, if the strategies ever draw such an Lk."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    Lk = k.shape[-2]
    starts = range(0, max(Lk - 1, 1), 64)  # bug: range(0, Lk, 64)
    return _loop(q, k, v, visible, bias, scale, starts, 64).astype(query.dtype)


def query_tail_rows_zero(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: more than 64 queries are cut into Lq // 64 query tiles, so the last Lq % 64 rows
    of the zero-initialised output are never written (Lq > 64, Lq % 64 != 0). Imitates: a
    launch grid of `seqlen_q // BLOCK_M` programs instead of `cdiv(seqlen_q, BLOCK_M)`.
    Caught by: ATT-N1."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    Lq, Lk = q.shape[-2], k.shape[-2]
    out = np.zeros((*q.shape[:-1], v.shape[-1]), dtype=q.dtype)
    count = 1 if Lq <= 64 else Lq // 64  # bug: ceil
    for qs in range(0, count * 64, 64):
        rows = slice(qs, min(qs + 64, Lq))
        out[..., rows, :] = _loop(q, k, v, visible, bias, scale, range(0, Lk, 64), 64, rows)
    return out.astype(query.dtype)


def query_tile_causal_local_row(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: inside a query tile of 32 rows the causal bound uses the tile-local row,
    j <= i - start_m: rows past the first tile see too few keys (causal, Lq > 32).
    Imitates: a Triton kernel comparing `offs_m_local` instead of `start_m + offs_m` in
    `tl.where(offs_m[:, None] >= offs_n[None, :], qk, -inf)`. Caught by: ATT-M5, ATT-N1
    (it hides keys it should not, so ATT-M1's no-leak check passes)."""
    q, k, v = inputs(query, key, value, enable_gqa)
    Lq, Lk = q.shape[-2], k.shape[-2]
    full = (*q.shape[:-1], Lk)
    visible, bias = masking(attn_mask, False, full, q.dtype)
    bias = None if bias is None else np.broadcast_to(bias, full)
    scale = resolve_scale(scale, q.shape[-1])
    out = np.zeros((*q.shape[:-1], v.shape[-1]), dtype=q.dtype)
    for qs in range(0, Lq, 32):
        rows = slice(qs, min(qs + 32, Lq))
        seen = visible.copy()
        if is_causal:
            local = np.arange(rows.stop - rows.start)[:, None]  # bug: + qs
            seen[..., rows, :] &= np.arange(Lk)[None, :] <= local
        out[..., rows, :] = _loop(q, k, v, seen, bias, scale, range(0, Lk, 64), 64, rows)
    return out.astype(query.dtype)


def query_tile_mask_not_advanced(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the mask (and bias) pointer is not advanced with the query tile, so every tile of
    32 rows reads the rows of the first tile (row i gets row i % 32): wrong for a mask that
    differs per query and Lq > 32. Imitates: a forgotten `mask_ptr += start_m * stride_mm`.
    Caught by: ATT-N1."""
    q, k, v = inputs(query, key, value, enable_gqa)
    Lq, Lk = q.shape[-2], k.shape[-2]
    full = (*q.shape[:-1], Lk)
    visible, bias = masking(attn_mask, is_causal, full, q.dtype)
    bias = None if bias is None else np.broadcast_to(bias, full)
    scale = resolve_scale(scale, q.shape[-1])
    if attn_mask is not None:  # the causal bound is computed, the mask is read from memory
        read = np.arange(Lq) % 32  # bug: np.arange(Lq)
        visible = visible[..., read, :]
        bias = None if bias is None else bias[..., read, :]
    out = np.zeros((*q.shape[:-1], v.shape[-1]), dtype=q.dtype)
    for qs in range(0, Lq, 32):
        rows = slice(qs, min(qs + 32, Lq))
        out[..., rows, :] = _loop(q, k, v, visible, bias, scale, range(0, Lk, 64), 64, rows)
    return out.astype(query.dtype)


def head_dim_over_128_half_dropped(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: head dims above 128 go to a kernel that loads Q and K in two 128-wide halves and
    accumulates the scores of the first half only (Dk > 128; the scale is right).
    Imitates: a separate hdim-192/256 kernel, as FlashAttention instantiates one per head
    dim, with its second k-loop iteration lost. Caught by: ATT-N1, only if the strategies
    drew Dk > 128 (Gemma's 256, DeepSeek's 192)."""
    q, k, v, visible, bias, scale = _setup(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    if q.shape[-1] > 128:
        q, k = q[..., :128], k[..., :128]  # bug: the second half of q·k is dropped
    return _loop(q, k, v, visible, bias, scale, range(0, k.shape[-2], 64), 64).astype(query.dtype)
