"""A user's SDPA function with a deliberate bug is caught by the invariant that names the bug,
with a counterexample that reproduces it (functions in tests/sdpa_functions.py)."""

import numpy as np
import pytest
from refattn.spec.registry import INVARIANTS, all_invariants
from refattn.spec.runner import FAIL, PASS, SKIP, run_invariant

from refattn import reference
from refattn.adapters import load

all_invariants()
EXAMPLES = 60

# function -> (the invariant that must catch it, text its counterexample must show)
BUGS = {
    "causal_off_by_one": ("ATT-M1", "not bit-identical"),
    "no_scaling": ("ATT-N1", "max error"),
    "scaled_by_dv": ("ATT-S2", "expected the reference with scale = Dk**-0.5"),
    "finite_mask": ("ATT-W4", "out of fully masked rows"),
    "gqa_tiled": ("ATT-H3", "key and value repeated"),
    "no_max_shift": ("ATT-N2", "Inf or NaN where the reference is finite"),
    "float32_result": ("ATT-D1", "out.dtype"),
    "mixes_batch": ("ATT-H4", "out of element"),
}


@pytest.mark.parametrize("function", BUGS)
def test_bug_is_caught_with_a_reproduction(function):
    inv_id, symptom = BUGS[function]
    name = f"sdpa_functions:{function}"
    outcome = run_invariant(INVARIANTS[inv_id], load(name), max_examples=EXAMPLES, seed=0)
    assert outcome.status == FAIL, f"{inv_id} should catch {function}, got {outcome.status}"
    assert symptom in outcome.detail
    # The reproduction loads the same function by name and rebuilds the shrunk case.
    assert f"impl = load({name!r})" in outcome.detail
    assert "query, key, value, options = Case(" in outcome.detail


# Bugs caught on one call of the case as built (the others compare two calls, or edit the mask).
SINGLE_CALL = ("no_scaling", "scaled_by_dv", "float32_result", "no_max_shift")


@pytest.mark.parametrize("function", SINGLE_CALL)
def test_printed_reproduction_shows_the_bug(function):
    """The reproduction, pasted and run, gives a result the reference disagrees with."""
    inv_id, _ = BUGS[function]
    name = f"sdpa_functions:{function}"
    detail = run_invariant(INVARIANTS[inv_id], load(name), max_examples=EXAMPLES, seed=0).detail
    pasted = [line.strip() for line in detail.split("reproduce:\n")[1].splitlines()[:5]]
    assert pasted[-1] == "impl(query, key, value, **options)"
    scope = {}
    exec("\n".join([*pasted[:-1], "got = " + pasted[-1]]), scope)
    want = reference.attention(scope["query"], scope["key"], scope["value"], **scope["options"])
    got = scope["got"]
    assert got.dtype != want.dtype or not np.allclose(got, want, equal_nan=True)


def test_correct_function_conforms():
    impl = load("sdpa_functions:correct")
    outcomes = [run_invariant(inv, impl, max_examples=25, seed=0) for inv in all_invariants()]
    failed = [(o.id, o.detail.splitlines()[0]) for o in outcomes if o.status == FAIL]
    assert not failed
    assert {o.id for o in outcomes if o.status == PASS} >= {"ATT-M1", "ATT-W4", "ATT-H3", "ATT-N1"}
    lacking = {"weights", "lse", "window", "kv_lengths", "softcap", "combined_masks"}
    lacking.add("causal_bottom_right")
    skipped = {inv.id for inv in all_invariants() if lacking & set(inv.requires)}
    assert {o.id for o in outcomes if o.status == SKIP} == skipped
