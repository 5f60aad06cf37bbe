"""Adapters: every implementation seen through one protocol, the reference's signature.

An adapter is called like `refattn.reference.attention` — NumPy arrays in refattn's layout
(B..., H, L, D), the same keyword options, the same return values — and says what it can do
(`capabilities`) and where it knowingly differs from the spec (`deviations`, ID -> reason).
Adapters translate layouts and option names; they never emulate a missing feature, because then
the spec would be checking the adapter instead of the implementation.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from spec.capabilities import ALL


class ImplementationNotFound(LookupError):
    """The name does not refer to a known implementation or an importable function."""


class PeerNotInstalled(ImportError):
    """A peer implementation's package is missing; the message names the extra to install."""


@dataclass(frozen=True)
class Adapter:
    """An attention function with the reference's signature, and what it can do."""

    name: str
    function: Callable = field(repr=False)
    capabilities: frozenset = ALL
    deviations: Mapping[str, str] = field(default_factory=dict)
    packages: tuple[str, ...] = ()  # distributions whose versions the reports show

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


BUILTIN: dict[str, Callable[[], Adapter]] = {
    "reference": _reference,
    "native": _native(),
    "native:avx512": _native("avx512"),
    "native:avx2": _native("avx2"),
    "native:scalar": _native("scalar"),
}


def load(name: str) -> Adapter:
    """The adapter for an implementation name (see `BUILTIN`)."""
    try:
        factory = BUILTIN[name]
    except KeyError:
        known = ", ".join(BUILTIN)
        raise ImplementationNotFound(
            f"implementation should be one of {known}, but got {name!r}"
        ) from None
    return factory()
