"""Composition: pieces of attention put together give attention."""

import numpy as np
from hypothesis import strategies as st
from refattn.spec import oracle
from refattn.spec.checking import expect_close, run
from refattn.spec.registry import MUST, invariant
from refattn.spec.strategies import cases, mha_cases, seen_rows
from refattn.spec.tolerance import OUTPUT_ROUNDING, expect_layer
from refattn.spec.tolerance import expect as reference_expect

from refattn.mha import KVCache, multi_head_attention


def _chunk_options(options, start, stop):
    """The options of keys [start, stop): masks and bias sliced, lengths shifted and clipped."""
    chunk = dict(options)
    for name in ("mask", "bias"):
        if name in options and options[name].shape[-1] > 1:
            chunk[name] = options[name][..., start:stop]
    if "kv_lengths" in options:
        chunk["kv_lengths"] = np.clip(options["kv_lengths"] - start, 0, stop - start)
    return chunk


@invariant(
    id="ATT-C1",
    title="Split-KV attention merged with lse equals full attention",
    level=MUST,
    requires=("lse",),
    statement="""Attention over disjoint chunks of the keys, merged with each chunk's lse, gives
        the output and lse of attention over all the keys.""",
    formula=r"\mathrm{lse} = \log\sum_c e^{\mathrm{lse}_c},\quad "
    r"o = \sum_c e^{\mathrm{lse}_c - \mathrm{lse}}\, o_c",
    rationale="""The basis of split-KV decoding, ring attention and FlashAttention's own
        tiling. It needs a correct lse, and fully masked chunks giving 0 and -inf.""",
)
def split_kv_merges(impl, data):
    case = data.draw(cases(impl.capabilities, causal=False, window=False, min_lk=2), label="case")
    q, k, v, options = case.build()
    cuts = sorted(
        data.draw(
            st.sets(st.integers(1, case.Lk - 1), min_size=1, max_size=4), label="chunk boundaries"
        )
    )
    bounds = list(zip([0, *cuts], [*cuts, case.Lk], strict=True))
    outs, lses = [], []
    for start, stop in bounds:
        part = run(
            impl,
            q,
            k[..., start:stop, :],
            v[..., start:stop, :],
            _chunk_options(options, start, stop),
            lse=True,
        )
        outs.append(part.out)
        lses.append(part.lse)
    out, lse = oracle.merge(outs, lses)
    want = reference_expect(q, k, v, impl.semantics, **options)
    largest_v = float(np.abs(v.astype(np.float64)).max(initial=0))
    # Each chunk's out is rounded to the output dtype before the merge, which rounds again.
    rounding = OUTPUT_ROUNDING[case.dtype] * largest_v
    atol = want.tol.out + 4 * want.tol.lse * largest_v + rounding
    how = f"keys split at {cuts}, chunks merged with the lse formula above (in float64)"
    rows = seen_rows(q, k, options, impl)
    if impl.semantics.fully_masked == "nan":  # a chunk in which a row sees nothing is NaN
        for start, stop in bounds:
            chunk = _chunk_options(options, start, stop)
            rows &= seen_rows(q, k[..., start:stop, :], chunk, impl)
    expect_close("merged out", out[rows], want.out[rows], atol, how=how)
    expect_close("merged lse", lse[rows], want.lse[rows], 2 * want.tol.lse, how=how)


@invariant(
    id="ATT-C2",
    title="KV-cache decoding equals causal attention",
    level=MUST,
    requires=("causal_top_left",),
    statement="""Feeding a sequence to a multi-head layer piece by piece, with a KV cache,
        gives the outputs of the whole sequence under a causal mask. Pieces are single tokens,
        or longer when the implementation has bottom-right causal masks.""",
    formula=r"\mathrm{MHA}(x_{t}; \text{cache } x_{<t}) = \mathrm{MHA}_{\text{causal}}(x)_t",
    rationale="""Incremental decoding must reproduce training-time attention; a cache that
        drops, repeats or misaligns a token, or a top-left mask on the new queries, breaks it.""",
)
def kv_cache_is_causal(impl, data):
    layer = data.draw(mha_cases(impl.capabilities), label="layer")
    x, params = layer.build()
    heads = {"num_heads": layer.num_heads, "num_kv_heads": layer.num_kv_heads}
    if layer.L == 1:
        cuts = []
    elif "causal_bottom_right" in impl.capabilities:
        cuts = sorted(
            data.draw(st.sets(st.integers(1, layer.L - 1), max_size=4), label="piece starts")
        )
    else:
        cuts = list(range(1, layer.L))
    whole = multi_head_attention(x, params=params, causal=True, attention=impl, **heads)
    cache = KVCache()
    pieces = [
        multi_head_attention(
            x[..., start:stop, :],
            params=params,
            causal=True,
            kv_cache=cache,
            attention=impl,
            **heads,
        )
        for start, stop in zip([0, *cuts], [*cuts, layer.L], strict=True)
    ]
    atol = 2 * expect_layer(x, params, causal=True, **heads).tol
    expect_close(
        "y",
        np.concatenate(pieces, axis=-2),
        whole,
        atol,
        how=f"x fed in pieces starting at {[0, *cuts]} with a KVCache, vs causal=True",
    )


@invariant(
    id="ATT-C3",
    title="Softcap equals attention on capped scores",
    level=MUST,
    requires=("softcap",),
    statement="""With softcap c, the output is that of softmax over c·tanh(s/c) + bias, with
        s = scale·q·k: the cap comes after the scale and before the bias and the masks.""",
    formula=r"s_{ij} = c \tanh\!\left(\frac{\text{scale}\; q_i \cdot k_j}{c}\right) + b_{ij}",
    rationale="""Gemma-2 and Grok cap attention logits; where the cap sits relative to the
        scale, the bias and the mask changes the result, and implementations disagree.""",
)
def softcap_caps_scores(impl, data):
    case = data.draw(cases(impl.capabilities, softcap="always"), label="case")
    q, k, v, options = case.build()
    want = oracle.softmax_attention(
        oracle.scores(q, k, options), oracle.visibility(q, k, options), v
    ).out
    atol = reference_expect(q, k, v, impl.semantics, **options).tol.out
    got = run(impl, q, k, v, options).out
    expect_close(
        "out",
        got,
        want,
        atol,
        how="expected softmax(c·tanh(scale·q·k/c) + bias)·v from the spec's own scores",
    )
