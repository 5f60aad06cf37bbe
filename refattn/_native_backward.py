"""The native core's backward pass: `refattn.native.attention_backward`.

    grads = attention_backward(query, key, value, grad_out, *, grad_lse, out, lse,
                               num_threads, isa, **options)

computes what `refattn.reference.attention_backward` defines (its docstring has the formulas
and the rules for masked pairs, fully masked rows and NaN), FlashAttention-2 style in C
(native/backward.h): P recomputed tile by tile from the forward's lse, D_i = Σ_d dO_id·O_id,
dQ, dK and dV accumulated in tiles without an Lq×Lk buffer, every output element owned by one
work item (no atomics), so results are the same bit for bit whatever the thread count.

float32 and float64 are computed as they are; float16 and bfloat16 inputs are converted to
float32, computed by the float32 kernels, and the gradients cast back to the input dtype (as
the reference computes them in float32). Memory: the gradients, the forward's out and lse when
they are not given, a converted copy of dO when it is not C-contiguous in the compute dtype, and
per-thread tiles; with a bias, also dS as a (B, Hq, Lq, Lk) array, summed to the bias's shape
here (the bias is that large, or broadcast to it, anyway).

Each call takes the four steps of `refattn.native.attention`: validate (the call, and the
upstream gradients with `AttentionCall.check_upstream`, as the reference does), take the
buffers (the forward's helpers), call the C core, turn its status into an exception.

Extra arguments:
    out, lse: the forward's outputs for this call, (B..., Hq, Lq, Dv) in the query's dtype and
        (B..., Hq, Lq) in the compute dtype, as `refattn.native.attention(..., return_lse=True)`
        returned them: given together, they save the backward its forward. Without them the
        backward runs the native forward first (in float32 for float16 and bfloat16 inputs).
    num_threads, isa: as for `refattn.native.attention` (the module docstring there);
        "amx_bf16" and "avx512_bf16" run the "avx512" kernels here.
"""

from __future__ import annotations

import math

import numpy as np

from refattn import _checks
from refattn.call import AttentionCall, AttentionGradients, call_signature, check_option_names
from refattn.native import _address, _call_struct, _isa, _raise_for, _threads, ffi, lib
from refattn.reference import _summed_to_shape


@call_signature(without=("return_lse", "return_weights"))
def attention_backward(
    query,
    key,
    value,
    grad_out,
    *,
    grad_lse=None,
    out=None,
    lse=None,
    num_threads=None,
    isa=None,
    **options,
):
    """The gradients of attention in C; the semantics of `refattn.reference.attention_backward`.

    See the module docstring for out, lse, num_threads and isa, and
    refattn.reference.attention_backward for everything else. Returns an AttentionGradients
    (query, key, value, bias): the query, key and value gradients in the input dtype, the bias
    gradient in the bias's shape and dtype, None without a bias.
    """
    # 1. validate
    check_option_names("attention_backward", options, without=("return_lse", "return_weights"))
    call = AttentionCall.check(query, key, value, **options)
    call.check_upstream(grad_out, grad_lse)
    _check_forward(call, out, lse)
    isa_code = _isa(isa)
    threads = _threads(num_threads)

    # 2. buffers, every one in the compute dtype: float32, or float64
    dtype = call.compute_dtype
    B, Hq, Hkv, Lq, Lk = math.prod(call.batch_shape), call.Hq, call.Hkv, call.Lq, call.Lk
    Dk, Dv = call.Dk, call.Dv
    keep = []  # arrays that must outlive the C calls
    c = _call_struct(call, dtype, isa_code, threads, keep)
    if out is None:
        out = np.empty((B, Hq, Lq, Dv), dtype=dtype)
        lse = np.empty((B, Hq, Lq), dtype=dtype)
        c.out, c.lse = _address(out, keep), _address(lse, keep)
        _raise_for(lib.refattn_attention(c), "refattn.native.attention_backward (its forward)")
    else:
        c.out = _address(_contiguous(out, dtype, (B, Hq, Lq, Dv)), keep)
        c.lse = _address(_contiguous(lse, dtype, (B, Hq, Lq)), keep)
    g = ffi.new("refattn_grad_call *")
    g.call = c
    g.grad_out = _address(_contiguous(grad_out, dtype, (B, Hq, Lq, Dv)), keep)
    if grad_lse is not None:
        g.grad_lse = _address(_contiguous(grad_lse, dtype, (B, Hq, Lq)), keep)
    d_q = np.empty((B, Hq, Lq, Dk), dtype=dtype)
    d_k = np.empty((B, Hkv, Lk, Dk), dtype=dtype)
    d_v = np.empty((B, Hkv, Lk, Dv), dtype=dtype)
    g.grad_query, g.grad_key, g.grad_value = (_address(x, keep) for x in (d_q, d_k, d_v))
    d_s = None
    if call.bias is not None:
        d_s = np.zeros((B, Hq, Lq, Lk), dtype=dtype)  # pairs no tile reaches stay 0
        g.grad_scores = _address(d_s, keep)

    # 3. call (cffi releases the GIL for the duration)
    status = lib.refattn_attention_backward(g)

    # 4. status -> exception
    _raise_for(status, "refattn.native.attention_backward")
    del keep
    batch = call.batch_shape
    d_bias = None
    if d_s is not None:
        d_bias = _summed_to_shape(d_s.reshape(*batch, Hq, Lq, Lk), call.bias.shape)
        d_bias = d_bias.astype(call.bias.dtype, copy=False)
    return AttentionGradients(
        query=d_q.reshape(*batch, Hq, Lq, Dk).astype(call.dtype, copy=False),
        key=d_k.reshape(*batch, Hkv, Lk, Dk).astype(call.dtype, copy=False),
        value=d_v.reshape(*batch, Hkv, Lk, Dv).astype(call.dtype, copy=False),
        bias=d_bias,
    )


def _check_forward(call: AttentionCall, out, lse) -> None:
    """out and lse, when given, are given together with the forward's shapes and dtypes."""
    if (out is None) != (lse is None):
        given, missing = ("out", "lse") if lse is None else ("lse", "out")
        raise TypeError(
            f"{missing} should be given with {given} (the forward's outputs, together), "
            f"but got {given} alone"
        )
    if out is None:
        return
    shape = (*call.batch_shape, call.Hq, call.Lq)
    for name, x, want, dtype, whose in (
        ("out", out, (*shape, call.Dv), call.dtype, "the query's"),
        ("lse", lse, shape, call.compute_dtype, "the compute dtype's"),
    ):
        _checks.check_float_array(name, x)
        _checks.check_same_dtype(name, x, dtype, whose)
        if x.shape != want:
            raise ValueError(f"{name}.shape should be {want} (the forward's), but got {x.shape}")


def _contiguous(x: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """x in the compute dtype, C-contiguous, seen as `shape` (the batch dims flattened): x
    itself when it already is."""
    return np.require(x, dtype=dtype, requirements=("C", "A")).reshape(shape)
