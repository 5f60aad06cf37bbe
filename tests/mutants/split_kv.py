"""Split-KV attention (FlashDecoding, ring attention, long-context decode), with one bug each.

The correct scheme (controls.split_kv_lse): cut the keys into chunks c, compute each chunk's
normalised output o_c and log-sum-exp lse_c on its own, then merge:

    lse = log Σ_c exp(lse_c),   out = Σ_c exp(lse_c - lse)·o_c

A chunk in which a row sees no key has lse_c = -inf and weighs exactly 0; its o_c must be 0
(not NaN, not the mean of its values) for 0·o_c to vanish.
"""

import numpy as np

from mutants._common import inputs, masking, normalise, resolve_scale, safe_max, scores, weigh

MUST, SHOULD = "MUST", "SHOULD"

MUTANTS = {
    "merge_plain_average": (("ATT-N1",), MUST),
    "merge_max_not_sum": (("ATT-N1",), MUST),
    "merge_unnormalised_outputs": (("ATT-N1",), MUST),
    "merge_without_max_shift": (("ATT-N2",), MUST),
    "lse_base2_merged_natural": (("ATT-N1",), MUST),
    "chunk_lse_last_tile": (("ATT-N1",), MUST),
    "empty_chunk_nan": (("ATT-W4", "ATT-N1"), MUST),
    "empty_chunk_mean": (("ATT-W4",), MUST),
    "decode_split_by_key_count": (("ATT-N1",), MUST),
    "long_context_split": (("ATT-N1",), MUST),
    "split_four_drops_remainder": (("ATT-N1",), MUST),
    "overlapping_chunks": (("ATT-N1",), MUST),
}


def _scores(query, key, value, attn_mask, is_causal, scale, enable_gqa):
    """q, k, v in the compute dtype, the full masked scores (hidden keys -inf) and visible."""
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    return q, k, v, np.where(visible, s, -np.inf), visible


def _chunks(Lk, size):
    return [(start, min(start + size, Lk)) for start in range(0, Lk, size)]


def _partial(s, v, visible, start, stop):
    """One chunk on its own: (o_c normalised, m_c, l_c, lse_c)."""
    chunk = s[..., start:stop]
    m = safe_max(chunk.max(axis=-1, initial=-np.inf))
    p = np.exp(chunk - m[..., None])
    total = p.sum(axis=-1)
    out = normalise(weigh(p, v[..., start:stop, :], visible[..., start:stop]), total)
    with np.errstate(divide="ignore"):
        lse = m + np.log(total)
    return out, m, total, lse


def _merge(outs, lses):
    """The correct merge: out = Σ_c exp(lse_c - lse)·o_c (0 where every chunk saw nothing)."""
    lse_c = np.stack(lses)
    share = np.exp(lse_c - safe_max(lse_c.max(axis=0)))
    merged = sum(w[..., None] * o for w, o in zip(share, outs, strict=True))
    return normalise(merged, share.sum(axis=0))


def _split(query, key, value, attn_mask, is_causal, scale, enable_gqa, size, merge):
    """Chunks of `size` keys, computed correctly, combined by `merge(partials)`."""
    q, k, v, s, visible = _scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    Lk = k.shape[-2]
    if Lk == 0:
        return np.zeros((*q.shape[:-1], v.shape[-1]), dtype=query.dtype)
    parts = [_partial(s, v, visible, a, b) for a, b in _chunks(Lk, size)]
    if len(parts) == 1:  # one chunk: written directly, no merge kernel
        return parts[0][0].astype(query.dtype)
    return merge(parts).astype(query.dtype)


def merge_plain_average(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the partial outputs of chunks of 64 keys are averaged, each chunk weighing the
    same, instead of being weighted by exp(lse_c - lse) (Lk > 64). Imitates: a split-K
    reduction reused from a matmul (a plain mean of partials). Caught by: ATT-N1."""

    def merge(parts):
        return sum(o for o, *_ in parts) / len(parts)

    return _split(query, key, value, attn_mask, is_causal, scale, enable_gqa, 64, merge)


def merge_max_not_sum(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the partials store the chunk's max m_c instead of its lse, and are merged with
    weights exp(m_c - max_c m_c): each chunk's sum l_c is lost (Lk > 64). Imitates: a decode
    kernel that writes `m_i` to the lse buffer. Caught by: ATT-N1."""

    def merge(parts):
        m_c = np.stack([np.where(np.isfinite(lse), m, -np.inf) for _, m, _, lse in parts])
        share = np.exp(m_c - safe_max(m_c.max(axis=0)))  # bug: exp(lse_c - ...) is right
        merged = sum(w[..., None] * o for w, (o, *_) in zip(share, parts, strict=True))
        return normalise(merged, share.sum(axis=0))

    return _split(query, key, value, attn_mask, is_causal, scale, enable_gqa, 64, merge)


def merge_unnormalised_outputs(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: with more than one chunk of 64, the chunks write their unnormalised accumulators
    Σ_j exp(s_ij - m_c)·v_j (the division by l_c skipped, 'the merge normalises'), and the
    merge weighs them by exp(lse_c - lse), which already holds l_c: each chunk counts l_c
    times. Imitates: a split kernel whose epilogue was moved to the combine kernel only
    halfway. Caught by: ATT-N1."""

    def merge(parts):
        accs = [o * total[..., None] for o, _, total, _ in parts]  # bug: o_c itself is right
        return _merge(accs, [lse for *_, lse in parts])

    return _split(query, key, value, attn_mask, is_causal, scale, enable_gqa, 64, merge)


def merge_without_max_shift(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the merge computes Σ_c exp(lse_c)·o_c / Σ_c exp(lse_c) without subtracting the
    largest lse first: exp overflows once an lse exceeds ~88 (float32) or ~709 (float64),
    and inf/inf is NaN. Imitates: the textbook formula of a combine kernel, as first written.
    Caught by: ATT-N2 (scores near 1e4)."""
    q, k, v, s, visible = _scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    parts = [_partial(s, v, visible, a, b) for a, b in _chunks(k.shape[-2], 64)]
    if not parts:
        return np.zeros((*q.shape[:-1], v.shape[-1]), dtype=query.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        share = [np.exp(lse) for *_, lse in parts]  # bug: exp(lse_c - max lse)
        merged = sum(w[..., None] * o for w, (o, *_) in zip(share, parts, strict=True))
        return normalise(merged, sum(share)).astype(query.dtype)


def lse_base2_merged_natural(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the chunks of 64 write their lse in base 2 (m·log2(e) + log2(l), the exp2 form
    FlashAttention computes in), and the merge exponentiates them as natural logs: chunk
    weights come out as powers of e^(1/ln 2) (Lk > 64). Imitates: mixing a kernel's exp2
    lse with a framework's exp-based combine. Caught by: ATT-N1."""

    def merge(parts):
        with np.errstate(divide="ignore"):
            lse2 = [m * np.log2(np.e) + np.log2(total) for _, m, total, _ in parts]
        return _merge([o for o, *_ in parts], lse2)  # bug: lse2 is not a natural log

    return _split(query, key, value, attn_mask, is_causal, scale, enable_gqa, 64, merge)


def chunk_lse_last_tile(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: each chunk of 128 keys runs an online softmax over tiles of 32, and reports as its
    lse the last tile's m + log(l_tile), not the chunk's m + log(l): the output of each chunk
    is right, their merge weights are not (Lk > 128). Imitates: writing the lse from the
    loop's tile-local variables. Caught by: ATT-N1."""
    q, k, v, s, visible = _scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    Lk = k.shape[-2]
    if Lk == 0:
        return np.zeros((*q.shape[:-1], v.shape[-1]), dtype=query.dtype)
    outs, lses = [], []
    for a, b in _chunks(Lk, 128):
        m = np.full(s.shape[:-1], -np.inf, dtype=s.dtype)
        total = np.zeros_like(m)
        acc = np.zeros((*m.shape, v.shape[-1]), dtype=s.dtype)
        for ts in range(a, b, 32):
            tile = s[..., ts : min(ts + 32, b)]
            m_new = np.maximum(m, tile.max(axis=-1))
            shift = safe_max(m_new)
            alpha = np.exp(m - shift)
            p = np.exp(tile - shift[..., None])
            tile_total = p.sum(axis=-1)
            total = alpha * total + tile_total
            cols = slice(ts, min(ts + 32, b))
            acc = alpha[..., None] * acc + weigh(p, v[..., cols, :], visible[..., cols])
            m = m_new
        outs.append(normalise(acc, total))
        with np.errstate(divide="ignore"):
            lses.append(m + np.log(tile_total))  # bug: np.log(total)
    if len(outs) == 1:
        return outs[0].astype(query.dtype)
    return _merge(outs, lses).astype(query.dtype)


def empty_chunk_nan(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: a chunk's output is acc / l with no guard, so a chunk of 64 in which a row sees
    no key gives 0/0 = NaN; the merge weighs it exp(-inf) = 0, and 0·NaN = NaN (a fully
    masked row is NaN, and so is a row that sees nothing in one of its chunks). Imitates:
    FlashDecoding partials of a fully masked split, merged without `if lse == -inf: skip`.
    Caught by: ATT-W4, ATT-N1."""
    q, k, v, s, visible = _scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    outs, lses = [], []
    with np.errstate(invalid="ignore", divide="ignore"):
        for a, b in _chunks(k.shape[-2], 64):
            chunk = s[..., a:b]
            m = safe_max(chunk.max(axis=-1))
            p = np.exp(chunk - m[..., None])
            total = p.sum(axis=-1)
            outs.append(weigh(p, v[..., a:b, :], visible[..., a:b]) / total[..., None])  # bug
            lses.append(m + np.log(total))
        if not outs:
            return np.zeros((*q.shape[:-1], v.shape[-1]), dtype=query.dtype)
        lse_c = np.stack(lses)
        share = np.exp(lse_c - safe_max(lse_c.max(axis=0)))
        merged = sum(w[..., None] * o for w, o in zip(share, outs, strict=True))
        return normalise(merged, share.sum(axis=0)).astype(query.dtype)


def empty_chunk_mean(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: hidden keys score -1e9 inside each chunk of 64 instead of -inf: a chunk a row
    sees nothing of gives the mean of its values with lse near -1e9, which the merge weighs
    e^-1e9 = 0, so mixed rows are right, but a row that sees no key at all gets the mean
    of all the values. Imitates: the -1e9 masked_fill habit inside a split kernel.
    Caught by: ATT-W4."""
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    if bias is not None:
        s = s + np.where(np.isfinite(bias), bias, 0)
    s = np.where(visible, s, -1e9)  # bug: -inf
    seen = np.ones_like(visible)  # every key takes part, with its finite penalty
    Lk = k.shape[-2]
    if Lk == 0:
        return np.zeros((*q.shape[:-1], v.shape[-1]), dtype=query.dtype)
    parts = [_partial(s, v, seen, a, b) for a, b in _chunks(Lk, 64)]
    return _merge([o for o, *_ in parts], [lse for *_, lse in parts]).astype(query.dtype)


def decode_split_by_key_count(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the decode path (one query, Lq == 1) splits the keys into chunks of 32 and
    merges their outputs weighted by how many keys each chunk holds, not by exp(lse_c);
    prefill (Lq > 1) is computed in one pass and is right (Lq == 1, Lk > 32).
    Imitates: a hand-written decode kernel's combine step. Caught by: ATT-N1."""
    q, k, v, s, visible = _scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    Lk = k.shape[-2]
    size = 32 if q.shape[-2] == 1 else max(Lk, 1)
    parts = [(b - a, _partial(s, v, visible, a, b)[0]) for a, b in _chunks(Lk, size)]
    if not parts:
        return np.zeros((*q.shape[:-1], v.shape[-1]), dtype=query.dtype)
    merged = sum(n * o for n, o in parts) / Lk  # bug: weights exp(lse_c - lse)
    return merged.astype(query.dtype)


def long_context_split(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: from Lk >= 512 on the keys are split into 4 chunks whose outputs are merged by
    a plain average (no lse); shorter rows take the one-pass path and are right.
    Imitates: a split heuristic (`num_splits = 4 if seqlen_k >= 512`) guarding a broken
    combine. Caught by: ATT-N1, only if the strategies draw Lk >= 512."""
    q, k, v, s, visible = _scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    Lk = k.shape[-2]
    if Lk == 0:
        return np.zeros((*q.shape[:-1], v.shape[-1]), dtype=query.dtype)
    if Lk < 512:
        return _partial(s, v, visible, 0, Lk)[0].astype(query.dtype)
    size = -(-Lk // 4)
    parts = [_partial(s, v, visible, a, b)[0] for a, b in _chunks(Lk, size)]
    return (sum(parts) / len(parts)).astype(query.dtype)  # bug: merge with the lse


def split_four_drops_remainder(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: from Lk >= 256 on the keys are split into 4 chunks of Lk // 4, so the last
    Lk % 4 keys belong to no chunk (the merge itself is right). Imitates:
    `split_size = seqlen_k / num_splits` with integer division. Caught by: ATT-N1, when
    the strategies draw Lk in [256, 320] with Lk % 4 != 0."""
    q, k, v, s, visible = _scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    Lk = k.shape[-2]
    if Lk < 256:
        bounds = [(0, Lk)] if Lk else []
    else:
        size = Lk // 4  # bug: ceil
        bounds = [(c * size, (c + 1) * size) for c in range(4)]
    parts = [_partial(s, v, visible, a, b) for a, b in bounds]
    if not parts:
        return np.zeros((*q.shape[:-1], v.shape[-1]), dtype=query.dtype)
    return _merge([o for o, *_ in parts], [lse for *_, lse in parts]).astype(query.dtype)


def overlapping_chunks(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: from Lk > 128 on the keys are split into 3 chunks whose bounds are inclusive,
    [c·n, (c + 1)·n], so the key at each inner boundary is counted in two chunks.
    Imitates: an inclusive end index in a split loop. Caught by: ATT-N1."""
    q, k, v, s, visible = _scores(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    Lk = k.shape[-2]
    if Lk <= 128:
        bounds = [(0, Lk)] if Lk else []
    else:
        size = -(-Lk // 3)
        bounds = [(c * size, min((c + 1) * size + 1, Lk)) for c in range(3)]  # bug: no + 1
    parts = [_partial(s, v, visible, a, b) for a, b in bounds]
    if not parts:
        return np.zeros((*q.shape[:-1], v.shape[-1]), dtype=query.dtype)
    return _merge([o for o, *_ in parts], [lse for *_, lse in parts]).astype(query.dtype)
