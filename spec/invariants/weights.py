"""Weights: each row of attention weights is a probability distribution over the visible keys."""

import numpy as np
from hypothesis import strategies as st
from refattn.spec import oracle
from refattn.spec.checking import expect, expect_close, run
from refattn.spec.registry import MUST, invariant
from refattn.spec.strategies import cases
from refattn.spec.tolerance import expect as reference_expect


@invariant(
    id="ATT-W1",
    title="Rows of weights sum to one",
    level=MUST,
    requires=("weights",),
    statement="""In every row that sees at least one key, the attention weights sum to 1.""",
    formula=r"\sum_j p_{ij} = 1 \quad \text{whenever } \exists j: \text{visible}(i, j)",
    rationale="""The output is a weighted average of values only if the weights form a
        distribution; a missing normalisation or a stray masked term shows up here first.""",
)
def rows_sum_to_one(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v, options = case.build()
    got = run(impl, q, k, v, options, weights=True)
    want = reference_expect(q, k, v, impl.semantics, **options)
    seeing = np.isfinite(want.lse)
    sums = got.weights.astype(np.float64).sum(axis=-1)
    atol = 2 * want.tol.weights
    expect_close(
        "row sums of weights (rows that see a key)",
        sums[seeing],
        np.ones(int(seeing.sum())),
        atol,
    )


@invariant(
    id="ATT-W2",
    title="Weights lie in [0, 1]",
    level=MUST,
    requires=("weights",),
    statement="""Every attention weight is at least 0 and at most 1 (up to rounding above 1).""",
    formula=r"0 \le p_{ij} \le 1",
    rationale="""Negative weights or weights above one mean the softmax was not computed as
        exponentials over their sum (a wrong max shift, a sign error, a stale accumulator).""",
)
def weights_in_unit_interval(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v, options = case.build()
    weights = run(impl, q, k, v, options, weights=True).weights.astype(np.float64)
    atol = reference_expect(q, k, v, impl.semantics, **options).tol.weights
    finite = ~np.isnan(weights)
    expect(bool(finite.all()), "weights", "NaN in the weights of finite inputs")
    expect(
        bool((weights >= 0).all()),
        "weights",
        f"smallest weight {weights.min()!r} < 0",
    )
    expect(
        bool((weights <= 1 + atol).all()),
        "weights",
        f"largest weight {weights.max()!r} > 1 + tolerance {atol:.3g}",
    )


@invariant(
    id="ATT-W3",
    title="Masked positions weigh exactly zero",
    level=MUST,
    requires=("weights", "mask"),
    statement="""A key that a query may not see gets weight exactly 0, not merely a small one.""",
    formula=r"\neg\,\text{visible}(i, j) \Rightarrow p_{ij} = 0",
    rationale="""Implementations that mask with a large finite negative (-1e9, finfo.min) leak
        weight exp(-1e9 - m) only if the row's other scores are similar, but they give fully
        masked rows uniform weights and break 'masking a key equals deleting it'.""",
)
def masked_weigh_zero(impl, data):
    case = data.draw(cases(impl.capabilities, mask="always"), label="case")
    q, k, v, options = case.build()
    weights = run(impl, q, k, v, options, weights=True).weights
    hidden = ~oracle.visibility(q, k, options)
    if impl.semantics.fill is not None:
        # A declared finite mask fill: hidden keys weigh exp(fill - max), exactly 0 in a row
        # that sees a key (this invariant then reports that it differs); the rows that see
        # none are ATT-W4's.
        hidden &= oracle.visibility(q, k, options).any(axis=-1, keepdims=True)
    leaked = hidden & (weights != 0)
    if leaked.any():
        index = tuple(int(i) for i in np.argwhere(leaked)[0])
        expect(
            False,
            "weights of hidden keys",
            f"weight {weights[index]!r} at hidden {index}",
        )


@invariant(
    id="ATT-W4",
    title="Fully masked rows give zero output, zero weights and -inf lse",
    level=MUST,
    requires=("mask",),
    statement="""A query that may see no key at all gets output 0, weights 0 and lse -inf.""",
    formula=r"\forall j\, \neg\,\text{visible}(i, j) \Rightarrow o_i = 0,\ p_{i\cdot} = 0,\ "
    r"\mathrm{lse}_i = -\infty",
    rationale="""Softmax over an empty set is undefined, so the spec chooses. 0 is what PyTorch
        (>= 2.5) and ONNX (>= 1.23) return; it is what split-KV merging needs (a chunk in which
        a row sees nothing must contribute nothing); and it is the limit of attending with an
        extra null key whose value is 0. JAX returns the mean of V; older ONNX returned NaN.""",
)
def fully_masked_rows(impl, data):
    case = data.draw(cases(impl.capabilities, mask="always"), label="case")
    q, k, v, options = case.build()
    full = (*case.batch, case.Hq, case.Lq, case.Lk)
    rows = data.draw(st.sets(st.integers(0, case.Lq - 1), min_size=1), label="hidden rows")
    rows = sorted(rows)
    mask = np.broadcast_to(options["mask"], full).copy()
    mask[..., rows, :] = False
    options["mask"] = mask
    how = f"mask broadcast to {full}, then mask[..., {rows}, :] = False"
    caps = impl.capabilities
    got = run(impl, q, k, v, options, lse="lse" in caps, weights="weights" in caps)
    # The spec's choice: 0, 0 and -inf. Under a declared semantics (a mask fill, the mean of V,
    # NaN), what that choice gives: this invariant then reports that it differs.
    want = reference_expect(q, k, v, impl.semantics, **options)
    rows_ = (..., rows, slice(None))
    exact = not impl.semantics.differing()
    atol = 0.0 if exact else want.tol.out
    expect_close("out of fully masked rows", got.out[rows_], want.out[rows_], atol, how=how)
    if got.weights is not None:
        atol = 0.0 if exact else want.tol.weights
        expect_close(
            "weights of fully masked rows",
            got.weights[rows_],
            want.weights[rows_],
            atol,
            how=how,
        )
    if got.lse is not None:
        expect_close(
            "lse of fully masked rows",
            got.lse[..., rows],
            want.lse[..., rows],
            0.0
            if exact
            else np.asarray(np.broadcast_to(want.tol.lse_each, want.lse.shape))[..., rows],
            how=how,
        )
