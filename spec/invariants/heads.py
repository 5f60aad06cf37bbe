"""Heads: multi-head attention is independent single-head attentions, batched."""

import numpy as np
from hypothesis import strategies as st
from refattn.spec.checking import expect_close, expect_unchanged, run
from refattn.spec.registry import MUST, invariant
from refattn.spec.strategies import cases, mha_cases
from refattn.spec.tolerance import expect as reference_expect
from refattn.spec.tolerance import expect_layer

from refattn.mha import multi_head_attention


def _single_head(impl, x, w_q, b_q, w_k, b_k, w_v, b_v):
    """One head on its own: plain (L, D) projections in x's dtype (as the layer computes them),
    attention called on (1, L, D)."""
    q, k, v = ((x @ w + b).astype(x.dtype) for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v)))
    return run(impl, q[..., None, :, :], k[..., None, :, :], v[..., None, :, :], {}).out[
        ..., 0, :, :
    ]


def _heads_by_hand(impl, case, x, params):
    """Each query head h run alone with kv head h // G, concatenated, then projected."""
    Dk, Dv, group = case.head_dim, case.value_head_dim, case.num_heads // case.num_kv_heads
    outs = []
    for h in range(case.num_heads):
        g = h // group
        outs.append(
            _single_head(
                impl,
                x,
                params.w_q[:, h * Dk : (h + 1) * Dk],
                params.b_q[h * Dk : (h + 1) * Dk],
                params.w_k[:, g * Dk : (g + 1) * Dk],
                params.b_k[g * Dk : (g + 1) * Dk],
                params.w_v[:, g * Dv : (g + 1) * Dv],
                params.b_v[g * Dv : (g + 1) * Dv],
            )
        )
    return (np.concatenate(outs, axis=-1) @ params.w_o + params.b_o).astype(x.dtype)


@invariant(
    id="ATT-H1",
    title="One head equals multi-head attention with h = 1",
    level=MUST,
    requires=(),
    statement="""A multi-head layer with one head gives softmax(QKᵀ/sqrt(Dk))·V·W_o + b_o
        computed directly from the unsplit projections Q = xW_q + b_q, K, V.""",
    formula=r"\mathrm{MHA}_{h=1}(x) = \mathrm{attn}(xW_q + b_q, xW_k + b_k, xW_v + b_v)\,W_o + b_o",
    rationale="""The head split and merge (reshape, transpose) must be the identity for one
        head; a transposed reshape passes many tests with h = 1 only if this is checked.""",
)
def one_head(impl, data):
    case = data.draw(mha_cases(impl.capabilities, max_heads=1), label="layer")
    x, params = case.build()
    layer = multi_head_attention(x, params=params, num_heads=1, attention=impl)
    direct = (
        _single_head(
            impl, x, params.w_q, params.b_q, params.w_k, params.b_k, params.w_v, params.b_v
        )
        @ params.w_o
        + params.b_o
    ).astype(x.dtype)
    atol = 2 * expect_layer(x, params, num_heads=1, num_kv_heads=1).tol
    expect_close("y", layer, direct, atol)


@invariant(
    id="ATT-H2",
    title="h heads equal h single heads, concatenated, then projected",
    level=MUST,
    requires=(),
    statement="""A multi-head layer gives the concatenation of each head's attention, computed
        on its own slice of the projections, times W_o plus b_o. With GQA, query head h uses
        key/value head h // (Hq / Hkv).""",
    formula=r"\mathrm{MHA}(x) = [\,\mathrm{head}_1; \dots; \mathrm{head}_h\,]\,W_o + b_o,\quad "
    r"\mathrm{head}_h = \mathrm{attn}(xW_q^{(h)}, xW_k^{(\lfloor h/G \rfloor)}, "
    r"xW_v^{(\lfloor h/G \rfloor)})",
    rationale="""Heads must not mix: a wrong reshape order (heads and tokens swapped) or a GQA
        mapping by h % Hkv instead of h // G gives plausible numbers that are wrong.""",
)
def heads_are_independent(impl, data):
    case = data.draw(mha_cases(impl.capabilities), label="layer")
    x, params = case.build()
    layer = multi_head_attention(
        x, params=params, num_heads=case.num_heads, num_kv_heads=case.num_kv_heads, attention=impl
    )
    by_hand = _heads_by_hand(impl, case, x, params)
    atol = 2 * expect_layer(x, params, num_heads=case.num_heads, num_kv_heads=case.num_kv_heads).tol
    expect_close("y", layer, by_hand, atol)


@invariant(
    id="ATT-H3",
    title="GQA equals MHA with each key/value head repeated",
    level=MUST,
    requires=("gqa",),
    statement="""Attention with Hkv key/value heads gives the output of attention with each
        key/value head repeated G = Hq / Hkv times in a row (head h uses kv head h // G).""",
    formula=r"\mathrm{attn}(Q, K, V) = "
    r"\mathrm{attn}(Q, \mathrm{repeat}_G(K), \mathrm{repeat}_G(V))",
    rationale="""Grouped-query attention is a memory saving, not a different function. The
        mapping is repeat-interleave (h // G), as in PyTorch, JAX and ONNX >= 1.20; older ONNX
        tiled (h % Hkv), which differs whenever Hkv > 1 and G > 1.""",
)
def gqa_is_repeated_mha(impl, data):
    case = data.draw(cases(impl.capabilities, gqa="always"), label="case")
    q, k, v, options = case.build()
    group = case.Hq // case.Hkv
    grouped = run(impl, q, k, v, options).out
    repeated = run(impl, q, np.repeat(k, group, axis=-3), np.repeat(v, group, axis=-3), options).out
    atol = 2 * reference_expect(q, k, v, impl.semantics, **options).tol.out
    expect_close(
        "out",
        grouped,
        repeated,
        atol,
        how=f"key and value repeated {group} times along the head axis",
    )


def _element_options(options, full, index):
    """The options of batch element `index` alone (masks and bias broadcast, then sliced)."""
    alone = dict(options)
    for name in ("mask", "bias"):
        if name in options:
            alone[name] = np.broadcast_to(options[name], full)[index]
    if "kv_lengths" in options:
        alone["kv_lengths"] = options["kv_lengths"][index]
    return alone


@invariant(
    id="ATT-H4",
    title="Batch elements are independent",
    level=MUST,
    requires=(),
    statement="""Each batch element's output equals that of the element computed alone, and is
        unchanged (within the tolerance model) when the other elements' inputs change.""",
    formula=r"\mathrm{attn}(Q, K, V)_b = \mathrm{attn}(Q_b, K_b, V_b)",
    rationale="""Batching is an implementation detail; a kernel that strides wrongly over the
        batch, or shares a scratch buffer between elements, leaks one sequence into another.""",
)
def batch_independent(impl, data):
    case = data.draw(cases(impl.capabilities, min_batch_dims=1), label="case")
    q, k, v, options = case.build()
    full = (*case.batch, case.Hq, case.Lq, case.Lk)
    index = tuple(data.draw(st.integers(0, size - 1), label="element") for size in case.batch)
    together = run(impl, q, k, v, options).out
    alone = run(impl, q[index], k[index], v[index], _element_options(options, full, index)).out
    atol = 2 * reference_expect(q, k, v, impl.semantics, **options).tol.out
    expect_close(
        f"out of element {index}",
        together[index],
        alone,
        atol,
        how=f"element {index} computed alone",
    )
    others = np.ones(case.batch, dtype=bool)
    others[index] = False
    rng = np.random.default_rng(case.seed + 1)
    q2, k2, v2 = (x.copy(order="K") for x in (q, k, v))  # same memory layout
    for x in (q2, k2, v2):
        x[others] = rng.standard_normal(x[others].shape)
    changed = run(impl, q2, k2, v2, options).out
    want = reference_expect(q, k, v, impl.semantics, **options)
    atol = want.tol.out + reference_expect(q2, k2, v2, impl.semantics, **options).tol.out
    expect_unchanged(
        f"out of element {index}",
        changed[index],
        together[index],
        atol,
        want.out[index],
        how="every other batch element's query, key and value redrawn",
    )
