"""The invariants, one module per section of SPEC.md; importing this registers them all."""

from refattn.spec.invariants import (  # noqa: F401
    algebra,
    composition,
    gradients,
    heads,
    masks,
    nonfinite,
    numerics,
    scaling,
    shapes,
    weights,
)
