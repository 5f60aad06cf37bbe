"""Gradients: the backward pass of the Definition, checked in any implementation that can
differentiate (capability backward).

Every property draws a call and the gradients of a loss with respect to its outputs,
L = Σ grad_out·out (+ Σ grad_lse·lse when the implementation returns lse), and asks the
implementation for dQ, dK, dV (and dbias) through `run_backward`.

Sizes: the spec's float64 gradients (oracle.attention_backward) loop over the rows in Python, so
calls are drawn smaller than the forward's: budget 2**14 bounds B·Hq·Lq·Lk·max(Dk, Dv) and
max_len 48 each length, with no long decode keys (`SIZES`): at most a few thousand rows, tens
of milliseconds an example, and still past the 32-row tiles of blocked kernels.
"""

import numpy as np
from hypothesis import strategies as st
from refattn.spec import oracle
from refattn.spec.checking import (
    expect,
    expect_close,
    expect_identical,
    expect_unchanged,
    run,
    run_backward,
)
from refattn.spec.registry import MUST, SHOULD, invariant
from refattn.spec.strategies import cases, upstreams
from refattn.spec.tolerance import DifferenceBound, expect_gradients, gradient_tolerance, mismatch
from refattn.spec.tolerance import expect as reference_expect

NAMES = ("query", "key", "value", "bias")  # AttentionGradients' fields
SIZES = {"budget": 2**14, "max_len": 48, "long_keys": 0}
LOSS = "L = Σ grad_out·out + Σ grad_lse·lse"


def _case(impl, data, **options):
    """A call drawn at the gradients' sizes (see the module docstring)."""
    return data.draw(cases(impl.capabilities, **{**SIZES, **options}), label="case")


def _upstream(impl, data, case, label="upstream", **options):
    """grad_out and grad_lse (None unless drawn; never without lse) for `case`."""
    return data.draw(upstreams(impl.capabilities, **options), label=label).build(case)


def _present(gradients):
    """(name, gradient) for each gradient the call has (the bias's only with a bias)."""
    return [(n, g) for n, g in zip(NAMES, gradients, strict=True) if g is not None]


def _kv_heads(x: np.ndarray, Hkv: int) -> np.ndarray:
    """(B..., Hq, ...) -> (B..., Hkv, ...): summed over each kv head's group of query heads."""
    *batch, Hq = x.shape[: x.ndim - 2]
    return x.reshape(*batch, Hkv, Hq // Hkv, *x.shape[-2:]).sum(axis=len(batch) + 1)


def _seen_by(visible: np.ndarray, rows: np.ndarray, Hkv: int) -> np.ndarray:
    """(B..., Hkv, Lk) bool: key j of kv head g is seen by one of `rows` ((B..., Hq, Lq) bool)
    of the group's query heads."""
    pairs = (visible & rows[..., None]).astype(np.float64)  # (B..., Hq, Lq, Lk)
    return _kv_heads(pairs, Hkv).sum(axis=-2) > 0


def _bias_reached(visible: np.ndarray, rows: np.ndarray, shape) -> np.ndarray:
    """bool in the bias's shape: the entry is broadcast to a visible pair of one of `rows`."""
    pairs = (visible & rows[..., None]).astype(np.float64)
    return oracle.to_bias_shape(pairs, shape) > 0


@invariant(
    id="ATT-G1",
    title="Gradients match the float64 definition within the tolerance model",
    level=MUST,
    requires=("backward",),
    statement="""Over every combination of features the implementation has, its gradients of
        L = Σ grad_out·out (+ Σ grad_lse·lse) with respect to query, key, value and bias are
        within the tolerance model's bound of the spec's float64 gradients on the same inputs,
        in the input dtype (the bias's gradient in the bias's).""",
    formula=r"|dQ - dQ^{\mathrm{ref}}| \le 4\,|\text{scale}|\,\max\big((e_{dX} + "
    r"(L_k + 3)u|dX|)\,|K|\big),\ \text{likewise } dK, dV, d\text{bias}",
    rationale="""The one check that ties a backward pass to the definition: dV = Pᵀ·dO,
        dS = P ⊙ (dP - D + dlse), the softcap's slope, the GQA sums and the bias reduced to its
        shape. The bound is derived like the forward's (see Tolerance model, Gradients), from
        the forward's errors carried through each step of the backward.""",
)
def gradients_match(impl, data):
    """Sizes: SIZES (the oracle's backward loops over rows); upstream entries standard normal,
    a share of them (none, a quarter, all) zero."""
    case = _case(impl, data)
    q, k, v, options = case.build()
    grad_out, grad_lse = _upstream(impl, data, case)
    got = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    want = expect_gradients(q, k, v, grad_out, grad_lse, **options)
    how = f"{LOSS} against the spec's float64 gradients (oracle.attention_backward)"
    for name, gradient in _present(got):
        dtype = options["bias"].dtype if name == "bias" else q.dtype
        expect(
            gradient.dtype == dtype,
            f"d{name}",
            f"dtype {gradient.dtype}, expected {dtype} ({name}'s)",
            how=how,
        )
        expect_close(f"d{name}", gradient, getattr(want, name), getattr(want.tol, name), how=how)


@invariant(
    id="ATT-G2",
    title="Gradients agree with central differences of the implementation's own forward",
    level=MUST,
    requires=("backward", "float64"),
    statement="""In float64, each gradient entry the property picks (two of each of query,
        key, value and a finite bias) is within the finite-difference error bound of the
        central difference of the implementation's own forward, L(x + h) - L(x - h) over 2h:
        the backward differentiates the forward it ships with.""",
    formula=r"\left|\frac{\partial L}{\partial x} - \frac{L(x + h) - L(x - h)}{2h}\right| "
    r"\le 4\,\frac{h^2}{6} \max|L'''| + \frac{E_L}{h} + \text{tol},\quad "
    r"h = \varepsilon^{1/3} \max(|x|, 1)",
    rationale="""Independent of the reference and of the oracle: a backward written against
        a different forward (another scale, mask or softcap convention) can agree with its own
        idea of attention and still not be the derivative of what the implementation computes.
        The bound is derived (Tolerance model, Finite differences): truncation from the
        cumulants of the scores' direction, rounding from the forward's own tolerance.""",
)
def matches_finite_differences(impl, data):
    """Sizes: SIZES, and a few entries only: each costs two forward calls of the
    implementation, and every entry of q, k and v would cost hundreds. float64 alone: in
    float32, h = ε^(1/3) of float32 leaves differences good to about 1e-5, too coarse for a
    check of the derivative's last digits."""
    case = _case(impl, data, dtypes=("float64",))
    q, k, v, options = case.build()
    grad_out, grad_lse = _upstream(impl, data, case)
    got = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    bound = DifferenceBound(q, k, v, grad_out, grad_lse, **options)
    arrays = {"query": q, "key": k, "value": v, "bias": options.get("bias")}
    for name, gradient in _present(got):
        x = np.array(arrays[name], dtype=np.float64)
        finite = np.flatnonzero(np.isfinite(x))  # a -inf bias entry hides a key: not moved
        if finite.size == 0:
            continue
        picks = data.draw(
            st.lists(st.sampled_from(finite.tolist()), min_size=1, max_size=2, unique=True),
            label=f"{name} entries moved",
        )
        for flat in picks:
            index = np.unravel_index(flat, x.shape)
            rows = bound.rows(name, index)
            difference = 0.0  # no row reaches the entry: L does not depend on it
            if rows.any():

                def loss(moved, name=name, rows=rows):
                    given = {"query": q, "key": k, "value": v, **options, name: moved}
                    q2, k2, v2 = (given.pop(n) for n in ("query", "key", "value"))
                    result = run(impl, q2, k2, v2, given, lse=grad_lse is not None)
                    total = np.sum(grad_out[rows] * result.out[rows].astype(np.float64))
                    if grad_lse is not None:
                        total += np.sum(grad_lse[rows] * result.lse[rows].astype(np.float64))
                    return total

                where = np.zeros(x.shape, dtype=bool)
                where[index] = True
                difference = oracle.finite_differences(loss, x, where=where)[index]
            step = oracle.difference_step(x[index])
            expect_close(
                f"d{name}{tuple(int(i) for i in index)}",
                gradient[index],
                difference,
                bound(name, index),
                how=f"the central difference of the implementation's own forward, {LOSS} over "
                f"the {int(rows.sum())} rows the entry reaches, step h = {step:.3g}",
            )


def _hiding_options(impl, data) -> dict:
    """One masking feature the implementation has, always drawn (so that keys are hidden)."""
    caps = impl.capabilities
    claimed = [n for n in ("mask", "bias", "window", "kv_lengths") if n in caps]
    if {"causal_top_left", "causal_bottom_right"} & caps:
        claimed.append("causal")
    if not claimed:
        return {}
    return {data.draw(st.sampled_from(claimed), label="hiding feature"): "always"}


@invariant(
    id="ATT-G3",
    title="Hidden keys get exactly zero gradient",
    level=MUST,
    requires=("backward",),
    statement="""A key hidden from a row (by a mask, the causal or window bounds, kv_lengths or
        a -inf bias) gets exactly nothing from that row in dK and dV: a key hidden from every
        row of its kv head has dK = dV = 0, and a key whose upstream gradients are zero on
        every row that sees it has dK = dV = 0 too. The bias's gradient is exactly 0 at every
        entry that reaches no visible pair (-inf entries included).""",
    formula=r"\neg\,\text{visible}(i, j) \Rightarrow \frac{\partial o_i}{\partial k_j} = "
    r"\frac{\partial o_i}{\partial v_j} = 0,\quad \frac{\partial L}{\partial b_{ij}} = 0",
    rationale="""out_i does not depend on a key hidden from it (ATT-M8), so its derivative is 0,
        exactly: a backward that masks the forward's scores but differentiates through an
        unmasked P, or gives fully masked rows uniform weights, leaks gradient into padding and
        future tokens, which then train. Checked exactly, not within a tolerance: a hidden
        pair's weight is exactly 0, and so is everything it multiplies.""",
)
def hidden_keys_zero(impl, data):
    """Sizes: SIZES; two backward calls, the second with the upstream zeroed on the rows that
    see one drawn key."""
    case = _case(impl, data, **_hiding_options(impl, data))
    q, k, v, options = case.build()
    grad_out, grad_lse = _upstream(impl, data, case)
    visible = oracle.visibility(q, k, options)
    every_row = np.ones(visible.shape[:-1], dtype=bool)
    seen = _seen_by(visible, every_row, case.Hkv)  # (B..., Hkv, Lk)
    got = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    how = "keys hidden from every row of their kv head"
    for name in ("key", "value"):
        part = getattr(got, name)[~seen]
        expect_close(f"d{name} of hidden keys", part, np.zeros(part.shape), 0.0, how=how)
    if got.bias is not None:
        unreached = ~_bias_reached(visible, every_row, options["bias"].shape)
        part = got.bias[unreached]
        how = "bias entries broadcast to no visible pair (-inf ones included)"
        expect_close("dbias of hidden pairs", part, np.zeros(part.shape), 0.0, how=how)
    # A key some rows see and others do not: zero the upstream of those that see it, and the
    # rows it is hidden from are the only ones left to reach it.
    hidden_somewhere = _seen_by(~visible, every_row, case.Hkv)
    candidates = [tuple(int(i) for i in x) for x in np.argwhere(seen & hidden_somewhere)]
    if not candidates:
        return
    *batch, g, j = data.draw(st.sampled_from(candidates), label="key (batch..., kv head, j)")
    group = slice(g * (case.Hq // case.Hkv), (g + 1) * (case.Hq // case.Hkv))
    seeing = np.zeros(visible.shape[:-1], dtype=bool)
    seeing[(*batch, group)] = visible[(*batch, group, slice(None), j)]
    grad_out = np.where(seeing[..., None], 0, grad_out).astype(grad_out.dtype)
    if grad_lse is not None:
        grad_lse = np.where(seeing, 0, grad_lse).astype(grad_lse.dtype)
    got = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    index = (*batch, g, j)
    how = (
        f"grad_out (and grad_lse) zeroed on the {int(seeing.sum())} rows that see key {index}: "
        "only the rows it is hidden from have upstream left"
    )
    for name in ("key", "value"):
        part = getattr(got, name)[index]
        expect_close(f"d{name}{index}", part, np.zeros(part.shape), 0.0, how=how)


@invariant(
    id="ATT-G4",
    title="Fully masked rows give zero dQ and no NaN",
    level=MUST,
    requires=("backward", "mask"),
    statement="""A query that may see no key gets dQ exactly 0, whatever its upstream
        gradients, and no gradient of the call (dQ, dK, dV, dbias) holds a NaN or an Inf.""",
    formula=r"\forall j\, \neg\,\text{visible}(i, j) \Rightarrow dq_i = 0,\quad "
    r"dQ, dK, dV, d\text{bias} \text{ finite}",
    rationale="""A fully masked row's out is 0 and its lse -inf whatever its inputs (ATT-W4): a
        constant, whose derivative is 0. A backward that divides by the row's zero sum, or
        subtracts its -inf lse (exp(-inf - -inf)), returns NaN there, and one NaN in dK or dV
        reaches every parameter at the next optimiser step.""",
)
def fully_masked_rows_zero(impl, data):
    """Sizes: SIZES; the rows drawn are hidden by the mask, as in ATT-W4."""
    case = _case(impl, data, mask="always")
    q, k, v, options = case.build()
    full = (*case.batch, case.Hq, case.Lq, case.Lk)
    rows = sorted(data.draw(st.sets(st.integers(0, case.Lq - 1), min_size=1), label="hidden rows"))
    mask = np.broadcast_to(options["mask"], full).copy()
    mask[..., rows, :] = False
    options["mask"] = mask
    grad_out, grad_lse = _upstream(impl, data, case)
    got = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    how = f"mask broadcast to {full}, then mask[..., {rows}, :] = False"
    part = got.query[..., rows, :]
    expect_close("dq of fully masked rows", part, np.zeros(part.shape), 0.0, how=how)
    for name, gradient in _present(got):
        bad = ~np.isfinite(gradient.astype(np.float64))
        where = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None
        expect(
            where is None,
            f"d{name}",
            f"{gradient[where] if where else ''} at {where}, from finite inputs",
            how=how,
            got=gradient,
        )


@invariant(
    id="ATT-G5",
    title="A row's bias gradient sums to its lse gradient",
    level=MUST,
    requires=("backward", "bias"),
    statement="""Summed over the keys, the bias's gradient gives grad_lse: Σ_j dbias_ij =
        grad_lse_i for a row that sees a key, 0 for one that sees none, and 0 for every row
        when only out is differentiated; a bias broadcast over rows, heads or batch sums those
        rows' values.""",
    formula=r"\sum_j \frac{\partial L}{\partial b_{ij}} = \sum_j dS_{ij} = "
    r"\frac{\partial L}{\partial \mathrm{lse}_i}",
    rationale="""The gradient twin of ATT-A5: adding c to every score of row i leaves out
        unchanged and moves lse_i by c, so the softmax's Jacobian rows sum to 0 and dS's to
        grad_lse. A backward that forgets the lse's share (dS = P ⊙ (dP - D) alone), or
        subtracts a wrong D, breaks it; it is the bias gradient that shows it.""",
)
def bias_rows_sum_to_lse(impl, data):
    """Sizes: SIZES; the bias is always drawn, broadcast or not."""
    case = _case(impl, data, bias="always")
    q, k, v, options = case.build()
    grad_out, grad_lse = _upstream(impl, data, case)
    got = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    shape = options["bias"].shape
    sums = got.bias.astype(np.float64).sum(axis=-1)
    sees = np.isfinite(reference_expect(q, k, v, **options).lse)  # rows that see a key
    d_lse = np.zeros(sees.shape) if grad_lse is None else grad_lse.astype(np.float64)
    want = oracle.to_bias_shape(np.where(sees, d_lse, 0.0)[..., None], (*shape[:-1], 1))[..., 0]
    tol = gradient_tolerance(q, k, v, grad_out, grad_lse, **options).bias
    terms = np.abs(got.bias.astype(np.float64)).sum(axis=-1)
    atol = shape[-1] * tol + shape[-1] * 2.0**-52 * float(terms.max(initial=0))
    how = "Σ_j dbias[..., j] against grad_lse summed to the bias's shape over rows that see a key"
    expect_close("row sums of dbias", sums, want, atol, how=how)


@invariant(
    id="ATT-G6",
    title="dV is the weights times dO",
    level=MUST,
    requires=("backward",),
    statement="""The value gradient is Pᵀ·dO, summed over each kv head's group of query heads,
        with the implementation's own weights when it returns them (else the spec's).""",
    formula=r"dV = P^{\mathsf T} \cdot dO",
    rationale="""out = P·V is linear in V, so dV holds no V at all; it is where the forward
        and the backward must agree on the weights. A backward that recomputes P with another
        scale, mask or normalisation than the forward used shows it here first.""",
)
def value_gradient_is_weights(impl, data):
    """Sizes: SIZES; one backward call and, with weights, one forward call."""
    case = _case(impl, data)
    q, k, v, options = case.build()
    grad_out, grad_lse = _upstream(impl, data, case)
    got = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    tol = gradient_tolerance(q, k, v, grad_out, grad_lse, **options).value
    d_out = grad_out.astype(np.float64)
    if "weights" in impl.capabilities:
        weights = run(impl, q, k, v, options, weights=True).weights.astype(np.float64)
        # Each weight errs by at most tol.weights, and dV_jd sums G·Lq of them times |dO_id|.
        reach = _kv_heads(np.swapaxes(np.ones(weights.shape), -1, -2) @ np.abs(d_out), case.Hkv)
        tol += reference_expect(q, k, v, **options).tol.weights * float(reach.max(initial=0))
        how = "Pᵀ·dO with the implementation's own weights"
    else:
        weights = reference_expect(q, k, v, **options).weights
        how = "Pᵀ·dO with the spec's weights"
    want = _kv_heads(np.swapaxes(weights, -1, -2) @ d_out, case.Hkv)
    expect_close("dv", got.value, want, tol, how=how)


_MULTIPLES = (1.0, -1.0, 2.0, -2.0, 0.5, -0.5)  # powers of 2: a·dO1 + b·dO2 stays exact


@invariant(
    id="ATT-G7",
    title="Gradients are linear in the upstream gradients",
    level=MUST,
    requires=("backward",),
    statement="""The gradients for a·grad_out1 + b·grad_out2 (and a·grad_lse1 + b·grad_lse2) are
        a times those for the first plus b times those for the second.""",
    formula=r"\nabla(a\,dO_1 + b\,dO_2) = a\,\nabla(dO_1) + b\,\nabla(dO_2)",
    rationale="""A backward pass is a vector-Jacobian product: the Jacobian is fixed by the
        inputs, the upstream only multiplies it. A kernel that clips, rescales or caches
        something of dO (a stale D_i, a dO tile reused across calls) is not linear in it. The
        upstreams are multiples of 1/16 within ±4 and a, b powers of 2, so the combination is
        exact in every dtype and the tolerance is the three calls' own.""",
)
def linear_in_upstream(impl, data):
    """Sizes: SIZES; three backward calls."""
    case = _case(impl, data)
    q, k, v, options = case.build()
    with_lse = "lse" in impl.capabilities and data.draw(st.booleans(), label="grad_lse")
    lse = "always" if with_lse else False
    first = _upstream(impl, data, case, "first upstream", lse=lse, step=1 / 16)
    second = _upstream(impl, data, case, "second upstream", lse=lse, step=1 / 16)
    a = data.draw(st.sampled_from(_MULTIPLES), label="a")
    b = data.draw(st.sampled_from(_MULTIPLES), label="b")

    def combined(x, y):
        return None if x is None else (a * x + b * y).astype(x.dtype)

    both = (combined(first[0], second[0]), combined(first[1], second[1]))
    grads = [run_backward(impl, q, k, v, options, *up) for up in (first, second, both)]
    tols = [gradient_tolerance(q, k, v, *up, **options) for up in (first, second, both)]
    how = f"a = {a}, b = {b}: the call with a·dO1 + b·dO2 against a·(first) + b·(second)"
    for name, got in _present(grads[2]):
        one, two = (getattr(g, name).astype(np.float64) for g in grads[:2])
        t1, t2, t3 = (getattr(t, name) for t in tols)
        expect_close(f"d{name}", got, a * one + b * two, t3 + abs(a) * t1 + abs(b) * t2, how=how)


@invariant(
    id="ATT-G8",
    title="A GQA head's dK and dV sum its group's",
    level=MUST,
    requires=("backward", "gqa"),
    statement="""With Hkv < Hq, the gradients equal those of the same call with each key/value
        head repeated G = Hq / Hkv times, the repeated heads' dK and dV summed over each
        group: the implementation compared with itself.""",
    formula=r"dK_g = \sum_{h = gG}^{gG + G - 1} dK^{\mathrm{rep}}_h,\quad "
    r"dV_g = \sum_{h} dV^{\mathrm{rep}}_h",
    rationale="""A kv head serves G query heads, so its gradient is the sum of theirs (the
        transpose of repeat is a sum). Averaging instead of summing, or summing with the tiled
        mapping h % Hkv where the forward repeats by h // G, passes every MHA test.""",
)
def gqa_gradients_sum(impl, data):
    """Sizes: SIZES; two backward calls, the second with G times the kv heads."""
    case = _case(impl, data, gqa="always")
    q, k, v, options = case.build()
    grad_out, grad_lse = _upstream(impl, data, case)
    G = case.Hq // case.Hkv
    k_rep, v_rep = (np.repeat(x, G, axis=-3) for x in (k, v))
    got = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    rep = run_backward(impl, q, k_rep, v_rep, options, grad_out, grad_lse)
    tol = gradient_tolerance(q, k, v, grad_out, grad_lse, **options)
    tol_rep = gradient_tolerance(q, k_rep, v_rep, grad_out, grad_lse, **options)
    how = f"key and value repeated {G} times (head h uses kv head h // {G}), summed back"
    for name, gradient in _present(got):
        other = getattr(rep, name).astype(np.float64)
        repeated = name in ("key", "value")
        want = _kv_heads(other, case.Hkv) if repeated else other
        atol = getattr(tol, name) + (G if repeated else 1) * getattr(tol_rep, name)
        expect_close(f"d{name}", gradient, want, atol, how=how)


@invariant(
    id="ATT-G9",
    title="NaN or Inf in hidden keys and values does not reach any gradient",
    level=SHOULD,
    requires=("backward", "mask"),
    statement="""Setting keys and values that some rows cannot see to NaN or Inf changes
        neither those rows' dQ, nor dK and dV of the keys only they see, nor the bias gradient
        of their pairs.""",
    formula=r"\nabla L(K, V) = \nabla L(K', V') \text{ where no row that sees a changed key "
    r"reaches}",
    rationale="""The gradient twin of ATT-M8: uninitialised KV-cache slots and padding hold
        garbage, and a backward that multiplies them by a zero weight or a zero dS (0·NaN)
        spreads NaN into the gradients of clean rows and keys. SHOULD, as ATT-M8: dense matrix
        products make it costly to guarantee.""",
)
def nonfinite_hidden_keys_gradients(impl, data):
    """Sizes: SIZES; two backward calls, the second with the poisoned keys."""
    case = _case(impl, data, mask="always")
    q, k, v, options = case.build()
    grad_out, grad_lse = _upstream(impl, data, case)
    visible = oracle.visibility(q, k, options)
    poisoned = sorted(
        data.draw(st.sets(st.integers(0, case.Lk - 1), min_size=1), label="poisoned keys")
    )
    poison = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="poison")
    k2, v2 = k.copy(order="K"), v.copy(order="K")  # same memory layout
    k2[..., poisoned, :] = poison
    v2[..., poisoned, :] = poison
    clean = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    dirty = run_backward(impl, q, k2, v2, options, grad_out, grad_lse)
    tol = gradient_tolerance(q, k, v, grad_out, grad_lse, **options)
    touched = visible[..., poisoned].any(axis=-1)  # (B..., Hq, Lq): rows that see one of them
    unaffected = {
        "query": ~touched,
        "key": ~_seen_by(visible, touched, case.Hkv),
        "value": ~_seen_by(visible, touched, case.Hkv),
    }
    if clean.bias is not None:
        unaffected["bias"] = ~_bias_reached(visible, touched, options["bias"].shape)
    how = (
        f"keys and values at {poisoned} set to {poison}; the gradients no row that sees one "
        "of them reaches compared"
    )
    for name, where in unaffected.items():
        second, first = getattr(dirty, name)[where], getattr(clean, name)[where]
        atol = 2 * getattr(tol, name)  # each call within tol of the spec's value
        if mismatch(second, first, atol) is None:
            continue
        want = expect_gradients(q, k, v, grad_out, grad_lse, **options)  # for the report
        expect_unchanged(
            f"d{name} out of the poisoned keys' reach",
            second,
            first,
            atol,
            getattr(want, name)[where],
            how=how,
        )


@invariant(
    id="ATT-G10",
    title="Identical backward calls give identical gradients",
    level=SHOULD,
    requires=("backward",),
    statement="""Two backward calls with the same inputs, options and upstream gradients
        return bit-for-bit the same gradients.""",
    formula=r"\nabla L(x) \equiv \nabla L(x)",
    rationale="""Reproducible training and gradient checks rely on it. SHOULD, as ATT-N3:
        backward kernels often accumulate dK and dV with atomics across query blocks, whose
        order, and so whose rounding, changes from run to run.""",
)
def deterministic_gradients(impl, data):
    """Sizes: SIZES; two backward calls."""
    case = _case(impl, data)
    q, k, v, options = case.build()
    grad_out, grad_lse = _upstream(impl, data, case)
    first = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    second = run_backward(impl, q, k, v, options, grad_out, grad_lse)
    for name, gradient in _present(first):
        expect_identical(f"d{name}", getattr(second, name), gradient, how="the same call twice")
