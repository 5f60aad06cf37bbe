"""Attention for PyTorch models on the CPU, backed by refattn's native forward and backward.

    import refattn.torch
    out = refattn.torch.attention(query, key, value, causal="top_left")   # torch tensors
    out.sum().backward()                                                   # native backward

`attention` takes CPU torch tensors in refattn's layout, (B..., H, L, D), and every option of
`refattn.attention` (mask, bias, causal, window, kv_lengths, scale, softcap, return_lse); it
hands the tensors' memory to the native core without copying (a float16 or bfloat16 call is
computed as `refattn.native` computes it) and returns torch tensors. It is differentiable in
query, key, value and bias: the backward is `refattn.native.attention_backward`, fed the
forward's out and lse, so nothing is recomputed but the scores.

It is two PyTorch custom operators, `torch.ops.refattn.attention` and
`torch.ops.refattn.attention_backward` (torch.library.custom_op), with fake kernels (shapes
only) and the backward registered as the forward's autograd formula: torch.compile traces them
as single nodes (fullgraph), and they compose with the rest of torch's machinery.

Importing this module imports torch (an optional extra: `pip install 'refattn[torch]'`).
"""

from __future__ import annotations

import numpy as np
import torch

from refattn import native
from refattn.dtypes import BFLOAT16

__all__ = ["attention"]

_NO_BIAS = torch.empty(0)  # what attention_backward returns as dbias for a call without bias


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: str | None = None,
    window: tuple[int | None, int | None] | None = None,
    kv_lengths: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
):
    """softmax(softcap(scale·Q·Kᵀ) + bias, over the visible keys)·V on CPU torch tensors, as
    `refattn.attention` defines it (SPEC.md), differentiable in query, key, value and bias.

    query (B..., Hq, Lq, Dk), key (B..., Hkv, Lk, Dk), value (B..., Hkv, Lk, Dv): CPU tensors
    of one floating dtype; mask a bool tensor (True = may attend) and bias a tensor of the
    query's dtype, each broadcastable to (B..., Hq, Lq, Lk); kv_lengths an integer tensor of
    the batch shape; the other options as `refattn.attention` takes them.

    Returns out (B..., Hq, Lq, Dv) in the query's dtype, or (out, lse) with return_lse=True, lse
    (B..., Hq, Lq) in the compute dtype (float32 below float64).
    """
    for name, tensor in (("query", query), ("key", key), ("value", value), ("mask", mask)):
        _check_cpu(name, tensor)
    _check_cpu("bias", bias)
    _check_cpu("kv_lengths", kv_lengths)
    left, right = (None, None) if window is None else window
    out, lse = torch.ops.refattn.attention(
        query, key, value, mask, bias, causal, left, right, kv_lengths, scale, softcap
    )
    return (out, lse) if return_lse else out


def _check_cpu(name: str, tensor) -> None:
    if tensor is not None and not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} should be a torch.Tensor, but got {type(tensor).__name__}")
    if tensor is not None and tensor.device.type != "cpu":
        raise ValueError(f"{name}.device should be cpu (native), but got {tensor.device}")


# ------------------------------------------------------------------ tensors to arrays and back


def _array(tensor: torch.Tensor | None) -> np.ndarray | None:
    """The tensor's memory as a NumPy array (no copy; bfloat16 as ml_dtypes.bfloat16)."""
    if tensor is None:
        return None
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BFLOAT16)
    return tensor.numpy()


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A NumPy array as a tensor over the same memory (bfloat16 back to torch.bfloat16)."""
    if array.dtype == BFLOAT16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _options(mask, bias, causal, left, right, kv_lengths, scale, softcap) -> dict:
    window = None if left is None and right is None else (left, right)
    options = {
        "mask": _array(mask),
        "bias": _array(bias),
        "causal": causal,
        "window": window,
        "kv_lengths": _array(kv_lengths),
        "scale": scale,
        "softcap": softcap,
    }
    return {name: x for name, x in options.items() if x is not None}


def _lse_dtype(query: torch.Tensor) -> torch.dtype:
    return torch.float64 if query.dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------ the forward operator


@torch.library.custom_op("refattn::attention", mutates_args=())
def _attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    causal: str | None,
    window_left: int | None,
    window_right: int | None,
    kv_lengths: torch.Tensor | None,
    scale: float | None,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    options = _options(mask, bias, causal, window_left, window_right, kv_lengths, scale, softcap)
    out, lse = native.attention(
        _array(query), _array(key), _array(value), return_lse=True, **options
    )
    return _tensor(out), _tensor(lse)


@_attention.register_fake
def _(query, key, value, mask, bias, causal, window_left, window_right, kv_lengths, scale, softcap):
    out = query.new_empty((*query.shape[:-1], value.shape[-1]))
    return out, query.new_empty(query.shape[:-1], dtype=_lse_dtype(query))


# ----------------------------------------------------------------------- the backward operator


@torch.library.custom_op("refattn::attention_backward", mutates_args=())
def _attention_backward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    grad_lse: torch.Tensor | None,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    causal: str | None,
    window_left: int | None,
    window_right: int | None,
    kv_lengths: torch.Tensor | None,
    scale: float | None,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    options = _options(mask, bias, causal, window_left, window_right, kv_lengths, scale, softcap)
    grads = native.attention_backward(
        _array(query),
        _array(key),
        _array(value),
        _array(grad_out.contiguous()),
        grad_lse=_array(grad_lse),
        out=_array(out),
        lse=_array(lse),
        **options,
    )
    d_bias = _NO_BIAS.to(query.dtype) if grads.bias is None else _tensor(grads.bias)
    return _tensor(grads.query), _tensor(grads.key), _tensor(grads.value), d_bias


@_attention_backward.register_fake
def _(query, key, value, out, lse, grad_out, grad_lse, mask, bias, *rest):
    d_bias = query.new_empty(0) if bias is None else torch.empty_like(bias)
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), d_bias


# ------------------------------------------------------------------ the autograd formula of it


def _setup_context(ctx, inputs, output):
    query, key, value, mask, bias, *options = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, out, lse, mask, bias, options[3])
    ctx.options = (options[0], options[1], options[2], options[4], options[5])


def _backward(ctx, grad_out, grad_lse):
    query, key, value, out, lse, mask, bias, kv_lengths = ctx.saved_tensors
    causal, left, right, scale, softcap = ctx.options
    if grad_out is None:  # only lse reached the loss
        grad_out = torch.zeros_like(out)
    d_q, d_k, d_v, d_bias = torch.ops.refattn.attention_backward(
        query, key, value, out, lse, grad_out, grad_lse,
        mask, bias, causal, left, right, kv_lengths, scale, softcap,
    )  # fmt: skip
    d_bias = None if bias is None else d_bias
    return d_q, d_k, d_v, None, d_bias, None, None, None, None, None, None


_attention.register_autograd(_backward, setup_context=_setup_context)
