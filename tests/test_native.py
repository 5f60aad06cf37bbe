"""Targeted tests of the native core, beyond the spec's properties: the SIMD kernels against the
scalar ones at tile boundaries, split-K decoding, thread-count invariance, strides and
broadcasts, 64-bit indexing, the GIL, concurrency, info(), environment variables and errors.
"""

import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest
from refattn.spec.tolerance import expect, mismatch

import refattn
from refattn import native, reference

# float32 under "avx512_bf16" runs the "avx512" kernels (tests/test_native_low_precision.py
# checks that, and the bfloat16 kernels): the float32 tests here take each float32 kernel table
# once.
ISAS = [isa for isa in native.available_isas() if isa not in native.BFLOAT16_ONLY_ISAS]
SIMD = [isa for isa in ISAS if isa != "scalar"]
SANITIZED = "-fsanitize" in native.info()["build"]


def _arrays(shape_q, shape_k, Dv, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(shape_q).astype(dtype)
    k = rng.standard_normal(shape_k).astype(dtype)
    v = rng.standard_normal((*shape_k[:-1], Dv)).astype(dtype)
    return q, k, v


def _check(q, k, v, *, isa=None, num_threads=None, **options):
    """native agrees with the float64 reference within the tolerance model: out, lse, weights."""
    got = native.attention(
        q, k, v, isa=isa, num_threads=num_threads, return_lse=True, return_weights=True, **options
    )
    problems = expect(q, k, v, **options).problems(*got)
    assert problems == [], f"({isa}, {options}): {problems}"
    return got


# Sizes on both sides of the tiles (96 query rows, and 256 keys for AVX-512, 128 for AVX2;
# scalar 32 x 64), of the register blocks (6 rows; panels of 16 or 8 keys) and of the vectors
# (16 or 8 floats); from four query tiles a head on (Lq > 288 for SIMD), the keys are packed
# once per call rather than per tile.
BOUNDARY = [
    (1, 1, 1, 1),
    (6, 16, 16, 16),
    (7, 17, 17, 15),
    (33, 65, 8, 9),
    (95, 127, 64, 64),
    (96, 128, 80, 48),
    (97, 129, 128, 128),
    (193, 257, 33, 65),
    (385, 300, 40, 24),
    (100, 513, 24, 40),
]


@pytest.mark.parametrize("isa", SIMD)
@pytest.mark.parametrize(("Lq", "Lk", "Dk", "Dv"), BOUNDARY)
@pytest.mark.parametrize("causal", [None, "bottom_right"])
def test_simd_agrees_with_scalar_at_tile_boundaries(isa, Lq, Lk, Dk, Dv, causal):
    """Each SIMD path matches the scalar path and the reference around every tile edge."""
    q, k, v = _arrays((2, Lq, Dk), (1, Lk, Dk), Dv, seed=Lq * 1000 + Lk)
    fast = _check(q, k, v, isa=isa, causal=causal)
    plain = _check(q, k, v, isa="scalar", causal=causal)
    want = expect(q, k, v, causal=causal)
    assert mismatch(fast[0], plain[0], 2 * want.tol.out) is None


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("Lq", [97, 401], ids=["keys-packed-per-tile", "keys-packed-once"])
def test_all_features_at_tile_boundaries(isa, Lq):
    """Masks, bias, softcap, window, kv_lengths and GQA together, over several tiles."""
    rng = np.random.default_rng(1)
    q, k, v = _arrays((2, 4, Lq, 24), (2, 2, 129, 24), 20, seed=2)
    mask = rng.random((4, Lq, 129)) < 0.8
    bias = rng.standard_normal((2, 1, 1, 129)).astype(np.float32)
    bias[..., 5] = -np.inf
    _check(
        q,
        k,
        v,
        isa=isa,
        mask=mask,
        bias=bias,
        softcap=5.0,
        window=(40, 3),
        causal="bottom_right",
        kv_lengths=np.array([129, 70]),
    )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("causal", [None, "bottom_right"])
def test_keys_packed_in_groups_of_kv_heads(isa, causal):
    """Packed keys of 9 kv heads (4.5 MB each) exceed the 32 MiB packing budget: they are packed
    and used in two groups (7 + 2 kv heads), and each query head reads its own kv head's."""
    q, k, v = _arrays((3, 6, 290, 256), (3, 3, 4100, 256), 8, seed=9)
    out, lse = native.attention(q, k, v, isa=isa, causal=causal, return_lse=True)
    problems = expect(q, k, v, causal=causal).problems(out, lse)
    assert problems == [], f"({isa}, causal={causal}): {problems}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "options",
    [
        {"window": (66, 19)},
        {"window": (3, None)},
        {"causal": "bottom_right"},
        {"causal": "bottom_right", "window": (0, 0)},
    ],
    ids=["window", "left-window", "causal", "causal+window"],
)
def test_rows_that_see_no_key(isa, options):
    """More queries than keys: late rows (window) or early rows (bottom-right causal) see no
    key at all. Found by the sanitizer build: the weights pass once walked past Lk here."""
    rng = np.random.default_rng(10)
    q, k, v = _arrays((3, 1, 2, 200, 2), (3, 1, 1, 4, 2), 2, seed=10)  # Lq 200, Lk 4
    bias = rng.standard_normal((1, 4)).astype(np.float32)
    _check(q, k, v, isa=isa, bias=bias, **options)
    _check(q, k, v, isa=isa, **options)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"causal": "bottom_right"},
        {"kv_lengths": np.array([0, 3000, 1234])},
        {"window": (700, 0), "causal": "top_left"},
        {"mask": "random", "bias": "random"},
    ],
    ids=["plain", "causal", "kv_lengths", "window", "mask+bias"],
)
def test_decode_split_keys(isa, dtype, options):
    """Few queries against many keys split the keys across threads and merge: still exact."""
    q, k, v = _arrays((3, 2, 2, 32), (3, 1, 3000, 32), 24, dtype=dtype, seed=3)
    rng = np.random.default_rng(4)
    if options.get("mask") == "random":
        mask = rng.random((3, 2, 2, 3000)) < 0.5
        mask[1, 0, 1] = False  # one fully masked row in the split path
        options = {"mask": mask, "bias": rng.standard_normal((3000,)).astype(dtype)}
    out, lse, _ = _check(q, k, v, isa=isa, **options)
    if "mask" in options:
        assert np.all(out[1, 0, 1] == 0) and lse[1, 0, 1] == -np.inf
    if "kv_lengths" in options:
        assert np.all(out[0] == 0) and np.all(lse[0] == -np.inf)


@pytest.mark.parametrize("isa", ISAS)
def test_decode_split_nan_and_poison(isa):
    """In the split path a NaN in a visible key makes its row NaN, and NaN in hidden keys
    (past kv_lengths, or under a bool mask) does not reach any row."""
    q, k, v = _arrays((1, 2, 1, 16), (1, 2, 4000, 16), 8, seed=5)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 3500:] = np.nan  # past kv_lengths: never read
    v2[:, :, 3500:] = np.nan
    k2[:, :, 100] = np.nan  # hidden by the mask below
    v2[:, :, 100] = np.inf
    mask = np.ones(4000, dtype=bool)
    mask[100] = False
    lengths = np.array([3500])
    clean = native.attention(q, k, v, isa=isa, mask=mask, kv_lengths=lengths)
    dirty = native.attention(q, k2, v2, isa=isa, mask=mask, kv_lengths=lengths)
    assert np.array_equal(clean, dirty)
    k2[0, 1, 2000] = np.nan  # visible to head 1 only
    out = native.attention(q, k2, v2, isa=isa, mask=mask, kv_lengths=lengths)
    assert np.isnan(out[0, 1]).all() and np.array_equal(out[0, 0], clean[0, 0])


# Keys per tile of each kernel table (float64 runs the scalar one); with 1 query row and up to
# 16 heads, 2048 keys are split into chunks of 512, each of 2, 4 or 8 tiles.
TILE_KEYS = {"avx512": 256, "avx2": 128, "scalar": 64}
SPLIT_KERNELS = [
    *(pytest.param(isa, np.float32, id=f"{isa}-float32") for isa in ISAS),
    pytest.param("scalar", np.float64, id="float64"),
]


@pytest.mark.parametrize(("isa", "dtype"), SPLIT_KERNELS)
def test_decode_split_nan_at_every_tile_position(isa, dtype):
    """A NaN key at in-tile position t of every tile of a split-K chunk, the other chunks
    finite: the row is NaN, for every t. The SIMD tile max once lost a NaN at some positions
    (243 of 256 for AVX-512, 127 of 128 for AVX2), so the chunk looked fully masked and the
    merge left it out: a finite row."""
    bk, H = TILE_KEYS[isa], 16  # one head per position, 16 at a time
    q, k, v = _arrays((1, H, 1, 8), (1, H, 2048, 8), 8, dtype=dtype, seed=11)
    finite = []
    for t0 in range(0, bk, H):
        poisoned = k.copy()
        for h in range(H):
            poisoned[0, h, t0 + h : 512 : bk, h % 8] = np.nan  # position t0 + h of each tile
        out, lse = native.attention(q, poisoned, v, isa=isa, return_lse=True)
        finite += [
            t0 + h for h in range(H) if not (np.isnan(out[0, h]).all() and np.isnan(lse[0, h]))
        ]
    assert finite == [], (
        f"expected NaN rows, got finite ones at in-tile positions {finite} of {bk}: "
        f"q (1, {H}, 1, 8), k (1, {H}, 2048, 8) {np.dtype(dtype).name}, isa={isa!r}"
    )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("shape_q", "shape_k"),
    [((2, 8, 200, 64), (2, 2, 300, 64)), ((1, 2, 1, 64), (1, 2, 5000, 64))],
    ids=["prefill", "decode"],
)
def test_thread_count_does_not_change_bits(isa, shape_q, shape_k):
    """The work split depends on shapes only: 1, 2 and 3 threads give identical bits."""
    q, k, v = _arrays(shape_q, shape_k, 32, seed=6)
    one = native.attention(q, k, v, isa=isa, num_threads=1, causal="bottom_right", return_lse=True)
    for threads in (2, 3):
        other = native.attention(
            q, k, v, isa=isa, num_threads=threads, causal="bottom_right", return_lse=True
        )
        assert all(np.array_equal(a, b) for a, b in zip(one, other, strict=True))


def test_strides_broadcasts_and_copies():
    """Transposed, negative-stride, read-only, misaligned and float16 inputs; masks broadcast
    over batch dims that do not flatten into one stride (passed as per-entry offsets)."""
    rng = np.random.default_rng(7)
    stored = rng.standard_normal((3, 2, 40, 4, 16)).astype(np.float32)  # (B1, B2, L, H, D)
    q = np.swapaxes(stored, -2, -3)[..., ::-1, :]  # (3, 2, 4, 40, 16), negative L stride
    k = np.swapaxes(stored, -2, -3)[..., :, ::-1][:, :, :2]  # last dim reversed: copied
    v = np.swapaxes(stored, -2, -3)[:, :, 2:, :, :]
    v.flags.writeable = False
    mask = rng.random((3, 1, 1, 40, 40)) < 0.6  # batch strides (s, 0): not one stride
    bias = rng.standard_normal((2, 1, 1, 40)).astype(np.float32)
    _check(q, k, v, mask=mask, bias=bias)
    # misaligned float32 (offset by one byte inside a byte buffer)
    raw = np.zeros(q.size * 4 + 1, dtype=np.uint8)[1:].view(np.float32).reshape(q.shape)
    raw[...] = q
    assert not raw.flags.aligned
    _check(raw, k, v)
    # float16 in: float32 compute, float16 out
    h = [x.astype(np.float16) for x in (q, k, v)]
    out = refattn.attention(*h, mask=mask)
    assert out.dtype == np.float16
    assert mismatch(out, reference.attention(*h, mask=mask), 2 * 2.0**-11 * 4) is None


def test_zero_sizes():
    """Empty batches, no queries, no keys and Dv = 0 give the right (empty or masked) answers."""
    q, k, v = _arrays((0, 2, 3, 8), (0, 1, 4, 8), 5)
    assert native.attention(q, k, v).shape == (0, 2, 3, 5)
    q, k, v = _arrays((2, 3, 8), (2, 0, 8), 5)
    out, lse, weights = native.attention(q, k, v, return_lse=True, return_weights=True)
    assert np.all(out == 0) and np.all(lse == -np.inf) and weights.shape == (2, 3, 0)
    q, k, v = _arrays((2, 3, 8), (2, 4, 8), 0)
    out, lse = native.attention(q, k, v, return_lse=True)
    assert out.shape == (2, 3, 0)
    assert mismatch(lse, reference.attention(q, k, v, return_lse=True)[1], 1e-5) is None


def test_empty_output_is_no_work():
    """Dv = 0 with neither lse nor weights asked for: nothing to compute, and the call returns at
    once. 2²¹ queries against 2²¹ keys from stride-0 views (4.4·10¹² scores, many minutes of
    work here) must finish well inside the subprocess's timeout."""
    code = """
        import numpy as np
        from refattn import native
        L = 1 << 21
        x = np.broadcast_to(np.ones((1, 1, 1, 8), dtype=np.float32), (1, 1, L, 8))
        v = np.broadcast_to(np.ones((1, 1, 1, 0), dtype=np.float32), (1, 1, L, 0))
        out = native.attention(x, x, v, causal="bottom_right", num_threads=1)
        print(out.shape, out.dtype)
    """
    run = _python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(1, 1, 2097152, 0) float32", run.stdout


@pytest.mark.skipif(not SIMD, reason="needs a SIMD path to run in reasonable time")
def test_more_than_two_to_the_31_scores():
    """Lq·Lk > 2³¹: indexing is 64-bit. Rows across the range are checked against NumPy."""
    N, D = 46400, 4  # N² ≈ 2.15e9
    q, k, v = _arrays((1, N, D), (1, N, D), D, seed=8)
    lengths = np.array(N - 5)
    out, lse = native.attention(
        q, k, v, causal="bottom_right", window=(N - 10, None), kv_lengths=lengths, return_lse=True
    )
    for i in (0, 1, 20000, N // 2 + 7, N - 6, N - 1):
        keys = np.arange(max(0, i - (N - 10)), min(i + 1, N - 5))
        s = (q[0, i].astype(np.float64) @ k[0, keys].T.astype(np.float64)) * D**-0.5
        top = s.max()
        e = np.exp(s - top)
        assert abs(lse[0, i] - (top + np.log(e.sum()))) < 1e-3, i
        want = e @ v[0, keys].astype(np.float64) / e.sum()
        assert np.abs(out[0, i] - want).max() < 1e-4, i


def test_gil_is_released():
    """Another Python thread runs while a native call computes."""
    q, k, v = _arrays((1, 8, 1500, 64), (1, 8, 1500, 64), 64)
    count = 0
    running = True

    def spin():
        nonlocal count
        while running:
            count += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.01)
        calls = 0
        start = time.perf_counter()
        before = count
        while time.perf_counter() - start < 0.3:
            native.attention(q, k, v, num_threads=1)
            calls += 1
        during = count - before
    finally:
        running = False
        spinner.join()
    # Holding the GIL through a ~50 ms call would leave the spinner only the gaps between calls.
    assert during > 10000 * calls, (during, calls)


def test_concurrent_calls_match_serial():
    """Calls from several Python threads at once give what they give one at a time."""
    rng = np.random.default_rng(9)
    jobs = []
    for n in range(12):
        q, k, v = _arrays((2, 1 + 7 * n, 24), (2, 30 + 50 * n, 24), 16, seed=n)
        options = {"causal": "bottom_right"} if n % 2 else {"mask": rng.random(30 + 50 * n) < 0.7}
        jobs.append((q, k, v, options, ISAS[n % len(ISAS)]))
    serial = [native.attention(q, k, v, isa=isa, **o) for q, k, v, o, isa in jobs]
    results = [[None] * len(jobs) for _ in range(4)]

    def worker(t):
        for _ in range(5):
            for n, (q, k, v, o, isa) in enumerate(jobs):
                results[t][n] = native.attention(q, k, v, isa=isa, num_threads=2, **o)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for row in results:
        for got, want in zip(row, serial, strict=True):
            assert np.array_equal(got, want)


def test_info():
    info = native.info()
    assert info["isa"] in info["isas_available"]
    assert "scalar" in info["isas_available"]
    assert info["isa_error"] is None
    assert isinstance(info["threads"], int) and info["threads"] >= 1
    assert info["openmp"] is None or info["openmp"] >= 200000
    assert "-O" in info["build"]


def test_sanitized_build_when_expected():
    """The sanitizer job sets REFATTN_EXPECT_SANITIZED=1: make sure it tests that build (and not,
    say, an unsanitized one that a source tree on sys.path shadows it with)."""
    if os.environ.get("REFATTN_EXPECT_SANITIZED") == "1":
        assert SANITIZED, native.info()["build"]


def test_refattn_attention_is_native():
    assert refattn.attention is native.attention


def test_num_threads_argument_and_environment(monkeypatch):
    q, k, v = _arrays((2, 5, 8), (2, 6, 8), 8)
    with pytest.raises(ValueError, match=r"num_threads should be from 1 to 1024, but got 0"):
        native.attention(q, k, v, num_threads=0)
    with pytest.raises(TypeError, match=r"num_threads should be an int or None, but got float"):
        native.attention(q, k, v, num_threads=1.5)
    with pytest.raises(TypeError, match=r"num_threads should be an int or None, but got bool"):
        native.attention(q, k, v, num_threads=True)
    monkeypatch.setenv("REFATTN_NUM_THREADS", "two")
    with pytest.raises(ValueError, match=r"REFATTN_NUM_THREADS should be a whole number .* 'two'"):
        native.attention(q, k, v)
    monkeypatch.setenv("REFATTN_NUM_THREADS", "0")
    with pytest.raises(ValueError, match=r"REFATTN_NUM_THREADS should be from 1 to 1024"):
        native.attention(q, k, v)
    monkeypatch.setenv("REFATTN_NUM_THREADS", "1")
    assert native.info()["threads"] == 1
    assert np.array_equal(native.attention(q, k, v), native.attention(q, k, v, num_threads=2))


def test_isa_argument():
    q, k, v = _arrays((2, 5, 8), (2, 6, 8), 8)
    expected = r"isa should be one of 'amx_bf16', 'avx512_bf16', 'avx512', 'avx2', 'scalar'"
    with pytest.raises(ValueError, match=expected):
        native.attention(q, k, v, isa="sse2")
    for isa in {"amx_bf16", "avx512_bf16", "avx512", "avx2"} - set(native.available_isas()):
        with pytest.raises(ValueError, match=rf"isa is '{isa}', but this CPU"):
            native.attention(q, k, v, isa=isa)


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        cwd=tempfile.gettempdir(),  # import the installed refattn, not a source tree in cwd
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_isa_environment_variable():
    """REFATTN_ISA forces the kernels at import; a bad value errors clearly on use, and does
    not break `import refattn` (the reference stays usable)."""
    run = _python("from refattn import native; print(native.info()['isa'])", REFATTN_ISA="scalar")
    assert run.returncode == 0 and run.stdout.strip() == "scalar", run.stderr
    code = """
        import numpy as np, refattn
        from refattn import native
        q = np.ones((1, 2, 4))
        refattn.reference.attention(q, q, q)
        print(native.info()['isa_error'])
        native.attention(q, q, q)
    """
    run = _python(code, REFATTN_ISA="avx1024")
    expected = (
        "REFATTN_ISA should be one of 'amx_bf16', 'avx512_bf16', 'avx512', 'avx2', 'scalar', "
        "but got 'avx1024'"
    )
    assert expected in run.stdout
    assert run.returncode == 1 and "ValueError: REFATTN_ISA should be one of" in run.stderr


def test_bad_input_raises_the_reference_errors():
    """Validation is shared with the reference: same exceptions, same messages."""
    q, k, v = _arrays((2, 5, 8), (2, 6, 8), 8)
    bad = [
        ((q, k.astype(np.float64), v), {}),
        ((q, k[..., :4], v), {}),
        ((q, k, v), {"mask": np.ones((5, 6))}),
        ((q, k, v), {"bias": np.full((5, 6), np.nan, dtype=np.float32)}),
        ((q, k, v), {"window": (-1, 0)}),
        ((q, k, v), {"causal": "left"}),
        ((q.tolist(), k, v), {}),
    ]
    for args, options in bad:
        with pytest.raises((TypeError, ValueError)) as want:
            reference.attention(*args, **options)
        with pytest.raises(type(want.value)) as got:
            native.attention(*args, **options)
        assert str(got.value) == str(want.value)


# Under AddressSanitizer an address-space limit cannot be used (its shadow memory reserves
# terabytes); ASan's own switches make a large malloc return NULL instead, as libc's would.
_ASAN_NULL = "detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=2048"


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS as used here is Linux's")
def test_allocation_failure_is_memory_error():
    """The C core's working memory cannot be had: MemoryError, and the next call works."""
    limit = "" if SANITIZED else "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))"
    code = f"""
        import resource
        import numpy as np
        from refattn import native
        {limit}
        D = 1 << 23  # packing 64 or more keys of D floats needs 2 GiB or more: over the limit
        q = np.ones((1, 1, D), dtype=np.float32)
        try:
            native.attention(q, q, q[..., :1], num_threads=1)
        except MemoryError as error:
            print("MemoryError:", error)
        small = np.ones((1, 2, 4), dtype=np.float32)
        print(native.attention(small, small, small).sum())
    """
    run = _python(code, **({"ASAN_OPTIONS": _ASAN_NULL} if SANITIZED else {}))
    assert run.returncode == 0, run.stderr
    assert "MemoryError: refattn.native.attention: the native core could not allocate" in run.stdout
    assert run.stdout.strip().endswith("8.0")


def test_huge_shapes_from_small_arrays_are_memory_errors():
    """Stride-0 views make shapes that pass validation with no memory behind them: weights of
    2²⁰ x 2²⁰ (4 TiB) cannot be allocated. MemoryError, not a crash; the next call works."""
    code = """
        import numpy as np
        from refattn import native
        L = 1 << 20
        x = np.broadcast_to(np.ones((1, 1, 1, 8), dtype=np.float32), (1, 1, L, 8))
        for options in ({"return_weights": True}, {"return_weights": True, "return_lse": True}):
            try:
                native.attention(x, x, x, **options)
            except MemoryError as error:
                print("MemoryError:", type(error).__name__)
        small = np.ones((1, 2, 4), dtype=np.float32)
        print(native.attention(small, small, small).sum())
    """
    run = _python(code, **({"ASAN_OPTIONS": _ASAN_NULL} if SANITIZED else {}))
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("MemoryError:") == 2, run.stdout
    assert run.stdout.strip().endswith("8.0")
