"""Multi-head attention, its parameters, the KV cache and merge_partials."""

import numpy as np
import pytest

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


@pytest.mark.parametrize(
    ("key", "value", "error", "says"),
    [
        (np.ones((1, 2, 1, 4)), np.ones((1, 2, 1, 3)), ValueError, "key.shape should be"),
        (np.ones((1, 1, 1, 2)), np.ones((1, 1, 2, 3)), ValueError, "value.shape[:-1] should be"),
        (
            np.ones((1, 1, 1, 2), np.float32),
            np.ones((1, 1, 1, 3), np.float32),
            TypeError,
            "key.dtype should be float64 (the cache's)",
        ),
    ],
)
def test_kv_cache_refuses_what_does_not_fit(key, value, error, says):
    cache = KVCache()
    cache.append(np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 3)))
    with pytest.raises(error) as raised:
        cache.append(key, value)
    assert says in str(raised.value)


def test_mha_refuses_bad_combinations():
    x, params, heads = layer()
    with pytest.raises(ValueError, match="kv_cache is for self-attention"):
        multi_head_attention(x, x, params=params, kv_cache=KVCache(), **heads)
    with pytest.raises(ValueError, match="causal should be True or 'bottom_right' with a kv_cache"):
        multi_head_attention(x, params=params, causal="top_left", kv_cache=KVCache(), **heads)
    with pytest.raises(
        ValueError, match=r"params.w_q.shape\[0\] should be 8 \(x's Dm\), but got 16"
    ):
        multi_head_attention(x[..., :8], params=params, **heads)
    with pytest.raises(ValueError, match="should be a multiple of num_heads = 3"):
        multi_head_attention(x, params=params, num_heads=3)
    with pytest.raises(ValueError, match=r"context.shape\[:-2\] should be \(2,\)"):
        multi_head_attention(x, x[:1], params=params, **heads)
    with pytest.raises(TypeError, match=r"x should be a numpy\.ndarray"):
        multi_head_attention(x.tolist(), params=params, **heads)


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


@pytest.mark.parametrize(
    ("outs", "lses", "error", "says"),
    [
        ([], [], ValueError, "outs should hold at least one chunk"),
        ([np.zeros((2, 3))], [], ValueError, "lses should have one entry per chunk (1)"),
        ([np.zeros((2, 3)), np.zeros((2, 4))], [np.zeros(2)] * 2, ValueError, "outs[1].shape"),
        ([np.zeros((2, 3))], [np.zeros(3)], ValueError, "lses[0].shape should be (2,)"),
        (np.zeros((1, 2, 3)), np.zeros((1, 2)), TypeError, "sequences of arrays"),
        ([np.zeros((2, 3), int)], [np.zeros(2)], TypeError, "outs[0].dtype"),
    ],
)
def test_merge_partials_refuses_bad_input(outs, lses, error, says):
    with pytest.raises(error) as raised:
        merge_partials(outs, lses)
    assert says in str(raised.value)
