"""Tests of the spec's strategies: they draw what they claim, and only what they may."""

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st
from refattn.spec import coverage
from refattn.spec.cases import Case, MHACase, Upstream
from refattn.spec.strategies import broadcast_shapes, cases, mha_cases, upstreams

from refattn.capabilities import ALL, MASKING

FEW = frozenset({"float32", "mask", "causal_top_left"})


def _masking_features(case: Case) -> list[str]:
    present = {
        "mask": case.mask_shape is not None,
        "bias": case.bias_shape is not None,
        "causal": case.causal is not None,
        "window": case.window is not None,
        "kv_lengths": case.kv_lengths is not None,
    }
    return [name for name, here in present.items() if here]


@pytest.mark.parametrize(
    "claim",
    [
        pytest.param(lambda c: c.dtype == "float16", id="float16"),
        pytest.param(lambda c: c.dtype == "float32", id="float32"),
        pytest.param(lambda c: c.Hq > c.Hkv > 1, id="GQA with several kv heads"),
        pytest.param(lambda c: c.Dv != c.Dk, id="Dv != Dk"),
        pytest.param(lambda c: len(c.batch) == 2, id="two batch dims"),
        pytest.param(lambda c: c.Lq > 128 and c.Lk > 128, id="long sequences (tile tails)"),
        pytest.param(lambda c: c.Dk in (64, 128), id="common head dims"),
        pytest.param(lambda c: c.causal == "bottom_right" and c.Lq != c.Lk, id="bottom-right"),
        pytest.param(lambda c: c.window is not None and None in c.window, id="half-open window"),
        pytest.param(lambda c: c.kv_lengths is not None and 0 in c.kv_lengths, id="kv length 0"),
        pytest.param(lambda c: c.mask_shape is not None and c.mask_density == 0.0, id="all hidden"),
        pytest.param(
            lambda c: c.mask_shape is not None and len(c.mask_shape) == len(c.batch) + 3,
            id="per-head mask",
        ),
        pytest.param(lambda c: c.bias_shape is not None and c.bias_hidden > 0, id="-inf bias"),
        pytest.param(lambda c: len(_masking_features(c)) >= 3, id="masks combined"),
        pytest.param(lambda c: c.softcap is not None and c.scale is not None, id="softcap+scale"),
        pytest.param(lambda c: c.strided, id="strided views"),
        pytest.param(
            lambda c: c.dtype == "float64" and c.scale is not None and _not_float32(c.scale),
            id="float64 scale",
        ),
    ],
)
def test_cases_can_draw(claim):
    """With every capability, each feature the spec claims to exercise is reachable."""
    find(cases(ALL), claim, settings=settings(max_examples=5000, database=None))


def _not_float32(x: float) -> bool:
    return float(np.float32(x)) != x


@given(cases(ALL - {"float64_options"}, dtypes=("float64",)))
@settings(max_examples=200)
def test_options_of_32_bits_get_float32_numbers(case):
    """Without float64_options, a float64 call's scale and softcap are float32 numbers."""
    assert not any(_not_float32(x) for x in (case.scale, case.softcap) if x is not None)


@given(cases(FEW))
@settings(max_examples=200)
def test_cases_draw_only_what_the_implementation_has(case):
    assert case.dtype == "float32"
    assert case.Hq == case.Hkv and case.Dv == case.Dk
    assert case.bias_shape is None and case.window is None and case.kv_lengths is None
    assert case.causal in (None, "top_left")
    assert case.softcap is None and case.scale is None
    assert min(case.Lq, case.Lk) >= 1  # no "empty"
    assert len(_masking_features(case)) <= 1  # no "combined_masks"


@given(cases(ALL, mask="always", causal="bottom_right"))
@settings(max_examples=50)
def test_always_forces_a_feature(case):
    assert case.mask_shape is not None and case.causal == "bottom_right"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"softcap": "always"}, "softcap='always' needs capability 'softcap'"),
        ({"causal": "bottom_right"}, "needs capability 'causal_bottom_right'"),
        ({"mask": "sometimes"}, "mask should be False, True or 'always'"),
        ({"dtypes": ["float64"]}, "dtypes should overlap"),
        ({"mask": "always", "causal": "always"}, "need capability 'combined_masks'"),
    ],
)
def test_impossible_requests_are_refused_up_front(options, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        find(cases(FEW, **options), lambda c: True)


@given(st.data())
@settings(max_examples=100)
def test_broadcast_shapes_broadcast(data):
    full = tuple(data.draw(st.lists(st.integers(1, 4), min_size=2, max_size=5), label="full"))
    shape = data.draw(broadcast_shapes(full), label="shape")
    assert np.broadcast_shapes(shape, full) == full
    assert len(shape) >= 2 and shape[-2] in (1, full[-2]) and shape[-1] in (1, full[-1])


@given(cases(ALL))
@settings(max_examples=100)
def test_build_is_deterministic_and_shaped(case):
    q, k, v, options = case.build()
    q2, k2, v2, options2 = case.build()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        np.testing.assert_array_equal(a, b)
    assert q.shape == (*case.batch, case.Hq, case.Lq, case.Dk)
    assert k.shape == (*case.batch, case.Hkv, case.Lk, case.Dk)
    assert v.shape == (*case.batch, case.Hkv, case.Lk, case.Dv)
    assert q.dtype == np.dtype(case.dtype)
    assert set(options) == set(options2)
    if case.strided and case.Hq > 1 and case.Lq > 1:
        assert not q.flags.c_contiguous
    if case.mask_shape is not None:
        assert options["mask"].dtype == bool and options["mask"].shape == case.mask_shape


def test_repro_runs():
    """A failure's reproduction is code that runs as printed."""
    case = Case(
        batch=(2,),
        Hq=4,
        Hkv=2,
        Lq=3,
        Lk=5,
        dtype="float32",
        mask_shape=(3, 5),
        causal="bottom_right",
        seed=7,
    )
    namespace = {}
    exec(case.repro("reference", "result = impl(query, key, value, **options)"), namespace)
    assert namespace["result"].shape == (2, 4, 3, 8)
    assert "Case(batch=(2,), Hq=4, Hkv=2, Lq=3, Lk=5, dtype='float32'" in case.code()


def test_masking_capabilities_are_in_the_vocabulary():
    assert set(MASKING) <= ALL


@given(mha_cases(ALL))
@settings(max_examples=50)
def test_mha_cases_build(layer):
    x, params = layer.build()
    assert x.shape == (*layer.batch, layer.L, layer.d_model)
    assert params.w_q.shape == (layer.d_model, layer.num_heads * layer.head_dim)
    assert params.w_v.shape == (layer.d_model, layer.num_kv_heads * layer.value_head_dim)
    assert layer.num_heads % layer.num_kv_heads == 0
    assert isinstance(layer, MHACase)


@given(st.data())
@settings(max_examples=50)
def test_upstreams_have_the_outputs_shapes_and_dtypes(data):
    case = data.draw(cases(ALL, budget=2**12, max_len=16))
    upstream = data.draw(upstreams(ALL))
    grad_out, grad_lse = upstream.build(case)
    assert grad_out.shape == (*case.batch, case.Hq, case.Lq, case.Dv)
    assert grad_out.dtype == case.dtype  # out's dtype
    if upstream.lse:
        assert grad_lse.shape == grad_out.shape[:-1]
        assert grad_lse.dtype == ("float64" if case.dtype == "float64" else "float32")
    else:
        assert grad_lse is None
    assert np.isfinite(grad_out).all()


def test_upstreams_draw_lse_only_with_the_capability():
    without = find(upstreams(FEW), lambda u: True)
    assert not without.lse
    assert find(upstreams(FEW | {"lse"}), lambda u: u.lse).lse
    assert find(upstreams(ALL), lambda u: u.zeros == 1.0).zeros == 1.0
    with pytest.raises(ValueError, match="needs capability 'lse'"):
        find(upstreams(FEW, lse="always"), lambda u: True)


def test_upstreams_on_a_grid_add_exactly():
    """step=1/16: a·x + b·y with a, b powers of 2 is exact in float16 (ATT-G7 relies on it)."""
    case = Case(batch=(2,), Hq=2, Lq=16, Lk=3, Dv=32, dtype="float16")
    x, _ = Upstream(seed=1, step=1 / 16).build(case)
    y, _ = Upstream(seed=2, step=1 / 16).build(case)
    for a, b in ((2.0, -2.0), (0.5, 2.0), (-1.0, 0.5)):
        exact = a * x.astype(np.float64) + b * y.astype(np.float64)
        assert ((a * x + b * y).astype(np.float64) == exact).all()


def test_upstream_stream_is_not_the_cases():
    """At the same seed, grad_out is not the query (they would be the same normal draws)."""
    case = Case(Hq=2, Lq=3, Dk=4, Dv=4, seed=0)
    assert not np.array_equal(Upstream(seed=0).build(case)[0], case.build()[0])


def test_the_drawn_space_stays_covered():
    """Each region of the call space where kernels change path (refattn.spec.coverage.REGIONS:
    tile edges, long decode keys, head dims past 128, large GQA groups, edge scales and
    softcaps, masks broadcast along either axis, ...) is drawn at least at its floor."""
    measured = coverage.shares(coverage.sample(examples=2000))
    below = [name for name, share in measured.items() if share < coverage.REGIONS[name][1]]
    assert not below, f"drawn below the floor: {below}\n{coverage.report(measured)}"


def test_a_shrunk_drawn_space_is_reported():
    """The coverage check sees a strategy that stopped drawing a region."""
    measured = coverage.shares(coverage.sample(examples=300, max_dim=128, long_keys=0))
    assert measured["Dk > 128"] == 0 and measured["Lk >= 512 (decode against long keys)"] == 0
    assert "Dk > 128" in coverage.report(measured) and "BELOW FLOOR" in coverage.report(measured)
