"""Capabilities with exclusive pairs: checked names, and strategies that never draw a pair."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from refattn.spec.strategies import cases

from refattn.capabilities import ALL, Capabilities, combinable, exclusive_pairs

ONNX_LIKE = Capabilities(
    ALL, exclusive=[("mask", "bias"), ("kv_lengths", "causal"), ("kv_lengths", "window")]
)


def test_names_and_pairs_are_checked():
    with pytest.raises(ValueError, match="names of CAPABILITIES"):
        Capabilities({"float32", "flash"})
    with pytest.raises(ValueError, match="pairs of masking features"):
        Capabilities(ALL, exclusive=[("mask", "gqa")])
    with pytest.raises(ValueError, match="pairs of masking features"):
        Capabilities(ALL, exclusive=[("mask",)])


def test_combinable():
    assert combinable(ALL, "mask", "bias")
    assert not combinable(ALL - {"combined_masks"}, "mask", "bias")
    assert not combinable(ONNX_LIKE, "bias", "mask")
    assert not combinable(ONNX_LIKE, "causal_bottom_right", "kv_lengths")
    assert combinable(ONNX_LIKE, "mask", "causal_top_left")
    assert exclusive_pairs(frozenset(ALL)) == frozenset()


def _features(case):
    given_ = {
        "mask": case.mask_shape is not None,
        "bias": case.bias_shape is not None,
        "causal": case.causal is not None,
        "window": case.window is not None,
        "kv_lengths": case.kv_lengths is not None,
    }
    return {name for name, present in given_.items() if present}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_strategies_never_draw_an_exclusive_pair(data):
    case = data.draw(cases(ONNX_LIKE))
    features = _features(case)
    for pair in ONNX_LIKE.exclusive:
        assert not pair <= features


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_forced_feature_drops_its_exclusive_partner(data):
    case = data.draw(cases(ONNX_LIKE, kv_lengths="always"))
    assert case.kv_lengths is not None
    assert case.causal is None and case.window is None


def test_still_draws_combinations_that_are_allowed():
    seen = set()

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.data())
    def collect(data):
        seen.add(frozenset(_features(data.draw(cases(ONNX_LIKE)))))

    collect()
    assert frozenset({"mask", "causal", "window"}) in seen or frozenset({"mask", "causal"}) in seen
    assert any({"bias", "kv_lengths"} <= s for s in seen)


def test_forcing_an_exclusive_pair_is_an_error():
    @given(cases(ONNX_LIKE, mask="always", bias="always"))
    def draw(case):
        pass

    with pytest.raises(ValueError, match="cannot be combined"):
        draw()
