"""The spec can fail: implementations with classic attention bugs are caught by the right invariant.

Each buggy implementation has the reference's signature (an Adapter). The test runs the
invariant that should catch it and checks the failure carries a reproduction.
"""

import numpy as np
import pytest
from refattn.spec.registry import INVARIANTS, all_invariants
from refattn.spec.runner import DEVIATION, FAIL, PASS, run_invariant

from refattn import reference
from refattn.adapters import Adapter
from refattn.capabilities import ALL

all_invariants()


def no_scaling(q, k, v, *, scale=None, **options):
    return reference.attention(q, k, v, scale=1.0 if scale is None else scale, **options)


def scale_by_dv(q, k, v, *, scale=None, **options):
    return reference.attention(
        q, k, v, scale=v.shape[-1] ** -0.5 if scale is None else scale, **options
    )


def causal_off_by_one(q, k, v, *, causal=None, mask=None, **options):
    if causal:
        Lq, Lk = q.shape[-2], k.shape[-2]
        offset = Lk - Lq if causal == "bottom_right" else 0
        leaky = np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + offset + 1  # one too many
        mask = leaky if mask is None else mask & leaky
    return reference.attention(q, k, v, mask=mask, **options)


def finite_mask_penalty(q, k, v, *, mask=None, bias=None, **options):
    if mask is not None:  # the -1e9 habit: fully masked rows become uniform, not 0
        penalty = np.where(mask, 0.0, -1e9).astype(np.promote_types(q.dtype, np.float32))
        bias = penalty if bias is None else bias + penalty
    return reference.attention(q, k, v, bias=bias, **options)


def gqa_tiled(q, k, v, **options):
    group = q.shape[-3] // k.shape[-3]  # head h gets kv head h % Hkv instead of h // G
    tile = [1] * k.ndim
    tile[-3] = group
    return reference.attention(q, np.tile(k, tile), np.tile(v, tile), **options)


def lse_without_max(q, k, v, *, return_lse=False, return_weights=False, **options):
    out, lse, weights = reference.attention(
        q, k, v, return_lse=True, return_weights=True, **options
    )
    if return_lse:  # log Σ exp(s - m): forgot to add the max back
        with np.errstate(divide="ignore"):
            lse = np.where(np.isfinite(lse), -np.log(weights.max(axis=-1, initial=0)), lse)
    extras = ([lse] if return_lse else []) + ([weights] if return_weights else [])
    return (out, *extras) if extras else out


def naive_softmax(q, k, v, *, scale=None, **options):
    """The textbook formula without the max shift: exp overflows for large scores."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp((q @ np.swapaxes(k, -1, -2)) * scale)
        return ((e / e.sum(axis=-1, keepdims=True)) @ v).astype(q.dtype)


def softcap_after_bias(q, k, v, *, softcap=None, bias=None, scale=None, **options):
    if softcap is None:
        return reference.attention(q, k, v, bias=bias, scale=scale, **options)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ np.swapaxes(np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3), -1, -2)) * scale
    total = s if bias is None else s + bias
    capped = softcap * np.tanh(total / softcap)  # the cap swallows the bias: -inf -> -softcap
    # scale 0 zeroes the reference's own scores, leaving the capped total as the only term.
    return reference.attention(q, k, v, scale=0.0, bias=capped.astype(q.dtype), **options)


BASIC = frozenset({"float32", "float64"})
BUGS = [
    ("ATT-S1", "no scaling", no_scaling, ALL),
    ("ATT-N1", "no scaling", no_scaling, ALL),
    ("ATT-S2", "scale by 1/sqrt(Dv)", scale_by_dv, ALL),
    ("ATT-M1", "causal off by one", causal_off_by_one, ALL),
    ("ATT-M5", "causal off by one", causal_off_by_one, ALL),
    ("ATT-W4", "-1e9 mask penalty", finite_mask_penalty, ALL),
    ("ATT-W3", "-1e9 mask penalty", finite_mask_penalty, ALL),
    ("ATT-H3", "GQA tiled (h % Hkv)", gqa_tiled, ALL),
    ("ATT-H2", "GQA tiled (h % Hkv)", gqa_tiled, ALL),
    ("ATT-N4", "lse without the max", lse_without_max, ALL),
    ("ATT-C1", "lse without the max", lse_without_max, ALL),
    ("ATT-N2", "softmax without the max shift", naive_softmax, BASIC),
    ("ATT-S4", "softmax without the max shift", naive_softmax, BASIC | {"scale"}),
    ("ATT-C3", "softcap after the bias", softcap_after_bias, ALL),
]


@pytest.mark.parametrize(
    ("inv_id", "bug", "function", "caps"),
    BUGS,
    ids=[f"{inv_id}-{bug}" for inv_id, bug, _, _ in BUGS],
)
def test_bug_is_caught(inv_id, bug, function, caps):
    buggy = Adapter.of(bug, function, capabilities=caps)
    outcome = run_invariant(INVARIANTS[inv_id], buggy, max_examples=200, seed=0)
    assert outcome.status == FAIL, f"{inv_id} did not catch '{bug}'"
    assert "  reproduce (every input of the check" in outcome.detail


def test_declared_deviation_is_reported_as_deviation():
    buggy = Adapter.of("penalty", finite_mask_penalty, capabilities=ALL)
    outcome = run_invariant(
        INVARIANTS["ATT-W4"],
        buggy,
        max_examples=50,
        deviations={"ATT-W4": "uniform weights on fully masked rows"},
    )
    assert outcome.status == DEVIATION
    assert outcome.detail.startswith("declared: uniform weights on fully masked rows")
    assert "observed: out of fully masked rows" in outcome.detail


def test_missing_capability_is_a_skip_with_its_reason():
    plain = Adapter.of("plain", reference.attention, capabilities=BASIC)
    outcome = run_invariant(INVARIANTS["ATT-N4"], plain)
    assert outcome.status == "SKIP" and "needs lse, which plain does not provide" in outcome.detail
    assert run_invariant(INVARIANTS["ATT-N1"], plain, max_examples=20).status == PASS
