"""The reference on legitimate odd input (the bad calls are in tests/test_bad_calls.py)."""

import numpy as np
from bad_calls import qkv

from refattn import reference


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
