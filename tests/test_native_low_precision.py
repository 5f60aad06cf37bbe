"""bfloat16 and float16 computed natively: the native core's bfloat16 kernels (isa "amx_bf16",
Q·Kᵀ on AMX tiles, "avx512_bf16", by vdpbf16ps, and "scalar", their portable baseline) and its
float16 kernels ("avx512" and "avx2", widening by F16C as they load, and "scalar") against the
spec, judged by the low-precision tolerance model (spec/tolerance.py, 5: products and softmax in
float32, P rounded to the dtype before P·V or not, out rounded to the dtype).

    test_native_low_precision_conforms  every invariant of the spec, one dtype drawn alone,
                                        per kernel (dtype and ISA)
    direct comparisons  the float64 oracle through refattn.spec.tolerance.expect, on shapes
                        around the tiles, every option, split-K, odd Dk, strides
    edge cases          NaN/Inf placement, fully masked rows, rounding of P and out, dispatch

Tests of an ISA this CPU (or this build) cannot run skip and say so.
"""

import os
from functools import partial

import ml_dtypes
import numpy as np
import pytest
from refattn.spec.registry import all_invariants
from refattn.spec.runner import property_test
from refattn.spec.tolerance import expect

from refattn import native
from refattn.adapters import Adapter
from refattn.capabilities import FORWARD

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
AVAILABLE = native.available_isas()
# The ISAs with kernels of their own for each dtype; the others convert it to float32.
KERNELS = {
    "bfloat16": ("amx_bf16", "avx512_bf16", "scalar"),
    "float16": ("avx512", "avx2", "scalar"),
}
DTYPES = {"bfloat16": BF16, "float16": F16}


def _unless_available(isa: str) -> tuple:
    """The marks of a parameter that needs `isa`: a skip with the reason where it cannot run."""
    if isa in AVAILABLE:
        return ()
    reason = f"this CPU (or this build) has no {isa}; available: {', '.join(AVAILABLE)}"
    return (pytest.mark.skip(reason=reason),)


def _kernel(dtype: str, isa: str):
    """A parameter for one dtype's kernels under one ISA."""
    return pytest.param(DTYPES[dtype], isa, id=f"{dtype}-{isa}", marks=_unless_available(isa))


KERNEL_PARAMS = [_kernel(dtype, isa) for dtype, isas in KERNELS.items() for isa in isas]
BF16_KERNELS = [param for param in KERNEL_PARAMS if param.values[0] == BF16]
F16_KERNELS = [param for param in KERNEL_PARAMS if param.values[0] == F16]
with_kernels = pytest.mark.parametrize(("dtype", "isa"), KERNEL_PARAMS)
# Everything the native core does, with one dtype the strategies may draw.
ONLY = {
    BF16: FORWARD - {"float16", "float32", "float64", "float64_options"},
    F16: FORWARD - {"bfloat16", "float32", "float64", "float64_options"},
}
INVARIANTS = all_invariants()


@pytest.mark.parametrize("threads", [1, 2])
@with_kernels
@pytest.mark.parametrize("inv", INVARIANTS, ids=[inv.id for inv in INVARIANTS])
def test_native_low_precision_conforms(inv, dtype, isa, threads):
    """The `dtype` kernels of `isa`, on `threads` threads, satisfy invariant `inv` for inputs of
    that dtype."""
    function = partial(native.attention, isa=isa, num_threads=threads)
    impl = Adapter.of(f"native:{isa}", function, ONLY[dtype])
    missing = sorted(set(inv.requires) - impl.capabilities)
    if missing:  # the gradient invariants: these kernels are forward only (the backward takes
        # bfloat16 and float16 in float32: tests/test_spec_native.py, test_native_backward.py)
        pytest.skip(f"native does not claim {', '.join(missing)}")
    property_test(inv, impl)()


def _arrays(shape_q, shape_k, Dv, seed=0, scale=1.0, dtype=BF16):
    rng = np.random.default_rng(seed)
    q = (scale * rng.standard_normal(shape_q)).astype(dtype)
    k = (scale * rng.standard_normal(shape_k)).astype(dtype)
    v = rng.standard_normal((*shape_k[:-1], Dv)).astype(dtype)
    return q, k, v


def _check(q, k, v, *, isa, num_threads=None, **options):
    """native agrees with the float64 oracle within the tolerance model: out (in the inputs'
    dtype), lse and weights (float32)."""
    got = native.attention(
        q, k, v, isa=isa, num_threads=num_threads, return_lse=True, return_weights=True, **options
    )
    out, lse, weights = got
    assert out.dtype == q.dtype and lse.dtype == np.float32 and weights.dtype == np.float32
    problems = expect(q, k, v, **options).problems(*got)
    shapes = f"q {q.shape}, k {k.shape}, v {v.shape}"
    assert problems == [], f"isa={isa!r}, {shapes}, {options}: {problems}"
    return got


# Around the AVX-512 tiles (96 query rows, 256 keys), register blocks (6 rows, panels of 16
# keys) and runs of 32 bfloat16 dims, and the scalar tiles (32 x 64); odd Dk ends on a pair
# padded with 0. Lq > 288 packs the keys once per head (pass 0).
BOUNDARY = [
    (1, 1, 1, 1),
    (2, 300, 3, 5),  # decode rows: scores straight from the key rows
    (6, 16, 16, 16),
    (7, 17, 17, 15),
    (33, 65, 31, 9),
    (95, 255, 33, 64),
    (97, 257, 63, 128),
    (193, 513, 65, 65),
    (385, 300, 127, 24),
]


@with_kernels
@pytest.mark.parametrize(("Lq", "Lk", "Dk", "Dv"), BOUNDARY)
@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
def test_tile_boundaries(dtype, isa, Lq, Lk, Dk, Dv, causal):
    """Every tile, block and vector edge, causal both ways (its diagonal blocks skipped)."""
    q, k, v = _arrays((2, Lq, Dk), (1, Lk, Dk), Dv, seed=Lq * 1000 + Lk, dtype=dtype)
    _check(q, k, v, isa=isa, causal=causal)


@with_kernels
@pytest.mark.parametrize("Lq", [2, 97, 401], ids=["decode", "packed-per-tile", "packed-once"])
@pytest.mark.parametrize("Dk", [24, 25])
def test_all_features(dtype, isa, Lq, Dk):
    """Masks, bias, softcap, window, kv_lengths, GQA and Dk != Dv together, over several tiles."""
    rng = np.random.default_rng(1)
    q, k, v = _arrays((2, 4, Lq, Dk), (2, 2, 300, Dk), 20, seed=2, dtype=dtype)
    mask = rng.random((4, Lq, 300)) < 0.8
    bias = rng.standard_normal((2, 1, 1, 300)).astype(np.float32)
    bias[..., 5] = -np.inf
    options = {
        "mask": mask,
        "bias": bias,
        "softcap": 5.0,
        "window": (140, 3),
        "causal": "bottom_right",
        "kv_lengths": np.array([300, 170]),
        "scale": 0.3,
    }
    _check(q, k, v, isa=isa, **options)


@with_kernels
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"causal": "bottom_right"},
        {"kv_lengths": np.array([0, 3000, 1234])},
        {"window": (700, 0), "causal": "top_left"},
        {"mask": "random"},
    ],
    ids=["plain", "causal", "kv_lengths", "window", "mask"],
)
def test_decode_split_keys(dtype, isa, options):
    """Few queries against many keys: the keys are split into chunks and merged (split-K)."""
    q, k, v = _arrays((3, 2, 2, 33), (3, 1, 3000, 33), 24, seed=3, dtype=dtype)
    if options.get("mask") == "random":
        mask = np.random.default_rng(4).random((3, 2, 2, 3000)) < 0.5
        mask[1, 0, 1] = False  # one fully masked row in the split path
        options = {"mask": mask}
    out, lse, _ = _check(q, k, v, isa=isa, **options)
    if "mask" in options:
        assert np.all(out[1, 0, 1] == 0) and lse[1, 0, 1] == -np.inf
    if "kv_lengths" in options:
        assert np.all(out[0] == 0) and np.all(lse[0] == -np.inf)


# keys per tile of each table
TILE_KEYS = {"amx_bf16": 256, "avx512_bf16": 256, "avx512": 256, "avx2": 128, "scalar": 64}


@with_kernels
def test_decode_split_nan_at_every_tile_position(dtype, isa):
    """A NaN key at in-tile position t of every tile of a split-K chunk, the other chunks
    finite: the row is NaN, for every t (as tests/test_native.py checks for float32)."""
    bk, H = TILE_KEYS[isa], 16  # one head per position, 16 at a time
    q, k, v = _arrays((1, H, 1, 9), (1, H, 2048, 9), 8, seed=11, dtype=dtype)
    finite = []
    for t0 in range(0, bk, H):
        poisoned = k.copy()
        for h in range(H):
            poisoned[0, h, t0 + h : 512 : bk, h % 9] = np.nan  # position t0 + h of each tile
        out, lse = native.attention(q, poisoned, v, isa=isa, return_lse=True)
        nan_rows = np.isnan(out[0].astype(np.float32)).all(axis=-1) & np.isnan(lse[0])
        finite += [t0 + h for h in range(H) if not nan_rows[h]]
    assert finite == [], f"finite rows at in-tile positions {finite} of {bk}, isa={isa!r}"


@with_kernels
@pytest.mark.parametrize(
    ("shape_q", "shape_k"),
    [((2, 8, 200, 63), (2, 2, 300, 63)), ((1, 2, 1, 64), (1, 2, 5000, 64))],
    ids=["prefill", "decode"],
)
def test_thread_count_does_not_change_bits(dtype, isa, shape_q, shape_k):
    """The work split depends on shapes only: 1, 2 and 3 threads give identical bits."""
    q, k, v = _arrays(shape_q, shape_k, 32, seed=6, dtype=dtype)
    call = partial(native.attention, q, k, v, isa=isa, causal="bottom_right", return_lse=True)
    one = call(num_threads=1)
    for threads in (2, 3):
        other = call(num_threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(one, other, strict=True))


@with_kernels
@pytest.mark.parametrize("Lq", [1, 2, 7, 300], ids=lambda n: f"Lq{n}")
@pytest.mark.parametrize("Dk", [1, 3, 31, 33, 65])
def test_odd_dk_reads_nothing_past_the_row(dtype, isa, Lq, Dk):
    """Odd Dk: the last pair of dims is padded with 0, never with the element after the row.
    Rows of Dk inside rows of Dk + 1 whose extra element is NaN: a read of it would make every
    score NaN. Decode rows (1–2, unpacked keys), packed per tile and packed once per head."""
    q, k, v = _arrays((1, 2, Lq, Dk), (1, 2, 290, Dk), 8, seed=Dk, dtype=dtype)
    wide_q = np.full((1, 2, Lq, Dk + 1), np.nan, dtype=dtype)
    wide_k = np.full((1, 2, 290, Dk + 1), np.nan, dtype=dtype)
    wide_q[..., :Dk], wide_k[..., :Dk] = q, k
    nq, nk = wide_q[..., :Dk], wide_k[..., :Dk]
    assert not nq.flags.c_contiguous and nq.strides[-2] == (Dk + 1) * 2
    got = _check(nq, nk, v, isa=isa, causal="bottom_right")
    assert np.isfinite(got[0].astype(np.float32)).all()


@with_kernels
def test_strides_and_copies(dtype, isa):
    """Transposed, negative-stride, read-only and misaligned bfloat16 inputs, a broadcast mask
    over batch dims that do not flatten into one stride."""
    rng = np.random.default_rng(7)
    stored = rng.standard_normal((3, 2, 40, 4, 17)).astype(dtype)  # (B1, B2, L, H, D)
    q = np.swapaxes(stored, -2, -3)[..., ::-1, :]  # (3, 2, 4, 40, 17), negative L stride
    k = np.swapaxes(stored, -2, -3)[..., :, ::-1][:, :, :2]  # last dim reversed: copied
    v = np.swapaxes(stored, -2, -3)[:, :, 2:, :, :]
    v.flags.writeable = False
    mask = rng.random((3, 1, 1, 40, 40)) < 0.6  # batch strides (s, 0): not one stride
    bias = rng.standard_normal((2, 1, 1, 40)).astype(np.float32)
    _check(q, k, v, isa=isa, mask=mask, bias=bias)
    raw = np.zeros(q.size * 2 + 1, dtype=np.uint8)[1:].view(dtype).reshape(q.shape)
    raw[...] = q
    assert not raw.flags.aligned
    _check(raw, k, v, isa=isa)


@with_kernels
def test_nan_and_inf_placement(dtype, isa):
    """SPEC.md's NaN and Inf rules: NaN in a visible query or key makes its row NaN, in a hidden
    key or value it reaches nothing; +Inf in a visible value makes that column Inf (or NaN
    where it meets -Inf); the oracle says where, expect() checks the placement."""
    q, k, v = _arrays((1, 2, 9, 33), (1, 2, 300, 33), 16, seed=8, dtype=dtype)
    q[0, 0, 3, 5] = np.nan  # row 3 of head 0
    k[0, 1, 20, 32] = np.nan  # key 20 of head 1: seen by every row of head 1 but row 7
    k[0, 0, 299, 0] = np.nan  # hidden by the mask below
    v[0, 0, 299, :] = np.inf
    v[0, 1, 10, 2] = np.inf  # visible: column 2 of head 1 Inf (unless NaN already)
    v[0, 0, 100, 4] = -np.inf
    v[0, 0, 101, 4] = np.inf  # -Inf and +Inf in one column: NaN
    mask = np.ones((9, 300), dtype=bool)
    mask[:, 299] = False
    mask[7] = False  # a fully masked row
    for options in ({"mask": mask}, {"mask": mask, "causal": "bottom_right"}):
        out, lse, _ = _check(q, k, v, isa=isa, **options)
        assert np.all(out[0, :, 7].astype(np.float32) == 0) and np.all(lse[0, :, 7] == -np.inf)


@with_kernels
def test_fully_masked_rows(dtype, isa):
    """A row that sees no key gives out 0 (not NaN), lse -inf and weights 0, in every way it
    can see none: the mask, a -inf bias, kv_lengths 0, a window past the keys."""
    q, k, v = _arrays((2, 3, 5, 9), (2, 3, 7, 9), 4, seed=9, dtype=dtype)
    mask = np.ones((5, 7), dtype=bool)
    mask[1] = False
    bias = np.zeros((5, 7), dtype=np.float32)
    bias[2] = -np.inf
    for options in (
        {"mask": mask, "bias": bias},
        {"kv_lengths": np.array([0, 7])},
        {"window": (0, 0), "causal": "top_left", "kv_lengths": np.array([3, 3])},
    ):
        out, lse, weights = _check(q, k, v, isa=isa, **options)
        unseen = lse == -np.inf
        assert unseen.any()
        assert np.all(out[unseen].astype(np.float32) == 0) and np.all(weights[unseen] == 0)


def _steps_off(x: float) -> float:
    """How far x is from the nearest bfloat16 number, in units of bfloat16's spacing there
    (0.5: a rounding boundary)."""
    ulp = 2.0 ** (np.floor(np.log2(x)) - 7)
    return abs(x / ulp - np.round(x / ulp))


def _rounding_case():
    """Scores 0 and s (q = 1, k = (0, s), Dk 1, scale 1), values (0, 1): out = p/(1 + p) with
    p = exp(s). With p rounded to bfloat16 before P·V the bfloat16 out is one value, without
    another: find an s for which the two differ, p and both outs each away from a rounding
    boundary by far more than the kernels' float32 errors (a few float32 ulps, 2^-15 of a
    bfloat16 step) could move them."""
    for bits in range(0xBF80, 0xC000):  # bfloat16 s in [-2, -1): p in (0.13, 0.37]
        s = np.array(bits, dtype=np.uint16).view(BF16)
        p = np.exp(np.float64(s))
        rounded_p = float(np.float32(p).astype(BF16))
        exact, rounded = p / (1 + p), rounded_p / (1 + p)
        if not 0.1 < _steps_off(p) < 0.45:
            continue  # p must move when rounded, and round the same way in every kernel
        if _steps_off(exact) < 0.45 and _steps_off(rounded) < 0.45:
            want_exact, want_rounded = (float(np.float32(x).astype(BF16)) for x in (exact, rounded))
            if want_exact != want_rounded:
                return s, want_exact, want_rounded
    raise AssertionError("no such s")


@pytest.mark.parametrize(("dtype", "isa"), BF16_KERNELS)
def test_p_is_rounded_to_bfloat16_before_pv(dtype, isa):
    """The bfloat16 kernels round P to bfloat16 before P·V (and sum the row unrounded): the
    FlashAttention way spec/tolerance.py, 5, allows. The float32 kernels ("avx512", "avx2",
    taking bfloat16 converted) do not: this also says which kernels ran."""
    s, exact, rounded = _rounding_case()
    q = np.ones((1, 1, 1), dtype=dtype)
    k = np.array([[[0.0], [float(s)]]], dtype=dtype)
    v = np.array([[[0.0], [1.0]]], dtype=dtype)
    out = native.attention(q, k, v, scale=1.0, isa=isa)
    assert float(out[0, 0, 0]) == rounded, f"s={s}: got {out[0, 0, 0]}, expected {rounded}"
    for other in sorted({"avx512", "avx2"} & set(AVAILABLE)):
        out = native.attention(q, k, v, scale=1.0, isa=other)
        assert float(out[0, 0, 0]) == exact, f"{other}, s={s}: got {out[0, 0, 0]}, want {exact}"


@pytest.mark.parametrize(
    ("dtype", "isa"),
    [
        pytest.param(
            BF16,
            isa,
            id=f"bfloat16-{isa}",
            marks=pytest.mark.xfail(
                isa in AVAILABLE,
                strict=True,
                reason=f"{how} treats subnormal inputs as 0: inf·0 is NaN (native/elem_bf16.h)",
            ),
        )
        for isa, how in (("amx_bf16", "tdpbf16ps"), ("avx512_bf16", "vdpbf16ps"))
    ]
    + [_kernel("bfloat16", "scalar"), *F16_KERNELS],
)
@pytest.mark.parametrize("Lq", [1, 8], ids=["decode", "packed"])
def test_infinity_times_a_subnormal(dtype, isa, Lq):
    """A subnormal query element (2^-130 in bfloat16, 2^-20 in float16) against a key element of
    -inf scores -inf, as the spec's float64 product says: the key weighs 0 and the row is the
    other key's value. The scalar kernels and F16C widening are exact; vdpbf16ps takes the
    subnormal as 0, and -inf·0 is NaN (a known limit of the AVX-512 BF16 path, reached by
    subnormal bfloat16 inputs only)."""
    if isa not in AVAILABLE:
        pytest.skip(f"this CPU (or this build) has no {isa}")
    q = np.ones((1, Lq, 2), dtype=dtype)
    q[0, 0, 0] = 2.0**-130 if dtype == BF16 else 2.0**-20
    assert 0 < q[0, 0, 0] < ml_dtypes.finfo(dtype).smallest_normal
    k = np.array([[[-np.inf, 1.0], [1.0, 1.0]]], dtype=dtype)
    v = np.array([[[1.0], [2.0]]], dtype=dtype)
    out, lse, _ = _check(q, k, v, isa=isa, scale=1.0)
    # lse: the one visible score, 1 + the subnormal, in float32
    assert float(out[0, 0, 0]) == 2.0 and lse[0, 0] == np.float32(1 + float(q[0, 0, 0]))


@pytest.mark.parametrize(
    "isa", [pytest.param(isa, marks=_unless_available(isa)) for isa in native.BFLOAT16_ONLY_ISAS]
)
def test_float32_under_a_bfloat16_isa_is_avx512(isa):
    """isa="amx_bf16" and "avx512_bf16" add bfloat16 kernels: float32 and float16 run the
    AVX-512 float32 and float16 kernels, bit for bit."""
    rng = np.random.default_rng(10)
    q, k, v = (rng.standard_normal((2, 3, 50, 24)).astype(np.float32) for _ in range(3))
    for x in ((q, k, v), tuple(a.astype(np.float16) for a in (q, k, v))):
        one = native.attention(*x, isa=isa, causal="top_left", return_lse=True)
        other = native.attention(*x, isa="avx512", causal="top_left", return_lse=True)
        assert all(np.array_equal(a, b) for a, b in zip(one, other, strict=True))


@pytest.mark.parametrize(("dtype", "isa"), F16_KERNELS)
def test_float16_widens_every_value_exactly(dtype, isa):
    """Every float16 bit pattern, as the one value a row sees, comes out as it went in: widening
    (vcvtph2ps, or the portable conversion) and the final rounding are exact on float16 values.
    A NaN comes out a NaN; -0 comes out +0 (the accumulator starts at +0, as for float32)."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)
    v = every.reshape(1, -1, 1, 1)
    q = k = np.zeros_like(v)
    out = native.attention(q, k, v, isa=isa)[0, :, 0, 0]
    same = (out.view(np.uint16) == every.view(np.uint16)) | (np.isnan(out) & np.isnan(every))
    wrong = [hex(int(bits)) for bits in every.view(np.uint16)[~same]]
    assert wrong == ["0x8000"] and out[0x8000] == 0


@with_kernels
def test_out_rounds_to_nearest_even(dtype, isa):
    """Two keys of equal score: out = (v1 + v2) / 2, exact in float32 (or inf past its largest),
    then rounded to the dtype. Neighbouring values make it a tie half the time, subnormals and
    sign flips included: each must round as NumPy's (ml_dtypes') float32 cast does (to nearest,
    ties to even)."""
    rng = np.random.default_rng(12)
    finite = 0x7C00 if dtype == F16 else 0x7F80  # the bits of the first infinite magnitude
    first = rng.integers(0, finite, size=100_000).astype(np.uint16)
    second = np.clip(first.astype(np.int64) + rng.integers(-2, 3, size=first.size), 0, finite - 1)
    sign = rng.integers(0, 2, size=first.size).astype(np.uint16) << 15
    pairs = np.stack([first | sign, second.astype(np.uint16) | sign], axis=-1).view(dtype)
    pairs = pairs[(pairs[:, 0] != 0) | (pairs[:, 1] != 0)]  # not 0 twice: -0 comes out +0
    v = pairs.reshape(1, -1, 2, 1)
    q, k = np.zeros((1, len(pairs), 1, 1), dtype), np.zeros_like(v)
    out = native.attention(q, k, v, isa=isa)[0, :, 0, 0]
    with np.errstate(over="ignore"):  # bfloat16's largest, twice: inf, as in the kernel
        want = (pairs.astype(np.float32).sum(axis=-1) / 2).astype(dtype)
    wrong = np.nonzero(out.view(np.uint16) != want.view(np.uint16))[0]
    assert wrong.size == 0, f"{wrong.size} wrong, first {pairs[wrong[:3]]} -> {out[wrong[:3]]}"


def test_detection_matches_the_cpu_flags():
    """avx512_bf16 is available exactly when the CPU says avx512_bf16 (with AVX-512 F/DQ/BW/VL)
    and the build has the kernels, amx_bf16 when it says amx_tile and amx_bf16 too (and Linux
    grants the tile state); the first of them available is then the default."""
    try:
        flags = next(
            set(line.split(":", 1)[1].split())
            for line in open("/proc/cpuinfo")  # noqa: SIM115
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    cpu = {"avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_bf16"} <= flags
    if cpu and "avx512_bf16" not in AVAILABLE:
        pytest.skip("the CPU has AVX512_BF16 but this build has no kernels for it")
    assert ("avx512_bf16" in AVAILABLE) == cpu
    amx = cpu and {"amx_tile", "amx_bf16"} <= flags
    assert ("amx_bf16" in AVAILABLE) == amx  # Linux 5.16 and later grant the tile state
    info = native.info()
    assert info["isas_available"] == AVAILABLE
    if cpu and not os.environ.get("REFATTN_ISA"):  # the fastest, chosen by default
        assert info["isa"] == ("amx_bf16" if amx else "avx512_bf16")


@with_kernels
def test_bad_input_raises_clear_errors(dtype, isa):
    """bfloat16 calls are checked as every call is: the reference's exceptions and messages."""
    from refattn import reference

    q, k, v = _arrays((2, 5, 8), (2, 6, 8), 8, dtype=dtype)
    bad = [
        ((q, k.astype(np.float32), v), {}),
        ((q, k[..., :4], v), {}),
        ((q, k, v), {"bias": np.full((5, 6), np.nan, dtype=np.float32)}),
        ((q, k, v), {"window": (-1, 0)}),
    ]
    for args, options in bad:
        with pytest.raises((TypeError, ValueError)) as want:
            reference.attention(*args, **options)
        with pytest.raises(type(want.value)) as got:
            native.attention(*args, isa=isa, **options)
        assert str(got.value) == str(want.value)
