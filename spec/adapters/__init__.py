"""Adapters: every implementation seen through one protocol, the reference's signature.

An adapter is called like `refattn.reference.attention` — NumPy arrays in refattn's layout
(B..., H, L, D), the same keyword options, the same return values — and says what it can do
(`capabilities`) and where it knowingly differs from the spec (`deviations`, ID -> reason).
Adapters translate layouts and option names; they never emulate a missing feature, because then
the spec would be checking the adapter instead of the implementation. An option the peer does
not have is refused with `Unsupported`, never dropped.

Implementations by name (`load`):

    reference       refattn.reference.attention
    native          refattn.native.attention, the C core with the kernels it picks
    native:ISA      the same with the kernels of one instruction set (avx512, avx2, scalar)
    torch           torch.nn.functional.scaled_dot_product_attention, CPU, default backend
    torch-math      the same, forced to the math backend (torch.nn.attention.sdpa_kernel)
    torch-flash     the same, forced to the CPU flash backend
    jax             jax.nn.dot_product_attention, XLA on the CPU
    onnxruntime     a one-node ONNX model with the Attention op, run by onnxruntime
    onnx-reference  the same model run by onnx.reference.ReferenceEvaluator
    module.path:fn  a user's function following the SDPA protocol (refattn.spec.adapters.function)
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from refattn.capabilities import ALL


class ImplementationNotFound(LookupError):
    """The name does not refer to a known implementation or an importable function."""


class PeerNotInstalled(ImportError):
    """A peer implementation's package is missing; the message names the extra to install."""


class Unsupported(TypeError):
    """An option the implementation does not have (its adapter does not claim the capability)."""


@dataclass(frozen=True)
class Adapter:
    """An attention function with the reference's signature, and what it can do."""

    name: str
    function: Callable = field(repr=False)
    capabilities: frozenset = ALL
    deviations: Mapping[str, str] = field(default_factory=dict)
    packages: tuple[str, ...] = ()  # distributions whose versions the reports show
    notes: tuple[str, ...] = ()  # how the peer is called; why a capability is not claimed

    def __call__(self, query, key, value, **options):
        return self.function(query, key, value, **options)

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        found = {"python": platform.python_version(), "numpy": np.__version__}
        for package in ("refattn", *self.packages):
            try:
                found[package] = version(package)
            except PackageNotFoundError:
                found[package] = "not installed"
        return found


def require(module: str, *, extra: str, implementation: str):
    """Import a peer's module, or raise PeerNotInstalled naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] != module.split(".")[0]:
            raise  # the peer is there but broken: show the real error
        raise PeerNotInstalled(
            f"{implementation} needs {module}, which is not installed: "
            f"pip install 'refattn[{extra}]'"
        ) from None


def refuse(implementation: str, **options) -> None:
    """Raise Unsupported for the first option that is given (not None, not False)."""
    for name, value in options.items():
        if value is not None and value is not False:
            raise Unsupported(f"{implementation} has no {name} (got {name}={_short(value)})")


def _short(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape}"
    return repr(value)


def _reference() -> Adapter:
    from refattn import reference

    return Adapter("reference", reference.attention)


def _native(isa: str | None = None) -> Callable[[], Adapter]:
    """The native core, with the kernels it picks (isa None) or those of one instruction set."""

    def factory() -> Adapter:
        from functools import partial

        from refattn import native

        if isa is None:
            return Adapter("native", native.attention)
        if isa not in native.available_isas():
            raise ImplementationNotFound(
                f"native:{isa} needs the {isa} kernels, which this CPU (or this build) cannot "
                f"run; available: {', '.join('native:' + n for n in native.available_isas())}"
            )
        return Adapter(f"native:{isa}", partial(native.attention, isa=isa))

    return factory


def _torch(backend: str | None) -> Callable[[], Adapter]:
    def factory() -> Adapter:
        from refattn.spec.adapters import torch_sdpa

        return torch_sdpa.adapter(backend)

    return factory


def _jax() -> Adapter:
    from refattn.spec.adapters import jax_dpa

    return jax_dpa.adapter()


def _onnx(runtime: str) -> Callable[[], Adapter]:
    def factory() -> Adapter:
        from refattn.spec.adapters import onnx_attention

        return onnx_attention.adapter(runtime)

    return factory


# Name -> factory. Add an implementation here (and to refattn.spec.publish.IMPLEMENTATIONS to
# publish it).
BUILTIN: dict[str, Callable[[], Adapter]] = {
    "reference": _reference,
    "native": _native(),
    "native:avx512": _native("avx512"),
    "native:avx2": _native("avx2"),
    "native:scalar": _native("scalar"),
    "torch": _torch(None),
    "torch-math": _torch("math"),
    "torch-flash": _torch("flash"),
    "jax": _jax,
    "onnxruntime": _onnx("onnxruntime"),
    "onnx-reference": _onnx("reference"),
}


def load(name: str) -> Adapter:
    """The adapter for an implementation name (see `BUILTIN`) or `module.path:function`."""
    if name in BUILTIN:
        return BUILTIN[name]()
    if ":" in name:
        from refattn.spec.adapters import function

        return function.adapter(name)
    known = ", ".join(BUILTIN)
    raise ImplementationNotFound(
        f"implementation should be one of {known}, or module.path:function, but got {name!r}"
    )
