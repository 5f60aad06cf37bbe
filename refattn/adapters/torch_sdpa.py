"""PyTorch: torch.nn.functional.scaled_dot_product_attention on the CPU.

    torch        the default backend: what a user calling SDPA gets (on the CPU, the flash
                 kernel for 4-D inputs it takes, the math backend for the rest)
    torch-math   forced to SDPBackend.MATH with torch.nn.attention.sdpa_kernel
    torch-flash  forced to SDPBackend.FLASH_ATTENTION; inputs flattened to (B, H, L, D), the only
                 layout that kernel takes

Options, refattn -> SDPA: mask -> attn_mask (bool, True = attend); bias -> attn_mask (float,
added); causal "top_left" -> is_causal=True; causal "bottom_right" -> attn_mask =
torch.nn.attention.bias.causal_lower_right(Lq, Lk), PyTorch's own bottom-right causal mask;
Hkv < Hq -> enable_gqa=True; scale -> scale. SDPA has no window, kv_lengths, softcap, lse or
weights, and takes one attn_mask and not both of attn_mask and is_causal (its documented
contract; the math backend raises), so masks are not combined.

Gradients (capability backward): torch autograd through the same SDPA call, in the same backend,
on leaf tensors that require grad (query, key, value, and a float attn_mask when the call has a
bias): torch.autograd.grad(out, leaves, grad_outputs=grad_out), the vector-Jacobian product of
L = Σ grad_out·out. SDPA returns no lse, so there is no grad_lse. The CPU flash kernel has no
gradient for a float attn_mask (with requires_grad it finds "No available kernel"): torch-flash
refuses the gradients of a call with a bias (Unsupported, an example set aside).
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import numpy as np

from refattn.adapters import Adapter, Prepared, Unsupported, require
from refattn.adapters._layout import from_4d, scores_to_4d, to_4d
from refattn.call import AttentionCall, AttentionGradients, Result
from refattn.capabilities import Capabilities
from refattn.dtypes import BFLOAT16

BACKENDS = {None: "torch", "math": "torch-math", "flash": "torch-flash"}

_COMMON = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "mask",
    "bias",
    "causal_top_left",
    "causal_bottom_right",
    "gqa",
    "scale",
    "float64_options",
    "empty",
    "backward",
)

_NOTES = (
    "SDPA takes one attn_mask (bool or float) and refuses attn_mask with is_causal "
    "(documented; the math backend raises), so combined_masks is not claimed; bottom-right "
    "causal is torch.nn.attention.bias.causal_lower_right, itself an attn_mask.",
    "Not in SDPA: window, kv_lengths, softcap, and returning lse or weights.",
    "Inputs are passed with their strides (a last dim of size 1 gets stride 1, see _tensor).",
    "causal_lower_right(Lq, Lk) with Lq > Lk warns that it 'will produce NaNs'; it gives 0 for "
    "the rows that see no key (checked: ATT-M2, ATT-M5), so the adapter silences that warning.",
)


def adapter(backend: str | None, threads: int | None = None) -> Adapter:
    """The adapter of SDPA with `backend` None (default), "math" or "flash"; threads: set
    torch's intra-op threads to this many (and inter-op to 1) for the process."""
    name = BACKENDS[backend]
    torch = require("torch", extra="torch", implementation=name)
    from torch.nn.attention import SDPBackend

    forced = {None: None, "math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    if threads is not None:
        torch.set_num_threads(threads)
        # Settable only before any parallel work; in a fresh process it is the first thing done.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    capabilities = set(_COMMON)
    notes = list(_NOTES)
    if backend == "flash":
        notes.append("The CPU flash kernel has no Dv != Dk ('No available kernel'): no dv.")
        notes.append(
            "The CPU flash kernel takes 4-D inputs and 2-D or 4-D masks only (its refusal says "
            "so): batch dims are flattened into B and masks given 4 dims, the same values."
        )
    else:
        capabilities.add("dv")
    notes.append(f"torch threads: {torch.get_num_threads()}.")
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def arguments(call: AttentionCall, *, leaves: bool = False):
        """q, k, v and SDPA's keywords for `call`, in the backend's layout; with leaves=True,
        q, k, v and a float attn_mask require grad (the leaves, in that order, come last)."""
        batch = call.batch_shape
        query, key, value, mask, bias = call.query, call.key, call.value, call.mask, call.bias
        if backend == "flash":  # the flash kernel takes (B, H, L, D) and 2-D or 4-D masks
            query, key, value = (to_4d(x, batch) for x in (query, key, value))
            mask, bias = (None if x is None else _mask_4d(x, batch) for x in (mask, bias))
        q, k, v = (_tensor(torch, x, leaf=leaves) for x in (query, key, value))
        options = {"scale": call.scale, "enable_gqa": call.Hq != call.Hkv}
        if mask is not None:
            options["attn_mask"] = _tensor(torch, mask)
        if bias is not None:
            options["attn_mask"] = _tensor(torch, bias, leaf=leaves)
        if call.causal == "top_left":
            options["is_causal"] = True
        elif call.causal == "bottom_right":
            from torch.nn.attention.bias import causal_lower_right

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Lower right causal bias will produce NaNs")
                options["attn_mask"] = causal_lower_right(q.shape[-2], k.shape[-2])
        given = (q, k, v) + ((options["attn_mask"],) if bias is not None else ())
        return q, k, v, options, given

    def forced_run(run):
        return run if forced is None else functools.partial(_forced, torch, forced, run)

    def prepare(call: AttentionCall) -> Prepared:
        batch = call.batch_shape
        q, k, v, options, _ = arguments(call)
        run = forced_run(functools.partial(sdpa, q, k, v, **options))

        def output(out) -> Result:
            out = _array(torch, out)
            return Result(from_4d(out, batch) if backend == "flash" else out, None, None)

        return Prepared(run, output)

    def prepare_backward(call: AttentionCall, grad_out, grad_lse) -> Prepared:
        if backend == "flash" and call.bias is not None:
            raise Unsupported(
                "torch-flash has no gradient of a float attn_mask: the CPU flash kernel refuses "
                "one that requires grad ('No available kernel')"
            )
        batch = call.batch_shape
        q, k, v, options, leaves = arguments(call, leaves=True)
        d_out = _tensor(torch, to_4d(grad_out, batch) if backend == "flash" else grad_out)

        def backward():
            out = sdpa(q, k, v, **options)
            return torch.autograd.grad(out, leaves, grad_outputs=d_out)

        def output(grads) -> AttentionGradients:
            d_q, d_k, d_v, *d_bias = (_array(torch, g) for g in grads)
            if backend == "flash":
                d_q, d_k, d_v = (from_4d(x, batch) for x in (d_q, d_k, d_v))
            return AttentionGradients(d_q, d_k, d_v, d_bias[0] if d_bias else None)

        return Prepared(forced_run(backward), output)

    threads_how = "torch.set_num_threads({n}), torch.set_num_interop_threads(1)"
    return Adapter(
        name,
        prepare,
        Capabilities(capabilities),
        prepare_backward=prepare_backward,
        deviations={},
        packages=("torch",),
        notes=tuple(notes),
        title={None: "torch SDPA"}.get(backend, f"torch SDPA ({backend})"),
        threads_how=threads_how,
    )


def _forced(torch, backend, run):
    """run() with SDPA forced to one backend; its refusal says why, as torch's warnings did."""
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return run()
        except RuntimeError as error:
            reasons = " ".join(str(w.message).split(" (Triggered")[0] for w in caught)
            raise RuntimeError(f"{error} {reasons}".strip()) from None


def _mask_4d(x: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """A mask or bias as a 4-D array broadcastable to (B, H, Lq, Lk), the same mask."""
    x = scores_to_4d(x, batch)
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _tensor(torch, x: np.ndarray, *, leaf: bool = False):
    """A CPU tensor sharing x's memory and strides (a copy if x is read-only); leaf=True: one
    that requires grad, whose gradient autograd computes.

    A last dim of size 1 gets stride 1: NumPy gives size-1 dims arbitrary strides (a reshape of
    a view does), which address nothing, but PyTorch's fused kernels test stride(-1) == 1
    literally and refuse the input ("No available kernel" when forced).
    """
    if not x.flags.writeable:
        x = np.array(x)
    if x.ndim and x.shape[-1] == 1 and x.strides[-1] != x.itemsize:
        x = np.lib.stride_tricks.as_strided(x, strides=(*x.strides[:-1], x.itemsize))
    if x.dtype == BFLOAT16:  # torch.from_numpy does not know ml_dtypes: the same bits, reread
        tensor = torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(x)
    return tensor.requires_grad_(True) if leaf else tensor


def _array(torch, t) -> np.ndarray:
    """A CPU tensor as a NumPy array (bfloat16 as ml_dtypes.bfloat16, the same bits)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy().view(BFLOAT16)
    return t.numpy()
