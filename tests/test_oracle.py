"""The spec's expected values come from its own float64 definition (refattn.spec.oracle), never
from the implementation it judges: a bug planted in refattn.reference fails the spec."""

import numpy as np
import pytest
from refattn.spec import oracle, tolerance
from refattn.spec.registry import INVARIANTS, all_invariants
from refattn.spec.runner import FAIL, PASS, run_invariant

import refattn
from refattn import reference
from refattn.adapters import load

all_invariants()


def test_expectations_do_not_call_the_reference(monkeypatch):
    def planted(*args, **kwargs):
        raise AssertionError("the spec asked refattn.reference for an expected value")

    monkeypatch.setattr(reference, "attention", planted)
    monkeypatch.setattr(refattn, "attention", planted)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 5, 8)) for _ in range(3))
    want = tolerance.expect(q, k, v, causal="top_left")
    assert want.out.shape == (2, 5, 8) and np.isfinite(want.lse).all()


def _scaled_by_dv(q, k, call):  # the 1/sqrt(Dv) bug, in the reference's step 1
    scores = (q @ np.swapaxes(k, -1, -2)) * (call.Dv**-0.5 if call.scale is None else call.scale)
    return scores if call.bias is None else scores + call.bias.astype(scores.dtype)


def _nudged(q, k, call):  # scores off by one part in 1e9: invisible to any float32 check
    return PLAIN_SCORES(q, k, call) * (1 + 1e-9)


PLAIN_SCORES = reference._scores


@pytest.mark.parametrize(
    ("planted", "caught_by"),
    [(_scaled_by_dv, "ATT-S2"), (_nudged, "ATT-N1")],
    ids=["scale-by-dv", "scores-off-by-1e-9"],
)
def test_a_bug_planted_in_the_reference_fails_conform_reference(monkeypatch, planted, caught_by):
    impl = load("reference")
    assert run_invariant(INVARIANTS[caught_by], impl, max_examples=30).status == PASS
    monkeypatch.setattr(reference, "_scores", planted)
    outcome = run_invariant(INVARIANTS[caught_by], impl, max_examples=30)
    assert outcome.status == FAIL, outcome.detail


def test_merge_weighs_a_chunk_that_saw_nothing_zero_and_keeps_nan():
    out = [np.array([[1.0, 2.0]]), np.array([[np.nan, np.nan]])]
    merged, lse = oracle.merge(out, [np.array([0.5]), np.array([-np.inf])])
    assert merged.tolist() == [[1.0, 2.0]] and lse.tolist() == [0.5]
    merged, lse = oracle.merge(out, [np.array([0.5]), np.array([np.nan])])
    assert np.isnan(merged).all() and np.isnan(lse).all()


@pytest.mark.parametrize("option", [np.float16(0.5), np.float32(0.5), 0.5])
def test_tolerance_bounds_are_computed_in_float64_whatever_the_option_type(option):
    """A NumPy float16 scale or softcap must not turn the bound into float16, where the unit
    roundoff of float64 underflows to 0 (issue 12, item 10)."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 6, 16)) for _ in range(3))
    for name in ("scale", "softcap"):
        want = tolerance.expect(q, k, v, **{name: option})
        assert want.tol.out > 0 and want.tol.lse > 0 and want.tol.weights > 0
        out, lse, weights = reference.attention(
            q, k, v, **{name: float(option)}, return_lse=True, return_weights=True
        )
        assert want.problems(out, lse, weights) == []


def test_expected_gradients_say_which_gradient_is_wrong():
    """ExpectedGradients.problems: [] for the oracle's own gradients (float32, within the
    model), one "dname: why" per gradient off by more than its tolerance or with NaN where the
    spec has a number; only the gradients given are judged."""
    rng = np.random.default_rng(3)
    q, k, v, d_out = (rng.standard_normal((2, 5, 4)).astype(np.float32) for _ in range(4))
    want = tolerance.expect_gradients(q, k, v, d_out)
    exact = oracle.attention_backward(*(x.astype(np.float64) for x in (q, k, v, d_out)), {}, None)
    assert want.problems(exact.query, exact.key, exact.value) == []
    off = exact.key.copy()
    off[1, 2, 3] += 1e-2
    nan = exact.value.copy()
    nan[0, 0, 0] = np.nan
    found = want.problems(query=exact.query, key=off, value=nan)
    assert [p.split(":")[0] for p in found] == ["dkey", "dvalue"], found
    assert "max error" in found[0] and "NaN placement" in found[1]
    assert want.problems(key=off) == found[:1]
