"""Shapes: what comes out, for every size including zero."""

from refattn.spec.checking import expect, expect_close, run
from refattn.spec.registry import MUST, invariant
from refattn.spec.strategies import cases
from refattn.spec.tolerance import expect as reference_expect


@invariant(
    id="ATT-D1",
    title="Output shape and dtype",
    level=MUST,
    requires=(),
    statement="""out has shape (B..., Hq, Lq, Dv) and the query's dtype; lse (B..., Hq, Lq) and
        weights (B..., Hq, Lq, Lk), in a float dtype, when returned.""",
    formula=r"\text{out} \in \mathbb{R}^{B \times H_q \times L_q \times D_v}",
    rationale="""Callers reshape and concatenate outputs without looking; a silently promoted
        dtype (float32 in, float64 out) doubles memory and hides precision bugs.""",
)
def output_shape_and_dtype(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v, options = case.build()
    caps = impl.capabilities
    got = run(impl, q, k, v, options, lse="lse" in caps, weights="weights" in caps)
    rows = (*case.batch, case.Hq, case.Lq)
    expect(
        got.out.shape == (*rows, case.Dv),
        "out.shape",
        f"{got.out.shape}, expected {(*rows, case.Dv)}",
    )
    expect(
        got.out.dtype == q.dtype,
        "out.dtype",
        f"{got.out.dtype}, expected {q.dtype}",
    )
    for name, array, shape in (("lse", got.lse, rows), ("weights", got.weights, (*rows, case.Lk))):
        if array is not None:
            expect(
                array.shape == shape,
                f"{name}.shape",
                f"{array.shape}, expected {shape}",
            )
            expect(
                array.dtype.kind == "f",
                f"{name}.dtype",
                f"{array.dtype}, expected a float",
            )


@invariant(
    id="ATT-D2",
    title="No queries give an empty output",
    level=MUST,
    requires=("empty",),
    statement="""With Lq = 0 the output is an empty (B..., Hq, 0, Dv) array, not an error.""",
    formula=r"L_q = 0 \Rightarrow \text{out} \in \mathbb{R}^{B \times H_q \times 0 \times D_v}",
    rationale="""Empty batches happen at the edges of data pipelines and in chunked decoding;
        a kernel must not read or write out of bounds on them.""",
)
def no_queries(impl, data):
    case = data.draw(cases(impl.capabilities, min_lq=0, max_lq=0), label="case")
    q, k, v, options = case.build()
    out = run(impl, q, k, v, options).out
    shape = (*case.batch, case.Hq, 0, case.Dv)
    expect(out.shape == shape, "out.shape", f"{out.shape}, expected {shape}")


@invariant(
    id="ATT-D3",
    title="No keys give fully masked rows",
    level=MUST,
    requires=("empty",),
    statement="""With Lk = 0 every row sees no key: output 0, and lse -inf when returned.""",
    formula=r"L_k = 0 \Rightarrow o_i = 0,\ \mathrm{lse}_i = -\infty",
    rationale="""An empty KV cache or an empty context is a fully masked row by definition;
        it must follow the same rule (ATT-W4), not return NaN from 0/0.""",
)
def no_keys(impl, data):
    case = data.draw(
        cases(impl.capabilities, min_lk=0, max_lk=0, mask=False, bias=False), label="case"
    )
    q, k, v, options = case.build()
    got = run(impl, q, k, v, options, lse="lse" in impl.capabilities)
    want = reference_expect(q, k, v, impl.semantics, **options)  # 0 and -inf, or its semantics'
    expect_close("out", got.out, want.out, 0.0)
    if got.lse is not None:
        expect_close("lse", got.lse, want.lse, 0.0)
