"""The gradients of attention (SPEC.md, "Gradients"): refattn.reference.attention_backward checked
against the spec's own float64 gradients (oracle.attention_backward), against central finite
differences of the spec's forward (oracle.finite_differences of oracle.attention), and against
torch autograd through scaled_dot_product_attention; the hidden-key, fully masked and NaN rules;
the identities gradients obey exactly; the dtypes; bad inputs.

The loss whose gradients these are: L = Σ grad_out·out + Σ grad_lse·lse, the lse of a fully
masked row (-inf, constant) left out.
"""

import inspect

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from refattn.spec import oracle
from refattn.spec.strategies import cases
from refattn.spec.tolerance import mismatch

from refattn.call import AttentionGradients
from refattn.reference import attention, attention_backward

NAMES = AttentionGradients._fields  # query, key, value, bias
# float64 against float64: sums of at most a few dozen terms of size ~1, so the two orders of
# summation differ by ~1e-15; 1e-12 leaves room and still catches any wrong term.
EXACT = 1e-12
# Central differences err by ~ε^(2/3) ≈ 4e-11 times the loss's scale (oracle.finite_differences),
# and up to 100 times that where the softcap or large scores make the third derivative big.
DIFFERENCES = 1e-7


# The calls: sizes (batch, Hq, Hkv, Lq, Lk, Dk, Dv) and options, every option alone and together.


def _mask(shape, density, seed):
    return np.random.default_rng(seed).random(shape) < density


def _bias(shape, seed, hidden=0.0):
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(shape)
    bias[rng.random(shape) < hidden] = -np.inf
    return bias


_ROW_OF_NEG_INF = _bias((2, 2, 3, 5), 3)
_ROW_OF_NEG_INF[0, 1, 2] = -np.inf  # row (0, 1, 2) fully masked by its bias
_ROW_OF_NEG_INF[1, 0, :, 4] = -np.inf  # key 4 hidden from every row of (1, 0)

CALLS = {
    "plain": {},
    "scale": {"scale": 0.7},
    "one-token": {"batch": (), "Hq": 1, "Hkv": 1, "Lq": 1, "Lk": 1},
    "no-batch-dims": {"batch": ()},
    "two-batch-dims": {"batch": (2, 1)},
    "mask": {"mask": _mask((2, 2, 3, 5), 0.6, 1)},
    "mask-broadcast": {"mask": _mask((3, 5), 0.5, 2)},
    "mask-fully-masked-row": {"mask": np.array([True, True, False])[:, None] & np.ones(5, bool)},
    "causal-top-left": {"causal": "top_left"},
    "causal-top-left-lq>lk": {"causal": "top_left", "Lq": 5, "Lk": 3},
    "causal-bottom-right": {"causal": "bottom_right"},
    "causal-bottom-right-lq>lk": {"causal": "bottom_right", "Lq": 5, "Lk": 3},  # rows 0, 1 empty
    "window": {"window": (1, 1)},
    "window-left-bottom-right": {"window": (1, None), "causal": "bottom_right"},
    "kv_lengths": {"kv_lengths": np.array([3, 0])},  # batch 1 sees nothing
    "gqa": {"Hq": 4, "Hkv": 2},
    "mqa": {"Hq": 3, "Hkv": 1},
    "dv": {"Dv": 6},
    "softcap": {"softcap": 1.5, "scale": 2.0},
    "bias-full": {"bias": _bias((2, 2, 3, 5), 4)},
    "bias-keys": {"bias": _bias((5,), 5)},
    "bias-rows": {"bias": _bias((3, 1), 6)},
    "bias-heads": {"bias": _bias((2, 1, 5), 7)},
    "bias-batch": {"bias": _bias((2, 1, 1, 5), 8)},
    "bias-one": {"bias": _bias((1, 1), 9)},
    "bias-broadcast-view": {"bias": np.broadcast_to(_bias((1, 5), 10), (2, 2, 3, 5))},
    "bias-neg-inf": {"bias": _ROW_OF_NEG_INF},
    "grad_lse": {"grad_lse": True},
    "grad_lse-masked": {"grad_lse": True, "causal": "bottom_right", "Lq": 5, "Lk": 3},
    "everything": {
        "batch": (2,),
        "Hq": 4,
        "Hkv": 2,
        "Lq": 4,
        "Lk": 6,
        "Dv": 3,
        "mask": _mask((4, 6), 0.8, 11),
        "bias": _bias((2, 1, 4, 6), 12, hidden=0.2),
        "causal": "bottom_right",
        "window": (3, 1),
        "kv_lengths": np.array([5, 6]),
        "scale": 0.9,
        "softcap": 2.5,
        "grad_lse": True,
    },
    "every-mask-without-softcap": {  # what SDPA can take of "everything"
        "Hq": 4,
        "Hkv": 2,
        "Lq": 4,
        "Lk": 6,
        "Dv": 3,
        "mask": _mask((4, 6), 0.8, 13),
        "bias": _bias((2, 1, 4, 6), 14, hidden=0.2),
        "causal": "bottom_right",
        "window": (3, 1),
        "kv_lengths": np.array([5, 2]),
        "scale": 1.3,
    },
    "empty-queries": {"Lq": 0},
    "empty-keys": {"Lk": 0, "grad_lse": True},
}
SIZES = {"batch": (2,), "Hq": 2, "Hkv": 2, "Lq": 3, "Lk": 5, "Dk": 4, "Dv": None}


def build(name, seed=0):
    """q, k, v, options, grad_out and grad_lse (or None) of CALLS[name], in float64."""
    recipe = {**SIZES, **CALLS[name]}
    sizes = {n: recipe.pop(n) for n in SIZES}
    wants_lse = recipe.pop("grad_lse", False)
    batch, Hq, Hkv, Lq, Lk, Dk = (sizes[n] for n in ("batch", "Hq", "Hkv", "Lq", "Lk", "Dk"))
    Dv = Dk if sizes["Dv"] is None else sizes["Dv"]
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((*batch, Hq, Lq, Dk))
    k = rng.standard_normal((*batch, Hkv, Lk, Dk))
    v = rng.standard_normal((*batch, Hkv, Lk, Dv))
    grad_out = rng.standard_normal((*batch, Hq, Lq, Dv))
    grad_lse = rng.standard_normal((*batch, Hq, Lq)) if wants_lse else None
    return q, k, v, recipe, grad_out, grad_lse


def loss(q, k, v, options, grad_out, grad_lse):
    """L = Σ grad_out·out + Σ grad_lse·lse by the spec's forward, a fully masked row's lse
    (-inf whatever its inputs) left out."""
    forward = oracle.attention(q, k, v, options)
    total = float(np.sum(grad_out * forward.out))
    if grad_lse is not None:
        total += float(np.sum(grad_lse * np.where(forward.lse == -np.inf, 0.0, forward.lse)))
    return total


def finite_difference_gradients(q, k, v, options, grad_out, grad_lse) -> AttentionGradients:
    """∂L/∂q, k, v and bias by central differences; NaN at -inf bias entries (not moved)."""
    fd = oracle.finite_differences
    bias = options.get("bias")
    return AttentionGradients(
        query=fd(lambda x: loss(x, k, v, options, grad_out, grad_lse), q),
        key=fd(lambda x: loss(q, x, v, options, grad_out, grad_lse), k),
        value=fd(lambda x: loss(q, k, x, options, grad_out, grad_lse), v),
        bias=None
        if bias is None
        else fd(
            lambda x: loss(q, k, v, {**options, "bias": x}, grad_out, grad_lse),
            bias,
            where=bias > -np.inf,
        ),
    )


def hidden_bias_entries_are_zero(got, measured, what):
    """A -inf bias entry hides its key, so its gradient is exactly 0; differences cannot move it
    (they leave it NaN): check that, and give `measured` those zeros."""
    if measured.bias is None:
        return measured
    unmeasured = np.isnan(measured.bias)
    assert np.all(got.bias[unmeasured] == 0), f"{what}: dbias at a -inf bias should be 0"
    return measured._replace(bias=np.where(unmeasured, 0.0, measured.bias))


def assert_gradients_close(got, want, atol, what):
    """Every gradient of `got` within atol·(1 + max|want|) of `want`, NaN where it is NaN."""
    assert got._fields == NAMES, f"{what}: got a {type(got).__name__}"
    for name in NAMES:
        g, w = getattr(got, name), getattr(want, name)
        if w is None:
            assert g is None, f"{what}: {name} gradient should be None, but got one"
            continue
        scale = 1 + float(np.nanmax(np.abs(w), initial=0.0))
        problem = mismatch(g, w, atol * scale)
        assert problem is None, f"{what}: d{name}: {problem}"


def largest_difference(got, want) -> float:
    """max |got - want| over every gradient (NaN entries of want not measured)."""
    largest = 0.0
    for g, w in zip(got, want, strict=True):
        if w is not None and w.size:
            largest = max(largest, float(np.nanmax(np.abs(g - w), initial=0.0)))
    return largest


# Against the spec's own gradients and against finite differences: every option.


@pytest.mark.parametrize("name", CALLS)
def test_reference_gradients_equal_the_oracles(name):
    q, k, v, options, grad_out, grad_lse = build(name)
    got = attention_backward(q, k, v, grad_out, grad_lse=grad_lse, **options)
    want = oracle.attention_backward(q, k, v, grad_out, options, grad_lse)
    assert_gradients_close(got, want, EXACT, f"{name}: reference against the oracle")


@pytest.mark.parametrize("name", CALLS)
def test_reference_gradients_equal_finite_differences(name):
    q, k, v, options, grad_out, grad_lse = build(name)
    got = attention_backward(q, k, v, grad_out, grad_lse=grad_lse, **options)
    measured = finite_difference_gradients(q, k, v, options, grad_out, grad_lse)
    measured = hidden_bias_entries_are_zero(got, measured, name)
    assert_gradients_close(got, measured, DIFFERENCES, f"{name}: reference against differences")


def test_the_oracles_gradients_equal_finite_differences():
    """The oracle is checked on its own too: it is where expected gradients will come from."""
    q, k, v, options, grad_out, grad_lse = build("everything", seed=5)
    want = oracle.attention_backward(q, k, v, grad_out, options, grad_lse)
    measured = finite_difference_gradients(q, k, v, options, grad_out, grad_lse)
    measured = hidden_bias_entries_are_zero(want, measured, "oracle")
    assert_gradients_close(want, measured, DIFFERENCES, "oracle against differences")


CAPABILITIES = {
    "float64",
    "mask",
    "bias",
    "causal_top_left",
    "causal_bottom_right",
    "window",
    "kv_lengths",
    "combined_masks",
    "gqa",
    "dv",
    "scale",
    "softcap",
    "float64_options",
    "empty",
}


def drawn_calls(max_len, max_dim, budget):
    """Returns a strategy for float64 calls of every option, with grad_out and grad_lse (or
    None), from the spec's own strategy (refattn.spec.strategies.cases)."""

    @st.composite
    def draw(data):
        case = data(
            cases(
                CAPABILITIES,
                max_len=max_len,
                max_dim=max_dim,
                max_heads=4,
                max_batch_dims=2,
                budget=budget,
                min_lq=0,
                min_lk=0,
            ),
            label="case",
        )
        with_lse = data(st.booleans(), label="grad_lse")
        q, k, v, options = case.build()
        rng = np.random.default_rng(case.seed + 1)
        grad_out = rng.standard_normal((*q.shape[:-1], v.shape[-1]))
        grad_lse = rng.standard_normal(q.shape[:-1]) if with_lse else None
        return case, q, k, v, options, grad_out, grad_lse

    return draw()


@given(drawn_calls(max_len=8, max_dim=8, budget=2**13))
def test_reference_gradients_equal_the_oracles_on_drawn_calls(drawn):
    case, q, k, v, options, grad_out, grad_lse = drawn
    got = attention_backward(q, k, v, grad_out, grad_lse=grad_lse, **options)
    want = oracle.attention_backward(q, k, v, grad_out, options, grad_lse)
    assert_gradients_close(got, want, EXACT, f"{case.code()} (grad_lse: {grad_lse is not None})")


@given(drawn_calls(max_len=5, max_dim=4, budget=2**9))
def test_reference_gradients_equal_finite_differences_on_drawn_calls(drawn):
    case, q, k, v, options, grad_out, grad_lse = drawn
    got = attention_backward(q, k, v, grad_out, grad_lse=grad_lse, **options)
    measured = finite_difference_gradients(q, k, v, options, grad_out, grad_lse)
    measured = hidden_bias_entries_are_zero(got, measured, case.code())
    assert_gradients_close(got, measured, DIFFERENCES, case.code())


# Against torch autograd through scaled_dot_product_attention (math backend, float64).

TORCH_LACKS = {"softcap": "SDPA has no softcap"}  # and returns no lse: grad_lse is left out


def torch_gradients(q, k, v, options, grad_out) -> AttentionGradients:
    """torch autograd of SDPA on the same call: every mask but the bias as one bool attn_mask
    (oracle.visibility), a bias as a float attn_mask with -inf where the masks hide a key."""
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    masks = {name: x for name, x in options.items() if name not in ("bias", "scale")}
    visible = torch.tensor(oracle.visibility(q, k, masks))
    tb = None
    if options.get("bias") is None:
        attn_mask = visible
    else:
        tb = torch.tensor(np.array(options["bias"]), requires_grad=True)
        attn_mask = torch.where(visible, tb, -torch.inf)
    with sdpa_kernel(SDPBackend.MATH):
        out = torch.nn.functional.scaled_dot_product_attention(
            tq, tk, tv, attn_mask=attn_mask, scale=options.get("scale"), enable_gqa=True
        )
    out.backward(torch.tensor(grad_out))
    return AttentionGradients(
        *(x.grad.numpy() for x in (tq, tk, tv)), bias=None if tb is None else tb.grad.numpy()
    )


@pytest.mark.parametrize("name", CALLS)
def test_reference_gradients_equal_torch_autograd_of_sdpa(name):
    lacking = [why for option, why in TORCH_LACKS.items() if option in CALLS[name]]
    if lacking:
        pytest.skip(lacking[0])
    q, k, v, options, grad_out, _ = build(name)
    want = torch_gradients(q, k, v, options, grad_out)
    got = attention_backward(q, k, v, grad_out, **options)
    assert_gradients_close(got, want, EXACT, f"{name}: reference against torch")


def test_causal_top_left_is_torchs_is_causal():
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, _, grad_out, _ = build("causal-top-left-lq>lk")
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    out.backward(torch.tensor(grad_out))
    want = AttentionGradients(*(x.grad.numpy() for x in (tq, tk, tv)), bias=None)
    got = attention_backward(q, k, v, grad_out, causal="top_left")
    assert_gradients_close(got, want, EXACT, "is_causal=True against causal='top_left'")


# The rules: hidden keys, fully masked rows, NaN and Inf. Each checked on the reference and on
# the oracle, with the expected pattern written out here.


def reference_backward(q, k, v, grad_out, options, grad_lse=None):
    return attention_backward(q, k, v, grad_out, grad_lse=grad_lse, **options)


BACKWARDS = [
    pytest.param(reference_backward, id="reference"),
    pytest.param(lambda *args: oracle.attention_backward(*args), id="oracle"),
]


def _rules_call(seed=0):
    """One batch element, 2 heads over 1 kv head, 4 queries, 6 keys; a full-shape zero bias so
    that dbias is dS itself."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 4, 3))
    k = rng.standard_normal((1, 6, 3))
    v = rng.standard_normal((1, 6, 2))
    grad_out = rng.standard_normal((2, 4, 2))
    grad_lse = rng.standard_normal((2, 4))
    return q, k, v, grad_out, grad_lse


@pytest.mark.parametrize("backward", BACKWARDS)
def test_keys_hidden_from_every_row_get_exactly_zero_and_nan_there_reaches_nothing(backward):
    q, k, v, grad_out, grad_lse = _rules_call()
    mask = np.ones((4, 6), dtype=bool)
    mask[:, 1] = False  # key 1 hidden by the mask
    bias = np.zeros((2, 4, 6))
    bias[:, :, 3] = -np.inf  # key 3 hidden by the bias
    options = {"mask": mask, "bias": bias, "kv_lengths": 5}  # key 5 is padding
    clean = backward(q, k, v, grad_out, options, grad_lse)
    hidden = [1, 3, 5]
    for name in ("key", "value"):
        assert np.all(getattr(clean, name)[:, hidden] == 0), name
    assert np.all(clean.bias[..., hidden] == 0)
    k_bad, v_bad = k.copy(), v.copy()
    k_bad[:, 1], k_bad[:, 3, 0], k_bad[:, 5] = np.nan, np.inf, -np.inf
    v_bad[:, 1], v_bad[:, 3], v_bad[:, 5, 1] = np.inf, np.nan, np.nan
    poisoned = backward(q, k_bad, v_bad, grad_out, options, grad_lse)
    for name in NAMES:
        got, want = getattr(poisoned, name), getattr(clean, name)
        assert np.isfinite(got).all(), f"a hidden NaN or Inf reached d{name}"
        # Equal up to the order of summation (the reference sums non-finite keys term by term).
        np.testing.assert_allclose(got, want, rtol=0, atol=EXACT, err_msg=f"d{name}")
    for name in ("key", "value"):
        assert np.all(getattr(poisoned, name)[:, hidden] == 0), name


@pytest.mark.parametrize("backward", BACKWARDS)
def test_a_key_hidden_from_some_rows_gets_nothing_from_them(backward):
    """Causal: key j is seen by rows i >= j only; moving the grad_out of rows < j changes
    nothing of dK_j and dV_j."""
    q, k, v, grad_out, _ = _rules_call()
    options = {"causal": "top_left"}
    base = backward(q, k, v, grad_out, options)
    other = grad_out.copy()
    other[:, :2] = 7.0  # rows 0 and 1, which cannot see keys 2..5
    moved = backward(q, k, v, other, options)
    np.testing.assert_array_equal(moved.key[:, 2:], base.key[:, 2:])
    np.testing.assert_array_equal(moved.value[:, 2:], base.value[:, 2:])
    assert np.all(base.key[:, 4:] == 0) and np.all(base.value[:, 4:] == 0)  # no row sees them


# Four ways to leave row 2 of a (2, 4, 6) call without a key (every row, for kv_lengths-0).
FULLY_MASKED_WAYS = ["mask", "neg-inf-bias", "kv_lengths-0", "neg-inf-scores"]


def fully_masked(how: str, q, k, options: dict):
    """Hide row 2 of every head the way `how` says: in copies of q and k, and in options
    (whose "mask", all True, and "bias", all 0, are changed in place). The row's query holds
    NaN or inf, which must reach nothing. Returns (q, k, the rows hidden)."""
    q, k = q.copy(), k.copy()
    if how == "mask":
        options["mask"][2] = False
        q[:, 2] = np.nan  # its query is never used: no NaN anywhere
    elif how == "neg-inf-bias":
        options["bias"][:, 2] = -np.inf
        q[:, 2] = np.inf
    elif how == "kv_lengths-0":
        options["kv_lengths"] = 0  # every row of the call is fully masked
    else:  # every visible score of row 2 is -inf: q_2 = (inf, 0, 0) against k_j0 < 0
        k[..., 0] = -np.abs(k[..., 0]) - 0.5
        q[:, 2] = [np.inf, 0.0, 0.0]
    return q, k, slice(None) if how == "kv_lengths-0" else 2


def assert_hidden_rows_carry_nothing(gradients_of, grad_out, grad_lse, rows, how: str):
    """The fully masked rules for gradients_of(grad_out, grad_lse): no NaN in any gradient,
    dQ and dS zero in the hidden rows, and dK, dV as if their upstream gradients were 0."""
    got = gradients_of(grad_out, grad_lse)
    for name in NAMES:
        assert not np.isnan(getattr(got, name)).any(), f"{how}: NaN in d{name}"
    assert np.all(got.query[:, rows] == 0) and np.all(got.bias[:, rows] == 0)
    # The row contributes nothing to dK and dV: zeroing its upstream gradient changes nothing.
    quiet_out, quiet_lse = grad_out.copy(), grad_lse.copy()
    quiet_out[:, rows], quiet_lse[:, rows] = 0.0, 0.0
    quiet = gradients_of(quiet_out, quiet_lse)
    np.testing.assert_array_equal(got.key, quiet.key)
    np.testing.assert_array_equal(got.value, quiet.value)


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("how", FULLY_MASKED_WAYS)
def test_a_fully_masked_row_has_zero_gradients_whatever_it_holds(backward, how, softcap):
    q, k, v, grad_out, grad_lse = _rules_call()
    options = {"mask": np.ones((4, 6), dtype=bool), "bias": np.zeros((2, 4, 6))}
    if softcap is not None:
        if how == "neg-inf-scores":
            pytest.skip("a softcap turns -inf scores into -softcap: the row sees its keys")
        options["softcap"] = softcap
    q, k, rows = fully_masked(how, q, k, options)
    assert_hidden_rows_carry_nothing(
        lambda d_out, d_lse: backward(q, k, v, d_out, options, d_lse), grad_out, grad_lse, rows, how
    )


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("poison", ["nan-query", "plus-inf-score"])
def test_a_nan_row_is_nan_in_its_query_and_in_every_key_it_sees(backward, poison):
    q, k, v, grad_out, grad_lse = _rules_call()
    q, k = q.copy(), k.copy()
    options = {"causal": "top_left", "bias": np.zeros((2, 4, 6))}  # row i sees keys 0..i
    if poison == "nan-query":
        q[1, 2, 0] = np.nan  # head 1, row 2: NaN scores at keys 0..2
    else:
        q[1, 2] = np.abs(q[1, 2]) + 0.1
        k[0, 1] = np.abs(k[0, 1])
        k[0, 1, 1] = np.inf  # +inf score at key 1 for head 1's row 2 (and every row seeing it)
        q[0] = -np.abs(q[0]) - 0.1  # head 0's scores at key 1 are -inf: weight 0, not NaN
        q[1, [0, 3]] = -np.abs(q[1, [0, 3]]) - 0.1
        q[1, 1] = -np.abs(q[1, 1]) - 0.1
    got = backward(q, k, v, grad_out, options, grad_lse)
    assert np.isnan(got.query[1, 2]).all()
    assert np.isnan(got.key[0, :3]).all() and np.isnan(got.value[0, :3]).all()
    assert not np.isnan(got.key[0, 3:]).any() and not np.isnan(got.value[0, 3:]).any()
    assert np.isnan(got.bias[1, 2, :3]).all() and np.all(got.bias[1, 2, 3:] == 0)
    if poison == "nan-query":  # the other rows are untouched
        others = np.ones((2, 4), dtype=bool)
        others[1, 2] = False
        assert np.isfinite(got.query[others]).all() and np.isfinite(got.bias[others]).all()


@pytest.mark.parametrize("backward", BACKWARDS)
def test_nan_in_a_visible_value_reaches_the_rows_that_see_it_but_not_dv(backward):
    q, k, v, grad_out, _ = _rules_call()
    v = v.copy()
    v[0, 2, 1] = np.nan  # seen by rows 2 and 3 (causal top-left)
    got = backward(q, k, v, grad_out, {"causal": "top_left"})
    assert np.isnan(got.query[:, 2:]).all() and np.isfinite(got.query[:, :2]).all()
    assert np.isnan(got.key[0, :4]).all()  # rows 2 and 3 see keys 0..3
    assert np.isfinite(got.key[0, 4:]).all()
    weights = oracle.attention(q, k, v, {"causal": "top_left"}).weights
    np.testing.assert_allclose(got.value[0], np.einsum("hij,hid->jd", weights, grad_out))


HOSTILE = {  # (where, what): one entry of q, k or v made NaN or infinite
    "nan-query": ("query", (0, 1, 2), np.nan),
    "nan-key": ("key", (0, 2, 1), np.nan),
    "nan-value": ("value", (0, 3, 0), np.nan),
    "inf-query": ("query", (1, 3, 0), np.inf),
    "inf-key": ("key", (0, 4, 0), np.inf),
    "neg-inf-key": ("key", (0, 0, 2), -np.inf),
    "inf-value": ("value", (0, 1, 1), np.inf),
    "inf-values": ("value", (0, slice(1, 3), 0), [np.inf, -np.inf]),
}


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("hostile", HOSTILE)
def test_reference_and_oracle_agree_on_what_nan_and_inf_reach(hostile, softcap):
    """IEEE arithmetic through the formulas, over visible pairs only, with the masks (causal,
    window, a -inf bias) hiding some pairs: two codes written apart agree on which gradients a
    NaN or an Inf reaches, and on every other gradient. A NaN reaches entries as NaN. Where an
    Inf reaches, NaN or ±Inf depends on the algebraic form (p·(g - D) meets Inf - Inf where
    (diag(p) - p·pᵀ)·g does not), and the spec leaves it open (SPEC.md, "Gradients")."""
    q, k, v, grad_out, grad_lse = _rules_call(seed=3)
    arrays = {"query": q.copy(), "key": k.copy(), "value": v.copy()}
    where, index, bad = HOSTILE[hostile]
    arrays[where][index] = bad
    bias = np.zeros((4, 6))
    bias[1, 2] = -np.inf
    options = {"causal": "bottom_right", "window": (3, None), "bias": bias, "softcap": softcap}
    options = {n: x for n, x in options.items() if x is not None}
    q, k, v = arrays["query"], arrays["key"], arrays["value"]
    got = attention_backward(q, k, v, grad_out, grad_lse=grad_lse, **options)
    want = oracle.attention_backward(q, k, v, grad_out, options, grad_lse)
    what = f"{hostile}, softcap {softcap}"
    if np.isnan(bad).all():
        assert_gradients_close(got, want, EXACT, what)
        return
    assert not all(np.isfinite(x).all() for x in want), f"{what}: the Inf reached nothing"
    for name in NAMES:
        g, w = getattr(got, name), getattr(want, name)
        reached = ~np.isfinite(w)
        np.testing.assert_array_equal(~np.isfinite(g), reached, err_msg=f"{what}: d{name}")
        np.testing.assert_allclose(g[~reached], w[~reached], rtol=0, atol=EXACT, err_msg=what)


@pytest.mark.parametrize("backward", BACKWARDS)
def test_an_inf_query_saturates_the_softcap_its_query_gradient_is_zero(backward):
    """SPEC.md's example: q_i holding Inf caps row i's scores at ±c, slope 0: dQ_i = 0, while
    dK gets 0·Inf (NaN) from that row and the other rows keep their gradients."""
    q, k, v, grad_out, grad_lse = _rules_call()
    q = q.copy()
    q[0, 1, 2] = np.inf
    got = backward(q, k, v, grad_out, {"softcap": 2.0}, grad_lse)
    assert np.all(got.query[0, 1] == 0)
    assert not np.isfinite(got.key).all()
    others = np.ones((2, 4), dtype=bool)
    others[0, 1] = False
    assert np.isfinite(got.query[others]).all() and np.isfinite(got.value).all()


# Identities the gradients obey exactly.


@given(drawn_calls(max_len=8, max_dim=8, budget=2**13))
def test_score_gradients_of_a_row_sum_to_its_grad_lse(drawn):
    """Σ_j dS_ij = grad_lse_i (0 without it): adding c to every score of row i leaves out
    unchanged and moves lse_i by c (softmax shift invariance, the gradient twin of ATT-A5).
    dS is the gradient of a full-shape bias; a fully masked row's sum is 0."""
    case, q, k, v, options, grad_out, grad_lse = drawn
    full = (*q.shape[:-1], k.shape[-2])
    bias = options.get("bias")
    options = {**options, "bias": np.zeros(full) if bias is None else np.broadcast_to(bias, full)}
    got = attention_backward(q, k, v, grad_out, grad_lse=grad_lse, **options)
    lse = oracle.attention(q, k, v, options).lse
    expected = np.zeros(full[:-1]) if grad_lse is None else grad_lse
    expected = np.where(lse == -np.inf, 0.0, expected)
    np.testing.assert_allclose(
        got.bias.sum(axis=-1), expected, rtol=0, atol=EXACT, err_msg=case.code()
    )


@given(drawn_calls(max_len=8, max_dim=8, budget=2**13))
def test_key_and_value_gradients_sum_to_what_the_rows_send(drawn):
    """Σ_j dV_j = Σ_{i sees a key} dO_i (each row's weights sum to 1, ATT-W1), and without a
    softcap Σ_j dK_j = scale·Σ_{i sees a key} grad_lse_i·q_i (adding one vector c to every key
    shifts row i's scores by scale·q_i·c, ATT-A5), summed over each kv head's query heads."""
    case, q, k, v, options, grad_out, grad_lse = drawn
    got = attention_backward(q, k, v, grad_out, grad_lse=grad_lse, **options)
    sees = (oracle.attention(q, k, v, options).lse > -np.inf)[..., None]
    group = q.shape[-3] // k.shape[-3]

    def per_kv_head(x):  # (B..., Hq, Lq, D) summed over queries and over each head's group
        summed = x.sum(axis=-2)
        return summed.reshape(*summed.shape[:-2], k.shape[-3], group, summed.shape[-1]).sum(-2)

    sent = per_kv_head(np.where(sees, grad_out, 0.0))
    np.testing.assert_allclose(
        got.value.sum(axis=-2), sent, rtol=0, atol=EXACT, err_msg=case.code()
    )
    if "softcap" not in options:
        scale = options.get("scale", q.shape[-1] ** -0.5)
        lse_grad = np.zeros(q.shape[:-1]) if grad_lse is None else grad_lse
        pulled = scale * per_kv_head(np.where(sees, lse_grad[..., None] * q, 0.0))
        np.testing.assert_allclose(
            got.key.sum(axis=-2), pulled, rtol=0, atol=EXACT, err_msg=case.code()
        )


@given(drawn_calls(max_len=8, max_dim=8, budget=2**13), st.floats(-3, 3), st.floats(-3, 3))
def test_gradients_are_linear_in_grad_out_and_grad_lse(drawn, a, b):
    case, q, k, v, options, grad_out, grad_lse = drawn
    rng = np.random.default_rng(case.seed + 2)
    other_out = rng.standard_normal(grad_out.shape)
    other_lse = None if grad_lse is None else rng.standard_normal(grad_lse.shape)

    def grads(d_out, d_lse):
        return attention_backward(q, k, v, d_out, grad_lse=d_lse, **options)

    mixed_lse = None if grad_lse is None else a * grad_lse + b * other_lse
    got = grads(a * grad_out + b * other_out, mixed_lse)
    first, second = grads(grad_out, grad_lse), grads(other_out, other_lse)
    want = AttentionGradients(
        *(None if x is None else a * x + b * y for x, y in zip(first, second, strict=True))
    )
    assert_gradients_close(got, want, EXACT, case.code())


def test_value_gradient_is_the_weights_transposed_times_grad_out():
    q, k, v, options, grad_out, _ = build("everything")
    _, weights = attention(q, k, v, return_weights=True, **options)
    got = attention_backward(q, k, v, grad_out, **options)
    per_query_head = np.einsum("...hij,...hid->...hjd", weights, grad_out)  # Pᵀ·dO
    want = per_query_head.reshape(2, 2, 2, 6, 3).sum(axis=2)  # GQA: summed over each group
    np.testing.assert_allclose(got.value, want, rtol=0, atol=EXACT)


@pytest.mark.parametrize("name", ["gqa", "mqa", "everything"])
def test_gqa_gradients_are_sums_over_the_group_of_repeated_heads(name):
    """ATT-H3's gradient twin: GQA equals MHA on K, V repeated G times, and a kv head's
    gradient is the sum of its copies' gradients."""
    q, k, v, options, grad_out, grad_lse = build(name)
    group = q.shape[-3] // k.shape[-3]
    repeated = attention_backward(
        q,
        np.repeat(k, group, axis=-3),
        np.repeat(v, group, axis=-3),
        grad_out,
        grad_lse=grad_lse,
        **options,
    )
    got = attention_backward(q, k, v, grad_out, grad_lse=grad_lse, **options)

    def summed(x):
        return x.reshape(*x.shape[:-3], k.shape[-3], group, *x.shape[-2:]).sum(axis=-3)

    np.testing.assert_array_equal(got.query, repeated.query)
    np.testing.assert_allclose(got.key, summed(repeated.key), rtol=0, atol=EXACT)
    np.testing.assert_allclose(got.value, summed(repeated.value), rtol=0, atol=EXACT)


# Dtypes and shapes.


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_gradients_come_back_in_the_input_dtype_and_the_bias_in_its_own(dtype):
    q, k, v, options, grad_out, grad_lse = build("everything")
    q, k, v, grad_out = (x.astype(dtype) for x in (q, k, v, grad_out))
    compute = np.float64 if dtype == "float64" else np.float32
    bias = options["bias"]  # float64 in every call: its gradient is float64 too
    got = attention_backward(q, k, v, grad_out, grad_lse=grad_lse.astype(compute), **options)
    for name, want in (("query", q), ("key", k), ("value", v)):
        x = getattr(got, name)
        assert x.dtype == dtype and x.shape == want.shape, f"d{name}: {x.dtype} {x.shape}"
    assert got.bias.dtype == bias.dtype and got.bias.shape == bias.shape
    # Computed in float32 for float16 and float32: close to the float64 gradients of the same
    # (rounded) inputs, up to float32's rounding, and float16's for the results.
    q64, k64, v64, out64 = (x.astype(np.float64) for x in (q, k, v, grad_out))
    lse64 = grad_lse.astype(compute).astype(np.float64)
    want = oracle.attention_backward(q64, k64, v64, out64, options, lse64)
    atol = {"float16": 4e-3, "float32": 1e-5, "float64": EXACT}[dtype]
    assert_gradients_close(got, want, atol, dtype)


def test_empty_calls_give_empty_or_zero_gradients():
    q, k, v, _, grad_out, grad_lse = build("empty-keys")
    got = attention_backward(q, k, v, grad_out, grad_lse=grad_lse)
    assert got.key.shape == k.shape and got.value.shape == v.shape
    assert np.all(got.query == 0) and got.query.shape == q.shape
    q, k, v, _, grad_out, _ = build("empty-queries")
    got = attention_backward(q, k, v, grad_out)
    assert np.all(got.key == 0) and np.all(got.value == 0) and got.query.shape == q.shape


def test_the_signature_is_the_calls_without_the_return_flags():
    parameters = inspect.signature(attention_backward).parameters
    assert list(parameters)[:4] == ["query", "key", "value", "grad_out"]
    assert list(parameters)[-1] == "grad_lse"
    for name in ("mask", "bias", "causal", "window", "kv_lengths", "scale", "softcap"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert "return_lse" not in parameters and "return_weights" not in parameters


# Bad inputs: TypeError or ValueError in the "should be ..., but got ..." form.


def _bad_grad_out(q, grad_out):
    nan = grad_out.copy()
    nan[1, 0, 2, 3] = np.nan
    inf = grad_out.copy()
    inf[0, 1, 0, 0] = -np.inf
    return [
        (
            {"grad_out": grad_out[..., :3]},
            ValueError,
            r"grad_out.shape should be \(2, 2, 3, 4\) \(out's\), but got \(2, 2, 3, 3\)",
        ),
        ({"grad_out": grad_out[0]}, ValueError, r"grad_out.shape should be \(2, 2, 3, 4\)"),
        (
            {"grad_out": grad_out.astype(np.float32)},
            TypeError,
            r"grad_out.dtype should be float64 \(out's\), but got float32",
        ),
        (
            {"grad_out": grad_out.astype(int)},
            TypeError,
            "grad_out.dtype should be float16, bfloat16, float32",
        ),
        (
            {"grad_out": grad_out.tolist()},
            TypeError,
            "grad_out should be a numpy.ndarray, but got list",
        ),
        (
            {"grad_out": nan},
            ValueError,
            r"grad_out should be finite, but got nan at index \(1, 0, 2, 3\)",
        ),
        (
            {"grad_out": inf},
            ValueError,
            r"grad_out should be finite, but got -inf at index \(0, 1, 0, 0\)",
        ),
        (
            {"grad_lse": np.zeros((2, 2, 4))},
            ValueError,
            r"grad_lse.shape should be \(2, 2, 3\) \(lse's\), but got \(2, 2, 4\)",
        ),
        (
            {"grad_lse": np.zeros((2, 2, 3), np.float32)},
            TypeError,
            r"grad_lse.dtype should be float64 \(lse's\), but got float32",
        ),
        (
            {"grad_lse": np.full((2, 2, 3), np.nan)},
            ValueError,
            r"grad_lse should be finite, but got nan at index \(0, 0, 0\)",
        ),
        (
            {"return_lse": True},
            TypeError,
            "attention_backward got an unexpected option 'return_lse'",
        ),
        ({"return_weights": False}, TypeError, "unexpected option 'return_weights'"),
        ({"dropout": 0.1}, TypeError, "attention_backward got an unexpected option 'dropout'"),
        (
            {"causal": "top"},
            ValueError,
            "causal should be None, True, 'top_left' or 'bottom_right'",
        ),
        ({"key": q[..., :2, :]}, ValueError, r"value.shape\[-2\] should be 2"),
        ({"bias": np.full((3, 5), np.nan)}, ValueError, "bias should be finite or -inf"),
    ]


def test_bad_inputs_are_refused_with_what_was_expected():
    q, k, v, _, grad_out, _ = build("plain")
    for change, error, message in _bad_grad_out(q, grad_out):
        arguments = {"query": q, "key": k, "value": v, "grad_out": grad_out, **change}
        with pytest.raises(error, match=message):
            attention_backward(**arguments)


def test_float16_calls_take_grad_lse_in_float32_the_dtype_of_their_lse():
    q, k, v, _, grad_out, _ = build("plain")
    q, k, v, grad_out = (x.astype(np.float16) for x in (q, k, v, grad_out))
    attention_backward(q, k, v, grad_out, grad_lse=np.zeros((2, 2, 3), np.float32))
    with pytest.raises(TypeError, match=r"grad_lse.dtype should be float32 \(lse's\)"):
        attention_backward(q, k, v, grad_out, grad_lse=np.zeros((2, 2, 3), np.float16))
    with pytest.raises(TypeError, match=r"grad_out.dtype should be float16 \(out's\)"):
        attention_backward(q, k, v, grad_out.astype(np.float32))


# The finite differences themselves.


def test_finite_differences_recover_a_known_gradient_and_skip_what_they_are_told():
    x = np.array([[0.3, -2.0, 15.0], [1e-8, -np.inf, 4.0]])

    def f(y):
        finite = np.where(np.isfinite(y), y, 0.0)
        return float(np.sum(np.sin(finite) * finite**2))

    where = np.isfinite(x)
    got = oracle.finite_differences(f, x, where=where)
    with np.errstate(invalid="ignore"):  # sin(-inf): not compared
        exact = 2 * x * np.sin(x) + x**2 * np.cos(x)
    assert np.isnan(got[1, 1]) and np.isfinite(got[where]).all()
    relative = np.abs(got[where] - exact[where]) / np.maximum(1.0, np.abs(exact[where]))
    assert relative.max() < 1e-8, relative
    view = np.broadcast_to(np.array([1.0, 2.0]), (3, 2))  # every entry moved on its own
    got = oracle.finite_differences(lambda y: float(np.sum(y * np.arange(6).reshape(3, 2))), view)
    np.testing.assert_allclose(got, np.arange(6).reshape(3, 2), rtol=1e-9)
