"""The NaN and Inf rules of SPEC.md ("NaN and Inf"), one test per rule, each checked on the spec's
oracle (which every expected value comes from), the reference (float32 and float64) and the
native core (every instruction set): the expected pattern is written out here, not taken from
any of them."""

import numpy as np
import pytest
from refattn.spec import oracle

from refattn import native, reference


def spec_oracle(query, key, value, *, return_lse=False, return_weights=False, **options):
    """The spec's own float64 definition (refattn.spec.oracle), with the reference's protocol:
    the rules hold for the values every invariant expects, too."""
    out, lse, weights = oracle.attention(query, key, value, options)
    extras = ([lse] if return_lse else []) + ([weights] if return_weights else [])
    return (out, *extras) if extras else out


IMPLS = [
    pytest.param(spec_oracle, np.float64, id="spec-oracle-float64"),
    pytest.param(spec_oracle, np.float32, id="spec-oracle-float32"),
    pytest.param(reference.attention, np.float64, id="reference-float64"),
    pytest.param(reference.attention, np.float32, id="reference-float32"),
    *(
        pytest.param(
            lambda *a, isa=isa, **o: native.attention(*a, isa=isa, **o), dtype, id=f"{isa}-{dtype}"
        )
        for isa in native.available_isas()
        for dtype in ("float32", "float64")
    ),
]
LQ, LK, D = 4, 70, 8  # over one SIMD key tile of 64


def _qkv(dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, LQ, D))
    k = rng.standard_normal((2, LK, D))
    v = rng.standard_normal((2, LK, D))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _close(a, b):
    """Equal up to the rounding of a sum of LK terms in another order (γ_LK·max|b|)."""
    return np.allclose(a, b, rtol=0, atol=LK * np.finfo(a.dtype).eps * np.abs(b).max())


def _call(impl, q, k, v, **options):
    return impl(q, k, v, return_lse=True, return_weights=True, **options)


@pytest.mark.parametrize(("impl", "dtype"), IMPLS)
def test_nan_score_makes_the_whole_row_nan_hidden_weights_included(impl, dtype):
    q, k, v = _qkv(dtype)
    q[0, 1, 3] = np.nan  # every score of row (0, 1) is NaN
    mask = np.ones((LQ, LK), dtype=bool)
    mask[:, 5] = False  # a hidden key: its weight is NaN too in a NaN row
    out, lse, weights = _call(impl, q, k, v, mask=mask)
    assert np.isnan(out[0, 1]).all() and np.isnan(lse[0, 1]) and np.isnan(weights[0, 1]).all()
    others = np.ones((2, LQ), dtype=bool)
    others[0, 1] = False
    assert np.isfinite(out[others]).all() and np.isfinite(lse[others]).all()
    assert np.all(weights[others][:, 5] == 0)


@pytest.mark.parametrize(("impl", "dtype"), IMPLS)
def test_plus_inf_score_makes_the_row_nan_rather_than_selecting_its_key(impl, dtype):
    q, k, v = _qkv(dtype)
    q[...] = np.abs(q)
    k[1, 40] = np.abs(k[1, 40])
    k[1, 40, 2] = np.inf  # score +inf for every query of head 1, for rows that see key 40
    out, lse, weights = _call(impl, q, k, v, causal="bottom_right")  # offset 66: all see it
    assert np.isnan(out[1]).all() and np.isnan(lse[1]).all() and np.isnan(weights[1]).all()
    assert np.isfinite(out[0]).all()
    out, lse, _ = _call(impl, q, k, v, causal="top_left")  # rows 0..3 see keys <= 3 only
    assert np.isfinite(out).all() and np.isfinite(lse).all()


@pytest.mark.parametrize(("impl", "dtype"), IMPLS)
def test_minus_inf_score_weighs_zero_but_its_value_still_enters(impl, dtype):
    q, k, v = _qkv(dtype)
    q[...] = np.abs(q)
    k[:, 7] = np.abs(k[:, 7])
    k[:, 7, 0] = -np.inf  # score -inf for every row
    out, lse, weights = _call(impl, q, k, v)
    keep = np.arange(LK) != 7
    want_out, want_lse = reference.attention(
        *(x.astype(np.float64) for x in (q, k[:, keep], v[:, keep])), return_lse=True
    )
    assert np.all(weights[..., 7] == 0)
    np.testing.assert_allclose(out, want_out, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, atol=1e-5)
    v[:, 7, 3] = np.inf  # 0·Inf = NaN reaches component 3, and only it
    out = impl(q, k, v)
    assert np.isnan(out[..., 3]).all()
    assert np.isfinite(np.delete(out, 3, axis=-1)).all()


@pytest.mark.parametrize(("impl", "dtype"), IMPLS)
def test_row_whose_visible_scores_are_all_minus_inf_is_fully_masked(impl, dtype):
    q, k, v = _qkv(dtype)
    q[...] = np.abs(q)
    k[...] = np.abs(k)
    q[0, 2, 1] = -np.inf  # row (0, 2) scores -inf against every key
    v[0, 9] = np.inf  # 0·Inf would be NaN: the fully masked rule says 0
    v[0, 10] = np.nan
    out, lse, weights = _call(impl, q, k, v)
    assert np.all(out[0, 2] == 0) and lse[0, 2] == -np.inf and np.all(weights[0, 2] == 0)


@pytest.mark.parametrize(("impl", "dtype"), IMPLS)
def test_nan_and_inf_in_a_visible_value_reach_only_their_component(impl, dtype):
    q, k, v = _qkv(dtype)
    v[0, 30, 2] = np.nan
    v[0, 31, 5] = np.inf
    v[1, 32, 6] = -np.inf
    out = impl(q, k, v, causal="bottom_right")  # every row sees keys 30..32
    assert np.isnan(out[0, :, 2]).all()
    assert np.all(out[0, :, 5] == np.inf) and np.all(out[1, :, 6] == -np.inf)
    finite = np.ones(out.shape, dtype=bool)
    finite[0, :, [2, 5]] = False
    finite[1, :, 6] = False
    assert np.isfinite(out[finite]).all()


@pytest.mark.parametrize(("impl", "dtype"), IMPLS)
def test_softcap_maps_infinite_scores_to_finite_ones(impl, dtype):
    q, k, v = _qkv(dtype)
    q[...] = np.abs(q)
    k[0, 3] = np.abs(k[0, 3])
    k[0, 3, 0] = np.inf  # score +inf: capped to +5
    k[1, 4] = np.abs(k[1, 4])
    k[1, 4, 0] = -np.inf  # score -inf: capped to -5
    out, lse, weights = _call(impl, q, k, v, softcap=5.0)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    s = 5.0 * np.tanh(
        np.einsum("hid,hjd->hij", q.astype(np.float64), k.astype(np.float64)) * D**-0.5 / 5.0
    )
    s[0, :, 3], s[1, :, 4] = 5.0, -5.0
    want = np.exp(s - s.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(weights, want, atol=1e-5)


@pytest.mark.parametrize(("impl", "dtype"), IMPLS)
def test_hidden_nan_and_inf_never_reach_a_row(impl, dtype):
    q, k, v = _qkv(dtype)
    clean = _call(impl, q, k, v, causal="top_left")
    dirty_k, dirty_v = k.copy(), v.copy()
    dirty_k[:, 10:], dirty_v[:, 10:] = np.nan, np.inf  # past every causal diagonal (rows <= 3)
    dirty = _call(impl, q, dirty_k, dirty_v, causal="top_left")
    # The native core skips hidden keys: the same bits. The reference sums the terms of a
    # row in another order when V holds Inf: the same to rounding.
    same = _close if impl in (reference.attention, spec_oracle) else np.array_equal
    for a, b in zip(dirty, clean, strict=True):
        assert same(a, b)
    lengths = np.array([10])  # past kv_lengths
    assert same(
        impl(q[None], dirty_k[None], dirty_v[None], kv_lengths=lengths),
        impl(q[None], k[None], v[None], kv_lengths=lengths),
    )
    mask = np.ones((LQ, LK), dtype=bool)
    mask[:, 20] = False
    bias = np.zeros(LK)
    bias[21] = -np.inf
    dirty_k, dirty_v = k.copy(), v.copy()
    dirty_k[:, 20:22], dirty_v[:, 20:22] = np.nan, -np.inf
    want = impl(q, k, v, mask=mask, bias=bias)
    assert same(impl(q, dirty_k, dirty_v, mask=mask, bias=bias), want)
    # a fully masked row is 0 whatever it holds, a NaN query included
    q[0, 1] = np.nan
    out, lse, weights = _call(impl, q, k, v, kv_lengths=np.array(0))
    assert np.all(out == 0) and np.all(lse == -np.inf) and np.all(weights == 0)


# Split-K decoding: one query row against 2048 keys splits them into 4 chunks of 512 in the
# native core, each with its own running max, sum and accumulator, merged at the end. The rules
# above hold there too, whichever chunk a NaN or Inf sits in.
SPLIT_LK = 2048


@pytest.mark.parametrize(("impl", "dtype"), IMPLS)
def test_split_keys_nan_in_a_whole_chunk_makes_the_row_nan(impl, dtype):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 1, D)).astype(dtype)
    k = rng.standard_normal((3, SPLIT_LK, D)).astype(dtype)
    v = rng.standard_normal((3, SPLIT_LK, D)).astype(dtype)
    k[0, :512] = np.nan  # every key of the first chunk of head 0
    k[1, 1024:1536, 5] = np.nan  # every key of the third chunk of head 1
    out, lse, weights = _call(impl, q, k, v)
    assert np.isnan(out[:2]).all() and np.isnan(lse[:2]).all() and np.isnan(weights[:2]).all()
    assert np.isfinite(out[2]).all() and np.isfinite(lse[2]).all()


@pytest.mark.parametrize(("impl", "dtype"), IMPLS)
def test_split_keys_zero_times_inf_in_a_chunk_reaches_its_component(impl, dtype):
    rng = np.random.default_rng(2)
    q = np.abs(rng.standard_normal((2, 1, D))).astype(dtype)
    k = np.abs(rng.standard_normal((2, SPLIT_LK, D))).astype(dtype)
    v = rng.standard_normal((2, SPLIT_LK, D)).astype(dtype)
    k[0, :512, 0] = -np.inf  # head 0: the first chunk scores -inf, the others are finite
    v[0, 100, 3] = np.inf  # weight 0 times Inf: NaN in component 3
    k[1, :, 0] = -np.inf  # head 1: every key scores -inf: fully masked, whatever V holds
    v[1, 100, 3], v[1, 1500, 4] = np.inf, np.nan
    out, lse, weights = _call(impl, q, k, v)
    assert np.isnan(out[0, 0, 3]) and np.isfinite(np.delete(out[0, 0], 3)).all()
    assert np.isfinite(lse[0]).all() and np.all(weights[0, 0, :512] == 0)
    assert np.all(out[1] == 0) and lse[1, 0] == -np.inf and np.all(weights[1] == 0)
