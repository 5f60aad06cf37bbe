"""Multi-head attention, its parameters, the KV cache and merge_partials."""

import itertools

import numpy as np
import pytest
from refattn.spec.tolerance import mismatch

from refattn import KVCache, MHAParams, merge_partials, multi_head_attention, reference


def layer(num_heads=4, num_kv_heads=2, d_model=16, **init):
    params = MHAParams.init(d_model, num_heads, num_kv_heads=num_kv_heads, seed=3, **init)
    x = np.random.default_rng(1).standard_normal((2, 6, d_model))
    return x, params, {"num_heads": num_heads, "num_kv_heads": num_kv_heads}


def test_params_are_seeded_and_shaped():
    a = MHAParams.init(16, 4, num_kv_heads=2, value_head_dim=6, d_out=5, seed=9)
    b = MHAParams.init(16, 4, num_kv_heads=2, value_head_dim=6, d_out=5, seed=9)
    np.testing.assert_array_equal(a.w_q, b.w_q)
    assert not np.array_equal(a.w_q, MHAParams.init(16, 4, num_kv_heads=2, seed=10).w_q)
    assert (a.w_q.shape, a.w_k.shape, a.w_v.shape, a.w_o.shape) == (
        (16, 16),
        (16, 8),
        (16, 12),
        (24, 5),
    )
    assert MHAParams.init(8, 2, bias=False).b_q is None
    assert MHAParams.init(8, 2, dtype=np.float32).w_o.dtype == np.float32
    with pytest.raises(ValueError, match="num_heads should be at least 1, but got 0"):
        MHAParams.init(8, 0, head_dim=4)


def test_cross_attention_with_its_own_widths():
    params = MHAParams.init(8, 2, d_context=5, head_dim=3, value_head_dim=7, d_out=4, seed=0)
    rng = np.random.default_rng(0)
    x, context = rng.standard_normal((3, 8)), rng.standard_normal((11, 5))
    y = multi_head_attention(x, context, params=params, num_heads=2)
    assert y.shape == (3, 4)
    q = x @ params.w_q + params.b_q
    k = context @ params.w_k + params.b_k
    v = context @ params.w_v + params.b_v
    heads = [
        reference.attention(
            q[None, :, 3 * h : 3 * h + 3],
            k[None, :, 3 * h : 3 * h + 3],
            v[None, :, 7 * h : 7 * h + 7],
        )[0]
        for h in range(2)
    ]
    np.testing.assert_allclose(y, np.concatenate(heads, -1) @ params.w_o + params.b_o)


def test_kv_cache_decoding_one_token_at_a_time_equals_the_causal_sequence():
    x, params, heads = layer()
    whole = multi_head_attention(x, params=params, causal=True, **heads)
    cache = KVCache()
    steps = [
        multi_head_attention(x[:, t : t + 1], params=params, causal=True, kv_cache=cache, **heads)
        for t in range(x.shape[1])
    ]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, rtol=1e-12, atol=1e-12)
    assert cache.length == 6 and cache.key.shape == (2, 2, 6, 4)


def test_kv_cache_prefill_then_decode_with_a_sliding_window():
    x, params, heads = layer()
    whole = multi_head_attention(x, params=params, causal=True, window=(2, 0), **heads)
    cache = KVCache()
    first = multi_head_attention(
        x[:, :4], params=params, causal=True, window=(2, 0), kv_cache=cache, **heads
    )
    rest = [
        multi_head_attention(
            x[:, t : t + 1], params=params, causal=True, window=(2, 0), kv_cache=cache, **heads
        )
        for t in (4, 5)
    ]
    np.testing.assert_allclose(np.concatenate([first, *rest], axis=1), whole, atol=1e-12)


def test_kv_cache_grows_by_doubling_and_keeps_earlier_views():
    cache = KVCache()
    first_key, _ = cache.append(np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 3)))
    for t in range(40):
        cache.append(np.full((1, 1, 1, 2), float(t)), np.full((1, 1, 1, 3), float(t)))
    assert cache.length == 41
    assert cache._key.shape[-2] == 64  # 16 -> 32 -> 64
    np.testing.assert_array_equal(first_key, np.ones((1, 1, 1, 2)))
    np.testing.assert_array_equal(cache.value[0, 0, 1:, 0], np.arange(40))


def test_mha_runs_any_attention_function():
    x, params, heads = layer()
    calls = []

    def spy(q, k, v, **options):
        calls.append((q.shape, k.shape, v.shape))
        return reference.attention(q, k, v, **options)

    multi_head_attention(x, params=params, attention=spy, **heads)
    assert calls == [((2, 4, 6, 4), (2, 2, 6, 4), (2, 2, 6, 4))]


def test_merge_partials_equals_attention_over_all_keys():
    rng = np.random.default_rng(0)
    q, k, v = (
        rng.standard_normal((3, 4, 8)),
        rng.standard_normal((3, 9, 8)),
        rng.standard_normal((3, 9, 5)),
    )
    mask = rng.random((4, 9)) < 0.5
    mask[2] = False
    parts = [
        reference.attention(q, k[:, a:b], v[:, a:b], mask=mask[:, a:b], return_lse=True)
        for a, b in ((0, 2), (2, 7), (7, 9))
    ]
    out, lse = merge_partials([p[0] for p in parts], [p[1] for p in parts])
    full_out, full_lse = reference.attention(q, k, v, mask=mask, return_lse=True)
    np.testing.assert_allclose(out, full_out, atol=1e-12)
    np.testing.assert_allclose(lse, full_lse, atol=1e-12)
    assert np.all(out[:, 2] == 0) and np.all(lse[:, 2] == -np.inf)
    # Associative: merging merged pieces gives the same.
    left = merge_partials([parts[0][0], parts[1][0]], [parts[0][1], parts[1][1]])
    nested = merge_partials([left[0], parts[2][0]], [left[1], parts[2][1]])
    np.testing.assert_allclose(nested[0], out, atol=1e-12)


def _chunks(x, cuts, axis):
    edges = [0, *cuts, x.shape[axis]]
    return [np.take(x, range(a, b), axis=axis) for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merge_partials_of_native_chunks_equals_native_over_all_keys(dtype):
    """Native partials on key chunks (one chunk every row's mask hides, rows that see nothing
    in some chunks, NaN and Inf in hidden values, +Inf in a visible one) merge into attention
    over all keys: the float64 reference's, within the tolerance model."""
    from refattn.spec.tolerance import expect

    from refattn import native

    rng = np.random.default_rng(4)
    q, k, v = (
        rng.standard_normal((2, 3, n, d)).astype(dtype) for n, d in ((5, 8), (12, 8), (12, 6))
    )
    mask = rng.random((5, 12)) < 0.6
    mask[:, 3:6] = False  # the second chunk is fully masked for every row
    mask[1, 6:] = False  # row 1 sees keys of the first chunk only
    mask[4] = False  # row 4 sees nothing at all
    v[..., ~mask.any(axis=0), :] = np.nan  # hidden values never reach a row
    v[..., 4, 0] = np.inf  # hidden too
    v[..., 8, 1] = np.inf  # visible to the rows whose mask lets key 8 through: +inf there
    cuts = (3, 6, 10)
    chunks = zip(_chunks(k, cuts, -2), _chunks(v, cuts, -2), _chunks(mask, cuts, -1), strict=True)
    parts = [native.attention(q, kc, vc, mask=mc, return_lse=True) for kc, vc, mc in chunks]
    assert np.all(parts[1][1] == -np.inf) and np.all(parts[1][0] == 0)
    out, lse = merge_partials([p[0] for p in parts], [p[1] for p in parts])
    assert out.dtype == dtype and lse.dtype == dtype
    want = expect(q, k, v, mask=mask)
    assert np.isposinf(want.out[..., 1]).any() and np.isfinite(want.out[..., 0]).all()
    # each chunk's out was rounded to dtype before the merge: one more rounding of max|v|
    slack = 4 * np.finfo(dtype).eps * np.nanmax(np.abs(np.where(np.isinf(v), 0, v)))
    assert mismatch(out, want.out, want.tol.out + slack) is None
    assert mismatch(lse, want.lse, want.tol.lse) is None
    assert np.all(out[..., 4, :] == 0) and np.all(lse[..., 4] == -np.inf)


def test_merge_partials_a_chunk_that_sees_nothing_contributes_nothing_even_nan():
    """A chunk with lse -inf weighs 0 and contributes nothing, whatever its out holds (an
    implementation that divides 0 by 0 returns NaN there): the row is the other chunks' merge."""
    rng = np.random.default_rng(2)
    outs = [rng.standard_normal((3, 4)) for _ in range(3)]
    lses = [rng.standard_normal(3) for _ in range(3)]
    outs[1][:] = np.nan
    outs[1][2] = np.inf
    lses[1][:] = -np.inf
    out, lse = merge_partials(outs, lses)
    without = merge_partials([outs[0], outs[2]], [lses[0], lses[2]])
    np.testing.assert_array_equal(out, without[0])
    np.testing.assert_array_equal(lse, without[1])
    # every chunk sees nothing: the fully masked rule, out 0 and lse -inf
    out, lse = merge_partials([np.full((3, 4), np.nan)] * 2, [np.full(3, -np.inf)] * 2)
    assert np.all(out == 0) and np.all(lse == -np.inf)


def test_merge_partials_nan_lse_makes_the_row_nan_and_only_that_row():
    rng = np.random.default_rng(3)
    outs = [rng.standard_normal((3, 4)) for _ in range(2)]
    lses = [rng.standard_normal(3), np.array([0.5, np.nan, -np.inf])]
    out, lse = merge_partials(outs, lses)
    assert np.isnan(out[1]).all() and np.isnan(lse[1])
    assert np.isfinite(out[[0, 2]]).all() and np.isfinite(lse[[0, 2]]).all()
    np.testing.assert_array_equal(out[2], outs[0][2])  # the chunk that sees nothing adds nothing


def test_merge_partials_nan_in_the_out_of_a_chunk_that_sees_keys_reaches_the_row():
    """Any weight times NaN is NaN: a NaN component of a seeing chunk's out is NaN in the merge,
    even when that chunk's weight underflows to 0."""
    outs = [np.zeros((2, 3)), np.zeros((2, 3))]
    outs[1][:, 1] = np.nan
    out, _ = merge_partials(outs, [np.zeros(2), np.array([0.0, -1000.0])])
    assert np.isnan(out[:, 1]).all() and np.all(out[:, [0, 2]] == 0)


def test_kv_cache_views_are_read_only_and_writing_them_leaves_the_cache_intact():
    cache = KVCache()
    rng = np.random.default_rng(6)
    key, value = rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 2, 3, 5))
    views = [*cache.append(key, value), cache.key, cache.value]
    for view in views:
        with pytest.raises(ValueError, match="read-only"):
            view[..., 0, :] = 0.0
        with pytest.raises(ValueError, match="read-only"):
            view += 1.0
        with pytest.raises(ValueError, match="read-only"):
            np.multiply(view, 2.0, out=view)
    np.testing.assert_array_equal(cache.key, key)
    np.testing.assert_array_equal(cache.value, value)
    # the storage itself stays writable: appending goes on, and a copy is the caller's own
    cache.append(key[..., :1, :], value[..., :1, :])
    np.testing.assert_array_equal(cache.key, np.concatenate([key, key[..., :1, :]], -2))
    mine = np.array(cache.value)
    mine[...] = 0.0
    np.testing.assert_array_equal(cache.value[..., :3, :], value)
