"""Algebra: attention is a convex combination of values, linear in them, and blind to order."""

import numpy as np
from hypothesis import strategies as st
from refattn.spec import oracle
from refattn.spec.checking import expect, expect_close, run
from refattn.spec.registry import MUST, invariant
from refattn.spec.strategies import cases, mha_cases
from refattn.spec.tolerance import SAFETY, expect_layer, largest_abs_dot
from refattn.spec.tolerance import expect as reference_expect

from refattn.dtypes import finfo
from refattn.mha import multi_head_attention


@invariant(
    id="ATT-A1",
    title="The output lies in the convex hull of the visible values",
    level=MUST,
    requires=(),
    statement="""Each coordinate of a row's output lies between the smallest and the largest
        value of that coordinate over the keys the row may see.""",
    formula=r"\min_{j \in V_i} v_{jd} \le o_{id} \le \max_{j \in V_i} v_{jd}",
    rationale="""Weights are non-negative and sum to one, so the output is an average; an
        output outside the hull means weights outside [0, 1] or values from hidden keys.""",
)
def convex_hull(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v, options = case.build()
    visible = oracle.visibility(q, k, options)  # (B..., Hq, Lq, Lk)
    v64 = np.repeat(v.astype(np.float64), case.Hq // case.Hkv, axis=-3)[..., None, :, :]
    seen = visible[..., None]  # (B..., Hq, Lq, Lk, 1)
    low = np.where(seen, v64, np.inf).min(axis=-2)  # (B..., Hq, Lq, Dv)
    high = np.where(seen, v64, -np.inf).max(axis=-2)
    rows = visible.any(axis=-1)
    out = run(impl, q, k, v, options).out.astype(np.float64)
    atol = reference_expect(q, k, v, impl.semantics, **options).tol.out
    outside = rows[..., None] & ((out < low - atol) | (out > high + atol))
    if outside.any():
        i = tuple(int(n) for n in np.argwhere(outside)[0])
        expect(
            False,
            "out",
            f"{out[i]!r} at {i} outside [{low[i]!r}, {high[i]!r}] ± {atol:.3g}",
        )


@invariant(
    id="ATT-A2",
    title="Attention is linear in the values",
    level=MUST,
    requires=(),
    statement="""For fixed queries, keys and masks, attention of a·V1 + b·V2 is a·attention(V1)
        + b·attention(V2).""",
    formula=r"\mathrm{attn}(Q, K, aV_1 + bV_2) = "
    r"a\,\mathrm{attn}(Q, K, V_1) + b\,\mathrm{attn}(Q, K, V_2)",
    rationale="""The weights depend on queries and keys only; values enter linearly. A kernel
        that lets V into its normalisation, or reuses a stale value tile, breaks this.""",
)
def linear_in_values(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v1, options = case.build()
    coefficient = st.integers(-2000, 2000).map(lambda n: n / 1000)  # no subnormal products
    a = data.draw(coefficient, label="a")
    b = data.draw(coefficient, label="b")
    rng = np.random.default_rng(case.seed + 1)
    v2 = rng.standard_normal(v1.shape).astype(v1.dtype)
    mixed = (a * v1.astype(np.float64) + b * v2.astype(np.float64)).astype(v1.dtype)
    got = run(impl, q, k, mixed, options).out.astype(np.float64)
    combined = a * run(impl, q, k, v1, options).out.astype(np.float64) + b * run(
        impl, q, k, v2, options
    ).out.astype(np.float64)
    # a·V1 + b·V2 is rounded once to the input dtype before the call: half an ulp per entry.
    rounding = finfo(v1.dtype).eps / 2 * float(np.abs(mixed.astype(np.float64)).max(initial=0))
    atol = (
        reference_expect(q, k, mixed, impl.semantics, **options).tol.out
        + 2 * rounding
        + abs(a) * reference_expect(q, k, v1, impl.semantics, **options).tol.out
        + abs(b) * reference_expect(q, k, v2, impl.semantics, **options).tol.out
    )
    expect_close(
        "out",
        got,
        combined,
        atol,
        how=f"attn(a·V1 + b·V2) vs a·attn(V1) + b·attn(V2), a={a!r}, b={b!r}, "
        "V2 ~ N(0, 1) from seed + 1",
    )


def _permute(options, axis_from_end, order):
    """Permute the Lq (axis -2) or Lk (axis -1) axis of mask and bias, where they have it."""
    permuted = dict(options)
    for name in ("mask", "bias"):
        if name in options and options[name].shape[axis_from_end] > 1:
            permuted[name] = np.take(options[name], order, axis=axis_from_end)
    return permuted


@invariant(
    id="ATT-A3",
    title="Permuting the queries permutes the outputs",
    level=MUST,
    requires=(),
    statement="""Without position-dependent masks (causal, window), permuting the queries (and
        the mask and bias rows with them) permutes the output rows the same way.""",
    formula=r"\mathrm{attn}(PQ, K, V) = P\,\mathrm{attn}(Q, K, V)",
    rationale="""Each query row is computed independently; a kernel that mixes rows across a
        tile boundary, or misplaces a row tail, fails this.""",
)
def query_permutation(impl, data):
    case = data.draw(cases(impl.capabilities, causal=False, window=False), label="case")
    q, k, v, options = case.build()
    order = np.array(data.draw(st.permutations(range(case.Lq)), label="query order"), dtype=int)
    permuted = run(impl, q[..., order, :], k, v, _permute(options, -2, order)).out
    original = run(impl, q, k, v, options).out
    atol = 2 * reference_expect(q, k, v, impl.semantics, **options).tol.out
    expect_close(
        "out",
        permuted,
        original[..., order, :],
        atol,
        how=f"queries in order {order.tolist()}",
    )


@invariant(
    id="ATT-A4",
    title="Permuting keys and values together changes nothing",
    level=MUST,
    requires=(),
    statement="""Without position-dependent masks (causal, window, kv_lengths), permuting the
        keys and values jointly (and the mask and bias columns with them) leaves the output
        unchanged.""",
    formula=r"\mathrm{attn}(Q, PK, PV) = \mathrm{attn}(Q, K, V)",
    rationale="""Attention is a function of the set of (key, value) pairs; order only matters
        through the masks that mention positions.""",
)
def key_value_permutation(impl, data):
    case = data.draw(
        cases(impl.capabilities, causal=False, window=False, kv_lengths=False), label="case"
    )
    q, k, v, options = case.build()
    order = np.array(data.draw(st.permutations(range(case.Lk)), label="key order"), dtype=int)
    permuted = run(impl, q, k[..., order, :], v[..., order, :], _permute(options, -1, order)).out
    original = run(impl, q, k, v, options).out
    atol = 2 * reference_expect(q, k, v, impl.semantics, **options).tol.out
    expect_close(
        "out",
        permuted,
        original,
        atol,
        how=f"keys and values in order {order.tolist()}",
    )


@invariant(
    id="ATT-A5",
    title="Adding one vector to every key changes nothing",
    level=MUST,
    requires=(),
    statement="""Without softcap, adding the same vector c to every key leaves the output
        unchanged: each row's scores all move by scale·q_i·c, and softmax ignores a shift.""",
    formula=r"\mathrm{softmax}_j(s_{ij} + \text{scale}\, q_i \cdot c) = \mathrm{softmax}_j(s_{ij})",
    rationale="""This is why subtracting the row maximum is exact, and why a key bias is
        redundant; an implementation normalising with a stale or global maximum fails it.""",
)
def key_shift(impl, data):
    case = data.draw(cases(impl.capabilities, softcap=False), label="case")
    q, k, v, options = case.build()
    rng = np.random.default_rng(case.seed + 1)
    c = rng.standard_normal(case.Dk)
    shifted = (k.astype(np.float64) + c).astype(k.dtype)
    got = run(impl, q, shifted, v, options).out
    original = run(impl, q, k, v, options).out
    # k + c is rounded to the input dtype (half an ulp per entry): the scores move by at most
    # scale·Σ_d |q_d|·|k_d + c_d|·ulp/2, and the weights by twice that, relatively.
    scale = abs(options.get("scale", case.Dk**-0.5))
    moved = finfo(k.dtype).eps / 2 * scale * largest_abs_dot(q, shifted)
    largest_v = float(np.abs(v.astype(np.float64)).max(initial=0))
    atol = (
        reference_expect(q, shifted, v, impl.semantics, **options).tol.out
        + reference_expect(q, k, v, impl.semantics, **options).tol.out
        + SAFETY * 2 * moved * largest_v
    )
    expect_close(
        "out",
        got,
        original,
        atol,
        how="c ~ N(0, 1) of size Dk from seed + 1 added to every key",
    )


@invariant(
    id="ATT-A6",
    title="Self-attention equals cross-attention with the same source",
    level=MUST,
    requires=(),
    statement="""Passing one array as query, key and value gives the output of passing three
        copies of it; a multi-head layer without context gives that of context = x.""",
    formula=r"\mathrm{attn}(X, X, X) = \mathrm{attn}(X, X', X''),\ X' = X'' = X",
    rationale="""Self-attention is cross-attention with itself; aliased buffers must not
        change the result (a kernel that writes into its input, or assumes distinct inputs).""",
)
def self_is_cross(impl, data):
    case = data.draw(cases(impl.capabilities, square=True, gqa=False, dv=False), label="case")
    x, _, _, options = case.build()
    aliased = run(impl, x, x, x, options).out
    copies = run(impl, x.copy(), x.copy(), x.copy(), options).out
    atol = 2 * reference_expect(x, x, x, impl.semantics, **options).tol.out
    expect_close(
        "out",
        aliased,
        copies,
        atol,
        how="query, key and value all the array `query`, vs three copies of it",
    )
    layer = data.draw(mha_cases(impl.capabilities), label="layer")
    x, params = layer.build()
    heads = {"num_heads": layer.num_heads, "num_kv_heads": layer.num_kv_heads}
    self_attention = multi_head_attention(x, params=params, attention=impl, **heads)
    cross = multi_head_attention(x, x.copy(), params=params, attention=impl, **heads)
    atol = 2 * expect_layer(x, params, **heads).tol
    expect_close(
        "y",
        self_attention,
        cross,
        atol,
        how="multi_head_attention(x) vs multi_head_attention(x, context=x.copy())",
    )
