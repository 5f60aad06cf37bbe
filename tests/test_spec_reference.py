"""The spec against the reference: every invariant, cited by its ID in the test id."""

import pytest
from refattn.spec.registry import all_invariants
from refattn.spec.runner import property_test

from refattn.adapters import load

INVARIANTS = all_invariants()
REFERENCE = load("reference")


@pytest.mark.parametrize("inv", INVARIANTS, ids=[inv.id for inv in INVARIANTS])
def test_reference_conforms(inv):
    """The reference satisfies invariant `inv` of the spec."""
    property_test(inv, REFERENCE)()
