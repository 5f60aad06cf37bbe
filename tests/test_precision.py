"""bfloat16 and float16 as compute dtypes: the spec's low-precision tolerance model
(spec/tolerance.py, 5) takes attention computed the way FlashAttention does it (float32
accumulation and softmax, P rounded to the input dtype before P·V) and refuses the same kernel
with one sum accumulated in the low-precision dtype (tests/lowprecision_kernels.py)."""

import ml_dtypes
import numpy as np
import pytest
from refattn.spec.registry import INVARIANTS, all_invariants
from refattn.spec.runner import FAIL, PASS, run_invariant
from refattn.spec.tolerance import expect

from refattn import native, reference
from refattn.adapters import load

all_invariants()
CORRECT = ("flash_float16", "flash_bfloat16")
TWINS = (
    "float16_sum_in_float16",
    "float16_pv_in_float16",
    "bfloat16_sum_in_bfloat16",
    "bfloat16_pv_in_bfloat16",
)
# The invariants whose values the rounding reaches; the others hold for them too (slower).
VALUES = ("ATT-N1", "ATT-N2", "ATT-A1", "ATT-A2", "ATT-M1", "ATT-M3", "ATT-W4", "ATT-H2", "ATT-C2")


@pytest.mark.parametrize("name", CORRECT)
@pytest.mark.parametrize("inv_id", VALUES)
def test_a_correct_low_precision_kernel_conforms(name, inv_id):
    outcome = run_invariant(INVARIANTS[inv_id], load(f"lowprecision_kernels:{name}"))
    assert outcome.status == PASS, outcome.detail


@pytest.mark.parametrize("name", TWINS)
def test_a_sum_accumulated_in_low_precision_fails(name):
    """At refattn conform's defaults (seed 0, 100 examples)."""
    outcome = run_invariant(INVARIANTS["ATT-N1"], load(f"lowprecision_kernels:{name}"))
    assert outcome.status == FAIL
    assert outcome.detail.startswith("out: max error")


def test_bfloat16_inputs_are_ml_dtypes_arrays_and_come_back_in_bfloat16():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 5, 16)).astype(ml_dtypes.bfloat16) for _ in range(3))
    want = expect(q, k, v, causal="top_left")
    for attention in (reference.attention, native.attention):
        out, lse = attention(q, k, v, causal="top_left", return_lse=True)
        assert out.dtype == ml_dtypes.bfloat16 and lse.dtype == np.float32
        assert want.problems(out, lse) == []


def test_the_low_precision_term_is_per_element():
    """Where the output is small, so is what rounding may cost it."""
    rng = np.random.default_rng(1)
    q, k = (rng.standard_normal((1, 4, 8)).astype(ml_dtypes.bfloat16) for _ in range(2))
    v = np.ones((1, 4, 8), dtype=ml_dtypes.bfloat16)
    v[..., 0] = 1e-3  # a small column: its rounding costs little
    tol = expect(q, k, v).tol
    assert tol.out_each[..., 0].max() < tol.out_each[..., 1].min() / 100
