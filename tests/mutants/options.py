"""Option edge values: scale, head dims, empty sequences, batch and head counts, one bug each.

Right: scale None means 1/sqrt(Dk) and any other number (0 and negatives included) is used as
given; Dv may differ from Dk; Lq = 0 gives an empty (B, Hq, 0, Dv) output and Lk = 0 zeros;
batch elements are independent.
"""

import numpy as np

from mutants._common import attend, inputs, masking, resolve_scale, safe_max, scores

MUST, SHOULD = "MUST", "SHOULD"

MUTANTS = {
    "scale_or_default": (("ATT-S3",), MUST),
    "scale_as_temperature": (("ATT-S3",), MUST),
    "scale_applied_twice": (("ATT-N1",), MUST),
    "scale_from_value_dim": (("ATT-S2",), MUST),
    "negative_scale_abs": (("ATT-N1",), MUST),
    "dv_output_sized_dk": (("ATT-D1", "ATT-S2"), MUST),
    "empty_queries_crash": (("ATT-D2",), MUST),
    "empty_keys_crash": (("ATT-D3",), MUST),
    "empty_keys_query_shaped": (("ATT-D3",), MUST),
    "single_key_fast_path": (("ATT-W4",), MUST),
    "batch_shared_max": (("ATT-H4",), MUST),
    "batch_tail_chunk_dropped": (("ATT-H4", "ATT-N1"), MUST),
    "head_dim_tail_reads_next_row": (("ATT-H2", "ATT-N1"), MUST),
    "strided_view_read_as_contiguous": (("ATT-N1",), MUST),
}


def _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa):
    """Correct attention with `scale` already resolved by the mutant (a float)."""
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, scale)
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    return attend(s, visible, v).astype(query.dtype)


def scale_or_default(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: `scale = scale or 1 / sqrt(Dk)`: an explicit scale of 0 is taken as 'not given'.
    Imitates: the falsy-default idiom in Python wrappers. Caught by: ATT-S3."""
    scale = scale or query.shape[-1] ** -0.5  # bug: `if scale is None`
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def scale_as_temperature(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the kernel takes a temperature and divides the scores by it, temperature =
    1 / scale: a scale of 0 raises ZeroDivisionError. Imitates: `softmax(qk / tau)` APIs
    wrapped behind SDPA's scale. Caught by: ATT-S3."""
    temperature = query.shape[-1] ** 0.5 if scale is None else 1.0 / scale  # bug: scale 0
    return _attention(query, key, value, attn_mask, is_causal, 1.0 / temperature, enable_gqa)


def scale_applied_twice(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the query is always pre-scaled by 1/sqrt(Dk), and an explicit scale is applied on
    top: right for scale None, wrong for any given scale. Imitates: a model that scales q
    itself and also passes scale= to SDPA. Caught by: ATT-N1 (calls with a scale)."""
    default = query.shape[-1] ** -0.5
    scale = default if scale is None else default * scale  # bug: scale alone
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def scale_from_value_dim(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the default scale is 1/sqrt(Dv), the value's head dim. Imitates: `head_dim =
    value.size(-1)` (or the output's) in a kernel wrapper. Caught by: ATT-S2."""
    scale = value.shape[-1] ** -0.5 if scale is None else scale  # bug: query.shape[-1]
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def negative_scale_abs(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the scale's absolute value is used (a negative scale flips every score's sign,
    and the kernel 'fixes' it). Imitates: `scale = fabsf(scale)` from a sqrt-based default
    applied to every scale. Caught by: ATT-N1, only if the strategies drew negative scales."""
    scale = abs(resolve_scale(scale, query.shape[-1]))  # bug
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def dv_output_sized_dk(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the output is allocated like the query, (..., Dk), and gets the first min(Dk, Dv)
    components of the result. Imitates: `out = torch.empty_like(q)` in a kernel written
    for Dv == Dk. Caught by: ATT-D1, ATT-S2 (Dv != Dk)."""
    result = _attention(
        query,
        key,
        value,
        attn_mask,
        is_causal,
        resolve_scale(scale, query.shape[-1]),
        enable_gqa,
    )
    out = np.zeros_like(query)  # bug: (..., Dv)
    n = min(query.shape[-1], value.shape[-1])
    out[..., :n] = result[..., :n]
    return out


def empty_queries_crash(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the rows are computed one query at a time and stacked, and np.stack of no rows
    raises ValueError (Lq = 0). Imitates: a per-token decode loop reused for a batch of
    queries. Caught by: ATT-D2."""
    scale = resolve_scale(scale, query.shape[-1])
    Lq, Lk = query.shape[-2], key.shape[-2]
    rows = []
    for i in range(Lq):
        mask = attn_mask
        if mask is not None and mask.ndim >= 2 and mask.shape[-2] > 1:
            mask = mask[..., i : i + 1, :]
        if is_causal:
            mask = np.arange(Lk)[None, :] <= i
        rows.append(
            _attention(query[..., i : i + 1, :], key, value, mask, False, scale, enable_gqa)
        )
    return np.concatenate(rows, axis=-2)  # bug: no rows, nothing to concatenate


def empty_keys_crash(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the row max is a reduction without an identity, so Lk = 0 raises ValueError
    ('zero-size array to reduction operation maximum which has no identity'). Imitates:
    `scores.max(axis=-1)` in NumPy (and `amax` over an empty dim in PyTorch).
    Caught by: ATT-D3."""
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    s = np.where(visible, s, -np.inf)
    m = safe_max(s.max(axis=-1))  # bug: initial=-np.inf
    p = np.exp(s - m[..., None])
    total = p.sum(axis=-1)
    acc = np.where(visible[..., None], p[..., None] * v[..., None, :, :], 0).sum(axis=-2)
    return (acc / np.where(total > 0, total, 1)[..., None]).astype(query.dtype)


def empty_keys_query_shaped(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: with no keys the kernel returns `zeros_like(query)`, (..., Dk) instead of
    (..., Dv). Imitates: an early exit written for Dv == Dk. Caught by: ATT-D3 (Lk = 0 and
    Dv != Dk)."""
    if key.shape[-2] == 0:
        return np.zeros_like(query)  # bug: the shape of (..., Lq, Dv)
    scale = resolve_scale(scale, query.shape[-1])
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def single_key_fast_path(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: with one key (Lk == 1) every query's output is that key's value, 'the softmax of
    one score is 1', and the mask is never looked at: a row that may not see the key gets
    v_0 instead of 0. Imitates: a decode fast path for the first generated token.
    Caught by: ATT-W4."""
    if key.shape[-2] == 1:
        v = inputs(query, key, value, enable_gqa)[2]
        return np.broadcast_to(v, (*query.shape[:-1], value.shape[-1])).astype(query.dtype)
    scale = resolve_scale(scale, query.shape[-1])
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def batch_shared_max(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the softmax shift is the max over the whole batch and all heads, not each row's
    own: right in exact arithmetic, but one batch element's scores change another's
    rounding (and can underflow its weights). Imitates: `scores.max()` without axis=-1.
    Caught by: ATT-H4 (bit-for-bit independence of batch elements)."""
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    s = np.where(visible, s, -np.inf)
    m = safe_max(s.max(initial=-np.inf))  # bug: axis=-1
    p = np.exp(s - m)
    total = p.sum(axis=-1)
    out = (p @ v) / np.where(total > 0, total, 1)[..., None]
    return out.astype(query.dtype)


def batch_tail_chunk_dropped(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the batch is processed in chunks of 4 elements and the number of chunks is
    B // 4 once B > 4, so the last B % 4 elements keep the zero-initialised output
    (B > 4, B % 4 != 0). Imitates: a launch grid `batch // CHUNK`. Caught by: ATT-H4,
    ATT-N1, when the strategies draw a flattened batch of 5, 6, 7 or 9."""
    B = query.shape[0]
    scale = resolve_scale(scale, query.shape[-1])
    if B <= 4:
        return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    out = np.zeros((*query.shape[:-1], value.shape[-1]), dtype=query.dtype)
    for start in range(0, (B // 4) * 4, 4):  # bug: range(0, B, 4)
        rows = slice(start, start + 4)
        part_mask = attn_mask
        if attn_mask is not None and attn_mask.ndim == 4 and attn_mask.shape[0] > 1:
            part_mask = attn_mask[rows]
        out[rows] = _attention(
            query[rows], key[rows], value[rows], part_mask, is_causal, scale, enable_gqa
        )
    return out


def _rows_read_in_lanes(x, lanes):
    """Each row of x (..., D) as a kernel reads it in vectors of `lanes` from the flat
    buffer, without a bound: D rounded up to a multiple of `lanes`, the overrun taken from
    the next row (zeros past the end of the buffer)."""
    D = x.shape[-1]
    width = -(-D // lanes) * lanes
    flat = np.concatenate([x.reshape(-1), np.zeros(width, dtype=x.dtype)])
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    index = np.arange(rows)[:, None] * D + np.arange(width)[None, :]
    return flat[index].reshape(*x.shape[:-1], width)


def head_dim_tail_reads_next_row(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: head dims above 8 are read in vectors of 16 lanes with no tail mask, so when
    Dk % 16 != 0 each q and k row runs on into the next row's first entries, which enter
    q·k (dims up to 8 take a scalar path and are right). Imitates: a SIMD dot product whose
    remainder loop was left out because every model's head dim is a multiple of 16.
    Caught by: ATT-H2, whose multi-head layers draw head dims 9..32 (the last row of a head
    reads the next head's first row in the layer, zeros when the head runs alone); ATT-N1
    only if cases() drew such a Dk (it draws 1..8, 16, 32, 64, 80 and 128)."""
    q, k, v = inputs(query, key, value, enable_gqa)
    scale = resolve_scale(scale, q.shape[-1])
    if q.shape[-1] > 8 and q.shape[-1] % 16:
        q, k = _rows_read_in_lanes(q, 16), _rows_read_in_lanes(k, 16)  # bug: mask the tail
    s = scores(q, k, scale)
    visible, bias = masking(attn_mask, is_causal, s.shape, q.dtype)
    if bias is not None:
        s = s + bias
    return attend(s, visible, v).astype(query.dtype)


def _as_if_contiguous(x):
    """x's memory read as a C-contiguous array of x's shape, whatever its strides (views
    with a stride of 0 excepted: they would read past the buffer)."""
    if x.flags.c_contiguous or 0 in x.strides:
        return x
    strides = np.cumprod((1, *x.shape[:0:-1]))[::-1] * x.itemsize
    return np.lib.stride_tricks.as_strided(x, x.shape, tuple(strides), writeable=False)


def strided_view_read_as_contiguous(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the arrays' buffers are read as if they were C-contiguous in their shape,
    ignoring their strides: a (B, H, L, D) view of a (B, L, H, D) projection output (what
    `q.transpose(1, 2)` hands over) is read with heads and tokens mixed up. Imitates: a C
    binding passing `x.ctypes.data` (or `data_ptr()`) without `ascontiguousarray`.
    Caught by: ATT-N1 (the strategies draw such strided views)."""
    query, key, value = (_as_if_contiguous(x) for x in (query, key, value))  # bug
    scale = resolve_scale(scale, query.shape[-1])
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)
