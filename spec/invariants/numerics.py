"""Numerics: agreement with the float64 reference, stability, determinism, lse and weights."""

import numpy as np
from refattn.spec import oracle
from refattn.spec.checking import expect, expect_close, expect_identical, run
from refattn.spec.registry import MUST, SHOULD, invariant
from refattn.spec.strategies import cases, seen_rows
from refattn.spec.tolerance import expect as reference_expect


@invariant(
    id="ATT-N1",
    title="Matches the float64 reference within the tolerance model",
    level=MUST,
    requires=(),
    statement="""Over every combination of features the implementation has, its output (and
        lse and weights, when it returns them) is within the tolerance model's bound of the
        float64 reference on the same inputs.""",
    formula=r"|o_{id} - o^{\mathrm{ref}}_{id}| \le 4\,\max|v|\,(2E_s + (2L_k + 16)u)",
    rationale="""The one check that ties an implementation to the definition. The bound is
        derived, not tuned (see Tolerance model): a correct kernel in the stated dtype stays
        inside it whatever its tiling or summation order.""",
)
def matches_reference(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v, options = case.build()
    caps = impl.capabilities
    got = run(impl, q, k, v, options, lse="lse" in caps, weights="weights" in caps)
    want = reference_expect(q, k, v, impl.semantics, **options)
    expect_close("out", got.out, want.out, want.tol.out_each)
    if got.lse is not None:
        expect_close("lse", got.lse, want.lse, want.tol.lse)
    if got.weights is not None:
        expect_close("weights", got.weights, want.weights, want.tol.weights)


@invariant(
    id="ATT-N2",
    title="Scores of magnitude 1e4 give finite, correct outputs",
    level=MUST,
    requires=(),
    statement="""With query and key entries of standard deviation 100 (scores near 1e4 in
        magnitude), the output is finite and within the tolerance model of the reference.""",
    formula=r"|s_{ij}| \approx 10^4 \Rightarrow o_i \text{ finite},\ "
    r"|o_i - o^{\mathrm{ref}}_i| \le \text{tol}",
    rationale="""exp(1e4) overflows every float format: an implementation must subtract the
        row maximum (or keep a running one) before exponentiating. The naive formula returns
        Inf/Inf = NaN here.""",
)
def large_scores(impl, data):
    case = data.draw(
        cases(impl.capabilities, magnitudes=(100.0,), scale=False, softcap=False, bias=False),
        label="case",
    )
    q, k, v, options = case.build()
    got = run(impl, q, k, v, options).out
    want = reference_expect(q, k, v, impl.semantics, **options)
    finite = np.isfinite(want.out)
    expect(
        bool(np.isfinite(got[finite]).all()),
        "out",
        "Inf or NaN where the reference is finite",
    )
    expect_close("out", got, want.out, want.tol.out)


@invariant(
    id="ATT-N3",
    title="Identical inputs give identical outputs",
    level=SHOULD,
    requires=(),
    statement="""Two calls with the same inputs and options return bit-for-bit the same
        output (and lse and weights).""",
    formula=r"\mathrm{attn}(x) \equiv \mathrm{attn}(x)",
    rationale="""Reproducibility: debugging, caching and tests rely on it. SHOULD, because
        some parallel reductions are non-deterministic by design. refattn's native core gives
        the same bits for a fixed thread count and across thread counts too (1, 2 and 3
        threads are tested bit for bit): each work item, a query tile or one key chunk of it,
        is reduced by one thread in a fixed order, and the split depends on the shapes alone.
        Its instruction sets (isa=) differ from one another within the tolerance model.""",
)
def deterministic(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v, options = case.build()
    caps = impl.capabilities
    asked = {"lse": "lse" in caps, "weights": "weights" in caps}
    first = run(impl, q, k, v, options, **asked)
    second = run(impl, q, k, v, options, **asked)
    for name, a, b in zip(first._fields, first, second, strict=True):
        if a is not None:
            expect_identical(name, b, a, how="the same call made twice")


@invariant(
    id="ATT-N4",
    title="lse is the log-sum-exp of the visible scores",
    level=MUST,
    requires=("lse",),
    statement="""The returned lse of a row is log Σ_j exp(s_ij) over its visible keys, with s
        the scaled, capped and biased scores; -inf for a row that sees no key.""",
    formula=r"\mathrm{lse}_i = \log \sum_{j \in V_i} e^{s_{ij}}",
    rationale="""lse is what makes partial results mergeable (split-KV, ring attention) and
        what the backward pass needs; it must be the log-normaliser itself, not a max or a
        log-sum of shifted scores.""",
)
def lse_is_logsumexp(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v, options = case.build()
    got = run(impl, q, k, v, options, lse=True)
    s = np.where(oracle.visibility(q, k, options), oracle.scores(q, k, options), -np.inf)
    top = np.max(s, axis=-1, initial=-np.inf)
    shift = np.where(np.isfinite(top), top, 0)
    with np.errstate(divide="ignore"):
        want = shift + np.log(np.exp(s - shift[..., None]).sum(axis=-1))
    semantics = reference_expect(q, k, v, impl.semantics, **options)
    seeing = oracle.visibility(q, k, options).any(axis=-1)
    want = np.where(seeing, want, semantics.lse)  # a row that sees nothing: -inf, or its semantics'
    atol = np.where(seeing, semantics.tol.lse, semantics.tol.lse_each)
    expect_close(
        "lse",
        got.lse,
        want,
        atol,
        how="expected log Σ exp(s) over visible keys, from the spec's own scores",
    )


@invariant(
    id="ATT-N5",
    title="Weights are exp(scores - lse)",
    level=MUST,
    requires=("lse", "weights"),
    statement="""The returned weights equal exp(s_ij - lse_i) at visible keys, with the
        returned lse: the two outputs agree with each other.""",
    formula=r"p_{ij} = e^{s_{ij} - \mathrm{lse}_i}",
    rationale="""The weights and the lse describe one softmax; returning weights from one
        pass and lse from another (say, before and after a rescale) is a real bug class.""",
)
def weights_from_lse(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v, options = case.build()
    got = run(impl, q, k, v, options, lse=True, weights=True)
    visible = oracle.visibility(q, k, options)
    lse = got.lse.astype(np.float64)[..., None]
    with np.errstate(invalid="ignore"):  # -inf - -inf in fully masked rows, hidden anyway
        want = np.where(visible, np.exp(oracle.scores(q, k, options) - lse), 0.0)
    tol = reference_expect(q, k, v, impl.semantics, **options).tol
    rows = seen_rows(q, k, options, impl)  # a row that sees nothing under other semantics: W4's
    expect_close(
        "weights",
        got.weights[rows],
        want[rows],
        tol.weights + tol.lse,
        how="expected exp(s - lse) with the implementation's own lse",
    )
