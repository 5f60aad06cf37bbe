"""The NaN and Inf rules of the Definition (SPEC.md, "NaN and Inf"), one invariant each.

NaN and ±Inf inside query, key and value follow IEEE arithmetic through the definition, over each
row's visible keys only. Each property puts one non-finite number where a chosen row sees it and
compares the outputs of the rows it reaches, NaN and Inf placement included, with the spec's own
value of that call (refattn.spec.oracle follows the same rules). That it reaches no other row is
ATT-M8's, a SHOULD.
"""

import numpy as np
from hypothesis import strategies as st
from refattn.spec import oracle
from refattn.spec.checking import expect, expect_close, run
from refattn.spec.registry import MUST, SHOULD, invariant
from refattn.spec.strategies import cases
from refattn.spec.tolerance import expect as reference_expect


def _weighty(q, k, options):
    """(B..., Hq, Lq, Lk): the visible pairs whose weight is not negligible (above 1e-6), where
    no implementation's underflow decides what reaches the row."""
    visible = oracle.visibility(q, k, options)
    s = np.where(visible, oracle.scores(q, k, options), -np.inf)
    top = s.max(axis=-1, keepdims=True, initial=-np.inf)
    with np.errstate(invalid="ignore"):
        return visible & (s - np.where(np.isfinite(top), top, 0) > np.log(1e-6))


def _a_visible_pair(data, q, k, options, *, weighty=False):
    """(row index (B..., h, i), key j) with key j visible to the row; None if no row sees a key.
    weighty: a key whose weight is not negligible (`_weighty`)."""
    pairs = np.argwhere(_weighty(q, k, options) if weighty else oracle.visibility(q, k, options))
    if not len(pairs):
        return None
    pick = data.draw(st.integers(0, len(pairs) - 1), label="poisoned pair")
    where = tuple(int(x) for x in pairs[pick])
    return where[:-1], where[-1]


def _kv_index(case, row, j):
    """The index of key j in key/value for query row (B..., h, i): kv head h // G."""
    *batch, h, _ = row
    return (*batch, h // (case.Hq // case.Hkv), j)


def _scoring_infinite(case, q, k, row, j, sign):
    """Copies of q and k in which row and key j score sign·inf before the scale: q_i and k_j
    all positive, one coordinate of k_j infinite."""
    q, k = q.copy(), k.copy()
    kv = _kv_index(case, row, j)
    q[row] = np.abs(q[row]) + np.asarray(0.5, q.dtype)
    k[kv] = np.abs(k[kv])
    k[(*kv, 0)] = sign * np.inf
    return q, k


def _reaching(case, q, k, options, row, j, where="key"):
    """The rows the poison reaches: row itself for a query, every row that sees key j (in any
    query head of its kv head's group) for a key or a value. The rows it must not reach are
    ATT-M8's (a SHOULD): they are not compared here."""
    if where == "query":
        rows = np.zeros(oracle.visibility(q, k, options).shape[:-1], dtype=bool)
        rows[row] = True
        return rows
    visible = oracle.visibility(q, k, options)  # (B..., Hq, Lq, Lk)
    *batch, h, _ = row
    group = case.Hq // case.Hkv
    heads = np.zeros(case.Hq, dtype=bool)
    heads[(h // group) * group : (h // group + 1) * group] = True
    rows = np.zeros(visible.shape[:-1], dtype=bool)
    rows[tuple(batch)] = visible[tuple(batch)][..., j] & heads[:, None]
    return rows


def _outputs_match(impl, q, k, v, options, rows, how, *, lse_inf_rows=None):
    """out (and lse and weights, when returned) of `rows` as the spec gives them. In
    `lse_inf_rows`, rows with a +inf score, lse may be NaN or +inf (see ATT-N7)."""
    caps = impl.capabilities
    got = run(impl, q, k, v, options, lse="lse" in caps, weights="weights" in caps)
    want = reference_expect(q, k, v, impl.semantics, **options)
    out_tol = np.broadcast_to(want.tol.out_each, want.out.shape)
    expect_close("out", got.out[rows], want.out[rows], out_tol[rows], how=how)
    if got.lse is not None:
        lse_tol = np.broadcast_to(want.tol.lse_each, want.lse.shape)
        either = rows & np.isnan(want.lse)
        either &= False if lse_inf_rows is None else lse_inf_rows
        limit = got.lse[either]
        expect(
            bool(np.all(np.isnan(limit) | (limit == np.inf))),
            "lse",
            f"lse of a row with a +inf score should be NaN or +inf, but got {limit!r} ({how})",
        )
        rest = rows & ~either
        expect_close("lse", got.lse[rest], want.lse[rest], lse_tol[rest], how=how)
    if got.weights is not None:
        expect_close("weights", got.weights[rows], want.weights[rows], want.tol.weights, how=how)


@invariant(
    id="ATT-N6",
    title="A NaN in a visible query or key makes its rows NaN",
    level=MUST,
    requires=(),
    statement="""A NaN in query row i, or in a key that row i sees, makes row i's output, lse
        and weights (at every key, hidden ones included) NaN. (That it reaches no row that
        cannot see it is ATT-M8.)""",
    formula=r"\exists j \in V_i: s_{ij} = \mathrm{NaN} \Rightarrow "
    r"o_i = \mathrm{NaN},\ \mathrm{lse}_i = \mathrm{NaN},\ p_{i\cdot} = \mathrm{NaN}",
    rationale="""A kernel that turns NaN into zeros (treating the row as fully masked) or drops
        it in a max reduction hides a broken model upstream as plausible numbers; NaN must
        surface where it entered.""",
)
def nan_score_poisons_its_row(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v, options = case.build()
    found = _a_visible_pair(data, q, k, options)
    if found is None:
        return
    row, j = found
    where = data.draw(st.sampled_from(["query", "key"]), label="NaN in")
    d = data.draw(st.integers(0, case.Dk - 1), label="at dim")
    q, k = q.copy(), k.copy()
    if where == "query":
        q[(*row, d)] = np.nan
    else:
        k[(*_kv_index(case, row, j), d)] = np.nan
    rows = _reaching(case, q, k, options, row, j, where)
    _outputs_match(impl, q, k, v, options, rows, f"NaN in the {where} at {row}, key {j}, dim {d}")


@invariant(
    id="ATT-N7",
    title="Infinite scores follow IEEE arithmetic",
    level=SHOULD,
    requires=(),
    statement="""A +inf score at a visible key makes its row's output and weights NaN (the
        softmax shift makes it inf - inf): it does not select its key. Its lse may be NaN (the
        shifted form) or +inf (the log-sum-exp's limit). A -inf score gives its key weight 0,
        but its value still enters the sum (0·Inf and 0·NaN are NaN); a row whose every visible
        score is -inf is fully masked (the spec's choice, as for masked keys).""",
    formula=r"s_{ij} = +\infty \Rightarrow o_i = \mathrm{NaN};\quad "
    r"s_{ij} = -\infty \Rightarrow p_{ij} = 0",
    rationale="""Overflowing scores are a real failure mode (fp16 logits); treating +inf as a
        one-hot selection silently hides it. SHOULD, because fused kernels often clamp scores.""",
)
def infinite_scores(impl, data):
    case = data.draw(cases(impl.capabilities, softcap=False), label="case")
    q, k, v, options = case.build()
    found = _a_visible_pair(data, q, k, options)
    if found is None:
        return
    row, j = found
    sign = data.draw(st.sampled_from([1.0, -1.0]), label="sign of the score")
    flip = 1.0 if options.get("scale", 1.0) >= 0 else -1.0  # a negative scale flips the sign
    q, k = _scoring_infinite(case, q, k, row, j, sign * flip)
    rows = _reaching(case, q, k, options, row, j)
    with np.errstate(invalid="ignore"):
        scores = oracle.scores(q, k, options)
        plus_inf = (oracle.visibility(q, k, options) & (scores == np.inf)).any(axis=-1)
    how = f"score {sign * np.inf} at {row}, key {j}"
    _outputs_match(impl, q, k, v, options, rows, how, lse_inf_rows=plus_inf)


@invariant(
    id="ATT-N8",
    title="NaN or Inf in a visible value reaches its component",
    level=MUST,
    requires=(),
    statement="""NaN in value v_jd makes output component d of every row that sees key j (with a
        weight that is not negligible) NaN; ±Inf makes it ±Inf; the row's other components are
        unchanged.""",
    formula=r"v_{jd} = \mathrm{NaN},\ p_{ij} > 0 \Rightarrow o_{id} = \mathrm{NaN}",
    rationale="""A value is data: whatever it holds must reach the rows that attend to it, and
        only the component it sits in. Dropping it, or spreading it over the row, are both
        bugs of the weighted sum.""",
)
def nonfinite_visible_value(impl, data):
    case = data.draw(cases(impl.capabilities), label="case")
    q, k, v, options = case.build()
    found = _a_visible_pair(data, q, k, options, weighty=True)
    if found is None:
        return
    row, j = found
    poison = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="poison")
    d = data.draw(st.integers(0, case.Dv - 1), label="at component")
    v = v.copy()
    v[(*_kv_index(case, row, j), d)] = poison
    # the rows that see key j with a weight that is not negligible (the others' underflow is
    # the implementation's business: exp of a subnormal weight may round to 0, and 0·Inf is NaN)
    rows = _reaching(case, q, k, options, row, j) & _weighty(q, k, options)[..., j]
    how = f"value of key {j} component {d} set to {poison}"
    _outputs_match(impl, q, k, v, options, rows, how)


@invariant(
    id="ATT-N9",
    title="softcap maps infinite scores to ±softcap",
    level=MUST,
    requires=("softcap",),
    statement="""With a softcap c, a score of ±inf becomes ±c before the bias and the masks: its
        row stays finite, its key weighing as a score of ±c.""",
    formula=r"c \tanh(\pm\infty / c) = \pm c",
    rationale="""Capping exists to keep logits bounded; a cap that lets an infinite score
        through (computing tanh of inf/c badly, or capping after the bias) defeats it.""",
)
def softcap_bounds_infinite_scores(impl, data):
    case = data.draw(cases(impl.capabilities, softcap="always"), label="case")
    q, k, v, options = case.build()
    found = _a_visible_pair(data, q, k, options)
    if found is None:
        return
    row, j = found
    sign = data.draw(st.sampled_from([1.0, -1.0]), label="sign of the score")
    q, k = _scoring_infinite(case, q, k, row, j, sign)
    got = run(impl, q, k, v, options).out
    expect(bool(np.isfinite(got[row]).all()), "out", f"row {row} is not finite: {got[row]!r}")
    rows = _reaching(case, q, k, options, row, j)
    _outputs_match(impl, q, k, v, options, rows, f"score {sign * np.inf} at {row}, key {j}, capped")
