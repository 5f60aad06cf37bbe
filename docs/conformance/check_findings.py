"""Each failure published in docs/conformance, checked by calling the peer directly.

    python docs/conformance/check_findings.py

Neither refattn nor its spec is used here: every call goes straight to the peer's own API, and
the expected values are written out in float64 NumPy from the definition of attention. Each
finding prints CONFIRMED (the peer behaves as the report says) or NOT REPRODUCED; a peer that
is not installed is skipped. findings.md explains each one.
"""

from __future__ import annotations

import importlib
import math
import warnings

import numpy as np

RESULTS: list[tuple[str, str, str]] = []
PEER_MODULE = {
    "torch": "torch",
    "jax": "jax",
    "onnxruntime": "onnxruntime",
    "onnx-reference": "onnx",
}


def attention(q, k, v, visible=None, scale=None, bias=None):
    """float64 softmax(q·kᵀ·scale + bias)·v over visible keys, 0 for a row that sees none.
    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if bias is not None:
        s = s + bias
    if visible is None:
        visible = np.ones(s.shape, bool)
    visible = np.broadcast_to(visible, s.shape)
    s = np.where(visible, s, -np.inf)
    top = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
    with np.errstate(invalid="ignore"):  # a NaN or +inf score makes its row NaN, quietly
        e = np.exp(s - np.where(np.isfinite(top), top, 0))
        total = e.sum(axis=-1, keepdims=True)
        return (e / np.where(total > 0, total, 1)) @ np.where(np.isfinite(v), v, 0)


def finding(peer: str, title: str):
    """Register a check: it returns (confirmed, what was seen)."""

    def register(check):
        try:
            importlib.import_module(PEER_MODULE[peer])
        except ImportError:
            RESULTS.append((peer, title, "SKIPPED (not installed)"))
            return check
        try:
            confirmed, seen = check()
        except Exception as error:  # the check itself broke: say so, do not hide it
            confirmed, seen = False, f"the check raised {type(error).__name__}: {error}"
        RESULTS.append((peer, title, ("CONFIRMED: " if confirmed else "NOT REPRODUCED: ") + seen))
        return check

    return register


def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------- PyTorch


def _sdpa(backend, *args, **kwargs):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}.get(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if chosen is None:
            return torch.nn.functional.scaled_dot_product_attention(*args, **kwargs)
        with sdpa_kernel(chosen):
            return torch.nn.functional.scaled_dot_product_attention(*args, **kwargs)


@finding("torch", "ATT-M3: a 1-D attn_mask with 4-D inputs raises IndexError (default path)")
def torch_mask_1d():
    import torch

    q, k = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 4, 8)
    mask = torch.tensor([True, False, True, True])  # broadcastable to (1, 1, 3, 4)
    seen = {}
    for backend in ("default", "flash", "math"):
        try:
            _sdpa(backend, q, k, k, attn_mask=mask)
            seen[backend] = "ok"
        except IndexError as error:
            seen[backend] = f"IndexError: {error}"
    confirmed = seen["default"].startswith("IndexError") and seen["math"] == "ok"
    return confirmed, "; ".join(f"{b}: {r}" for b, r in seen.items())


@finding("torch", "ATT-S3 (torch-flash): scale=0.0 with is_causal=True gives NaN on the flash path")
def torch_scale_zero_causal():
    import torch

    q, k, v = (torch.randn(1, 1, n, 4, dtype=torch.float64) for n in (1, 2, 2))
    out = {b: _sdpa(b, q, k, v, is_causal=True, scale=0.0) for b in ("default", "flash", "math")}
    want = v[0, 0, 0]  # row 0 sees key 0 only
    confirmed = torch.isnan(out["flash"]).all() and torch.allclose(out["math"][0, 0, 0], want)
    shown = {b: out[b].flatten()[:2].tolist() for b in out}
    return bool(confirmed and torch.isnan(out["default"]).all()), (
        f"first outputs {shown}, expected v0 = {want[:2].tolist()}"
    )


@finding(
    "torch",
    "ATT-M5, N1, A1, N8, G1, G3, G6 (torch-flash, torch's flash path): a negative "
    "scale with is_causal=True gives NaN",
)
def torch_negative_scale_causal():
    import torch

    q, k, v = (torch.randn(1, 1, 8, 4, dtype=torch.float64) for _ in range(3))
    want = attention(q.numpy(), k.numpy(), v.numpy(), visible=np.tri(8, 8, dtype=bool), scale=-0.5)
    out = {b: _sdpa(b, q, k, v, is_causal=True, scale=-0.5) for b in ("default", "flash", "math")}
    nan_rows = {b: int(torch.isnan(x).any(-1).sum()) for b, x in out.items()}
    math_error = float(np.abs(out["math"].numpy() - want).max())
    unmasked = int(torch.isnan(_sdpa("flash", q, k, v, scale=-0.5)).any(-1).sum())
    q.requires_grad_()
    with_grad = _sdpa("flash", q, k, v, is_causal=True, scale=-0.5)
    (d_q,) = torch.autograd.grad(with_grad.sum(), (q,))
    confirmed = nan_rows["flash"] and nan_rows["default"] and not nan_rows["math"]
    confirmed = confirmed and math_error < 1e-12 and not unmasked and bool(d_q.isnan().any())
    return bool(confirmed), (
        f"NaN rows of 8: {nan_rows}; the math backend's error {math_error:.1g}; the flash kernel "
        f"without is_causal: {unmasked} NaN rows; its dq has NaN: {bool(d_q.isnan().any())}"
    )


@finding("torch", "ATT-M8 (SHOULD): NaN in a hidden value makes a fully masked row NaN")
def torch_nan_hidden():
    import torch

    q, k, v = torch.randn(1, 1, 1, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4)
    v[..., 1, :] = float("nan")
    mask = torch.tensor([[False, False]])  # the row sees nothing: the spec says 0
    seen = {b: _sdpa(b, q, k, v, attn_mask=mask).flatten()[0].item() for b in ("math", "flash")}
    return all(math.isnan(x) for x in seen.values()), f"row output {seen}, expected 0"


def _first_out(backend, dtype, q, k, v):
    """Element [0, 0, 0, 0] of SDPA on NumPy q, k, v converted to `dtype`, as a float."""
    import torch

    return _sdpa(backend, *(torch.tensor(x).to(dtype) for x in (q, k, v)))[0, 0, 0, 0].item()


@finding("torch", "ATT-N6 (torch-flash, torch's flash path): a NaN query row with few keys gives 0")
def torch_nan_query_short_row():
    import torch

    r = rng()
    q = r.standard_normal((1, 1, 1, 4))
    q[..., 0] = np.nan  # every score of the row is NaN
    seen = {}
    for n in (3, 64):  # fewer keys than one SIMD vector; several vectors of them
        k, v = r.standard_normal((1, 1, n, 4)), r.standard_normal((1, 1, n, 4))
        want = attention(q, k, v)[0, 0, 0, 0]  # NaN
        for b in ("default", "flash", "math"):
            seen[f"Lk={n} {b}"] = _first_out(b, torch.float32, q, k, v)
    short_zero = seen["Lk=3 flash"] == 0.0 and seen["Lk=3 default"] == 0.0
    others_nan = all(math.isnan(x) for key, x in seen.items() if "Lk=64" in key or "math" in key)
    shown = ", ".join(f"{key}: {x:.3g}" for key, x in seen.items())
    return bool(math.isnan(want) and short_zero and others_nan), f"{shown}; expected {want}"


@finding("torch", "ATT-N7 (torch-flash, torch's flash path): float16 +inf score gives 0, not NaN")
def torch_inf_score_half():
    import torch

    r = rng()
    q = np.abs(r.standard_normal((1, 1, 1, 4))) + 0.5
    k, v = np.abs(r.standard_normal((1, 1, 16, 4))), r.standard_normal((1, 1, 16, 4))
    k[..., 0, 0] = np.inf  # q·k_0 = +inf
    want = attention(q, k, v)[0, 0, 0, 0]  # NaN: exp(inf - inf)
    seen = {
        f"{dtype} {b}": _first_out(b, getattr(torch, dtype), q, k, v)
        for dtype in ("float16", "bfloat16", "float32")
        for b in ("default", "flash", "math")
    }
    half = [f"{d} {b}" for d in ("float16", "bfloat16") for b in ("default", "flash")]
    half_zero = all(seen[key] == 0.0 for key in half)
    others_nan = all(math.isnan(x) for key, x in seen.items() if "math" in key or "float32" in key)
    shown = ", ".join(f"{key}: {x:.3g}" for key, x in seen.items())
    return bool(math.isnan(want) and half_zero and others_nan), f"{shown}; expected {want}"


@finding("torch", "ATT-M8/G9 (SHOULD, all three): a masked NaN key, value reach out and gradients")
def torch_nan_hidden_gradients():
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    r = rng()
    q, k, v = r.standard_normal((1, 1, 1, 4)), *(r.standard_normal((1, 1, 2, 4)) for _ in "kv")
    k[..., 1, :] = v[..., 1, :] = np.nan
    seen = {}
    for backend in ("MATH", "FLASH_ATTENTION"):
        leaves = [torch.tensor(x, requires_grad=True) for x in (q, k, v)]
        with sdpa_kernel(getattr(SDPBackend, backend)):
            out = torch.nn.functional.scaled_dot_product_attention(
                *leaves,
                attn_mask=torch.tensor([[True, False]]),  # the row sees key 0 only
            )
            dq, dk, dv = torch.autograd.grad(out, leaves, torch.ones_like(out))
        seen[backend] = [x[0, 0, 0, 0].item() for x in (out, dq, dk, dv)]
    # The spec: out = v_0; one visible key, so dq = dk_0 = 0 and dv_0 = dO = 1.
    want = [float(v[0, 0, 0, 0]), 0.0, 0.0, 1.0]
    confirmed = all(all(math.isnan(x) for x in got) for got in seen.values())
    return confirmed, f"(out, dq, dk_0, dv_0) {seen}, expected {want}"


# ---------------------------------------------------------------- JAX


@finding("jax", "ATT-W4 (declared): a row that sees no key gets the mean of V, finite lse")
def jax_fully_masked():
    import jax

    r = rng()
    q, k, v = (r.standard_normal((1, n, 1, 4)).astype(np.float32) for n in (2, 3, 3))
    mask = np.ones((1, 1, 2, 3), bool)
    mask[..., 1, :] = False
    out, lse = jax.nn.dot_product_attention(q, k, v, mask=mask, return_residual=True)
    out, lse = np.asarray(out), np.asarray(lse)
    mean = v[0, :, 0].mean(axis=0)
    return bool(np.allclose(out[0, 1, 0], mean) and np.isfinite(lse[0, 1, 0])), (
        f"row 1 out {out[0, 1, 0][:2]} = mean of V {mean[:2]}, lse {lse[0, 1, 0]:.3g}"
    )


@finding("jax", "ATT-M4 (declared): a row hidden by -inf bias alone gives NaN")
def jax_bias_row():
    import jax

    r = rng()
    q, k = (r.standard_normal((1, n, 1, 4)).astype(np.float32) for n in (2, 3))
    bias = np.zeros((1, 1, 2, 3), np.float32)
    bias[..., 1, :] = -np.inf
    out = np.asarray(jax.nn.dot_product_attention(q, k, k, bias=bias))
    return bool(np.isnan(out[0, 1]).all() and np.isfinite(out[0, 0]).all()), f"row 1 {out[0, 1, 0]}"


@finding("jax", "ATT-M8 (SHOULD): NaN in a hidden value reaches rows that see other keys")
def jax_nan_hidden():
    import jax

    r = rng()
    q, k, v = (r.standard_normal((1, n, 1, 4)).astype(np.float32) for n in (1, 2, 2))
    v[0, 1] = np.nan
    mask = np.array([True, False]).reshape(1, 1, 1, 2)  # the row sees key 0 only
    out = np.asarray(jax.nn.dot_product_attention(q, k, v, mask=mask))
    return bool(np.isnan(out).all()), f"row output {out.ravel()[:2]}, expected v0 {v[0, 0, 0, :2]}"


@finding("jax", "ATT-G9 (SHOULD): a NaN key hidden by the mask leaves out clean but makes dq NaN")
def jax_nan_hidden_key_gradient():
    import jax

    r = rng()
    q, k, v = (r.standard_normal((1, n, 1, 4)).astype(np.float32) for n in (1, 3, 3))
    k[:, 0] = np.nan
    mask = np.array([False, True, True]).reshape(1, 1, 1, 3)  # the row sees keys 1 and 2

    def f(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask)

    out, vjp = jax.vjp(f, q, k, v)
    dq = np.asarray(vjp(np.ones((1, 1, 1, 4), np.float32))[0])
    visible = mask.reshape(1, 1, 3)
    want = attention(*(np.swapaxes(x, 1, 2) for x in (q, k, v)), visible)  # finite
    out_ok = np.allclose(np.swapaxes(np.asarray(out), 1, 2), want, atol=1e-5)
    return bool(out_ok and np.isnan(dq).all()), (
        f"out {np.asarray(out).ravel()[:2]} (as expected {want.ravel()[:2]}), dq {dq.ravel()[:2]}, "
        "expected finite (key 0 is hidden)"
    )


@finding("jax", "ATT-G1/G3/G6/G7/G8 (declared): a row that sees no key sends dO/Lk to every value")
def jax_fully_masked_gradient():
    import jax

    r = rng()
    q, k, v, g = (
        r.standard_normal(s).astype(np.float32)
        for s in [(1, 1, 1, 4), (1, 3, 1, 4), (1, 3, 1, 4), (1, 1, 1, 4)]
    )
    lengths = jax.numpy.array([0], dtype=np.int32)  # the row sees no key

    def f(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths)

    _, vjp = jax.vjp(f, q, k, v)
    dv = np.asarray(vjp(g)[2])  # the spec: 0 (the row's out is the constant 0)
    return bool(np.allclose(dv[0, :, 0], g[0, 0, 0] / 3)), (
        f"dv[key 0] {dv[0, 0, 0, :2]} = dO/3 {g[0, 0, 0, :2] / 3}, expected 0"
    )


@finding("jax", "ATT-G1/G5 (declared): the lse residual carries no gradient (grad_lse dropped)")
def jax_lse_no_gradient():
    import jax

    r = rng()
    q, k, v = (r.standard_normal((1, n, 1, 4)).astype(np.float32) for n in (1, 3, 3))
    bias = r.standard_normal((1, 1, 1, 3)).astype(np.float32)

    def f(q, k, v, b):
        return jax.nn.dot_product_attention(q, k, v, bias=b, return_residual=True)

    (out, lse), vjp = jax.vjp(f, q, k, v, bias)
    d_bias = np.asarray(vjp((jax.numpy.zeros_like(out), jax.numpy.ones_like(lse)))[3])
    # the spec: d lse / d bias_j is the weight p_j, so Σ_j dbias_j = grad_lse = 1
    s = k[0, :, 0].astype(np.float64) @ q[0, 0, 0].astype(np.float64) * 0.5 + bias.ravel()
    p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    return bool(d_bias.sum() == 0.0 and np.isclose(p.sum(), 1.0)), (
        f"Σ dbias {d_bias.sum()}, expected Σ p = {p.sum():.3g} (= grad_lse)"
    )


@finding("jax", "float16 not claimed: under jax.jit, float16 on the CPU raises ValueError")
def jax_float16_jit():
    import jax

    x = np.ones((1, 2, 1, 4), np.float16)
    eager = np.asarray(jax.nn.dot_product_attention(x, x, x))
    try:
        jax.jit(jax.nn.dot_product_attention)(x, x, x)
        return False, "jit worked"
    except ValueError as error:
        return bool(np.isfinite(eager).all()), f"eager fine, jit: {error}"


@finding("jax", "float64 not claimed: float64 inputs get a float32 softmax (error ~1e-7)")
def jax_float64():
    import jax

    r = rng()
    q, k = r.standard_normal((1, 5, 2, 16)), r.standard_normal((1, 7, 2, 16))
    with jax.enable_x64(True):
        out = np.asarray(jax.nn.dot_product_attention(q, k, k))
    want = np.swapaxes(
        attention(np.swapaxes(q, 1, 2), np.swapaxes(k, 1, 2), np.swapaxes(k, 1, 2)), 1, 2
    )
    error = float(np.abs(out - want).max())
    return out.dtype == np.float64 and error > 1e-9, f"float64 out, max error {error:.2g}"


# ---------------------------------------------------------------- ONNX


def _onnx_attention(runtime, opset, feeds, attrs=None, outputs=1):
    from onnx import helper

    names = ["Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen"]
    inputs = [n if n in feeds else "" for n in names]
    while not inputs[-1]:
        inputs.pop()
    graph_inputs = [
        helper.make_tensor_value_info(
            n,
            helper.np_dtype_to_tensor_dtype(feeds[n].dtype),
            [f"{n}{i}" for i in range(feeds[n].ndim)],
        )
        for n in names
        if n in feeds
    ]
    dtype = helper.np_dtype_to_tensor_dtype(feeds["Q"].dtype)
    out_names = ["Y", "", "", "QK"][: 4 if outputs > 1 else 1]
    graph_outputs = [helper.make_tensor_value_info(n, dtype, None) for n in out_names if n]
    node = helper.make_node("Attention", inputs, out_names, **(attrs or {}))
    graph = helper.make_graph([node], "g", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    if runtime == "reference":
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, feeds)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def _qkv(dtype, shapes=((1, 1, 2, 2), (1, 1, 3, 2), (1, 1, 3, 2))):
    r = rng()
    return [r.standard_normal(s).astype(dtype) for s in shapes]


@finding("onnxruntime", "ATT-S2/N1/N2/C3/N8/N9: float64 errs at float32 level: scale in float32")
def ort_float64_scale():
    q, k, v = _qkv(np.float64)  # head size 2: scale 1/sqrt(2) is not a float32 number
    (out,) = _onnx_attention("onnxruntime", 24, {"Q": q, "K": k, "V": v})
    error = float(np.abs(out - attention(q, k, v)).max())
    q4, k4, v4 = _qkv(np.float64, ((1, 1, 2, 16), (1, 1, 3, 16), (1, 1, 3, 16)))
    (exact,) = _onnx_attention("onnxruntime", 24, {"Q": q4, "K": k4, "V": v4})  # sqrt(1/16) exact
    exact_error = float(np.abs(exact - attention(q4, k4, v4)).max())
    # scale 0.5 is a float32 number, but is applied as sqrt(0.5) to Q and to K
    (half,) = _onnx_attention("onnxruntime", 24, {"Q": q, "K": k, "V": v}, {"scale": 0.5})
    half_error = float(np.abs(half - attention(q, k, v, scale=0.5)).max())
    return error > 1e-10 and exact_error < 1e-14 and half_error > 1e-10, (
        f"max error {error:.2g} with head size 2, {exact_error:.2g} with 16 (scale 1/4), "
        f"{half_error:.2g} with scale=0.5"
    )


@finding("onnxruntime", "ATT-S3: scale=0 is refused ('scale must be greater than 0')")
def ort_scale_zero():
    q, k, v = _qkv(np.float32)
    try:
        _onnx_attention("onnxruntime", 24, {"Q": q, "K": k, "V": v}, {"scale": 0.0})
        return False, "accepted"
    except Exception as error:
        return "scale must be greater than 0" in str(error), str(error).split("was false.")[-1]


@finding("onnxruntime", "ATT-S3, and in float32 every invariant that draws a scale < 0: refused")
def ort_negative_scale():
    q, k, v = _qkv(np.float32)
    try:
        _onnx_attention("onnxruntime", 24, {"Q": q, "K": k, "V": v}, {"scale": -1.0})
        return False, "accepted"
    except Exception as error:
        return "scale must be greater than 0" in str(error), str(error).split("was false.")[-1]


@finding("onnxruntime", "ATT-W1/W2/W3/N1: float64 with a negative scale gives NaN (sqrt(scale))")
def ort_float64_negative_scale():
    # the float32 kernel refuses scale < 0 (above); float64, which it does not register, runs
    # the operator's function body, which scales Q and K by sqrt(scale) each
    q, k, v = (np.ones((1, 1, 1, 2), np.float64) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (out,) = _onnx_attention("onnxruntime", 24, {"Q": q, "K": k, "V": v}, {"scale": -1.0})
    return bool(np.isnan(out).all()), f"Y {out.ravel()}, expected v = [1, 1]"


@finding("onnx-reference", "ATT-W1/W2/W3/N1/N7: a negative scale gives NaN (sqrt(scale) on Q, K)")
def onnx_reference_negative_scale():
    q, k, v = (np.ones((1, 1, 1, 2), np.float32) for _ in range(3))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (out,) = _onnx_attention("reference", 24, {"Q": q, "K": k, "V": v}, {"scale": -1.0})
    return bool(np.isnan(out).all()), f"Y {out.ravel()}, expected v = [1, 1]"


@finding("onnxruntime", "float16 not claimed: weights (qk_matmul_output mode 3) are float16")
def ort_float16_weights():
    q, k, v = _qkv(np.float16)
    _, qk = _onnx_attention(
        "onnxruntime", 24, {"Q": q, "K": k, "V": v}, {"qk_matmul_output_mode": 3}, outputs=2
    )
    sums = qk.astype(np.float64).sum(axis=-1)
    return qk.dtype == np.float16, f"weights dtype {qk.dtype}, row sums {sums.ravel()}"


@finding("onnxruntime", "float16 not claimed: the opset-24 kernel computes float16 in float16")
def ort_float16_kernel():
    r = rng()
    q = r.standard_normal((1, 1, 2, 5)).astype(np.float16)
    k = (2 * r.standard_normal((1, 1, 140, 5))).astype(np.float16)
    v = r.standard_normal((1, 1, 140, 5)).astype(np.float16)
    want = attention(q, k, v, scale=2.0)
    (kernel,) = _onnx_attention("onnxruntime", 24, {"Q": q, "K": k, "V": v}, {"scale": 2.0})
    (body,) = _onnx_attention("onnxruntime", 25, {"Q": q, "K": k, "V": v}, {"scale": 2.0})
    e24, e25 = (float(np.abs(x.astype(np.float64) - want).max()) for x in (kernel, body))
    return e24 > 2 * e25, f"max error: opset 24 kernel {e24:.2g}, opset 25 function body {e25:.2g}"


@finding("onnxruntime", "ATT-M8 (SHOULD): NaN in a hidden value makes a fully masked row NaN")
def ort_nan_hidden():
    q, k, v = _qkv(np.float32)
    v[..., 2, :] = np.nan
    mask = np.array([[True, True, False], [False, False, False]])  # row 1 sees nothing
    (out,) = _onnx_attention("onnxruntime", 24, {"Q": q, "K": k, "V": v, "attn_mask": mask})
    return bool(np.isnan(out[0, 0, 1]).all()), f"row 1 {out[0, 0, 1]}, expected 0"


@finding("onnxruntime", "ATT-N7 (SHOULD): a row whose every score is -inf gives NaN, not 0")
def ort_all_minus_inf_row():
    q = np.array([0.6, -0.1], np.float32).reshape(1, 1, 2, 1)  # row 1: score -inf
    k = np.array([np.inf], np.float32).reshape(1, 1, 1, 1)
    v = np.array([0.5], np.float32).reshape(1, 1, 1, 1)
    (out,) = _onnx_attention("onnxruntime", 24, {"Q": q, "K": k, "V": v})
    want = attention(q, k, v)  # row 0 NaN (+inf score), row 1 0 (every visible score -inf)
    # the same row hidden by the mask instead: 0
    mask = np.array([[True], [False]])
    feeds = {"Q": q, "K": np.ones_like(k), "V": v, "attn_mask": mask}
    (masked,) = _onnx_attention("onnxruntime", 24, feeds)
    confirmed = np.isnan(out[0, 0, 1, 0]) and want[0, 0, 1, 0] == 0 and masked[0, 0, 1, 0] == 0
    return bool(confirmed), (
        f"out {out.ravel()}, expected {want.ravel()}; the row hidden by the mask: "
        f"{masked[0, 0, 1, 0]}"
    )


@finding("onnxruntime", "adapter note: a 1-D mask or one broadcast along Lq is refused")
def ort_mask_broadcast():
    q, k, v = _qkv(np.float32)
    seen = []
    for mask in (np.array([True, False, True]), np.array([[True, False, True]])):
        try:
            _onnx_attention("onnxruntime", 24, {"Q": q, "K": k, "V": v, "attn_mask": mask})
            seen.append(f"{mask.shape}: ok")
        except Exception as error:
            seen.append(f"{mask.shape}: {str(error).split('was false.')[-1].strip()}")
    return all("ok" not in s for s in seen), "; ".join(seen)


@finding("onnx-reference", "ATT-W1/M9/S2/S3/H4/A1/N1/N2/N6/N7/N8/N9: is_causal, mask along Lq")
def onnx_ref_causal_broadcast_mask():
    q, k, v = _qkv(np.float64, ((1, 1, 2, 2), (1, 1, 2, 2), (1, 1, 2, 2)))
    mask = np.array([[False, True]])  # one row for both queries: hide key 0
    (out,) = _onnx_attention(
        "reference", 24, {"Q": q, "K": k, "V": v, "attn_mask": mask}, {"is_causal": 1}
    )
    visible = np.tril(np.ones((2, 2), bool)) & mask  # row 0 sees nothing, row 1 sees key 1
    want = attention(q, k, v, visible)
    return bool(np.abs(out[0, 0, 1] - want[0, 0, 1]).max() > 0.1), (
        f"row 1 {out[0, 0, 1]}, expected {want[0, 0, 1]} (v of key 1): the causal mask is "
        "built from the mask's shape (1 row), not the query's"
    )


@finding("onnx-reference", "ATT-C3/N1/N7/N8/N9: float64, explicit scale: errs at float32 level")
def onnx_ref_float64_scale():
    q, k, v = _qkv(np.float64)
    (out,) = _onnx_attention("reference", 24, {"Q": q, "K": k, "V": v}, {"scale": 0.5})
    error = float(np.abs(out - attention(q, k, v, scale=0.5)).max())
    return error > 1e-12, f"scale 0.5 (a float32 number), max error {error:.2g}"


@finding("onnx-reference", "float16 not claimed: computed (and weights returned) in float16")
def onnx_ref_float16():
    r = rng()
    q = r.standard_normal((1, 1, 9, 1)).astype(np.float16)
    k, v = (r.standard_normal((1, 1, 2, n)).astype(np.float16) for n in (1, 2))
    out, qk = _onnx_attention(
        "reference", 24, {"Q": q, "K": k, "V": v}, {"qk_matmul_output_mode": 3}, outputs=2
    )
    error = float(np.abs(out.astype(np.float64) - attention(q, k, v)).max())
    return qk.dtype == np.float16, f"weights {qk.dtype}, max error of out {error:.2g}"


@finding("onnx-reference", "ATT-D3: Lk = 0 raises a NumPy error")
def onnx_ref_no_keys():
    q, k, v = _qkv(np.float32, ((1, 1, 2, 2), (1, 1, 0, 2), (1, 1, 0, 2)))
    try:
        _onnx_attention("reference", 24, {"Q": q, "K": k, "V": v})
        return False, "worked"
    except ValueError as error:
        return "zero-size array" in str(error), f"ValueError: {error}"


@finding("onnx-reference", "ATT-M8 (SHOULD): NaN in a hidden value makes a fully masked row NaN")
def onnx_ref_nan_hidden():
    q, k, v = _qkv(np.float32)
    v[..., 2, :] = np.nan
    mask = np.array([[True, True, False], [False, False, False]])
    (out,) = _onnx_attention("reference", 24, {"Q": q, "K": k, "V": v, "attn_mask": mask})
    return bool(np.isnan(out[0, 0, 1]).all()), f"row 1 {out[0, 0, 1]}, expected 0"


if __name__ == "__main__":
    for peer, title, verdict in RESULTS:
        print(f"[{peer}] {title}\n    {verdict}")
    confirmed = sum(v.startswith("CONFIRMED") for _, _, v in RESULTS)
    print(f"\n{confirmed} of {len(RESULTS)} findings confirmed")
