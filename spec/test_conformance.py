"""The spec as pytest tests: `pytest --pyargs refattn.spec --refattn-impl IMPL`
(see refattn.spec.pytest_plugin)."""

import pytest
from refattn.spec.registry import all_invariants
from refattn.spec.runner import missing_capabilities, property_test

INVARIANTS = all_invariants()


@pytest.mark.parametrize("inv", INVARIANTS, ids=[inv.id for inv in INVARIANTS])
def test_invariant(inv, refattn_impl, refattn_deviations, request):
    """`refattn_impl` satisfies invariant `inv` (skipped when it lacks a capability, an expected
    failure when the deviation is declared)."""
    missing = missing_capabilities(inv, refattn_impl)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    if inv.id in refattn_deviations:
        request.applymarker(pytest.mark.xfail(reason=f"declared: {refattn_deviations[inv.id]}"))
    max_examples = request.config.getoption("--refattn-max-examples")
    property_test(inv, refattn_impl, max_examples=max_examples)()
