"""Targeted tests of the native backward (refattn.native.attention_backward), beyond the spec's
gradient invariants (tests/test_spec_native.py runs ATT-G1..G10 against it): every call of
tests/test_backward.py against the spec's float64 gradients, each kernel table at and around
its tiles (scalar 32 x 64, AVX2 96 x 96, AVX-512 96 x 128) with every mask, the hidden-key,
fully masked and NaN rules, bit-identity across thread counts (and so across the fused and the
two-pass plans) and repeated calls, the forward's out and lse passed in, low-precision inputs,
memory without an Lq x Lk buffer, and every bad input's message.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import ml_dtypes
import numpy as np
import pytest
import test_backward as ref_tests  # its calls (CALLS, build), rules call and bad inputs
from refattn.spec.tolerance import expect_gradients, mismatch

from refattn import native, reference
from refattn.call import AttentionGradients

NAMES = AttentionGradients._fields  # query, key, value, bias
# float32 under "amx_bf16" and "avx512_bf16" runs the "avx512" kernels: each float32 kernel
# table once.
ISAS = [isa for isa in native.available_isas() if isa not in native.BFLOAT16_ONLY_ISAS]


def _gradients(q, k, v, grad_out, grad_lse=None, *, isa=None, num_threads=None, **options):
    return native.attention_backward(
        q, k, v, grad_out, grad_lse=grad_lse, isa=isa, num_threads=num_threads, **options
    )


def _check(q, k, v, grad_out, grad_lse=None, *, isa=None, num_threads=None, **options):
    """native's gradients within the spec's gradient tolerance of its float64 gradients, in the
    input dtype (the bias's in the bias's); returns them."""
    got = _gradients(q, k, v, grad_out, grad_lse, isa=isa, num_threads=num_threads, **options)
    want = expect_gradients(q, k, v, grad_out, grad_lse, **options)
    for name in NAMES:
        g, w = getattr(got, name), getattr(want, name)
        if w is None:
            assert g is None, f"d{name} should be None without a bias"
            continue
        dtype = options["bias"].dtype if name == "bias" else q.dtype
        assert g.dtype == dtype and g.shape == w.shape, f"d{name}: {g.dtype} {g.shape}"
        problem = mismatch(g, w, getattr(want.tol, name))
        assert problem is None, f"({isa}, {num_threads} threads) d{name}: {problem}"
    return got


def _cast(dtype, *arrays):
    return [None if x is None else x.astype(dtype) for x in arrays]


def _identical(a: AttentionGradients, b: AttentionGradients, what: str) -> None:
    for name in NAMES:
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, what
            continue
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), f"{what}: d{name} differs"


# Every call of the reference's backward tests, in float64 (one code path) and in float32 for
# each kernel table.

CALL_NAMES = list(ref_tests.CALLS)


@pytest.mark.parametrize("name", CALL_NAMES)
def test_float64_matches_the_oracle_on_every_call(name):
    q, k, v, options, grad_out, grad_lse = ref_tests.build(name)
    got = _gradients(q, k, v, grad_out, grad_lse, **options)
    want = reference.attention_backward(q, k, v, grad_out, grad_lse=grad_lse, **options)
    ref_tests.assert_gradients_close(got, want, ref_tests.EXACT, name)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", CALL_NAMES)
def test_float32_within_the_tolerance_model_on_every_call(name, isa):
    q, k, v, options, grad_out, grad_lse = ref_tests.build(name)
    q, k, v, grad_out = _cast(np.float32, q, k, v, grad_out)
    (grad_lse,) = _cast(np.float32, grad_lse)
    if "bias" in options:  # a float32 bias, and so a float32 bias gradient
        options = {**options, "bias": np.asarray(options["bias"], dtype=np.float32)}
    _check(q, k, v, grad_out, grad_lse, isa=isa, **options)


# Tiles: lengths at k·tile - 1, k·tile and k·tile + 1 of every table's tiles (query rows x keys:
# scalar 32 x 64, AVX2 96 x 96, AVX-512 96 x 128), past the register blocks (6 rows; 16 or 8
# lanes), with every mask, GQA and Dk != Dv.

LENGTHS = [
    (1, 1),
    (31, 63),
    (32, 64),
    (33, 65),
    (95, 95),
    (96, 96),
    (97, 97),
    (96, 127),
    (97, 128),
    (193, 129),
    (191, 193),
    (65, 257),
]


def _features(kind, rng, B, Hq, Lq, Lk, dtype):
    if kind == "plain":
        return {}
    if kind == "mask":
        return {"mask": rng.random((B, 1, Lq, Lk)) < 0.7}
    if kind in ("top_left", "bottom_right"):
        return {"causal": kind}
    if kind == "kv_lengths":
        return {"kv_lengths": np.array([Lk, max(0, Lk // 2 - 1)])}
    if kind == "window":
        return {"window": (17, 3), "causal": "bottom_right"}
    if kind == "softcap":
        return {"softcap": 2.0, "scale": 1.5}
    if kind == "bias":
        bias = rng.standard_normal((Hq, 1, Lk)).astype(dtype)
        bias[rng.random(bias.shape) < 0.1] = -np.inf
        return {"bias": bias}
    raise ValueError(kind)


KINDS = ["plain", "mask", "top_left", "bottom_right", "kv_lengths", "window", "softcap", "bias"]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("Lq", "Lk"), LENGTHS, ids=[f"{a}x{b}" for a, b in LENGTHS])
@pytest.mark.parametrize("kind", KINDS)
def test_every_mask_at_tile_boundaries(isa, Lq, Lk, kind):
    """GQA (4 heads over 2), Dk 24 != Dv 40, grad_lse, lengths around the tiles, Lq != Lk."""
    rng = np.random.default_rng(Lq * 1000 + Lk)
    B, Hq, Hkv, Dk, Dv = 2, 4, 2, 24, 40
    q = rng.standard_normal((B, Hq, Lq, Dk)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, Lk, Dk)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Lk, Dv)).astype(np.float32)
    grad_out = rng.standard_normal((B, Hq, Lq, Dv)).astype(np.float32)
    grad_lse = rng.standard_normal((B, Hq, Lq)).astype(np.float32)
    options = _features(kind, rng, B, Hq, Lq, Lk, np.float32)
    _check(q, k, v, grad_out, grad_lse, isa=isa, num_threads=2, **options)


@pytest.mark.parametrize("isa", [isa for isa in ISAS if isa != "scalar"])
@pytest.mark.parametrize(("Lq", "Lk"), [(95, 129), (193, 257)], ids=["95x129", "193x257"])
@pytest.mark.parametrize("causal", [None, "bottom_right"])
def test_simd_agrees_with_scalar(isa, Lq, Lk, causal):
    """Each SIMD table's gradients within twice the tolerance of the scalar table's, the
    baseline every fast kernel is checked against."""
    rng = np.random.default_rng(Lq + Lk)
    q = rng.standard_normal((2, 2, Lq, 64)).astype(np.float32)
    k = rng.standard_normal((2, 1, Lk, 64)).astype(np.float32)
    v = rng.standard_normal((2, 1, Lk, 48)).astype(np.float32)
    grad_out = rng.standard_normal((2, 2, Lq, 48)).astype(np.float32)
    fast = _check(q, k, v, grad_out, isa=isa, causal=causal)
    plain = _check(q, k, v, grad_out, isa="scalar", causal=causal)
    tol = expect_gradients(q, k, v, grad_out, causal=causal).tol
    for name in ("query", "key", "value"):
        problem = mismatch(getattr(fast, name), getattr(plain, name), 2 * getattr(tol, name))
        assert problem is None, f"{isa} against scalar, d{name}: {problem}"


@pytest.mark.parametrize("isa", ISAS)
def test_all_features_together_in_float32_and_float64(isa):
    rng = np.random.default_rng(5)
    B, Hq, Hkv, Lq, Lk, Dk, Dv = 2, 6, 2, 100, 150, 40, 24
    mask = rng.random((Lq, Lk)) < 0.9
    bias = rng.standard_normal((B, 1, Lq, Lk))
    bias[rng.random(bias.shape) < 0.05] = -np.inf
    options = {
        "mask": mask,
        "causal": "bottom_right",
        "window": (60, 10),
        "kv_lengths": np.array([150, 77]),
        "softcap": 3.0,
    }
    for dtype in (np.float32, np.float64):
        q = rng.standard_normal((B, Hq, Lq, Dk)).astype(dtype)
        k = rng.standard_normal((B, Hkv, Lk, Dk)).astype(dtype)
        v = rng.standard_normal((B, Hkv, Lk, Dv)).astype(dtype)
        grad_out = rng.standard_normal((B, Hq, Lq, Dv)).astype(dtype)
        grad_lse = rng.standard_normal((B, Hq, Lq)).astype(dtype)
        _check(q, k, v, grad_out, grad_lse, isa=isa, bias=bias.astype(dtype), **options)


def test_strided_inputs_and_a_broadcast_bias_view():
    """Transposed heads, a negative step, and a stride-0 bias: read where they lie."""
    rng = np.random.default_rng(9)
    q = rng.standard_normal((2, 70, 3, 16)).astype(np.float32).transpose(0, 2, 1, 3)
    k = rng.standard_normal((2, 3, 90, 16)).astype(np.float32)[:, :, ::-1]
    v = rng.standard_normal((2, 3, 90, 32)).astype(np.float32)
    grad_out = rng.standard_normal((2, 3, 70, 32)).astype(np.float32)
    bias = np.broadcast_to(rng.standard_normal((1, 1, 1, 90)).astype(np.float32), (2, 3, 70, 90))
    for isa in ISAS:
        _check(q, k, v, grad_out, isa=isa, bias=bias, causal="top_left")


# The rules: hidden keys, fully masked rows, NaN (tests/test_backward.py's, on native).


def _rules(dtype):
    q, k, v, grad_out, grad_lse = ref_tests._rules_call()
    return _cast(dtype, q, k, v, grad_out, grad_lse)


DTYPES = [np.float32, np.float64]
PATHS = [(isa, np.float32) for isa in ISAS] + [("scalar", np.float64)]
PATH_IDS = [f"{isa}-{np.dtype(dtype).name}" for isa, dtype in PATHS]


@pytest.mark.parametrize(("isa", "dtype"), PATHS, ids=PATH_IDS)
def test_nan_and_inf_in_hidden_keys_reach_nothing(isa, dtype):
    """Keys hidden by a mask, a -inf bias and kv_lengths: exactly 0 in dK, dV and dbias, and NaN
    or Inf there changes no gradient, bit for bit."""
    q, k, v, grad_out, grad_lse = _rules(dtype)
    mask = np.ones((4, 6), dtype=bool)
    mask[:, 1] = False
    bias = np.zeros((2, 4, 6), dtype=dtype)
    bias[:, :, 3] = -np.inf
    options = {"mask": mask, "bias": bias, "kv_lengths": 5, "isa": isa}
    clean = _gradients(q, k, v, grad_out, grad_lse, **options)
    hidden = [1, 3, 5]
    for name in ("key", "value"):
        assert np.all(getattr(clean, name)[:, hidden] == 0), name
    assert np.all(clean.bias[..., hidden] == 0)
    k_bad, v_bad = k.copy(), v.copy()
    k_bad[:, 1], k_bad[:, 3, 0], k_bad[:, 5] = np.nan, np.inf, -np.inf
    v_bad[:, 1], v_bad[:, 3], v_bad[:, 5, 1] = np.inf, np.nan, np.nan
    _identical(_gradients(q, k_bad, v_bad, grad_out, grad_lse, **options), clean, "poisoned")


@pytest.mark.parametrize(("isa", "dtype"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("how", ref_tests.FULLY_MASKED_WAYS)
def test_fully_masked_rows_have_zero_gradients_and_no_nan(isa, dtype, how):
    q, k, v, grad_out, grad_lse = _rules(dtype)
    options = {"mask": np.ones((4, 6), dtype=bool), "bias": np.zeros((2, 4, 6), dtype=dtype)}
    q, k, rows = ref_tests.fully_masked(how, q, k, options)
    ref_tests.assert_hidden_rows_carry_nothing(
        lambda d_out, d_lse: _gradients(q, k, v, d_out, d_lse, isa=isa, **options),
        grad_out,
        grad_lse,
        rows,
        how,
    )


@pytest.mark.parametrize(("isa", "dtype"), PATHS, ids=PATH_IDS)
def test_a_nan_row_is_nan_in_its_query_and_in_every_key_it_sees(isa, dtype):
    q, k, v, grad_out, grad_lse = _rules(dtype)
    q[1, 2, 0] = np.nan  # head 1, row 2: NaN scores at keys 0..2 (causal: row i sees 0..i)
    options = {"causal": "top_left", "bias": np.zeros((2, 4, 6), dtype=dtype), "isa": isa}
    got = _gradients(q, k, v, grad_out, grad_lse, **options)
    assert np.isnan(got.query[1, 2]).all()
    assert np.isnan(got.key[0, :3]).all() and np.isnan(got.value[0, :3]).all()
    assert not np.isnan(got.key[0, 3:]).any() and not np.isnan(got.value[0, 3:]).any()
    assert np.isnan(got.bias[1, 2, :3]).all() and np.all(got.bias[1, 2, 3:] == 0)
    others = np.ones((2, 4), dtype=bool)
    others[1, 2] = False
    assert np.isfinite(got.query[others]).all() and np.isfinite(got.bias[others]).all()


@pytest.mark.parametrize("isa", ISAS)
def test_fully_masked_rows_across_tiles_and_nan_keys_beyond_kv_lengths(isa):
    """Many tiles: rows hidden by the mask in several query tiles, NaN keys and values past
    kv_lengths in several key tiles; dQ 0 there, no NaN anywhere, the rest within tolerance."""
    rng = np.random.default_rng(3)
    B, H, Lq, Lk, D = 2, 2, 150, 300, 32
    q, k, v, grad_out = (
        rng.standard_normal(shape).astype(np.float32)
        for shape in ((B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D), (B, H, Lq, D))
    )
    mask = np.ones((B, H, Lq, Lk), dtype=bool)
    dead = [0, 31, 64, 65, 149]
    mask[:, :, dead] = False
    lengths = np.array([300, 140])
    options = {"mask": mask, "kv_lengths": lengths}
    clean = _check(q, k, v, grad_out, isa=isa, **options)
    assert np.all(clean.query[:, :, dead] == 0)
    k[1, :, 140:], v[1, :, 140:] = np.nan, np.inf
    _identical(_gradients(q, k, v, grad_out, isa=isa, **options), clean, "NaN past kv_lengths")


# Determinism: bit for bit across thread counts, plans and calls.

# The fused plan (one item a kv head) on 1 thread, and on T threads when B·Hkv kv heads keep them
# 3/4 busy (native/backward.h, FUSED_BALANCE); else the two-pass plan (key tiles, then query
# tiles). B·Hkv = 8: fused on 1 to 4 threads; 2: fused on 1 and 2, two passes on 3 and 4;
# 1: two passes from 2 threads on.
SHAPES = [(4, 4, 2, 200, 300), (1, 6, 2, 257, 129), (1, 2, 1, 70, 1000)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=["8-kv-heads", "gqa-2-kv-heads", "mqa-1-kv-head"])
@pytest.mark.parametrize("causal", [None, "bottom_right"])
def test_bit_identical_across_threads_plans_and_calls(isa, shape, causal):
    B, Hq, Hkv, Lq, Lk = shape
    rng = np.random.default_rng(Lq)
    q = rng.standard_normal((B, Hq, Lq, 32)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, Lk, 32)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Lk, 16)).astype(np.float32)
    grad_out = rng.standard_normal((B, Hq, Lq, 16)).astype(np.float32)
    bias = rng.standard_normal((Hq, 1, Lk)).astype(np.float32)
    options = {"causal": causal, "bias": bias, "isa": isa}
    first = _gradients(q, k, v, grad_out, num_threads=1, **options)
    for threads in (1, 2, 3, 4):
        again = _gradients(q, k, v, grad_out, num_threads=threads, **options)
        _identical(again, first, f"{threads} threads against 1")


# The forward's outputs passed in; low-precision inputs.


@pytest.mark.parametrize("isa", ISAS)
def test_the_forwards_out_and_lse_save_the_forward_bit_for_bit(isa):
    rng = np.random.default_rng(4)
    q, k, v, grad_out = (
        rng.standard_normal(s).astype(np.float32)
        for s in ((2, 4, 90, 32), (2, 2, 130, 32), (2, 2, 130, 16), (2, 4, 90, 16))
    )
    options = {"causal": "top_left", "window": (40, None), "isa": isa}
    out, lse = native.attention(q, k, v, return_lse=True, **options)
    given = native.attention_backward(q, k, v, grad_out, out=out, lse=lse, **options)
    _identical(given, native.attention_backward(q, k, v, grad_out, **options), "out, lse given")


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("isa", native.available_isas())
def test_low_precision_inputs_are_computed_in_float32_and_cast_back(dtype, isa):
    rng = np.random.default_rng(6)
    q, k, v, grad_out = (
        rng.standard_normal(s).astype(dtype)
        for s in ((2, 4, 70, 32), (2, 2, 140, 32), (2, 2, 140, 24), (2, 4, 70, 24))
    )
    grad_lse = rng.standard_normal((2, 4, 70)).astype(np.float32)
    bias = rng.standard_normal((70, 140)).astype(np.float32)
    _check(q, k, v, grad_out, grad_lse, isa=isa, causal="bottom_right", bias=bias)


def test_empty_calls_give_empty_or_zero_gradients():
    q, k, v, _, grad_out, grad_lse = ref_tests.build("empty-keys")
    got = _gradients(q, k, v, grad_out, grad_lse)
    assert got.key.shape == k.shape and got.value.shape == v.shape
    assert np.all(got.query == 0) and got.query.shape == q.shape
    q, k, v, _, grad_out, _ = ref_tests.build("empty-queries")
    got = _gradients(q, k, v, grad_out)
    assert np.all(got.key == 0) and np.all(got.value == 0) and got.query.shape == q.shape
    q, k, v, _, grad_out, _ = ref_tests.build("plain")
    got = _gradients(q, k, v[..., :0], grad_out[..., :0])  # Dv = 0: out is empty
    assert got.value.shape == v[..., :0].shape and np.all(got.query == 0) and np.all(got.key == 0)


# Memory: no Lq x Lk buffer without a bias.


@pytest.mark.skipif(native.available_isas() == ["scalar"], reason="needs a SIMD path")
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's VmHWM")
def test_memory_stays_linear_in_n_without_a_bias():
    """(1, 2, 8192, 32) float32: a score-sized buffer would be 512 MiB; the call's peak stays
    within its inputs, outputs and gradients plus 64 MiB (VmHWM, reset before the call, in a
    subprocess)."""
    code = """
        import json, re
        import numpy as np
        from refattn import native

        def status_bytes(field):
            with open("/proc/self/status") as status:
                text = status.read()
            return int(re.search(rf"^{field}:\\s+(\\d+) kB", text, re.M).group(1)) * 1024

        rng = np.random.default_rng(0)
        q, k, v, grad_out = (
            rng.standard_normal((1, 2, 8192, 32)).astype(np.float32) for _ in range(4)
        )
        native.attention_backward(q[:, :, :64], k[:, :, :64], v[:, :, :64], grad_out[:, :, :64])
        before = status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM, the peak RSS, to the current RSS
        grads = native.attention_backward(q, k, v, grad_out, causal="top_left", num_threads=2)
        print(json.dumps(dict(before=before, peak=status_bytes("VmHWM"))))
    """
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tempfile.gettempdir(),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    array = 2 * 8192 * 32 * 4  # one (1, 2, 8192, 32) float32 array: 2 MiB
    grown = result["peak"] - result["before"]
    # out, lse and the three gradients are new; 64 MiB for tiles, dO copies and the allocator
    assert grown < 4 * array + (64 << 20), f"peak grew by {grown / 2**20:.0f} MiB"


# Bad inputs: the reference's messages, and native's own arguments.


def test_bad_inputs_are_refused_with_the_references_messages():
    q, k, v, _, grad_out, _ = ref_tests.build("plain")
    for change, error, message in ref_tests._bad_grad_out(q, grad_out):
        arguments = {"query": q, "key": k, "value": v, "grad_out": grad_out, **change}
        with pytest.raises(error, match=message):
            native.attention_backward(**arguments)
        with pytest.raises(error, match=message):  # the reference says the same
            reference.attention_backward(**arguments)


def test_bad_forward_outputs_and_native_arguments_are_refused():
    q, k, v, _, grad_out, _ = ref_tests.build("plain")  # float64, (2, 2, 3, 4)
    out, lse = native.attention(q, k, v, return_lse=True)
    bad = [
        ({"out": out}, TypeError, "lse should be given with out .*, but got out alone"),
        ({"lse": lse}, TypeError, "out should be given with lse .*, but got lse alone"),
        (
            {"out": out[..., :2], "lse": lse},
            ValueError,
            r"out.shape should be \(2, 2, 3, 4\) \(the forward's\), but got \(2, 2, 3, 2\)",
        ),
        (
            {"out": out, "lse": lse[..., :2]},
            ValueError,
            r"lse.shape should be \(2, 2, 3\) \(the forward's\), but got \(2, 2, 2\)",
        ),
        (
            {"out": out.astype(np.float32), "lse": lse},
            TypeError,
            r"out.dtype should be float64 \(the query's\), but got float32",
        ),
        ({"out": out.tolist(), "lse": lse}, TypeError, "out should be a numpy.ndarray"),
        ({"isa": "avx9"}, ValueError, "isa should be one of 'amx_bf16', 'avx512_bf16', 'avx512'"),
        ({"num_threads": 0}, ValueError, "num_threads should be from 1 to 1024, but got 0"),
        ({"num_threads": 1.5}, TypeError, "num_threads should be an int or None, but got float"),
    ]
    for change, error, message in bad:
        with pytest.raises(error, match=message):
            native.attention_backward(q, k, v, grad_out, **change)


def test_the_signature_is_the_references_with_natives_own_keywords():
    import inspect

    mine = list(inspect.signature(native.attention_backward).parameters)
    theirs = list(inspect.signature(reference.attention_backward).parameters)
    assert mine[: len(theirs)] == theirs
    assert mine[len(theirs) :] == ["out", "lse", "num_threads", "isa"]
