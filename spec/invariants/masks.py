"""Masks: what a query may not see has no influence on it, and every mask means what it says."""

import numpy as np
from hypothesis import strategies as st
from refattn.spec import oracle
from refattn.spec.checking import expect_close, expect_unchanged, run
from refattn.spec.registry import MUST, SHOULD, invariant
from refattn.spec.strategies import cases, seen_rows
from refattn.spec.tolerance import expect as reference_expect

from refattn.capabilities import combinable


def _no_leak(impl, data, alignment):
    case = data.draw(cases(impl.capabilities, causal=alignment), label="case")
    q, k, v, options = case.build()
    offset = case.Lk - case.Lq if alignment == "bottom_right" else 0
    # Rows i <= last see only keys j <= i + offset <= cut; everything after cut changes.
    cut = data.draw(st.integers(max(0, offset), case.Lk - 1), label="last unchanged key")
    last = min(cut - offset, case.Lq - 1)
    rng = np.random.default_rng(case.seed + 1)
    k2, v2 = k.copy(order="K"), v.copy(order="K")  # same memory layout
    k2[..., cut + 1 :, :] = rng.standard_normal(k2[..., cut + 1 :, :].shape)
    v2[..., cut + 1 :, :] = rng.standard_normal(v2[..., cut + 1 :, :].shape)
    before = run(impl, q, k, v, options).out
    after = run(impl, q, k2, v2, options).out
    want = reference_expect(q, k, v, impl.semantics, **options)
    # rows 0..last, but those that see no key under a semantics other than the spec's (W4's)
    first = np.zeros(case.Lq, dtype=bool)
    first[: last + 1] = True
    rows = seen_rows(q, k, options, impl) & first
    how = f"keys and values after position {cut} redrawn; rows 0..{last} of the two calls compared"
    # Each call errs from the spec's value by at most the tolerance, so the two by twice it.
    expect_unchanged(
        f"out of rows 0..{last}",
        after[rows],
        before[rows],
        2 * want.tol.out,
        want.out[rows],
        how=how,
    )


_NO_LEAK_RATIONALE = """Future tokens leaking into the past is the classic silent bug of
    causal attention: training looks great and inference fails. A hidden key must have no
    influence: the rows are compared within the tolerance model, not bit for bit, because an
    implementation may sum in an order that depends on the length (bit identity is ATT-N3's)."""


@invariant(
    id="ATT-M1",
    title="Causal (top-left) never leaks future tokens",
    level=MUST,
    requires=("causal_top_left",),
    statement="""With causal='top_left', the outputs of rows 0..i are unchanged (within the
        tolerance model) when keys and values after position i change.""",
    formula=r"o_i(K, V) = o_i(K', V') \text{ whenever } "
    r"K_{\le i} = K'_{\le i},\ V_{\le i} = V'_{\le i}",
    rationale=_NO_LEAK_RATIONALE,
)
def causal_top_left_no_leak(impl, data):
    _no_leak(impl, data, "top_left")


@invariant(
    id="ATT-M2",
    title="Causal (bottom-right) never leaks future tokens",
    level=MUST,
    requires=("causal_bottom_right",),
    statement="""With causal='bottom_right', the outputs of rows 0..i are unchanged (within the
        tolerance model) when keys and values after position i + Lk - Lq change.""",
    formula=r"o_i(K, V) = o_i(K', V') \text{ whenever } K_{\le i + L_k - L_q} = "
    r"K'_{\le i + L_k - L_q} \text{ and likewise } V",
    rationale=_NO_LEAK_RATIONALE,
)
def causal_bottom_right_no_leak(impl, data):
    _no_leak(impl, data, "bottom_right")


@invariant(
    id="ATT-M3",
    title="Masking a key equals deleting it",
    level=MUST,
    requires=("mask",),
    statement="""Hiding a set of keys from every query gives the output of attention over the
        other keys alone.""",
    formula=r"\mathrm{attn}(Q, K, V; m_j = [j \notin D]) = "
    r"\mathrm{attn}(Q, K_{\bar D}, V_{\bar D})",
    rationale="""This is what a mask is for (padding, retrieval filters); an implementation
        that masks with a finite penalty or leaves hidden keys in its max or sum breaks it.""",
)
def masking_is_deleting(impl, data):
    # The masked call adds a mask to the case's own options: a bias only if both can be given.
    case = data.draw(
        cases(
            impl.capabilities,
            mask=False,
            bias=combinable(impl.capabilities, "mask", "bias"),
            causal=False,
            window=False,
            kv_lengths=False,
            min_lk=2,
        ),
        label="case",
    )
    q, k, v, options = case.build()
    deleted = data.draw(
        st.sets(st.integers(0, case.Lk - 1), min_size=1, max_size=case.Lk - 1), label="deleted keys"
    )
    keep = np.array([j not in deleted for j in range(case.Lk)])
    masked = run(impl, q, k, v, {**options, "mask": keep}).out
    kept_options = dict(options)
    if "bias" in options and options["bias"].shape[-1] > 1:  # one entry for all keys stays
        kept_options["bias"] = options["bias"][..., keep]
    kept = run(impl, q, k[..., keep, :], v[..., keep, :], kept_options).out
    atol = 2 * reference_expect(q, k, v, impl.semantics, **options).tol.out
    how = f"mask hides keys {sorted(deleted)} vs the same keys deleted from key and value"
    rows = seen_rows(q, k, {**options, "mask": keep}, impl)
    expect_close("out", masked[rows], kept[rows], atol, how=how)


@invariant(
    id="ATT-M4",
    title="A bool mask equals a 0/-inf bias",
    level=MUST,
    requires=("mask", "bias"),
    statement="""A bool mask gives the same output as the additive bias that is 0 where the mask
        is True and -inf where it is False.""",
    formula=r"\mathrm{attn}(\cdot; \text{mask}=m) = \mathrm{attn}(\cdot; \text{bias}=\log m)",
    rationale="""Frameworks accept either form (PyTorch's attn_mask is bool or float); both
        must mean the same thing, including for rows the mask hides entirely.""",
)
def mask_is_bias(impl, data):
    case = data.draw(cases(impl.capabilities, mask="always", bias=False), label="case")
    q, k, v, options = case.build()
    bias_options = dict(options)
    bias_options["bias"] = np.where(bias_options.pop("mask"), 0.0, -np.inf).astype(q.dtype)
    with_mask = run(impl, q, k, v, options).out
    with_bias = run(impl, q, k, v, bias_options).out
    atol = 2 * reference_expect(q, k, v, impl.semantics, **options).tol.out
    how = "bias = where(mask, 0, -inf) in the query's dtype, in place of the mask"
    rows = seen_rows(q, k, options, impl)  # a mask fill is not a -inf bias where rows see nothing
    expect_close("out", with_bias[rows], with_mask[rows], atol, how=how)


def _explicit_equals(impl, data, case, what):
    """The call of `case` vs the same call with causal, window and kv_lengths replaced by one
    explicit bool mask (the case's bias kept: draw one only if mask and bias combine)."""
    q, k, v, options = case.build()
    explicit = {n: x for n, x in options.items() if n not in ("causal", "window", "kv_lengths")}
    # The bias stays a bias; every other mask becomes one explicit bool mask.
    explicit["mask"] = oracle.visibility(q, k, {n: x for n, x in options.items() if n != "bias"})
    got = run(impl, q, k, v, options).out
    want = run(impl, q, k, v, explicit).out
    atol = 2 * reference_expect(q, k, v, impl.semantics, **options).tol.out
    how = f"{what} vs the explicit bool mask of SPEC.md's formula, as mask="
    expect_close("out", got, want, atol, how=how)


@invariant(
    id="ATT-M5",
    title="Causal equals its explicit mask",
    level=MUST,
    requires=("mask", "causal_top_left"),
    statement="""causal='top_left' gives the output of the bool mask j <= i, and
        causal='bottom_right' that of j <= i + Lk - Lq (when the implementation has it).""",
    formula=r"\text{visible}(i, j) \iff j \le i + \text{offset},\quad "
    r"\text{offset} = 0 \text{ (top-left) or } L_k - L_q \text{ (bottom-right)}",
    rationale="""When Lq != Lk the two alignments differ, and frameworks disagree on the default
        (PyTorch and JAX: top-left; decoding with a KV cache: bottom-right). Stating both as
        explicit masks settles which is which.""",
)
def causal_is_explicit(impl, data):
    case = data.draw(
        cases(
            impl.capabilities,
            causal="always",
            mask=False,
            bias=combinable(impl.capabilities, "mask", "bias"),
            window=False,
            kv_lengths=False,
        ),
        label="case",
    )
    _explicit_equals(impl, data, case, f"causal={case.causal!r}")


@invariant(
    id="ATT-M6",
    title="A window equals its explicit mask",
    level=MUST,
    requires=("mask", "window"),
    statement="""window=(left, right) gives the output of the bool mask
        i + offset - left <= j <= i + offset + right (None: unbounded on that side).""",
    formula=r"\text{visible}(i, j) \iff i + \text{offset} - \ell \le j \le i + \text{offset} + r",
    rationale="""Sliding windows are easy to get off by one on either side, and their alignment
        follows the causal one; the explicit mask pins both down.""",
)
def window_is_explicit(impl, data):
    combine = "combined_masks" in impl.capabilities
    case = data.draw(
        cases(
            impl.capabilities,
            window="always",
            mask=False,
            bias=combinable(impl.capabilities, "mask", "bias"),
            causal=combine,
            kv_lengths=False,
        ),
        label="case",
    )
    _explicit_equals(impl, data, case, f"window={case.window!r}, causal={case.causal!r}")


@invariant(
    id="ATT-M7",
    title="kv_lengths equals its explicit mask",
    level=MUST,
    requires=("mask", "kv_lengths"),
    statement="""kv_lengths gives the output of the bool mask j < kv_lengths[b].""",
    formula=r"\text{visible}_b(i, j) \iff j < \ell_b",
    rationale="""Padding lengths are the cheap way to batch sequences of different lengths;
        a length of 0 must give fully masked rows, not NaN.""",
)
def kv_lengths_is_explicit(impl, data):
    combine = "combined_masks" in impl.capabilities
    case = data.draw(
        cases(
            impl.capabilities,
            kv_lengths="always",
            mask=False,
            bias=combinable(impl.capabilities, "mask", "bias"),
            causal=combine,
            window=combine,
        ),
        label="case",
    )
    _explicit_equals(impl, data, case, f"kv_lengths={case.kv_lengths!r}")


@invariant(
    id="ATT-M8",
    title="NaN or Inf in hidden keys and values does not reach the output",
    level=SHOULD,
    requires=("mask",),
    statement="""Rows that see none of a set of keys are unchanged when those keys and their
        values are NaN or Inf.""",
    formula=r"o_i(K, V) = o_i(K', V') \text{ whenever } K, V \text{ and } K', V' "
    r"\text{ differ only at keys hidden from } i",
    rationale="""Uninitialised KV-cache slots past kv_lengths, and future positions under a
        causal mask, often hold garbage. Multiplying a hidden value by weight 0 is not enough:
        0·NaN is NaN. SHOULD, because dense matrix products make this costly to guarantee.""",
)
def nonfinite_hidden_keys(impl, data):
    case = data.draw(cases(impl.capabilities, mask="always"), label="case")
    q, k, v, options = case.build()
    visible = oracle.visibility(q, k, options)
    poisoned = sorted(
        data.draw(st.sets(st.integers(0, case.Lk - 1), min_size=1), label="poisoned keys")
    )
    poison = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="poison")
    k2, v2 = k.copy(order="K"), v.copy(order="K")  # same memory layout
    k2[..., poisoned, :] = poison
    v2[..., poisoned, :] = poison
    clean = run(impl, q, k, v, options).out
    dirty = run(impl, q, k2, v2, options).out
    unaffected = ~visible[..., poisoned].any(axis=-1)  # (B..., Hq, Lq): rows blind to them
    unaffected &= seen_rows(q, k, options, impl)  # rows that see nothing follow their semantics
    want = reference_expect(q, k, v, impl.semantics, **options)
    how = f"keys and values at {poisoned} set to {poison}; rows that see none of them compared"
    expect_unchanged(
        "out of rows that see no poisoned key",
        dirty[unaffected],
        clean[unaffected],
        2 * want.tol.out,
        want.out[unaffected],
        how=how,
    )


@invariant(
    id="ATT-M9",
    title="Masks compose",
    level=MUST,
    requires=("mask", "combined_masks"),
    statement="""Several masks given together hide a key when any one of them hides it: the
        output equals that of one bool mask, the AND of them all.""",
    formula=r"\text{visible} = m \wedge \text{causal} \wedge \text{window} \wedge "
    r"\text{kv\_lengths} \wedge (\text{bias} > -\infty)",
    rationale="""Real calls combine padding, causality, windows and document masks; an
        implementation that applies only the last one, or ORs them, fails here.""",
)
def masks_compose(impl, data):
    case = data.draw(cases(impl.capabilities, mask="always"), label="case")
    _explicit_equals(impl, data, case, "every mask of the case together")
