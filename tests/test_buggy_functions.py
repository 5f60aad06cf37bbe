"""A user's SDPA function with a deliberate bug is caught by the invariant that names the bug,
with a counterexample that reproduces it (functions in tests/sdpa_functions.py)."""

import re

import pytest
from refattn.spec.registry import INVARIANTS, all_invariants
from refattn.spec.runner import FAIL, PASS, SKIP, run_invariant
from reproduction import reproduction

from refattn.adapters import load

all_invariants()
EXAMPLES = 60

# function -> (the invariant that must catch it, text its counterexample must show)
BUGS = {
    "causal_off_by_one": ("ATT-M1", "the second call gave"),
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
    # The reproduction calls the user's own function, in its own protocol.
    code = reproduction(outcome.detail)
    assert f"from sdpa_functions import {function}" in code
    assert f"out0 = {function}(data[" in code and "is_causal=" in code


@pytest.mark.parametrize("function", BUGS)
def test_printed_reproduction_shows_the_bug(function, capsys):
    """The reproduction, pasted and run, shows the failure: some call's output is farther from
    the spec's value than the tolerance (or, for a wrong dtype, not in the inputs' dtype)."""
    inv_id, _ = BUGS[function]
    name = f"sdpa_functions:{function}"
    detail = run_invariant(INVARIANTS[inv_id], load(name), max_examples=EXAMPLES, seed=0).detail
    capsys.readouterr()
    scope = {}
    exec(reproduction(detail), scope)
    if inv_id == "ATT-D1":
        assert scope["out0"].dtype != scope["data"]["c0_query"].dtype
        return
    printed = capsys.readouterr().out
    found = re.findall(
        r"largest difference from the spec's value (\S+) \(tolerance (\S+)\)", printed
    )
    assert found, printed
    assert any(not float(off) <= float(tol) for off, tol in found), printed


def test_correct_function_conforms():
    impl = load("sdpa_functions:correct")
    outcomes = [run_invariant(inv, impl, max_examples=25, seed=0) for inv in all_invariants()]
    failed = [(o.id, o.detail.splitlines()[0]) for o in outcomes if o.status == FAIL]
    assert not failed
    assert {o.id for o in outcomes if o.status == PASS} >= {"ATT-M1", "ATT-W4", "ATT-H3", "ATT-N1"}
    lacking = {"weights", "lse", "window", "kv_lengths", "softcap", "combined_masks", "backward"}
    lacking.add("causal_bottom_right")
    skipped = {inv.id for inv in all_invariants() if lacking & set(inv.requires)}
    assert {o.id for o in outcomes if o.status == SKIP} == skipped
