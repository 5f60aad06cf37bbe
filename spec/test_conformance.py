"""The spec as pytest tests: `pytest --pyargs spec --refattn-impl IMPL`."""

import pytest

from spec.registry import all_invariants
from spec.runner import missing_capabilities, property_test

INVARIANTS = all_invariants()


@pytest.mark.parametrize("inv", INVARIANTS, ids=[inv.id for inv in INVARIANTS])
def test_invariant(inv, refattn_impl):
    """`refattn_impl` satisfies invariant `inv` (skipped when it lacks a capability)."""
    missing = missing_capabilities(inv, refattn_impl)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    property_test(inv, refattn_impl)()
