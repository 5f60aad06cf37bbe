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

       |Δo_id| += 2·u_L·max_id (Σ_j p_ij·|v_jd| + |o_id|)

   (2 for the second-order terms). One that accumulates the softmax sum or P·V in the low
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
        rounded = np.where(np.isfinite(rounded), rounded, 0.0)
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
