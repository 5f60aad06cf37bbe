"""The measuring subprocess: `python -m refattn.bench.measure PLAN_FILE EVENTS_FD`.

`refattn bench` starts it with the thread settings already in its environment and its CPU
affinity set, so that every library loads with the same number of threads. It reads the plan
(JSON), writes progress events and the result as JSON lines to file descriptor EVENTS_FD, and
leaves stdout and stderr to the libraries.

Timing ("time" plan): per case, every implementation is prepared, its output checked against
the spec's float64 expectation on a few query rows, warmed up, and then timed in rounds: each
round times one sample of every implementation, in an order that rotates (and turns round), so
that drift in
the machine (a neighbour's job, the clock) hits them alike. A sample is `number` back-to-back
calls, enough to last MIN_SAMPLE_S; the result is per call (calls of a second or more: one call
a sample, in LONG_ROUNDS rounds). The machine's limits (matmul peak, streaming read
bandwidth) are measured at the start and at the end of the same run.

With "backward" in the plan, what is prepared, checked and timed is each implementation's
gradients of the case (Adapter.prepare_backward with dO = Case.upstream()): its forward and its
backward, as a training step runs them, checked on the dQ of a few query rows (dQ_i depends on
query i alone), and memory is measured on the same call.

Memory ("memory" plan): one implementation and one case per fresh process. After a warm-up call
the kernel's peak-RSS counter is reset (/proc/self/clear_refs), one call is made, and the peak
(VmHWM) is read: the most memory the process held while that call ran.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import sys
import time

import numpy as np

from refattn.adapters import Adapter, load
from refattn.bench.cases import LOW_PRECISION, Case

MIN_SAMPLE_S = 0.025  # a sample of short calls repeats them until it lasts this long
WARMUP_S = 0.05  # warm-up calls after the first one (which compiles, loads, checks)
SETTLE_S = 0.005  # pause between implementations, outside timing: other runtimes' spinning
#                  worker threads (OpenMP, OpenBLAS) go back to sleep
# onnxruntime's intra-op threads spin for longer after a run: 20 ms later they still took the
# cores from the next implementation (native on (1,8,128,64): 0.415 ms after a 20 ms pause,
# 0.251 after 50 ms or 300 ms, and 0.257 with onnxruntime's spinning turned off). XLA's pool
# does it too, less often (native after jax: 0.372 ms median on (1,8,128,64) in one run of two,
# samples up to 83 ms on (4,8,1024,64) against 48; none of that after a 0.1 s pause). Pausing
# after their samples leaves them their defaults, spinning, between their own calls.
SETTLE_AFTER = {"onnxruntime": 0.1, "jax": 0.1}
# Each sample of a call shorter than this starts with one untimed call, the primer: the first
# call after another library ran is far slower than the next (measured here: torch on
# (1,8,128,64) took 7.7 ms per call when interleaved without primers, 0.48 ms alone, 0.53 ms
# interleaved with them; a 50 ms pause did not help). Samples then measure each implementation
# called back to back, as in a model's forward pass, while interleaving still spreads drift.
PRIME_BELOW_S = 1.0
# Calls of PRIME_BELOW_S or more are timed in the first LONG_ROUNDS rounds only: one call per
# sample, their spread is a few percent, and at N = 8192 they are most of the default grid's
# time ((1,16,8192,128): 4 s a call for each of three implementations).
LONG_ROUNDS = 3
CHECK_ROWS = 4

PEAK_N = 4096  # the square matmul whose rate is the machine's practical peak
STREAM_SHAPE = (16384, 8192)  # the matrix a matrix-vector product streams: 512 MiB in float32
LIMIT_SAMPLES = 3  # at the start and again at the end


def _emit(events, kind: str, **fields) -> None:
    events.write(json.dumps({"event": kind, **fields}) + "\n")
    events.flush()


# --------------------------------------------------------------------------------- the machine


def _timed(function, number: int = 1) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            function()
        return (time.perf_counter() - start) / number
    finally:
        if gc_was_enabled:
            gc.enable()


def matmul_rate(dtype: str, n: int = PEAK_N, samples: int = LIMIT_SAMPLES) -> list[float]:
    """GFLOP/s of a large square matmul, one value per sample: NumPy's (OpenBLAS gemm), or for
    bfloat16 and float16, which NumPy multiplies without BLAS, torch.mm's where torch is
    installed, else NumPy's float32 one (report.peak_how says which)."""
    if dtype in LOW_PRECISION:
        torch = _torch()
        if torch is not None:
            a = torch.ones((n, n), dtype=getattr(torch, dtype))
            torch.mm(a, a)  # warm-up
            return [2 * n**3 / _timed(lambda: torch.mm(a, a)) / 1e9 for _ in range(samples)]
        dtype = "float32"
    a = np.ones((n, n), dtype=dtype)
    b = np.ones((n, n), dtype=dtype)
    a @ b  # warm-up: OpenBLAS starts its threads, pages are touched
    return [2 * n**3 / _timed(lambda: a @ b) / 1e9 for _ in range(samples)]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def stream_rate(dtype: str, shape=STREAM_SHAPE, samples: int = LIMIT_SAMPLES) -> list[float]:
    """GB/s of reading a matrix far larger than the caches once: y = A·x (OpenBLAS gemv; in
    float32 for bfloat16 and float16, which have no BLAS gemv: bytes per second are what is
    measured)."""
    dtype = "float32" if dtype in LOW_PRECISION else dtype
    a = np.ones(shape, dtype=dtype)
    x = np.ones(shape[1], dtype=dtype)
    a @ x
    return [a.nbytes / _timed(lambda: a @ x, number=3) / 1e9 for _ in range(samples)]


# ------------------------------------------------------------------------------------- checking


def expected_rows(case: Case, call, rows: list[int], grad_out=None):
    """The spec's float64 expectation, with its tolerance, for a few query rows of the case's
    call (a bool mask keeps their causal positions): of out, or with grad_out, of dQ (whose
    row i depends on query row i alone)."""
    from refattn.spec.tolerance import expect, expect_gradients  # the spec's oracle and model

    q, k, v = call.query, call.key, call.value
    mask = None
    if case.causal:
        mask = np.tri(case.Lq, case.Lk, case.Lk - case.Lq, dtype=bool)[rows]
    if grad_out is None:
        return expect(q[..., rows, :], k, v, mask=mask)
    return expect_gradients(q[..., rows, :], k, v, grad_out[..., rows, :], mask=mask)


def check_rows(case: Case) -> list[int]:
    """The query rows every output is checked on: first, last and evenly between."""
    return sorted({round(i * (case.Lq - 1) / max(1, CHECK_ROWS - 1)) for i in range(CHECK_ROWS)})


def prepared_call(impl: Adapter, call, grad_out=None):
    """The implementation's call prepared (with grad_out: its gradients, forward and backward),
    and what to read off its output to check: out, or dQ."""
    if grad_out is None:
        return impl.prepare(call), lambda returned: returned.out
    return impl.prepare_backward(call, grad_out, None), lambda returned: returned.query


def make_ready(impl: Adapter, call, expected, rows, grad_out=None):
    """Prepare an implementation for a case and check its first output (with grad_out, its dQ)
    before any timing.

    Returns (prepared, result, first): `prepared` is None when the implementation cannot be
    timed here, and `result` says why ({"status": "skipped" | "failed", "reason": ...}), or
    {"status": "ok", "max_abs_error": ...}; `first` is how long the first call took.
    """
    why = impl.refusal(call, backward=grad_out is not None)
    if why:
        return None, {"status": "skipped", "reason": why}, 0.0
    try:
        prepared, checked = prepared_call(impl, call, grad_out)
        start = time.perf_counter()
        out = checked(prepared.output(prepared.run()))  # first call: compiles, loads; checked
        first = time.perf_counter() - start
    except Exception as error:  # the library refused the call: say what it said
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, {"status": "failed", "reason": f"{type(error).__name__}: {message}"}, 0.0
    got = out[..., rows, :]
    want = expected.out if grad_out is None else expected.query
    error = float(np.max(np.abs(got.astype(np.float64) - want), initial=0))
    problems = expected.problems(got) if grad_out is None else expected.problems(query=got)
    if problems:
        reason = (
            f"output differs from the spec's float64 expectation on query rows {rows} beyond "
            f"its tolerance model ({'; '.join(problems)}): not timed"
        )
        return None, {"status": "failed", "reason": reason, "max_abs_error": error}, first
    return prepared, {"status": "ok", "max_abs_error": error, "checked_rows": rows}, first


def warm_up(run, first: float) -> int:
    """Call `run` at least once more and for WARMUP_S, unless the first call already took
    PRIME_BELOW_S or more; return the calls a sample needs to last MIN_SAMPLE_S (1 for calls
    longer than that)."""
    if first >= PRIME_BELOW_S:
        return 1
    calls, spent, fastest = 0, 0.0, first
    while calls < 1 or spent < WARMUP_S:
        elapsed = _timed(run)
        calls, spent, fastest = calls + 1, spent + elapsed, min(fastest, elapsed)
    return max(1, math.ceil(MIN_SAMPLE_S / fastest))


# --------------------------------------------------------------------------------------- timing


def _summary(samples: list[float]) -> dict:
    ms = sorted(s * 1e3 for s in samples)
    return {"median": float(np.median(ms)), "min": ms[0], "max": ms[-1]}


def time_case(case: Case, impls: dict, repeat: int, events, progress: dict, backward=False):
    """Prepare, check, warm up and time every implementation on one case, interleaved (with
    backward, its gradients: forward and backward)."""
    call, rows = case.call(), check_rows(case)
    grad_out = case.upstream() if backward else None
    expected = expected_rows(case, call, rows, grad_out)
    results, runs, numbers, fast = {}, {}, {}, {}
    for name, impl in impls.items():
        prepared, results[name], first = make_ready(impl, call, expected, rows, grad_out)
        if prepared is None:
            continue
        numbers[name] = warm_up(prepared.run, first)
        runs[name] = prepared.run
        fast[name] = numbers[name] > 1 or first < PRIME_BELOW_S
        progress["done"] += 1
        _emit(events, "progress", **progress, case=case.label, label=f"{name} warmed up")

    samples = {name: [] for name in runs}
    names = list(runs)
    previous = names[-1] if names else None  # the last one warmed up
    for round_ in range(repeat):
        shift = round_ % len(names) if names else 0
        order = names[shift:] + names[:shift]  # the order rotates every round,
        if round_ % 2:
            order.reverse()  # and turns round every other one: each follows both neighbours
        for name in order:
            if not fast[name] and round_ >= LONG_ROUNDS:
                continue
            time.sleep(SETTLE_AFTER.get(previous, SETTLE_S))
            if fast[name]:
                runs[name]()  # the primer: see PRIME_BELOW_S
            samples[name].append(_timed(runs[name], numbers[name]))
            previous = name
            progress["done"] += 1
        _emit(events, "progress", **progress, case=case.label, label=f"round {round_ + 1}/{repeat}")
    for name in runs:
        results[name].update(
            ms=_summary(samples[name]),
            samples_ms=[s * 1e3 for s in samples[name]],
            calls_per_sample=numbers[name],
        )
    return results


def run_timing(plan: dict, events) -> dict:
    dtype, threads, repeat = plan["dtype"], plan["threads"], plan["repeat"]
    cases = [Case.from_json(c) for c in plan["cases"]]
    impls = plan["impls"]
    loaded, load_errors = {}, {}
    for name in impls:
        try:
            loaded[name] = load(name, threads=threads)
        except Exception as error:
            load_errors[name] = f"{type(error).__name__}: {error}"
    skips = plan.get("skips", {})  # case id -> {impl: reason}, decided by the planner

    # Progress counts, per implementation and case, its warm-up and each of its samples.
    planned = [(len(impls) - len(skips.get(c.id, {}))) * (repeat + 1) for c in cases]
    progress = {"done": 0, "total": sum(planned)}
    _emit(events, "progress", **progress, case="machine", label="matmul peak, read bandwidth")
    peak_n, stream_shape = plan.get("peak_n", PEAK_N), plan.get("stream_shape", STREAM_SHAPE)
    peak = matmul_rate(dtype, peak_n)
    stream = stream_rate(dtype, stream_shape)

    results = []
    for index, case in enumerate(cases):
        skipped = skips.get(case.id, {})
        ready = {n: loaded[n] for n in impls if n in loaded and n not in skipped}
        found = time_case(case, ready, repeat, events, progress, plan.get("backward", False))
        for name in impls:
            if name in skipped:
                found[name] = {"status": "skipped", "reason": skipped[name]}
            elif name in load_errors:
                found[name] = {"status": "failed", "reason": load_errors[name]}
        results.append({"case": case.to_json(), "results": {n: found[n] for n in impls}})
        progress["done"] = sum(planned[: index + 1])  # implementations that failed count too

    _emit(events, "progress", **progress, case="machine", label="matmul peak, read bandwidth again")
    peak += matmul_rate(dtype, peak_n)
    stream += stream_rate(dtype, stream_shape)
    return {
        "cases": results,
        "matmul_gflops": peak,
        "peak_by": "torch" if dtype in LOW_PRECISION and _torch() is not None else "numpy",
        "stream_gbps": stream,
        "implementations": {
            name: {
                "title": impl.label,
                "threads_how": impl.threads_how.format(n=threads),
                "versions": _versions(impl),
            }
            for name, impl in loaded.items()
        },
        "threads_seen": _threads_seen(loaded),
        "affinity": sorted(os.sched_getaffinity(0)),
    }


def _versions(impl: Adapter) -> dict[str, str]:
    versions = impl.versions()
    if impl.name.startswith("native"):
        from refattn import native

        versions["refattn.native.info()"] = str(native.info())
    return versions


def _threads_seen(loaded) -> dict[str, str]:
    """What the libraries report back, where they report anything."""
    seen = {}
    if "torch" in loaded:
        import torch

        seen["torch"] = (
            f"torch.get_num_threads()={torch.get_num_threads()}, "
            f"get_num_interop_threads()={torch.get_num_interop_threads()}"
        )
    if "jax" in loaded:
        import jax

        seen["jax"] = f"devices={jax.devices()}"
    return seen


# --------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def run_memory(plan: dict, events) -> dict:
    """Peak resident memory while one call of one implementation runs, in this fresh process."""
    case = Case.from_json(plan["case"])
    impl = load(plan["impl"], threads=plan["threads"])
    baseline = _status_kib("VmRSS")  # the interpreter and the library, before any input
    call = case.call()
    backward = plan.get("backward", False)
    why = impl.refusal(call, backward=backward)
    if why:
        return {"status": "skipped", "reason": why}
    prepared, _ = prepared_call(impl, call, case.upstream() if backward else None)
    del call  # only what the implementation keeps stays alive
    prepared.run()  # warm-up: compilation, thread pools, lazily loaded kernels
    gc.collect()
    ready = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM, the peak RSS, to the current RSS
    out = prepared.run()
    peak = _status_kib("VmHWM")
    del out
    mib = 1 / 1024
    return {
        "status": "ok",
        "baseline_mib": baseline * mib,
        "ready_mib": ready * mib,
        "peak_mib": peak * mib,
        "peak_over_baseline_mib": (peak - baseline) * mib,
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan_path, events_fd = argv[0], int(argv[1])
    with open(plan_path) as f:
        plan = json.load(f)
    with os.fdopen(events_fd, "w") as events:
        run = run_timing if plan["mode"] == "time" else run_memory
        result = run(plan, events)
        _emit(events, "result", result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
