"""The runner: an implementation that raises fails with the call and a reproduction; failures
list hypothesis' other draws; declared deviations still run."""

import pytest
from refattn.spec.registry import INVARIANTS, MUST, Invariant, all_invariants
from refattn.spec.runner import DEVIATION, FAIL, PASS, SKIP, property_test, run_invariant
from refattn.spec.strategies import cases

from refattn import reference
from refattn.adapters import Adapter, Unsupported, load
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
    assert lines[1].startswith("  how: call: impl(query=float")
    assert "mask=bool (" in lines[1]
    assert any(line.startswith("  reproduce (every input of the check") for line in lines)
    assert "    impl = load('fragile')" in lines
    assert any(line.startswith("    out0 = impl(") and "mask=data[" in line for line in lines)
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


def _no_masks(query, key, value, *, mask=None, **options):
    if mask is not None:
        raise Unsupported("masks are not implemented here")
    return reference.attention(query, key, value, **options)


def _no_float64(query, key, value, **options):
    if query.dtype == "float64":
        raise NotImplementedError("float64 is computed elsewhere")
    return reference.attention(query, key, value, **options)


def test_an_option_refused_at_call_time_is_a_skip_never_a_failure():
    impl = Adapter.of("maskless", _no_masks, ALL)
    outcome = run_invariant(INVARIANTS["ATT-M3"], impl, max_examples=20, seed=0)
    assert outcome.status == SKIP
    assert outcome.detail == "maskless refused every example: masks are not implemented here"
    partly = run_invariant(INVARIANTS["ATT-N1"], Adapter.of("f32", _no_float64, ALL), seed=0)
    assert partly.status == PASS
    assert "examples refused by the implementation: NotImplementedError: float64" in partly.detail


@pytest.mark.parametrize(
    ("function", "says"),
    [
        ("returns_none", "returned None as out, but out should be an array"),
        ("returns_a_tuple", "returned a tuple of 2 as out, but out should be an array"),
    ],
)
def test_a_wrong_return_is_blamed_on_what_came_back(function, says):
    outcome = run_invariant(INVARIANTS["ATT-N1"], load(f"sdpa_functions:{function}"), seed=0)
    assert outcome.status == FAIL
    assert outcome.detail.splitlines()[0] == f"sdpa_functions:{function} {says}"


def test_the_same_seed_draws_the_same_examples_whatever_is_imported(tmp_path, monkeypatch):
    """hypothesis draws constants from the local modules loaded; the spec's runs must not
    depend on which those are (a worker, pytest and an editable install load different ones)."""
    drawn = []

    def check(impl, data):
        drawn.append(data.draw(cases(impl.capabilities), label="case"))

    probe = Invariant("ATT-N99", "probe", MUST, "", "", "", (), check)
    impl = Adapter.of("reference-again", reference.attention, ALL)
    property_test(probe, impl, max_examples=40, seed=3)()
    before, drawn[:] = list(drawn), []
    module = tmp_path / "lots_of_constants.py"
    module.write_text(
        "".join(f"C{i} = {i * 7919 % 1000 / 7.0!r}\nN{i} = {i * 37}\n" for i in range(300))
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("lots_of_constants")
    property_test(probe, impl, max_examples=40, seed=3)()
    assert drawn == before
