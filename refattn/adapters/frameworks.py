"""Arrays across the boundary: NumPy arrays to the framework a user's function takes, and back.

An implementation may take and return NumPy arrays (the default), torch tensors (on any device
the machine has: "cpu", "cuda", "cuda:1", "mps") or JAX arrays. The spec keeps NumPy arrays; the
function adapter converts each input before the call (in `prepare`, outside what `refattn
bench` times) and each output after it. CPU tensors share the arrays' memory (no copy); bfloat16
crosses as its bits (ml_dtypes on the NumPy side).
"""

from __future__ import annotations

import numpy as np

from refattn.dtypes import BFLOAT16

FRAMEWORKS = ("numpy", "torch", "jax")


def converter(framework: str, device: str | None):
    """A function x -> x in `framework` on `device` (None and non-arrays pass through)."""
    if framework == "numpy":
        return lambda x: x
    if framework == "torch":
        from refattn.adapters import require

        torch = require("torch", extra="torch", implementation="a torch function")
        target = torch.device(device or "cpu")
        return lambda x: _torch_tensor(torch, x, target)
    if framework == "jax":
        from refattn.adapters import require

        jax = require("jax", extra="jax", implementation="a jax function")
        where = None if device is None else jax.devices(device)[0]
        return lambda x: x if not isinstance(x, np.ndarray) else jax.device_put(x, where)
    raise ValueError(f"framework should be one of {FRAMEWORKS}, but got {framework!r}")


def to_numpy(x):
    """What a function returned, as a NumPy array (torch tensors from any device, JAX arrays)."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        import torch

        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            return x.view(torch.uint16).numpy().view(BFLOAT16)
        return x.numpy()
    return np.asarray(x)


def _torch_tensor(torch, x, device):
    if not isinstance(x, np.ndarray):
        return x
    if not x.flags.writeable:
        x = np.array(x)
    if x.ndim and x.shape[-1] == 1 and x.strides[-1] != x.itemsize:  # see torch_sdpa._tensor
        x = np.lib.stride_tricks.as_strided(x, strides=(*x.strides[:-1], x.itemsize))
    if x.dtype == BFLOAT16:
        tensor = torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(x)
    return tensor if device.type == "cpu" else tensor.to(device)
