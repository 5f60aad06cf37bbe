"""Mask handling: broadcasting, layouts and the two kinds of mask, with one bug each.

The SDPA protocol's attn_mask is bool (True = may attend) or float (added to the scores, -inf
hides), broadcastable to (B, Hq, Lq, Lk): it may come as (Lq, Lk), (1, Lk), (Hq, Lq, Lk),
(B, 1, 1, Lk) and so on. Each mutant mishandles one of those forms or meanings; the softmax
itself is right (mutants._common.attend).
"""

import numpy as np

from mutants._common import attend, inputs, resolve_scale, scores

MUST, SHOULD = "MUST", "SHOULD"

MUTANTS = {
    "padding_mask_on_query_axis": (("ATT-N1",), MUST),
    "square_mask_transposed": (("ATT-N1", "ATT-W4"), MUST),
    "mask_head_zero_for_all": (("ATT-N1",), MUST),
    "mask_3d_as_batch": (("ATT-N1", "ATT-D1"), MUST),
    "mask_first_batch_only": (("ATT-N1", "ATT-H4"), MUST),
    "bool_mask_added": (("ATT-W4", "ATT-N1"), MUST),
    "float_mask_ignored": (("ATT-M4", "ATT-N1"), MUST),
    "float_mask_as_bool": (("ATT-M4", "ATT-N1"), MUST),
    "mask_inverted": (("ATT-W4", "ATT-N1"), MUST),
    "bias_before_scale": (("ATT-N1",), MUST),
    "bias_clamped_finite": (("ATT-M4", "ATT-N1"), MUST),
    "bias_float64_read_as_bool": (("ATT-N1",), MUST),
    "query_mask_squeezed_onto_keys": (("ATT-N1",), MUST),
}


def _attention(query, key, value, mask, is_causal, scale, enable_gqa):
    """Correct attention given the mask as the mutant has (mis)read it."""
    q, k, v = inputs(query, key, value, enable_gqa)
    s = scores(q, k, resolve_scale(scale, q.shape[-1]))
    Lq, Lk = s.shape[-2:]
    visible = np.ones(s.shape, dtype=bool)
    if is_causal:
        visible &= np.arange(Lk)[None, :] <= np.arange(Lq)[:, None]
    if mask is not None:
        if mask.dtype == np.bool_:
            visible = visible & mask
        else:
            s = s + mask.astype(s.dtype)
            visible = visible & (mask > -np.inf)
    visible = np.broadcast_to(visible, s.shape)
    return attend(s, visible, v).astype(query.dtype)


def padding_mask_on_query_axis(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: a mask with one row, (..., 1, Lk), is taken for a key padding mask and expanded
    onto the query axis, (..., Lk, 1): silently wrong when Lq == Lk, a broadcasting error or
    a wrong shape otherwise. Imitates: `key_padding_mask[:, None, :, None]` for
    `[:, None, None, :]`. Caught by: ATT-N1."""
    if attn_mask is not None and attn_mask.ndim >= 2 and attn_mask.shape[-2] == 1:
        attn_mask = np.swapaxes(attn_mask, -1, -2)  # bug
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def square_mask_transposed(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: a mask whose last two dims read (Lk, Lq) is taken for a key-major mask and
    transposed; a square mask (Lq == Lk) always reads that way, so it is transposed too.
    Imitates: a layout guess from the shape (`if mask.shape[-2] == Lk`) that cannot tell
    a square mask's orientation. Caught by: ATT-N1, ATT-W4 (when Lq == Lk)."""
    Lq, Lk = query.shape[-2], key.shape[-2]
    if attn_mask is not None and attn_mask.ndim >= 2 and attn_mask.shape[-2:] == (Lk, Lq):
        attn_mask = np.swapaxes(attn_mask, -1, -2)  # bug: a square mask is already (Lq, Lk)
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def mask_head_zero_for_all(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: a mask with a head axis has head 0's mask applied to every head. Imitates: a
    kernel launched with the mask's head stride 0 (`stride_mh = 0`, written for masks shared
    by all heads). Caught by: ATT-N1, when a drawn mask keeps its Hq axis and Hq > 1."""
    if attn_mask is not None and attn_mask.ndim >= 3 and attn_mask.shape[-3] > 1:
        attn_mask = attn_mask[..., :1, :, :]  # bug
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def mask_3d_as_batch(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: a 3-D mask is taken as (B, Lq, Lk) and given a head axis, mask[:, None], when
    the SDPA protocol broadcasts it as (Hq, Lq, Lk): heads become batch elements (a wrong
    output shape when B = 1 < Hq, head h's mask on batch element h when B = Hq).
    Imitates: Hugging Face's (batch, q_len, kv_len) mask convention fed to SDPA.
    Caught by: ATT-N1, ATT-D1."""
    if attn_mask is not None and attn_mask.ndim == 3:
        attn_mask = attn_mask[:, None, :, :]  # bug
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def mask_first_batch_only(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: a 4-D mask has batch element 0's mask applied to every element. Imitates: a
    kernel launched with the mask's batch stride 0, written for a mask shared by the batch.
    Caught by: ATT-N1, ATT-H4, when a drawn mask keeps its batch axis and B > 1."""
    if attn_mask is not None and attn_mask.ndim == 4 and attn_mask.shape[0] > 1:
        attn_mask = attn_mask[:1]  # bug
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def bool_mask_added(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: every mask is added to the scores, a bool one too: True adds 1, False adds 0, and
    nothing is hidden. Imitates: `scores + attn_mask` with a bool tensor (PyTorch's own
    SDPA docs warn of this form). Caught by: ATT-W4, ATT-N1."""
    if attn_mask is not None and attn_mask.dtype == np.bool_:
        attn_mask = attn_mask.astype(query.dtype)  # bug: True -> +1, False -> 0
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def float_mask_ignored(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: only bool masks are applied; a float mask is dropped. Imitates: a kernel
    binding that takes `bool* mask` and a wrapper that passes NULL for other dtypes.
    Caught by: ATT-M4, ATT-N1."""
    if attn_mask is not None and attn_mask.dtype != np.bool_:
        attn_mask = None  # bug
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def float_mask_as_bool(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: a float mask is converted to bool: any non-zero entry (-inf included) becomes
    'attend', 0.0 becomes 'hidden', and the values themselves are lost. Imitates:
    `attn_mask.bool()` on an additive mask. Caught by: ATT-M4, ATT-N1."""
    if attn_mask is not None and attn_mask.dtype != np.bool_:
        attn_mask = attn_mask.astype(bool)  # bug
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def mask_inverted(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """Bug: a bool mask is read as True = hidden. Imitates: nn.MultiheadAttention's
    key_padding_mask convention (True = ignore) passed to SDPA (True = attend).
    Caught by: ATT-W4, ATT-N1."""
    if attn_mask is not None and attn_mask.dtype == np.bool_:
        attn_mask = ~attn_mask  # bug
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def bias_before_scale(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: the float mask is added before the scale, (q·k + bias)·scale, so it is scaled
    too. Imitates: a fused kernel adding the bias to the raw accumulator of q·k.
    Caught by: ATT-N1."""
    if attn_mask is None or attn_mask.dtype == np.bool_:
        return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    q, k, v = inputs(query, key, value, enable_gqa)
    scale = resolve_scale(scale, q.shape[-1])
    bias = attn_mask.astype(q.dtype)
    with np.errstate(invalid="ignore"):
        s = (scores(q, k, 1.0) + bias) * scale  # bug: q·k·scale + bias
    visible = np.broadcast_to(bias > -np.inf, s.shape)
    return attend(s, visible, v).astype(query.dtype)


def bias_clamped_finite(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: -inf in a float mask is clamped to the dtype's lowest finite value 'to avoid
    NaN': hidden keys still weigh 0 beside a visible one, but a row the mask hides entirely
    gets the mean of V instead of 0. Imitates: `mask.clamp(min=torch.finfo(dtype).min)` in
    model code. Caught by: ATT-M4 (a bool mask vs its -inf bias), ATT-N1."""
    if attn_mask is not None and attn_mask.dtype != np.bool_:
        low = np.finfo(query.dtype).min
        attn_mask = np.maximum(attn_mask, low)  # bug
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def bias_float64_read_as_bool(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: only a float32 mask is treated as additive; any other dtype is read as a bool
    mask, so a float64 call's bias becomes 'attend wherever non-zero'. Imitates: a binding
    whose dtype dispatch knows float32 and bool only. Caught by: ATT-N1 (float64 calls with
    a bias)."""
    if attn_mask is not None and attn_mask.dtype != np.float32:
        attn_mask = attn_mask.astype(bool)  # bug: a float64 bias is not a bool mask
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def query_mask_squeezed_onto_keys(
    query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False
):
    """Bug: a mask broadcast along the keys, (..., Lq, 1) (a query padding mask), has its
    trailing singleton squeezed away and is re-expanded as a key mask, (..., 1, Lq): silently
    wrong when Lq == Lk, a broadcasting error otherwise. Imitates: a wrapper that normalises
    every mask to the (batch, kv_len) padding form with `mask.squeeze(-1)`.
    Caught by: ATT-N1, only if the strategies drew masks of size 1 along Lk (they always
    give masks all Lk keys)."""
    along_keys = attn_mask is not None and attn_mask.ndim >= 2 and attn_mask.shape[-1] == 1
    if along_keys and key.shape[-2] > 1:
        attn_mask = attn_mask[..., 0][..., None, :]  # bug
    return _attention(query, key, value, attn_mask, is_causal, scale, enable_gqa)
