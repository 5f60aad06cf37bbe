"""Bad input to the reference gets a clear error; legitimate odd input gets the right answer."""

import re

import numpy as np
import pytest
from bad_calls import BAD_CALLS, qkv

from refattn import reference


@pytest.mark.parametrize("bad", BAD_CALLS, ids=[bad.name for bad in BAD_CALLS])
def test_bad_call_is_refused_clearly(bad):
    with pytest.raises(bad.error) as raised:
        reference.attention(*bad.args, **bad.options)
    message = str(raised.value)
    for fragment in bad.says:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_zero_length_sequences_are_legitimate():
    q, k, v = qkv(lq=0)
    assert reference.attention(q, k, v).shape == (2, 4, 0, 8)
    q, k, v = qkv(lk=0)
    out, lse = reference.attention(q, k, v, return_lse=True)
    assert np.all(out == 0) and np.all(lse == -np.inf)


def test_strided_views_are_legitimate():
    q, k, v = qkv(np.float64)
    stored = np.ascontiguousarray(np.swapaxes(q, -2, -3))  # (B, L, H, D) in memory
    view = np.swapaxes(stored, -2, -3)
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(reference.attention(view, k, v), reference.attention(q, k, v))
    reversed_keys = k[..., ::-1, :]  # a negative stride
    np.testing.assert_allclose(
        reference.attention(q, reversed_keys, v[..., ::-1, :]), reference.attention(q, k, v)
    )


def test_scale_zero_and_negative_are_legitimate():
    q, k, v = qkv(np.float64)
    mean = np.broadcast_to(v.mean(axis=-2, keepdims=True), (2, 4, 3, 8))
    np.testing.assert_allclose(reference.attention(q, k, v, scale=0.0), mean)
    flipped = reference.attention(-q, k, v, scale=1.0)
    np.testing.assert_allclose(reference.attention(q, k, v, scale=-1.0), flipped)


def test_minus_inf_bias_hides_a_key_even_when_its_score_is_nan():
    q, k, v = qkv(np.float64)
    k[..., 0, :] = np.nan
    bias = np.zeros(5)
    bias[0] = -np.inf
    out = reference.attention(q, k, v, bias=bias)
    np.testing.assert_allclose(out, reference.attention(q, k[..., 1:, :], v[..., 1:, :]))


def test_nan_in_a_visible_query_propagates_to_its_row_only():
    q, k, v = qkv(np.float64)
    q[0, 0, 1, 0] = np.nan
    out = reference.attention(q, k, v)
    assert np.isnan(out[0, 0, 1]).all()
    assert np.isfinite(np.delete(out[0, 0], 1, axis=0)).all()


def test_messages_name_the_argument_first():
    """The style of every message: '<argument> should be <expected>, but got <actual>'."""
    for bad in BAD_CALLS:
        with pytest.raises(bad.error) as raised:
            reference.attention(*bad.args, **bad.options)
        assert re.search(r"should (be|have|hold)", str(raised.value)), bad.name
