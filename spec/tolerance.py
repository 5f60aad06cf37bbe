r"""The numerical tolerance model: how far an implementation may be from the float64 definition.

Notation: u is the unit roundoff of the compute dtype (2^-24 for float32, and for float16 and
bfloat16 inputs, which are computed in float32; 2^-53 for float64), u_L that of a low-precision
input dtype (2^-11 for float16, 2^-8 for bfloat16). For each call we bound, to first order, the
rounding error of an implementation that computes in that dtype (Higham, *Accuracy and Stability
of Numerical Algorithms*, §3.1: a dot product of n terms errs by at most γ_n·Σ|x_i·y_i|,
γ_n = n·u/(1 - n·u)):

1. Scores. s_ij = scale·q_i·k_j, then softcap, then bias:

       E_s = (Dk + 2)·u·|scale|·max_ij Σ_d |q_id|·|k_jd| + 2u·max|bias| + 4u·softcap

   (softcap·tanh(x/softcap) has slope at most 1, so it passes errors on without growing them;
   evaluating tanh costs a few ulps of softcap.)
2. Weights. p_ij = exp(s_ij - m_i) / Σ_l exp(s_il - m_i). An error δ_j in each score moves
   p_ij by p_ij·(δ_j - Σ_l p_il·δ_l), at most 2·E_s relatively; exp costs a few ulps and the
   sum of Lk terms (Lk + 1)·u:

       |Δp_ij| <= p_ij·(2·E_s + (Lk + 8)·u)  <=  2·E_s + (Lk + 8)·u

3. Output. o_i = Σ_j p_ij·v_j, a sum of Lk terms:

       |Δo_id| <= Σ_j |Δp_ij|·|v_jd| + (Lk + 8)·u·Σ_j p_ij·|v_jd|
               <= max|v|·(2·E_s + (2·Lk + 16)·u)

4. Log-sum-exp. lse_i = m_i + log Σ_j exp(s_ij - m_i):

       |Δlse_i| <= E_s + (Lk + 8)·u + u·|lse_i|

5. Low precision (float16, bfloat16 inputs; the inputs are already in the dtype, so nothing is
   lost reading them). Products are accumulated and the softmax is computed in float32 (the
   bounds above, with u = 2^-24); an implementation may round P to the input dtype before P·V,
   as FlashAttention kernels do, which moves o_id by at most u_L·Σ_j p_ij·|v_jd|, and rounds
   the output to the input dtype, u_L·|o_id|:

       |Δo_id| += 2·u_L·max_id (Σ_j p_ij·|v_jd| + |o_id|) + 2·f_L

   (2 for the second-order terms), where f_L is half the smallest subnormal of the dtype
   (2^-25 for float16): a result that rounds into the subnormal range errs by up to f_L, not
   by u_L of itself. One that accumulates the softmax sum or P·V in the low
   precision dtype loses u_L at every one of Lk steps and falls outside.

Each bound is multiplied by a safety factor of 4: 2 because the float64 oracle errs too
(which matters when the implementation is float64 as well), and 2 for the second-order terms the
first-order bound leaves out (e^δ - 1 <= 2δ while δ <= 1); the low-precision term of 5 is added
as it stands. The bounds are worst cases, not statistical: any pass of an
implementation computing in the stated dtype stays inside them, whatever its summation order,
tiling or thread count, so a tighter result is not demanded and a looser one is a bug.

Properties that compare two calls add what their transformation costs, derived the same way:
inputs rounded to the input dtype after a transformation (a·V1 + b·V2 in ATT-A2, K + c in
ATT-A5), chunk outputs rounded before a merge (ATT-C1), and for multi-head layers the error of
the projections x·W + b and of the output projection (`expect_layer`).

Gradients (`expect_gradients`). A backward computes, in the compute dtype, the steps of SPEC.md's
Gradients section: dP = dO·Vᵀ, D_i = Σ_d dO_id·o_id, dS = P ⊙ (dP - D + dlse), dX = dS ⊙ σ with
σ = 1 - tanh²(x/c) under a softcap c, dQ = scale·dX·K, dK = scale·dXᵀ·Q, dV = Pᵀ·dO, and
dbias = dS summed over the bias's broadcast axes. Its inputs carry the forward's errors: each
weight the relative error of step 2, plus u·|lse| for a backward that recomputes
P = exp(s - lse) from a saved lse (FlashAttention's),

    e_p = 2·E_s + (Lk + 8)·u + u·max|lse|,      |ΔP_ij| <= e_p·P_ij

and each output element that of step 3, e_o = max|v|·(2·E_s + (2·Lk + 16)·u), plus its rounding
to float16 (2^-11·max|v|) for a D computed from a stored float16 out. Element by element, with
|·| the magnitudes of the float64 values and G = Hq / Hkv:

5. dP_ij = dO_i·v_j, a sum of Dv terms:

       e_dP_ij = (Dv + 2)·u·Σ_d |dO_id|·|v_jd|

6. D_i, from out or as Σ_j P_ij·dP_ij (an implementation may take either form):

       e_D_i = max(Σ_d |dO_id|·(e_o + (Dv + 2)·u·|o_id|),
                   Σ_j P_ij·(e_p·|dP_ij| + e_dP_ij) + (Lk + 2)·u·Σ_j P_ij·|dP_ij|)

7. dS_ij = P_ij·T_ij with T = dP - D + dlse (two subtractions and a product):

       e_dS_ij = P_ij·((e_p + u)·|T_ij| + e_dP_ij + e_D_i + 2u·(|dP_ij| + |D_i| + |dlse_i|))

8. Softcap: dX = dS·σ(x). σ has a slope of at most 4/(3√3·c) <= 0.77/c in x, whose error is
   E_x,ij = (Dk + 2)·u·|scale|·Σ_d |q_id|·|k_jd|; tanh, the square and the product cost a few
   ulps:

       e_dX_ij = σ_ij·e_dS_ij + |dS_ij|·(0.77·E_x,ij / c + 5u)      (without a softcap, e_dS)

9. The products: dQ sums Lk terms, dK and dV G·Lq terms (every query row of the kv head's
   group), dbias m terms (the scores one bias entry is broadcast to):

       e_dQ_id = |scale|·Σ_j (e_dX_ij + (Lk + 3)·u·|dX_ij|)·|k_jd|
       e_dK_jd = |scale|·Σ_{h,i} (e_dX_ij + (G·Lq + 3)·u·|dX_ij|)·|q_id|
       e_dV_jd = Σ_{h,i} (e_p + (G·Lq + 2)·u)·P_ij·|dO_id|
       e_dbias = Σ over the entry's scores of (e_dS_ij + (m + 1)·u·|dS_ij|)

A gradient's tolerance is the largest of its element bounds times the safety factor 4, as above.
float16 gradients add twice 2^-11 times the size of their terms (the largest of Pᵀ·|dO|,
|scale|·|dX|·|K|, |scale|·|dX|ᵀ·|Q| and |dS| summed like dbias): once for their rounding to
float16, and once for that of the float16 operand of their last product (P, dS) in a kernel
that keeps one, each at most 2^-11 times that size, plus f_L for each of the two roundings (a
gradient of a tiny scale, ~1e-7, lies in float16's subnormal range, spaced 2^-24).

Finite differences (`DifferenceBound`, ATT-G2). The central difference of
L = Σ dO·out + Σ dlse·lse, the implementation's own float64 forward, in one entry x moved by
h = ε^(1/3)·max(|x|, 1) (`oracle.finite_differences`), errs by h²·max|L'''|/6 (truncation) plus
E/h, where E bounds the error of the forward's L over the rows the entry reaches
(Σ_i Σ_d |dO_id|·tol_out + |dlse_i|·tol_lse, and the rounding of the float64 sum itself). L'''
is bounded row by row: moving x moves row i's scores along a direction c (c_j = scale·k_jd for
q_id; scale·q_id at key j alone for k_jd; 1 at the keys a bias entry reaches), and the
derivatives along c of lse and of out = E_p[v] are the cumulants of c under the row's weights:
lse''' = κ3(c), o''' = κ(v, c, c, c). With R the range of c over the row's visible keys and W_d
that of v_·d, |κ3| <= R³ and |κ(v, c, c, c)| <= 4·W_d·R³, so

    |L_i'''| <= R³·(4·Σ_d |dO_id|·W_d + |dlse_i|)

A softcap c makes the scores c·tanh((x_j + t·c_j)/c) nonlinear in t; with A = max_j |c_j| their
first three derivatives in t lie within ranges R1 = 2A, R2 = 1.54·A²/c and R3 = 4·A³/c² (the
third at most 2·A³/c² in size), and the chain rule gives

    |L_i'''| <= Σ_d |dO_id|·W_d·(4·R1³ + 3·R1·R2 + R3) + |dlse_i|·(R1³ + 3·R1·R2 + 2·A³/c²)

L is linear in the values (L''' = 0). The truncation term takes the safety factor 4 (which also
covers the one-ulp difference between the steps to x + h and to x - h, each rounded), and the
gradient's own tolerance (above) is added: it is the implementation's analytic gradient that is
compared with the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from refattn.spec import oracle

from refattn.dtypes import finfo, is_float

SAFETY = 4.0
# The unit roundoff of the compute dtype, and (OUTPUT_ROUNDING) that of a low-precision input
# and output dtype, u_L: what rounding P and the output to it costs.
UNIT_ROUNDOFF = {
    "float16": 2.0**-24,
    "bfloat16": 2.0**-24,
    "float32": 2.0**-24,
    "float64": 2.0**-53,
}
OUTPUT_ROUNDING = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 0.0, "float64": 0.0}
# f_L: half the smallest subnormal of a low-precision dtype, the most rounding a result into
# its subnormal range can cost (a relative u_L does not bound it there).
SUBNORMAL_ROUNDING = {"float16": 2.0**-25, "bfloat16": 2.0**-134, "float32": 0.0, "float64": 0.0}


@dataclass(frozen=True)
class Tolerance:
    """Absolute bounds, per element, for out, lse and weights of one call: `out` the largest
    over the elements (what properties build their own bounds from), `out_each` the bound of
    each element of out (broadcastable to its shape: the low-precision term of 5 is per element)."""

    out: float
    lse: float
    weights: float
    score_error: float  # E_s: kept so properties can widen a bound with their own terms
    out_each: np.ndarray | float = 0.0
    lse_each: np.ndarray | float | None = None  # per row where it differs from `lse`

    def __post_init__(self):
        if self.lse_each is None:
            object.__setattr__(self, "lse_each", self.lse)


def as_float64(query, key, value, options):
    """The call's arrays in float64 (masks and ints untouched): what the oracle is given."""
    options = {
        name: (x.astype(np.float64) if isinstance(x, np.ndarray) and is_float(x.dtype) else x)
        for name, x in options.items()
    }
    return query.astype(np.float64), key.astype(np.float64), value.astype(np.float64), options


@dataclass(frozen=True)
class Expected:
    """What the spec's float64 definition gives for a call, and how close an implementation
    must be."""

    out: np.ndarray
    lse: np.ndarray
    weights: np.ndarray
    tol: Tolerance

    def problems(self, out, lse=None, weights=None) -> list[str]:
        """What an implementation's outputs get wrong, one "name: why" each (lse and weights
        only when given); [] when every one is within its tolerance."""
        found = []
        for name, got, want, atol in (
            ("out", out, self.out, self.tol.out_each),
            ("lse", lse, self.lse, self.tol.lse_each),
            ("weights", weights, self.weights, self.tol.weights),
        ):
            problem = None if got is None else mismatch(got, want, atol)
            if problem:
                found.append(f"{name}: {problem}")
        return found


def expect(query, key, value, semantics=None, **options) -> Expected:
    """The spec's float64 out, lse and weights for this call (refattn.spec.oracle, never the
    implementation under test), with the call's tolerance; under an implementation's declared
    `semantics`, what its choices give (float64 computed in float32: float32's tolerance; a
    row that sees no key and is the mean of V without a declared mask_fill: its lse, which
    depends on the fill, is not held to a value)."""
    q, k, v, options = as_float64(query, key, value, options)
    out, lse, weights = oracle.attention(q, k, v, options, semantics)
    dtype = query.dtype
    if semantics is not None and semantics.float64 == "float32" and dtype == np.float64:
        dtype = np.dtype(np.float32)
    tol = _tolerance(dtype, q, k, v, options, lse, weights, out)
    if semantics is not None and semantics.fully_masked == "mean" and semantics.mask_fill is None:
        unseen = ~oracle.visibility(q, k, options).any(axis=-1)
        tol = replace(tol, lse_each=np.where(unseen, np.inf, tol.lse))
    return Expected(out, lse, weights, tol)


def _tolerance(dtype, q, k, v, options, lse, weights, out) -> Tolerance:
    """The bounds above, for a call on these (float64 copies of the) inputs in `dtype`, whose
    float64 lse, weights and out are given."""
    dtype = np.dtype(dtype).name
    u = UNIT_ROUNDOFF[dtype]
    Dk, Lk = q.shape[-1], k.shape[-2]
    # Every bound in float64, whatever type the options came in (a NumPy float16 scale would
    # compute the bound in float16, where u underflows to 0).
    scale = options.get("scale")
    scale = Dk**-0.5 if scale is None else abs(float(scale))
    largest_dot = largest_abs_dot(q, k)
    bias = options.get("bias")
    largest_bias = 0.0 if bias is None else _finite_max(np.abs(bias))
    softcap = float(options.get("softcap") or 0.0)
    score_error = (Dk + 2) * u * scale * largest_dot + 2 * u * largest_bias + 4 * u * softcap
    largest_v = _finite_max(np.abs(v))
    weights_bound = 2 * score_error + (Lk + 8) * u
    out_bound = largest_v * (2 * score_error + (2 * Lk + 16) * u)
    lse_bound = score_error + (Lk + 8) * u + u * _finite_max(np.abs(lse))
    rounded = 0.0
    if OUTPUT_ROUNDING[dtype]:  # 5: P and the output rounded to the low-precision dtype
        v_per_head = np.repeat(np.abs(v), q.shape[-3] // max(v.shape[-3], 1), axis=-3)
        with np.errstate(invalid="ignore"):
            weighed = np.nan_to_num(weights, nan=0.0) @ np.nan_to_num(v_per_head, posinf=0.0)
            rounded = 2 * OUTPUT_ROUNDING[dtype] * (weighed + np.abs(out))
        rounded = np.where(np.isfinite(rounded), rounded, 0.0) + 2 * SUBNORMAL_ROUNDING[dtype]
    return Tolerance(
        out=SAFETY * out_bound + _finite_max(np.asarray(rounded)),
        out_each=SAFETY * out_bound + rounded,
        lse=SAFETY * lse_bound,
        weights=SAFETY * weights_bound,
        score_error=score_error,
    )


def largest_abs_dot(query, key) -> float:
    """max_ij Σ_d |q_id|·|k_jd| (query head h against key head h // G), ignoring non-finite."""
    q, k = np.abs(query.astype(np.float64)), np.abs(key.astype(np.float64))
    k = np.repeat(k, q.shape[-3] // max(k.shape[-3], 1), axis=-3)
    with np.errstate(invalid="ignore"):  # Inf·0 where an input holds Inf: ignored below
        return _finite_max(q @ np.swapaxes(k, -1, -2))


def _finite_max(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(finite.max()) if finite.size else 0.0


def mismatch(got, want, atol: float, *, labels=("got", "expected")) -> str | None:
    """Why `got` is not within `atol` of `want` (shape, NaN or Inf placement, or the largest
    error), or None when it is. NaN must meet NaN and ±Inf the same ±Inf. `labels` name the
    two sides in the message."""
    said, other = labels
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return f"shape {got.shape}, {other} {want.shape}"
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    nan_got, nan_want = np.isnan(got64), np.isnan(want64)
    if (nan_got != nan_want).any():
        index = tuple(int(i) for i in np.argwhere(nan_got != nan_want)[0])
        return f"NaN placement differs at {index}: {said} {got64[index]}, {other} {want64[index]}"
    inf_got, inf_want = np.isinf(got64), np.isinf(want64)
    differ = (inf_got | inf_want) & ~((got64 == want64) & inf_got)
    if differ.any():
        index = tuple(int(i) for i in np.argwhere(differ)[0])
        return f"infinity differs at {index}: {said} {got64[index]}, {other} {want64[index]}"
    finite = ~(nan_got | inf_got)
    if not finite.any():
        return None
    with np.errstate(invalid="ignore"):  # inf - inf where placement already matched
        error = np.where(finite, np.abs(got64 - want64), 0.0)
    bound = np.broadcast_to(np.asarray(atol, dtype=np.float64), error.shape)  # one per element
    index = np.unravel_index(int(np.argmax(error - bound)), error.shape)
    if error[index] <= bound[index]:
        return None
    index = tuple(int(i) for i in index)
    return (
        f"max error {error[index]:.3g} > tolerance {bound[index]:.3g} at {index}: "
        f"{said} {got64[index]!r}, {other} {want64[index]!r}"
    )


@dataclass(frozen=True)
class ExpectedLayer:
    """What the spec's float64 layer gives, and how close an implementation must be."""

    y: np.ndarray
    tol: float


def expect_layer(x, params, *, num_heads, num_kv_heads, **options) -> ExpectedLayer:
    """The float64 multi-head layer on x (refattn.spec.oracle.layer), and the bound for a layer
    computing in x's dtype.

    On top of the attention's bound (above), the projections P = x·W + b, computed in x's
    dtype (unit roundoff u of that dtype, 2^-11 for float16), err by at most
    e = (Dm + 2)·u·max(|x|·|W| + |b|) each; errors in Q and K move the scores by at most
    scale·Dk·(e_q·max|K| + e_k·max|Q|), errors in V move the output by e_v; and the output
    projection y = o·W_o + b_o adds max_col Σ|W_o|·|Δo| + (Hq·Dv + 2)·u·max(|o|·|W_o| + |b_o|),
    and y's rounding to x's dtype u·max|y|.
    """
    # The layer's matmuls (x·W, o·W_o) run in x's own dtype, float16 included (only attention
    # computes float16 in float32), so their roundoff is that dtype's.
    u = float(finfo(x.dtype).eps) / 2
    heads = {"num_heads": num_heads, "num_kv_heads": num_kv_heads}
    y = oracle.layer(x, params, **heads, **options)
    x64 = x.astype(np.float64)

    def weight(name):
        w = getattr(params, name)
        return None if w is None else np.abs(w.astype(np.float64))

    def projection_error(w, b):
        bound = np.abs(x64) @ weight(w) + (0 if weight(b) is None else weight(b))
        return (x.shape[-1] + 2) * u * _finite_max(bound)

    e_q = projection_error("w_q", "b_q")
    e_k = projection_error("w_k", "b_k")
    e_v = projection_error("w_v", "b_v")
    q, k, v = oracle.projections(x, params, **heads)
    attention = expect(q.astype(x.dtype), k.astype(x.dtype), v.astype(x.dtype), **options)
    scale = options.get("scale")
    scale = q.shape[-1] ** -0.5 if scale is None else abs(float(scale))
    largest_q, largest_k, largest_v = (_finite_max(np.abs(a)) for a in (q, k, v))
    moved_scores = scale * q.shape[-1] * (e_q * largest_k + e_k * largest_q)
    out_error = attention.tol.out + SAFETY * (2 * moved_scores * largest_v + e_v)
    merged = np.moveaxis(attention.out, -3, -2).reshape(*x.shape[:-1], -1)
    w_o = weight("w_o")
    b_o = 0 if weight("b_o") is None else weight("b_o")
    rounding = (w_o.shape[0] + 2) * u * _finite_max(np.abs(merged) @ w_o + b_o)
    rounding += u * _finite_max(np.abs(y))  # y itself rounded to x's dtype
    return ExpectedLayer(y, out_error * float(w_o.sum(axis=0).max()) + SAFETY * rounding)


# Gradients -------------------------------------------------------------------------------------

# max |d/dx (1 - tanh²(x/c))| = 4/(3·sqrt(3)·c): the softcap slope's own slope, times c.
_SLOPE_OF_SLOPE = 4 / (3 * 3**0.5)


@dataclass(frozen=True)
class GradientTolerance:
    """Absolute bounds, per element, for each gradient of one call (bias None without one)."""

    query: float
    key: float
    value: float
    bias: float | None


@dataclass(frozen=True)
class ExpectedGradients:
    """What the spec's float64 definition gives for a call's gradients
    (oracle.attention_backward), and how close an implementation must be."""

    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    bias: np.ndarray | None
    tol: GradientTolerance

    def problems(self, query=None, key=None, value=None, bias=None) -> list[str]:
        """What an implementation's gradients get wrong, one "name: why" each (only those
        given); [] when every one is within its tolerance."""
        found = []
        for name, got in (("query", query), ("key", key), ("value", value), ("bias", bias)):
            problem = (
                None if got is None else mismatch(got, getattr(self, name), getattr(self.tol, name))
            )
            if problem:
                found.append(f"d{name}: {problem}")
        return found


def expect_gradients(query, key, value, grad_out, grad_lse=None, **options) -> ExpectedGradients:
    """The spec's float64 gradients of L = Σ grad_out·out + Σ grad_lse·lse for this call
    (refattn.spec.oracle.attention_backward, never the implementation under test), with their
    tolerance (`gradient_tolerance`)."""
    q, k, v, options64 = as_float64(query, key, value, options)
    d_out = np.asarray(grad_out, dtype=np.float64)
    d_lse = None if grad_lse is None else np.asarray(grad_lse, dtype=np.float64)
    want = oracle.attention_backward(q, k, v, d_out, options64, d_lse)
    tol = gradient_tolerance(query, key, value, grad_out, grad_lse, **options)
    return ExpectedGradients(want.query, want.key, want.value, want.bias, tol)


def gradient_tolerance(query, key, value, grad_out, grad_lse=None, **options) -> GradientTolerance:
    """The bounds of the module docstring ("Gradients", steps 5 to 9) for a backward computing
    in the call's compute dtype, from the magnitudes of the float64 forward and its upstream."""
    dtype = np.dtype(query.dtype).name
    u = UNIT_ROUNDOFF[dtype]
    q, k, v, options = as_float64(query, key, value, options)
    forward = oracle.attention(q, k, v, options)
    visible = oracle.visibility(q, k, options)
    Hq, Hkv, Lq, Lk, Dk, Dv = (
        q.shape[-3],
        k.shape[-3],
        q.shape[-2],
        k.shape[-2],
        q.shape[-1],
        v.shape[-1],
    )
    G = Hq // max(Hkv, 1)
    d_out = np.asarray(grad_out, dtype=np.float64)
    d_lse = np.zeros(q.shape[:-1]) if grad_lse is None else np.asarray(grad_lse, np.float64)
    carries = visible & np.isfinite(forward.lse)[..., None]  # the pairs that carry a gradient
    P = np.where(carries, forward.weights, 0.0)  # (B..., Hq, Lq, Lk)
    k_abs = np.repeat(np.abs(k), G, axis=-3)  # (B..., Hq, Lk, Dk): kv head h // G
    v_h = np.repeat(v, G, axis=-3)
    scale = options.get("scale")
    scale = Dk**-0.5 if scale is None else abs(float(scale))
    # The forward's errors (steps 1 to 3), before the safety factor.
    forward_tol = _tolerance(dtype, q, k, v, options, forward.lse, forward.weights, forward.out)
    E_s = forward_tol.score_error
    e_p = 2 * E_s + (Lk + 8) * u + u * _finite_max(np.abs(forward.lse))
    largest_v = _finite_max(np.abs(v))
    e_o = largest_v * (2 * E_s + (2 * Lk + 16) * u) + OUTPUT_ROUNDING[dtype] * largest_v
    with np.errstate(invalid="ignore"):
        out = np.where(np.isfinite(forward.lse)[..., None], forward.out, 0.0)
        # 5. dP = dO·Vᵀ
        d_p = d_out @ np.swapaxes(v_h, -1, -2)
        e_dp = (Dv + 2) * u * (np.abs(d_out) @ np.swapaxes(np.abs(v_h), -1, -2))
        # 6. D_i, either form
        D = np.sum(d_out * out, axis=-1, keepdims=True)
        from_out = np.sum(np.abs(d_out) * (e_o + (Dv + 2) * u * np.abs(out)), axis=-1)
        from_p = np.sum(P * (e_p * np.abs(d_p) + e_dp) + (Lk + 2) * u * P * np.abs(d_p), axis=-1)
        e_D = np.maximum(from_out, from_p)[..., None]
        # 7. dS = P ⊙ (dP - D + dlse)
        T = d_p - D + d_lse[..., None]
        d_s = P * T
        rounding = 2 * u * (np.abs(d_p) + np.abs(D) + np.abs(d_lse)[..., None])
        e_ds = P * ((e_p + u) * np.abs(T) + e_dp + e_D + rounding)
        # 8. softcap
        d_x, e_dx = d_s, e_ds
        if options.get("softcap") is not None:
            cap = float(options["softcap"])
            x = oracle.scores(q, k, {"scale": options.get("scale")})
            slope = np.where(carries, 1 - np.tanh(x / cap) ** 2, 0.0)
            e_x = (Dk + 2) * u * scale * (np.abs(q) @ np.swapaxes(k_abs, -1, -2))
            d_x = d_s * slope
            e_dx = slope * e_ds + np.abs(d_s) * (_SLOPE_OF_SLOPE * e_x / cap + 5 * u)
        # 9. the products
        e_dq = scale * ((e_dx + (Lk + 3) * u * np.abs(d_x)) @ k_abs)
        terms_kv = G * Lq
        e_dk = _per_kv_head(
            scale * (np.swapaxes(e_dx + (terms_kv + 3) * u * np.abs(d_x), -1, -2) @ np.abs(q)), Hkv
        )
        size_v = _per_kv_head(np.swapaxes(P, -1, -2) @ np.abs(d_out), Hkv)
        e_dv = (e_p + (terms_kv + 2) * u) * size_v
        size_q = scale * (np.abs(d_x) @ k_abs)
        size_k = _per_kv_head(scale * (np.swapaxes(np.abs(d_x), -1, -2) @ np.abs(q)), Hkv)
    rounding16 = 2 * OUTPUT_ROUNDING[dtype]  # the gradient's rounding and its operand's
    floor16 = 2 * SUBNORMAL_ROUNDING[dtype]  # the same two, into the subnormal range
    tol = {
        "query": SAFETY * _finite_max(e_dq) + rounding16 * _finite_max(size_q) + floor16,
        "key": SAFETY * _finite_max(e_dk) + rounding16 * _finite_max(size_k) + floor16,
        "value": SAFETY * _finite_max(e_dv) + rounding16 * _finite_max(size_v) + floor16,
        "bias": None,
    }
    bias = options.get("bias")
    if bias is not None:
        m = max(1, int(np.prod(visible.shape)) // max(1, int(np.prod(np.shape(bias)))))
        e_db = oracle.to_bias_shape(e_ds + (m + 1) * u * np.abs(d_s), np.shape(bias))
        size_b = oracle.to_bias_shape(np.abs(d_s), np.shape(bias))
        tol["bias"] = SAFETY * _finite_max(e_db) + rounding16 * _finite_max(size_b) + floor16
    return GradientTolerance(**tol)


def _per_kv_head(grad: np.ndarray, Hkv: int) -> np.ndarray:
    """(B..., Hq, L, D) -> (B..., Hkv, L, D): the sum over each kv head's group of query heads."""
    *batch, Hq, length, dim = grad.shape
    return grad.reshape(*batch, Hkv, Hq // max(Hkv, 1), length, dim).sum(axis=-3)


class DifferenceBound:
    """How far a central difference of an implementation's own float64 forward
    (oracle.finite_differences, one entry at a time) may be from its gradient: the bound of
    the module docstring ("Finite differences"), for the loss L = Σ grad_out·out + Σ
    grad_lse·lse restricted to the rows an entry reaches (`rows`)."""

    def __init__(self, query, key, value, grad_out, grad_lse=None, **options):
        q, k, v, self.options = as_float64(query, key, value, options)
        self.q, self.k, self.v = q, k, v
        forward = oracle.attention(q, k, v, self.options)
        self.visible = oracle.visibility(q, k, self.options)  # (B..., Hq, Lq, Lk)
        self.ordinary = np.isfinite(forward.lse)  # the rows whose L depends on their inputs
        self.out, self.lse = forward.out, forward.lse
        self.d_out = np.asarray(grad_out, dtype=np.float64)
        d_lse = np.zeros(q.shape[:-1]) if grad_lse is None else grad_lse
        self.d_lse = np.asarray(d_lse, dtype=np.float64)
        self.forward_tol = _tolerance(
            "float64", q, k, v, self.options, forward.lse, forward.weights, forward.out
        )
        self.gradient_tol = gradient_tolerance(q, k, v, self.d_out, grad_lse, **self.options)
        self.G = q.shape[-3] // max(k.shape[-3], 1)
        scale = self.options.get("scale")
        self.scale = q.shape[-1] ** -0.5 if scale is None else float(scale)

    def _slopes(self, name: str, index: tuple[int, ...]) -> np.ndarray:
        """c: how each score s_ij (before the softcap, x_ij, for query and key) moves with the
        entry, (B..., Hq, Lq, Lk); 0 where it does not."""
        c = np.zeros(self.visible.shape)
        if name == "query":
            *batch, h, i, d = index
            kv = np.repeat(self.k, self.G, axis=-3)[(*batch, h)]  # (Lk, Dk)
            c[(*batch, h, i)] = self.scale * kv[:, d]
        elif name == "key":
            *batch, g, j, d = index
            heads = slice(g * self.G, (g + 1) * self.G)
            c[(*batch, heads, slice(None), j)] = self.scale * self.q[(*batch, heads)][..., d]
        elif name == "bias":
            bias = np.zeros(np.shape(self.options["bias"]))
            bias[index] = 1.0
            c = np.broadcast_to(bias, c.shape).copy()
        return np.where(self.visible, c, 0.0)

    def rows(self, name: str, index: tuple[int, ...]) -> np.ndarray:
        """(B..., Hq, Lq) bool: the rows whose out or lse the entry can move."""
        if name == "value":
            *batch, g, j, _ = index
            seen = np.zeros(self.visible.shape[:-1], dtype=bool)
            heads = slice(g * self.G, (g + 1) * self.G)
            seen[(*batch, heads)] = self.visible[(*batch, heads, slice(None), j)]
            return seen & self.ordinary
        c = self._slopes(name, index)
        return (c != 0).any(axis=-1) & self.ordinary

    def __call__(self, name: str, index: tuple[int, ...]) -> float:
        """The tolerance of the central difference in the entry `name`[index] (name: query,
        key, value or bias) against the implementation's gradient there."""
        x = {"query": self.q, "key": self.k, "value": self.v}.get(name)
        x = self.options["bias"] if x is None else x
        h = oracle.difference_step(x[index])
        rows = self.rows(name, index)
        d_out, d_lse = self.d_out[rows], self.d_lse[rows]  # (n, Dv), (n,)
        # Rounding: the forward's error of L over these rows, and the float64 sum of L itself.
        error = (
            np.abs(d_out).sum() * self.forward_tol.out + np.abs(d_lse).sum() * self.forward_tol.lse
        )
        terms = np.abs(d_out * self.out[rows]).sum() + np.abs(d_lse * self.lse[rows]).sum()
        error += (d_out.size + d_lse.size + 1) * UNIT_ROUNDOFF["float64"] * terms
        third = 0.0
        if name != "value" and rows.any():
            c = self._slopes(name, index)[rows]  # (n, Lk)
            seen = self.visible[rows]
            v = np.repeat(self.v, self.G, axis=-3)  # (B..., Hq, Lk, Dv)
            v = np.broadcast_to(v[..., None, :, :], (*self.visible.shape, v.shape[-1]))[rows]
            big, small = np.where(seen[..., None], v, -np.inf), np.where(seen[..., None], v, np.inf)
            W = big.max(axis=-2) - small.min(axis=-2)  # (n, Dv): the range of v over visible keys
            spread = np.sum(np.abs(d_out) * W, axis=-1)  # Σ_d |dO_id|·W_d
            cap = self.options.get("softcap")
            if cap is None or name == "bias":
                R = np.where(seen, c, -np.inf).max(axis=-1) - np.where(seen, c, np.inf).min(axis=-1)
                third = float(np.sum(R**3 * (4 * spread + np.abs(d_lse))))
            else:
                cap = float(cap)
                A = np.abs(c).max(axis=-1)
                R1, R2, R3 = 2 * A, 1.54 * A**2 / cap, 4 * A**3 / cap**2
                on_out = spread * (4 * R1**3 + 3 * R1 * R2 + R3)
                on_lse = np.abs(d_lse) * (R1**3 + 3 * R1 * R2 + 2 * A**3 / cap**2)
                third = float(np.sum(on_out + on_lse))
        return SAFETY * h**2 * third / 6 + error / h + getattr(self.gradient_tol, name)
