"""Known answers, worked out by hand: attention on two and three tokens.

Every expected number below is written as the arithmetic that produces it, so a reader can
follow the three steps (score, normalise, weigh) with a pencil.
"""

import math

import numpy as np
import pytest

from refattn import additive_attention, general_attention, reference

SQRT2 = math.sqrt(2.0)


def test_two_tokens():
    """One query against two keys: scores 1/√2 and 0, so weights e^{1/√2} : 1."""
    q = np.array([[[1.0, 0.0]]])  # (H=1, Lq=1, Dk=2)
    k = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    v = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    out, lse, weights = reference.attention(q, k, v, return_lse=True, return_weights=True)

    s0, s1 = 1 / SQRT2, 0.0  # step 1: q·k / √Dk
    total = math.exp(s0) + math.exp(s1)  # step 2: exponentiate and normalise
    p0, p1 = math.exp(s0) / total, math.exp(s1) / total  # 0.66976, 0.33024
    expected = [p0 * 1 + p1 * 3, p0 * 2 + p1 * 4]  # step 3: weigh the values: 1.66048, 2.66048

    np.testing.assert_allclose(weights[0, 0], [p0, p1], rtol=1e-15)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-15)
    np.testing.assert_allclose(lse[0, 0], math.log(total), rtol=1e-15)
    np.testing.assert_allclose(out[0, 0], [1.66048, 2.66048], atol=1e-5)


def test_three_tokens_causal_self_attention():
    """Three tokens attend to themselves and their past (q = k = v = x)."""
    x = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (H=1, L=3, D=2)
    out, lse, weights = reference.attention(
        x, x, x, causal=True, return_lse=True, return_weights=True
    )
    # Token 0 sees only itself: its output is its own value.
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0], rtol=1e-15)
    np.testing.assert_allclose(lse[0, 0], 1 / SQRT2, rtol=1e-15)  # log e^{x0·x0/√2}
    # Token 1 sees tokens 0 and 1: scores 0 and 1/√2.
    e = math.exp(1 / SQRT2)
    np.testing.assert_allclose(weights[0, 1], [1 / (1 + e), e / (1 + e), 0.0], rtol=1e-15)
    np.testing.assert_allclose(out[0, 1], [1 / (1 + e), e / (1 + e)], rtol=1e-15)
    # Token 2 = (1, 1) sees all three: scores 1/√2, 1/√2, 2/√2.
    exps = [math.exp(1 / SQRT2), math.exp(1 / SQRT2), math.exp(2 / SQRT2)]
    p = [x_ / sum(exps) for x_ in exps]  # 0.24825, 0.24825, 0.50350
    np.testing.assert_allclose(weights[0, 2], p, rtol=1e-15)
    np.testing.assert_allclose(out[0, 2], [p[0] + p[2], p[1] + p[2]], rtol=1e-15)
    np.testing.assert_allclose(out[0, 2], [0.75175, 0.75175], atol=1e-5)
    np.testing.assert_allclose(lse[0, 2], math.log(sum(exps)), rtol=1e-15)


def test_bottom_right_causal_when_queries_are_the_last_tokens():
    """Two queries against three keys, bottom-right: query 0 is token 1, it sees keys 0..1."""
    q = np.ones((1, 2, 1))
    k = np.zeros((1, 3, 1))  # equal scores: weights are uniform over what is visible
    v = np.array([[[0.0], [3.0], [6.0]]])
    out = reference.attention(q, k, v, causal="bottom_right")
    np.testing.assert_allclose(out[0, :, 0], [(0 + 3) / 2, (0 + 3 + 6) / 3])
    top_left = reference.attention(q, k, v, causal="top_left")  # query 0 sees key 0 only
    np.testing.assert_allclose(top_left[0, :, 0], [0.0, (0 + 3) / 2])


def test_window_and_kv_lengths_by_hand():
    q = np.zeros((2, 1, 4, 1))  # two batch elements, equal scores everywhere
    k = np.zeros((2, 1, 4, 1))
    v = np.arange(8.0).reshape(2, 1, 4, 1)  # element 0 values 0..3, element 1 values 4..7
    out = reference.attention(q, k, v, window=(1, 0), kv_lengths=np.array([4, 2]))
    # window (1, 0): query i sees keys i-1 and i; element 1 also hides keys >= 2.
    np.testing.assert_allclose(out[0, 0, :, 0], [0.0, 0.5, 1.5, 2.5])
    np.testing.assert_allclose(out[1, 0, :2, 0], [4.0, 4.5])
    np.testing.assert_array_equal(out[1, 0, 2:, 0], [5.0, 0.0])  # row 3 sees nothing: 0


def test_gqa_maps_query_head_h_to_kv_head_h_over_g():
    q = np.zeros((4, 1, 1))  # Hq = 4, Hkv = 2: heads 0, 1 -> kv 0 and heads 2, 3 -> kv 1
    k = np.zeros((2, 1, 1))
    v = np.array([[[10.0]], [[20.0]]])
    out = reference.attention(q, k, v)
    np.testing.assert_array_equal(out[:, 0, 0], [10.0, 10.0, 20.0, 20.0])


def test_softcap_then_bias():
    q = np.array([[[2.0]]])
    k = np.array([[[1.0], [0.0]]])
    v = np.array([[[1.0], [0.0]]])
    bias = np.array([[[0.0, 0.5]]])
    out = reference.attention(q, k, v, scale=1.0, softcap=1.0, bias=bias)
    s = [1.0 * math.tanh(2.0 / 1.0) + 0.0, 0.0 + 0.5]  # cap the scaled score, then add bias
    p0 = math.exp(s[0]) / (math.exp(s[0]) + math.exp(s[1]))
    np.testing.assert_allclose(out[0, 0, 0], p0, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_output_keeps_the_query_dtype(dtype):
    """NumPy 2 promotes float32 arrays by float64 scalars; the reference must not let it."""
    x = np.ones((1, 2, 4), dtype=dtype)
    out, lse, weights = reference.attention(x, x, x, return_lse=True, return_weights=True)
    assert out.dtype == dtype
    compute = np.float64 if dtype == np.float64 else np.float32
    assert lse.dtype == compute
    assert weights.dtype == compute


def test_general_attention_by_hand():
    """Luong general: s = qᵀ W k, no scaling."""
    q = np.array([[1.0, 2.0]])
    k = np.array([[1.0, 0.0], [0.0, 1.0]])
    v = np.array([[1.0], [0.0]])
    w = np.array([[1.0, 0.0], [0.0, -1.0]])
    out, weights = general_attention(q, k, v, w=w, return_weights=True)
    s = [1.0, -2.0]  # q·W = (1, -2); against k0 = e1 and k1 = e2
    total = math.exp(s[0]) + math.exp(s[1])
    p0, p1 = math.exp(s[0]) / total, math.exp(s[1]) / total
    np.testing.assert_allclose(weights[0], [p0, p1], rtol=1e-15)
    np.testing.assert_allclose(out[0, 0], p0, rtol=1e-15)


def test_additive_attention_by_hand():
    """Bahdanau: s = vᵀ tanh(W_q q + W_k k)."""
    q = np.array([[1.0]])
    k = np.array([[0.0], [1.0]])
    values = np.array([[2.0], [4.0]])
    w_q, w_k, v = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([1.0, 2.0])
    out = additive_attention(q, k, values, w_q=w_q, w_k=w_k, v=v)
    s = [1 * math.tanh(1.0) + 2 * math.tanh(0.0), 1 * math.tanh(1.0) + 2 * math.tanh(1.0)]
    p0 = math.exp(s[0]) / (math.exp(s[0]) + math.exp(s[1]))
    np.testing.assert_allclose(out[0, 0], p0 * 2 + (1 - p0) * 4, rtol=1e-15)


@pytest.mark.parametrize("similarity", ["additive", "general"])
def test_other_similarities_follow_the_fully_masked_rule(similarity):
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((3, 2)), rng.standard_normal((4, 2)), rng.standard_normal((4, 3))
    mask = np.ones((3, 4), dtype=bool)
    mask[1] = False
    if similarity == "additive":
        w = {
            "w_q": rng.standard_normal((2, 5)),
            "w_k": rng.standard_normal((2, 5)),
            "v": rng.standard_normal(5),
        }
        out, weights = additive_attention(q, k, v, **w, mask=mask, return_weights=True)
    else:
        out, weights = general_attention(
            q, k, v, w=rng.standard_normal((2, 2)), mask=mask, causal=True, return_weights=True
        )
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(weights[1], 0.0)
    np.testing.assert_allclose(weights[[0, 2]].sum(axis=-1), 1.0)
