"""Size: more than 2³¹ scores in one head, computed with memory that grows with N·D only.

N = 50 000 queries against 50 000 keys of D = 16: Lq·Lk = 2.5·10⁹ > 2³¹, which a 32-bit index
would wrap. The score matrix alone would be 10 GB in float32; the native core keeps per-thread
tiles, so the process's peak memory (VmHWM, measured in a subprocess) stays within a small
multiple of the inputs. Rows across the range are checked against the reference, which is given
one query row at a time (a slice), so that it too needs O(N·D) memory only.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from refattn import native

N, D = 50_000, 16


# About 1.5 s with AVX-512 on two cores (2.5·10⁹ scores); the scalar kernels take far longer.
# The peak is VmHWM, reset before the call: ru_maxrss would carry over the peak of pytest's
# process, which the child inherits across fork and exec, and hide what the call itself took.
@pytest.mark.skipif(native.available_isas() == ["scalar"], reason="needs a SIMD path")
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's VmHWM")
def test_fifty_thousand_squared_scores_in_memory_linear_in_n():
    code = f"""
        import json, re, time
        import numpy as np
        from refattn import native, reference
        from refattn.spec.tolerance import expect

        def status_bytes(field):
            with open("/proc/self/status") as status:
                text = status.read()
            return int(re.search(rf"^{{field}}:\\s+(\\d+) kB", text, re.M).group(1)) * 1024

        N, D = {N}, {D}
        rng = np.random.default_rng(11)
        q, k, v = (rng.standard_normal((1, N, D)).astype(np.float32) for _ in range(3))
        before = status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM, the peak RSS, to the current RSS
        start = time.perf_counter()
        out, lse = native.attention(q, k, v, return_lse=True)
        seconds = time.perf_counter() - start
        peak = status_bytes("VmHWM")
        problems = []
        for i in (0, 1, 12_345, N // 2 + 7, 46_341, N - 1):  # 46 341² > 2³¹
            want = expect(q[:, i : i + 1], k, v)
            problems += [(i, p) for p in want.problems(out[:, i : i + 1], lse[:, i : i + 1])]
        print(json.dumps(dict(seconds=seconds, before=before, peak=peak, problems=problems)))
    """
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tempfile.gettempdir(),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"N={N}, D={D}: {result['seconds']:.1f} s, peak RSS {result['peak'] / 2**20:.0f} MiB")
    assert result["problems"] == []
    inputs = 3 * N * D * 4  # q, k, v in float32: 9.6 MB; out and lse add 3.4 MB more
    scores = N * N * 4  # 10 GB: what a dense score matrix would take
    grown = result["peak"] - result["before"]
    assert grown < 4 * inputs + (64 << 20), f"peak grew by {grown} bytes over the inputs"
    assert result["peak"] < scores / 20


# A bias broadcast from one row (np.broadcast_to: stride 0 along Lq) holds Lk distinct values
# however many queries it covers. Validating it, casting it to the compute dtype and passing it
# to the native core must cost O(Lk), not O(Lq·Lk): checking the (8192, 8192) view itself took
# 0.7 GB (+1.5 GB and 4.7x the time at 20 000², MemoryError beyond). NumPy reports its
# allocations to tracemalloc, so the peak of the Python side is measured in-process.
@pytest.mark.parametrize(
    ("dtype", "bias_dtype"),
    [("float32", "float64"), ("float64", "float64"), ("float32", "float16")],
    ids=["float64 bias cast to float32", "float64 as it is", "float16 bias cast to float32"],
)
def test_a_broadcast_bias_is_never_materialised(dtype, bias_dtype):
    import tracemalloc

    import numpy as np
    from refattn.spec.tolerance import expect

    from refattn._checks import in_compute_dtype
    from refattn.call import AttentionCall

    N = 8192
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, N, 1)).astype(dtype) for _ in range(3))
    row = rng.standard_normal(N).astype(bias_dtype)
    row[::7] = -np.inf
    bias = np.broadcast_to(row, (N, N))
    view_bytes = bias.size * 4  # what a float32 copy of the view would take
    tracemalloc.start()
    try:
        call = AttentionCall.check(q, k, v, bias=bias)
        cast = in_compute_dtype(call.bias, call.compute_dtype)
        _, checked = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = native.attention(q, k, v, bias=bias)
        _, called = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cast.dtype == call.compute_dtype and cast.shape == (N, N)
    assert checked < 64 * row.nbytes + (1 << 20), f"checking and casting took {checked} bytes"
    assert called < view_bytes / 100, f"native.attention took {called} bytes"
    for i in (0, 1, N // 2, N - 1):
        want = expect(q[:, i : i + 1], k, v, bias=row)
        assert want.problems(out[:, i : i + 1]) == [], i
