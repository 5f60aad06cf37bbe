"""Scaling: the default 1/sqrt(Dk), and the two limits of the scale."""

import math

import numpy as np
from hypothesis import strategies as st
from refattn.spec import oracle
from refattn.spec.cases import Case
from refattn.spec.checking import expect, expect_close, run
from refattn.spec.registry import MUST, invariant
from refattn.spec.strategies import DTYPES, cases, option_float
from refattn.spec.tolerance import expect as reference_expect

# ATT-S1's sample: L queries against L keys of unit-variance entries.
VARIANCE_L = 256
VARIANCE_BOUND = 0.25


@invariant(
    id="ATT-S1",
    title="1/sqrt(Dk) keeps the score variance near 1",
    level=MUST,
    requires=("weights",),
    statement=f"""With i.i.d. unit-variance query and key entries and the default scale, the
        scores have variance 1: the mean over rows of the sample variance of a row's scores
        (read off the log-weights) is within {VARIANCE_BOUND} of 1, for L = {VARIANCE_L}
        queries and keys and Dk in 16, 64, 128.""",
    formula=r"\operatorname{Var}\!\left(\frac{q \cdot k}{\sqrt{D_k}}\right) = "
    r"\frac{1}{D_k}\sum_{d=1}^{D_k} \operatorname{Var}(q_d)\operatorname{Var}(k_d) = 1",
    rationale=f"""Without the scale, scores grow like sqrt(Dk) and the softmax saturates into
        a near one-hot whose gradients vanish (Vaswani et al., 2017). The check is statistical:
        within a row, s_ij - log p_ij is a constant, so the row's sample variance of log p is
        that of its scores, whose mean over rows estimates q'Σk q/Dk with a standard deviation
        below sqrt(2/(L·Dk)) from the keys plus sqrt(2/(L·Dk)) from the queries, 0.044 at
        Dk = 16; the bound {VARIANCE_BOUND} is over 5 of those, so a correct implementation
        fails with probability below 1e-7 per example, while no scale (variance Dk) or 1/Dk
        (variance 1/Dk) fails every time.""",
)
def score_variance(impl, data):
    dtype = data.draw(st.sampled_from([d for d in DTYPES if d in impl.capabilities]), label="dtype")
    Dk = data.draw(st.sampled_from([16, 64, 128]), label="Dk")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    case = Case(Lq=VARIANCE_L, Lk=VARIANCE_L, Dk=Dk, Dv=8, dtype=dtype, seed=seed)
    q, k, v, options = case.build()
    weights = run(impl, q, k, v, options, weights=True).weights.astype(np.float64)
    log_weights = np.log(weights[0])
    expect(
        bool(np.isfinite(log_weights).all()),
        "weights",
        "a weight is 0 or NaN: underflow",
    )
    variance = float(log_weights.var(axis=-1, ddof=1).mean())
    expect(
        abs(variance - 1) <= VARIANCE_BOUND,
        "score variance",
        f"{variance:.3f}, expected 1 ± {VARIANCE_BOUND}",
    )


@invariant(
    id="ATT-S2",
    title="The default scale is 1/sqrt(Dk), not 1/sqrt(Dv)",
    level=MUST,
    requires=("dv",),
    statement="""With a value head dim Dv different from Dk and no scale given, the output is
        that of scale = 1/sqrt(Dk), Dk being the query/key head dim.""",
    formula=r"\text{scale} = 1/\sqrt{D_k},\quad D_k = \text{query.shape}[-1]",
    rationale="""The scale normalises the dot product q·k, a sum of Dk terms; Dv plays no part.
        Code that reads the head dim off the value (or off the output) only shows the mistake
        when Dv != Dk.""",
)
def default_scale_uses_dk(impl, data):
    case = data.draw(cases(impl.capabilities, dv="always", scale=False), label="case")
    q, k, v, options = case.build()
    want = reference_expect(q, k, v, impl.semantics, **options)
    got = run(impl, q, k, v, options).out
    expect_close(
        "out",
        got,
        want.out,
        want.tol.out,
        how="no scale given; expected the reference with scale = Dk**-0.5",
    )


@invariant(
    id="ATT-S3",
    title="Scale to zero gives the mean of the visible values",
    level=MUST,
    requires=("scale",),
    statement="""With scale 0 every visible key weighs the same, so each row's output is the
        mean of the values it may see (0 if it sees none); a tiny scale gives nearly that.""",
    formula=r"\lim_{\text{scale}\to 0} o_i = \frac{1}{|V_i|}\sum_{j \in V_i} v_j,\quad "
    r"V_i = \{j : \text{visible}(i, j)\}",
    rationale="""A check of the normalisation that needs no exponentials; it also catches code
        that treats scale=0 as 'not given' (`scale or default`).""",
)
def scale_zero_is_mean(impl, data):
    case = data.draw(cases(impl.capabilities, scale=False, bias=False, softcap=False), label="case")
    scale = option_float(data.draw(st.sampled_from([0.0, 1e-7]), label="scale"), case, impl)
    case = case.replace(scale=scale)
    q, k, v, options = case.build()
    visible = oracle.visibility(q, k, options)
    v64 = np.repeat(v.astype(np.float64), case.Hq // case.Hkv, axis=-3)
    counts = visible.sum(axis=-1, keepdims=True)
    mean = (visible / np.maximum(counts, 1)) @ v64
    want = reference_expect(q, k, v, impl.semantics, **options)
    mean = np.where(counts > 0, mean, want.out)  # a row that sees nothing: 0, or its semantics
    # |scale·s| <= δ moves each weight by a factor within e^{±2δ} of uniform.
    delta = scale * float(np.abs(oracle.scores(q, k, {"scale": 1.0})).max(initial=0))
    atol = want.tol.out + math.expm1(2 * delta) * float(np.abs(v64).max(initial=0))
    got = run(impl, q, k, v, options).out
    expect_close(
        "out",
        got,
        mean,
        atol,
        how="expected the mean of each row's visible values",
    )


SELECT_GAP = 0.1  # rows whose best score leads the runner-up by this much are checked
SELECT_MARGIN = 50.0  # scaled lead: the runner-up weighs at most e^-50 of the best


@invariant(
    id="ATT-S4",
    title="A large scale selects the arg-max key",
    level=MUST,
    requires=("scale",),
    statement=f"""With scale = {SELECT_MARGIN:g}/{SELECT_GAP:g}, a row whose best score q·k leads
        the runner-up by at least {SELECT_GAP:g} outputs the value of its best key.""",
    formula=r"\lim_{\text{scale}\to\infty} o_i = v_{j^*},\quad j^* = \arg\max_j q_i \cdot k_j",
    rationale="""Softmax is a smooth arg-max; at large scale the scores are large and an
        implementation that does not subtract the row maximum overflows to Inf or NaN.""",
)
def large_scale_selects_argmax(impl, data):
    case = data.draw(
        cases(
            impl.capabilities,
            scale=False,
            bias=False,
            softcap=False,
            mask=False,
            causal=False,
            window=False,
            kv_lengths=False,
        ),
        label="case",
    )
    scale = SELECT_MARGIN / SELECT_GAP
    case = case.replace(scale=scale)
    q, k, v, options = case.build()
    dots = oracle.scores(q, k, {"scale": 1.0})
    ranked = np.sort(dots, axis=-1)
    lead = ranked[..., -1] - (ranked[..., -2] if case.Lk > 1 else -np.inf)
    checked = lead >= SELECT_GAP  # (B..., Hq, Lq)
    best = np.argmax(dots, axis=-1)
    v64 = np.repeat(v.astype(np.float64), case.Hq // case.Hkv, axis=-3)
    chosen = np.take_along_axis(v64, best[..., None], axis=-2)  # (B..., Hq, Lq, Dv)
    want = reference_expect(q, k, v, impl.semantics, **options)
    atol = want.tol.out + case.Lk * math.exp(-SELECT_MARGIN) * 2 * float(np.abs(v64).max())
    got = run(impl, q, k, v, options).out
    expect_close(
        "out of rows with a clear best key",
        got[checked],
        chosen[checked],
        atol,
        how=f"scale = {scale:g}; expected v[argmax_j q·k]",
    )
