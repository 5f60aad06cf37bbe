"""The runner: an implementation that raises fails with the call and a reproduction; failures
list hypothesis' other draws; declared deviations still run."""

from refattn.spec.registry import INVARIANTS, all_invariants
from refattn.spec.runner import DEVIATION, FAIL, PASS, run_invariant

from refattn import reference
from refattn.adapters import Adapter
from refattn.capabilities import ALL

all_invariants()


def _raises_on_masks(query, key, value, *, mask=None, **options):
    if mask is not None and mask.ndim == 1:
        raise IndexError("Dimension out of range")
    return reference.attention(query, key, value, mask=mask, **options)


def test_an_exception_fails_naming_the_call_with_a_reproduction():
    impl = Adapter.of("fragile", _raises_on_masks, ALL)
    outcome = run_invariant(INVARIANTS["ATT-M3"], impl, max_examples=50, seed=0)
    assert outcome.status == FAIL
    lines = outcome.detail.splitlines()
    assert lines[0] == "fragile raised IndexError: Dimension out of range"
    assert lines[1].startswith("  call: impl(query=float")
    assert "mask=bool (" in lines[1]
    assert "  reproduce (the case the call was made from):" in lines
    assert "    impl = load('fragile')" in lines
    assert any(line.strip().startswith("Draw 2 (deleted keys)") for line in lines)


def test_an_assertion_lists_the_other_draws():
    impl = Adapter.of("shifted", lambda q, k, v, **o: reference.attention(q, k, v, **o) + 1e-3, ALL)
    outcome = run_invariant(INVARIANTS["ATT-C1"], impl, max_examples=50, seed=0)
    assert outcome.status == FAIL
    assert "other draws:" in outcome.detail
    assert "Draw 2 (chunk boundaries)" in outcome.detail


def test_a_declared_deviation_is_run_and_shown():
    impl = Adapter.of("reference-again", reference.attention, ALL)
    outcome = run_invariant(
        INVARIANTS["ATT-D1"], impl, max_examples=5, seed=0, deviations={"ATT-D1": "just because"}
    )
    assert outcome.status == DEVIATION
    assert outcome.detail.splitlines() == ["declared: just because", "observed: it passed"]
    assert run_invariant(INVARIANTS["ATT-D1"], impl, max_examples=5).status == PASS
