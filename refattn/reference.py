"""The readable reference: what attention must compute.

    scores  = softcap(Q·Kᵀ·scale) + bias          step 1: score every query against every key
    weights = softmax(scores) over visible keys   step 2: normalise each row to sum 1
    out     = weights · V                         step 3: weigh the values

Shape letters (the same everywhere in refattn, Python and C):
    B...  batch dims (any number)       Hq, Hkv   query heads, key/value heads
    Lq    query length                  Lk        key/value length
    Dk    query/key head dim            Dv        value head dim

    query (B..., Hq, Lq, Dk)   key (B..., Hkv, Lk, Dk)   value (B..., Hkv, Lk, Dv)
    out   (B..., Hq, Lq, Dv)   lse (B..., Hq, Lq)        weights (B..., Hq, Lq, Lk)

Masks say which keys a query may see (True = may attend); see `refattn.masks` for each one.
A key is visible only if every mask given allows it, and a bias of -inf hides it too.

A fully masked row (no visible key) returns output 0, weights 0 and lse -inf. Softmax over an
empty set is undefined, so the spec must choose: 0 is what PyTorch (since 2.5) and ONNX (since
1.23) return, it is what split-KV merging needs (a chunk with no visible key must contribute
nothing), and it is the limit of attending with an extra "null" key whose value is 0. JAX returns
the mean of V instead (its masked scores are a large finite negative, not -inf).

This module is the normative definition: it favours reading over speed, computes in float64
when given float64, and in float32 otherwise (float16 and bfloat16 inputs are computed in
float32).
`attention_backward` gives the gradients of attention, derived from the same definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from refattn import masks
from refattn._checks import check_float_array, check_same_dtype, in_compute_dtype
from refattn.call import AttentionCall, AttentionGradients, call_signature, check_option_names


@call_signature
def attention(query, key, value, **options):
    """Scaled dot-product attention, with every mask, GQA and the fully masked rule.

    out[..., h, i, :] = Σ_j softmax_j(s[..., h, i, j]) · value[..., h // G, j, :]
    s[..., h, i, j]   = softcap·tanh(scale·q_i·k_j / softcap) + bias[..., h, i, j]
    with the softmax taken over the keys j visible to query i, and G = Hq // Hkv.

    Args:
        query: (B..., Hq, Lq, Dk) float16, bfloat16 (ml_dtypes.bfloat16), float32 or float64.
        key: (B..., Hkv, Lk, Dk), same dtype and batch dims; Hq must be a multiple of Hkv.
            Query head h uses key/value head h // (Hq // Hkv) (GQA; MQA when Hkv = 1).
        value: (B..., Hkv, Lk, Dv), same dtype; Dv may differ from Dk.
        mask: bool, broadcastable to (B..., Hq, Lq, Lk); True = may attend.
        bias: float, broadcastable to (B..., Hq, Lq, Lk); added to the scaled (and capped)
            scores. -inf hides a key; NaN and +inf are errors.
        causal: None, "top_left" or "bottom_right" (True means "top_left"). Key j is visible
            to query i iff j <= i + offset, offset 0 (top-left) or Lk - Lq (bottom-right).
        window: (left, right), each an int >= 0 or None (unbounded): key j is visible iff
            i + offset - left <= j <= i + offset + right, offset from `causal` (top-left if None).
        kv_lengths: ints broadcastable to (B...): keys j >= kv_lengths[b] are padding.
        scale: multiplies q·k; default 1/sqrt(Dk) (the query/key head dim, not Dv).
        softcap: if given (> 0), scores become softcap·tanh(scores/softcap) before bias and masks.
        return_lse: also return lse = log Σ_j exp(s_ij) over visible keys, (B..., Hq, Lq).
        return_weights: also return the weights, (B..., Hq, Lq, Lk).

    Returns:
        out (B..., Hq, Lq, Dv) in the query's dtype; or a tuple (out, lse), (out, weights) or
        (out, lse, weights) when asked. lse and weights are in the compute dtype (float32 for
        float16 inputs). A fully masked row has out 0, weights 0 and lse -inf.
    """
    call = AttentionCall.check(query, key, value, **options)
    q, k, v = _heads_aligned(call)
    visible = np.broadcast_to(_visible(call), call.scores_shape)
    with np.errstate(invalid="ignore"):  # NaN in visible inputs propagates: that is the spec
        scores = _scores(q, k, call)
        weights, lse = _masked_softmax(scores, visible)
        out = _weigh(weights, v, visible)
    # A row with lse -inf sees no key, or sees only keys scoring -inf: either way its softmax
    # sums to 0 and it is fully masked, out 0 (the null-key limit), whatever V holds there.
    out = np.where((lse == -np.inf)[..., None], 0, out).astype(query.dtype, copy=False)
    return call.returns(out, lse, weights)


def _heads_aligned(call: AttentionCall) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q, k, v in the compute dtype, each kv head repeated G = Hq // Hkv times (GQA)."""
    dtype = call.compute_dtype
    group = call.Hq // call.Hkv
    q = call.query.astype(dtype, copy=False)
    k = np.repeat(call.key.astype(dtype, copy=False), group, axis=-3)  # head h -> kv head h // G
    v = np.repeat(call.value.astype(dtype, copy=False), group, axis=-3)
    return q, k, v


def _visible(call: AttentionCall) -> np.ndarray:
    """Which keys each query may see, broadcastable to (B..., Hq, Lq, Lk)."""
    lengths = None if call.kv_lengths is None else call.kv_lengths[..., None]  # one per head
    seen = masks.visible(
        call.Lq,
        call.Lk,
        causal=call.causal,
        window=call.window,
        kv_lengths=lengths,
        mask=call.mask,
    )
    if call.bias is not None:
        seen = seen & (call.bias > -np.inf)  # -inf hides a key even if its score is NaN
    return seen


def _scores(q: np.ndarray, k: np.ndarray, call: AttentionCall) -> np.ndarray:
    """Step 1: s = softcap(q·kᵀ·scale) + bias, (B..., Hq, Lq, Lk)."""
    scores = (q @ np.swapaxes(k, -1, -2)) * call.scale_or_default  # a Python float: dtype kept
    if call.softcap is not None:
        scores = call.softcap * np.tanh(scores / call.softcap)
    if call.bias is not None:
        scores = scores + in_compute_dtype(call.bias, call.compute_dtype)
    return scores


def _masked_softmax(scores: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: weights = exp(s - lse) over visible keys, 0 elsewhere; lse = log Σ exp(s)."""
    scores = np.where(visible, scores, -np.inf)  # a hidden key weighs exp(-inf) = 0
    row_max = np.max(scores, axis=-1, keepdims=True, initial=-np.inf)
    # Subtracting the row max keeps exp from overflowing. A fully masked row has max -inf:
    # shift it by 0 instead, so that its exps are exp(-inf) = 0 rather than exp(NaN).
    shift = np.where(row_max == -np.inf, 0, row_max)
    unnormalised = np.exp(scores - shift)
    total = np.sum(unnormalised, axis=-1, keepdims=True)
    # total >= 1 when any key is visible (the max contributes exp(0)); it is 0 only for a fully
    # masked row, whose weights are 0 by the spec (not 0/0).
    weights = unnormalised / np.where(total == 0, 1, total)
    with np.errstate(divide="ignore"):  # log(0) = -inf is the fully masked row's lse
        lse = (shift + np.log(total))[..., 0]
    return weights, lse


def _weigh(weights: np.ndarray, v: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Step 3: out = Σ_j weights_ij · v_j over the visible keys j."""
    if np.isfinite(v).all():
        return weights @ v
    # A NaN or Inf value may reach only the rows that see it. weights @ v would multiply it by
    # the 0 weight of every row that does not (0·NaN is NaN), so leave hidden keys out instead.
    terms = weights[..., :, :, None] * v[..., None, :, :]  # (B..., Hq, Lq, Lk, Dv)
    return np.where(visible[..., None], terms, 0).sum(axis=-2)


def merge_partials(outs: Sequence[np.ndarray], lses: Sequence[np.ndarray]):
    """Combine attention computed over disjoint key chunks into attention over all keys.

    If out_c, lse_c is attention of the same queries over chunk c of the keys, then over all keys

        lse = log Σ_c exp(lse_c)        out = Σ_c exp(lse_c - lse) · out_c

    because each chunk's weights are the global ones scaled by exp(lse - lse_c). This is how
    split-KV decoding and ring attention put their pieces together; the merge is associative.

    NaN and Inf, row by row:
    - A chunk in which the row sees no key has lse_c = -inf and contributes nothing, whatever
      its out holds there: 0 by the fully masked rule, but an implementation that divides 0 by
      0 returns NaN, and 0·NaN must not poison the row.
    - A chunk with lse_c NaN (a NaN score in it) makes the row's out and lse NaN, as a NaN score
      does in attention over all keys; so does lse_c = +inf, which no attention returns.
    - NaN or Inf in the out of a chunk with a finite lse_c reaches the row as it would in
      attention over all keys (any weight times NaN is NaN, 0 included).
    - A row that sees no key in any chunk gets out 0 and lse -inf, as the fully masked rule says.

    Args:
        outs: a non-empty sequence of arrays (..., Lq, Dv), all of one shape and float dtype.
        lses: the matching (..., Lq) arrays.

    Returns:
        (out, lse): out (..., Lq, Dv) in the outs' dtype, lse (..., Lq) in the compute dtype.
    """
    for name, chunks in (("outs", outs), ("lses", lses)):
        if isinstance(chunks, np.ndarray | str) or not isinstance(chunks, Sequence):
            raise TypeError(
                f"{name} should be a sequence of arrays (one per chunk), "
                f"but got {type(chunks).__name__}"
            )
    outs, lses = list(outs), list(lses)
    if not outs:
        raise ValueError("outs should hold at least one chunk, but got none")
    if len(lses) != len(outs):
        raise ValueError(f"lses should have one entry per chunk ({len(outs)}), but got {len(lses)}")
    for c, (out, lse) in enumerate(zip(outs, lses, strict=True)):
        check_float_array(f"outs[{c}]", out, min_ndim=2)
        check_float_array(f"lses[{c}]", lse)
        check_same_dtype(f"outs[{c}]", out, outs[0].dtype, "outs[0]'s")
        check_same_dtype(f"lses[{c}]", lse, lses[0].dtype, "lses[0]'s")
        if out.shape != outs[0].shape:
            raise ValueError(f"outs[{c}].shape should be {outs[0].shape}, but got {out.shape}")
        if lse.shape != out.shape[:-1]:
            raise ValueError(f"lses[{c}].shape should be {out.shape[:-1]}, but got {lse.shape}")
    dtype = np.result_type(np.float32, *outs, *lses)
    stacked_out = np.stack(outs).astype(dtype, copy=False)  # (C, ..., Lq, Dv)
    stacked_lse = np.stack(lses).astype(dtype, copy=False)  # (C, ..., Lq)
    top = np.max(stacked_lse, axis=0)
    shift = np.where(top == -np.inf, 0, top)  # as in _masked_softmax: no -inf - -inf
    chunk_weights = np.exp(stacked_lse - shift)  # exp(lse_c - max): 0 for a chunk seeing nothing
    total = chunk_weights.sum(axis=0)
    with np.errstate(divide="ignore"):
        lse = shift + np.log(total)
    chunk_weights = chunk_weights / np.where(total == 0, 1, total)
    with np.errstate(invalid="ignore"):  # 0·Inf in chunks that see nothing: dropped below
        terms = chunk_weights[..., None] * stacked_out  # (C, ..., Lq, Dv)
    sees_nothing = (stacked_lse == -np.inf)[..., None]
    out = np.sum(np.where(sees_nothing, 0, terms), axis=0)
    return out.astype(outs[0].dtype, copy=False), lse


# The backward pass ----------------------------------------------------------------------------


@call_signature(without=("return_lse", "return_weights"))
def attention_backward(query, key, value, grad_out, *, grad_lse=None, **options):
    """The gradients of attention: a loss's gradient dO with respect to out (and dlse with
    respect to lse) carried back to query, key, value and bias.

    With x = scale·Q·Kᵀ, s = softcap(x) + bias, P the softmax of s over the visible keys,
    O = P·V and lse_i = log Σ_j exp(s_ij) (the definition, see `attention`):

        dV    = Pᵀ·dO                            step 2: O is linear in V
        dP    = dO·Vᵀ                            step 3: how the loss moves with each weight
        dS    = P ⊙ (dP - D + dlse)              step 4: back through the softmax and the lse
                with D_i = Σ_d dO_id·O_id        (= Σ_j P_ij·dP_ij; d lse_i / d s_ij = P_ij)
        dbias = dS, summed over the axes the bias is broadcast along
        dX    = dS ⊙ (1 - tanh²(x / softcap))    step 5: d/dx c·tanh(x/c) = 1 - tanh²(x/c)
        dQ    = scale·dX·K,   dK = scale·dXᵀ·Q   step 6
    GQA: each key/value head's dK and dV are the sums over its group of G = Hq // Hkv query
    heads (step 7). Every sum runs over the visible pairs (i, j) only.

    Masks, rows and NaN (SPEC.md, "Gradients"):
    - A hidden pair contributes exactly 0: key j hidden from query i (by any mask, the causal or
      window bounds, kv_lengths or a -inf bias) gets nothing from row i in dK_j and dV_j, and
      dbias is 0 there. NaN or Inf in hidden keys and values never reaches any gradient.
    - A fully masked row (lse -inf: it sees no key, or only -inf scores) has out 0 whatever its
      inputs hold, so its gradients are 0: dQ_i = 0 and nothing from it in dK, dV or dbias.
    - A NaN row (a NaN or +inf score at a visible key: out, lse and weights all NaN) gives NaN
      in dQ_i, in dK_j and dV_j of every key j it sees, and in dbias at those keys.
    - Other NaN and Inf follow IEEE arithmetic through the formulas above (0·NaN and 0·Inf are
      NaN, as in the forward). A NaN in a visible value v_j makes dP_ij and D_i NaN: the row's
      dQ_i, its dbias and its share of dK are NaN, while dV = Pᵀ·dO, which holds no V, is not.
      Where an Inf reaches a gradient, NaN or ±Inf depends on the form of the formulas
      (P ⊙ (dP - D) meets Inf - Inf where (diag(p) - p·pᵀ)·dP does not): the spec says only
      that it is not finite.

    Args:
        query, key, value and every option (but return_lse and return_weights): the call, as
            `attention` takes it.
        grad_out: dO, (B..., Hq, Lq, Dv) in out's dtype (the query's: float16 for float16),
            finite.
        grad_lse: dlse, (B..., Hq, Lq) in lse's dtype (the compute dtype: float32 for float16
            and float32 inputs, float64 for float64), finite; None means 0.

    Returns:
        AttentionGradients(query, key, value, bias): the query, key and value gradients in the
        input dtype (computed in float32 for float16), the bias gradient in the bias's dtype
        and shape, None without a bias.
    """
    check_option_names("attention_backward", options, without=("return_lse", "return_weights"))
    call = AttentionCall.check(query, key, value, **options)
    d_out, d_lse = _checked_upstream(call, grad_out, grad_lse)
    # 1. The forward again: weights, lse and out as `attention` computes them.
    q, k, v = _heads_aligned(call)
    visible = np.broadcast_to(_visible(call), call.scores_shape)
    with np.errstate(invalid="ignore", over="ignore"):
        weights, lse = _masked_softmax(_scores(q, k, call), visible)
        out = _weigh(weights, v, visible)
    # The pairs that carry a gradient: key j visible to query i, in a row that is not fully
    # masked (a NaN row, lse NaN, carries its NaN). Every other pair contributes exactly 0.
    carries = visible & (lse != -np.inf)[..., None]
    p = np.where(carries, weights, 0)  # a NaN row's weights are NaN at hidden keys too
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and Inf follow IEEE: the rules
        # 2. dV = Pᵀ·dO (dO is finite, and P is 0 at every pair that carries nothing).
        d_v = np.swapaxes(p, -1, -2) @ d_out
        # 3. dP = dO·Vᵀ, NaN at the hidden keys whose value is NaN: step 4 drops them.
        d_p = d_out @ np.swapaxes(v, -1, -2)
        # 4. Back through the softmax, and the lse's own share.
        D = np.sum(d_out * out, axis=-1, keepdims=True)
        d_s = np.where(carries, p * (d_p - D + d_lse[..., None]), 0)
        d_bias = None if call.bias is None else _summed_to_shape(d_s, call.bias.shape)
        # 5. Back through the softcap (its slope is NaN where a hidden score is: dropped).
        d_x = d_s
        if call.softcap is not None:
            d_x = np.where(carries, d_s * _softcap_slope(q, k, call), 0)
        # 6. Back through x = scale·q·kᵀ, over the pairs that carry only, so that a NaN in a
        # hidden key or in a fully masked row's query stays out (_weigh: 0·NaN is NaN).
        scale = call.scale_or_default  # a Python float: the dtype is kept
        d_q = scale * _weigh(d_x, k, carries)
        d_k = scale * _weigh(np.swapaxes(d_x, -1, -2), q, np.swapaxes(carries, -1, -2))
        # 7. GQA: a key/value head served G query heads, and its gradient is their sum.
        d_k, d_v = _summed_over_groups(d_k, call), _summed_over_groups(d_v, call)
    return AttentionGradients(
        query=d_q.astype(call.dtype, copy=False),
        key=d_k.astype(call.dtype, copy=False),
        value=d_v.astype(call.dtype, copy=False),
        bias=None if d_bias is None else d_bias.astype(call.bias.dtype, copy=False),
    )


def _checked_upstream(call: AttentionCall, grad_out, grad_lse) -> tuple[np.ndarray, np.ndarray]:
    """grad_out and grad_lse checked (dtype, shape, finite) and in the compute dtype; a missing
    grad_lse is 0."""
    call.check_upstream(grad_out, grad_lse)
    d_out = grad_out.astype(call.compute_dtype, copy=False)
    if grad_lse is None:
        return d_out, np.zeros(d_out.shape[:-1], dtype=call.compute_dtype)
    return d_out, grad_lse


def _softcap_slope(q: np.ndarray, k: np.ndarray, call: AttentionCall) -> np.ndarray:
    """d softcap(x)/dx = 1 - tanh²(x/softcap) at x = scale·q·kᵀ, (B..., Hq, Lq, Lk)."""
    x = (q @ np.swapaxes(k, -1, -2)) * call.scale_or_default
    return 1 - np.tanh(x / call.softcap) ** 2


def _summed_to_shape(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A (B..., Hq, Lq, Lk) gradient summed over the axes a bias of `shape` is broadcast
    along: the leading axes it does not have, and those where its size is 1."""
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
    broadcast = tuple(axis for axis, n in enumerate(shape) if n == 1 and grad.shape[axis] != 1)
    return grad.sum(axis=broadcast, keepdims=True)


def _summed_over_groups(grad: np.ndarray, call: AttentionCall) -> np.ndarray:
    """(B..., Hq, L, D) -> (B..., Hkv, L, D): query heads g·G ... g·G + G - 1 used kv head g."""
    *batch, _, length, dim = grad.shape
    return grad.reshape(*batch, call.Hkv, call.Hq // call.Hkv, length, dim).sum(axis=-3)
