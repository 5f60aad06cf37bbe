"""Attention in float16 and bfloat16 the way FlashAttention computes it, and two mutated twins.

    scores  Q·Kᵀ with float32 accumulation, from the low-precision inputs
    softmax in float32: running max, exp, and the sum of the row
    P·V     P rounded to the input dtype, then products accumulated in float32
    out     divided by the float32 sum, rounded to the input dtype

The twins accumulate one sum in the low-precision dtype instead: the softmax's sum, or P·V. The
spec's low-precision tolerance model (spec/tolerance.py, 5) must take the first and refuse both
twins (tests/test_precision.py). They follow the refattn protocol (options mask, causal, scale)
and declare their one dtype.
"""

import ml_dtypes
import numpy as np

import refattn

DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _attention(query, key, value, mask, causal, scale, *, low_sum=False, low_pv=False):
    dtype = query.dtype
    f32 = np.float32
    group = query.shape[-3] // key.shape[-3]
    q = query.astype(f32)
    k = np.repeat(key.astype(f32), group, axis=-3)
    v = np.repeat(value.astype(f32), group, axis=-3)
    Lq, Lk = q.shape[-2], k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ np.swapaxes(k, -1, -2)) * f32(scale)
    visible = np.ones(s.shape, dtype=bool)
    if causal is not None:
        offset = Lk - Lq if causal == "bottom_right" else 0
        visible &= np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + offset
    if mask is not None:
        visible &= mask
    s = np.where(visible, s, -np.inf)
    top = s.max(axis=-1, keepdims=True, initial=-np.inf)
    p = np.exp(s - np.where(top == -np.inf, 0, top)).astype(f32)  # 0 at hidden keys
    if low_sum:  # the twin: the row's sum accumulated in the input dtype
        total = np.zeros(p.shape[:-1], dtype=dtype)
        for j in range(Lk):
            total = (total.astype(f32) + p[..., j]).astype(dtype)
        total = total.astype(f32)
    else:
        total = p.sum(axis=-1, dtype=f32)
    rounded = p.astype(dtype).astype(f32)  # P rounded to the input dtype before P·V
    if low_pv:  # the twin: P·V accumulated in the input dtype
        out = np.zeros((*p.shape[:-1], v.shape[-1]), dtype=dtype)
        for j in range(Lk):
            term = rounded[..., j, None] * v[..., None, j, :]
            out = (out.astype(f32) + np.where(visible[..., j, None], term, 0)).astype(dtype)
        out = out.astype(f32)
    else:
        terms = np.where(visible[..., None], rounded[..., None] * v[..., None, :, :], 0)
        out = terms.sum(axis=-2, dtype=f32)
    out = out / np.where(total == 0, 1, total)[..., None]  # a row that saw nothing: 0
    return out.astype(dtype)


def _kernel(dtype: str, **bugs):
    @refattn.declare(with_=[dtype], without=["float32", "float64"])
    def attention(query, key, value, *, mask=None, causal=None, scale=None):
        return _attention(query, key, value, mask, causal, scale, **bugs)

    return attention


flash_float16 = _kernel("float16")
flash_bfloat16 = _kernel("bfloat16")
float16_sum_in_float16 = _kernel("float16", low_sum=True)
bfloat16_sum_in_bfloat16 = _kernel("bfloat16", low_sum=True)
float16_pv_in_float16 = _kernel("float16", low_pv=True)
bfloat16_pv_in_bfloat16 = _kernel("bfloat16", low_pv=True)
