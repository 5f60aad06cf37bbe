"""`refattn bench`'s grid under pytest-benchmark: `pytest tests/benchmarks --benchmark-only`.

The cases, the implementations, the output check and the warm-up are refattn.bench's own (one
place for the grid); one benchmark group per case, so that pytest-benchmark's table compares
the implementations side by side. The normal `pytest` run does not collect them
(tests/conftest.py).

Threads: every library uses all the CPUs this process may run on, its default; torch,
onnxruntime and native are told so explicitly. OpenBLAS and OpenMP read their settings when
they load, before pytest imports them, so set them first; OPENBLAS_THREAD_TIMEOUT=22 stops
NumPy's idle threads spinning for ~0.1 s after each call while the next implementation runs
(see refattn.bench.run.environment). For example, on one CPU:
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OPENBLAS_THREAD_TIMEOUT=22 \\
        REFATTN_BENCH_THREADS=1 taskset -c 0 pytest tests/benchmarks --benchmark-only
`refattn bench` does all this itself, interleaves the implementations and measures the
machine's limits; pytest-benchmark runs them one after another.
"""

import os
import time

import pytest

pytest.importorskip("pytest_benchmark")

from refattn.adapters import PeerNotInstalled, load
from refattn.bench import measure
from refattn.bench.cases import default_cases
from refattn.bench.run import DEFAULT_IMPLS, available_memory, plan_skips

THREADS = int(os.environ.get("REFATTN_BENCH_THREADS", len(os.sched_getaffinity(0))))
# jax is timed as XLA compiles it by default, as `refattn bench` does (see its environment())
os.environ.setdefault("REFATTN_JAX_XLA_DEFAULTS", "1")
ROUNDS = int(os.environ.get("REFATTN_BENCH_ROUNDS", 5))
CASES = default_cases()


@pytest.fixture(scope="module")
def loaded():
    """name -> the adapter, loaded once (None with the reason it is missing)."""
    cache = {}

    def get(name):
        if name not in cache:
            try:
                cache[name] = (load(name, threads=THREADS), "")
            except PeerNotInstalled as error:
                cache[name] = (None, str(error))
        return cache[name]

    return get


@pytest.mark.parametrize("name", DEFAULT_IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_attention(benchmark, case, name, loaded):
    impl, missing = loaded(name)
    if impl is None:
        pytest.skip(missing)
    skipped = plan_skips([case], {name: impl}, default_grid=True, available=available_memory())
    if skipped:
        pytest.skip(skipped[case.id][name])
    call, rows = case.call(), measure.check_rows(case)
    expected = measure.expected_rows(case, call, rows)
    prepared, result, first = measure.make_ready(impl, call, expected, rows)
    if result["status"] == "skipped":
        pytest.skip(result["reason"])
    assert prepared is not None, f"{name} on {case.label}: {result['reason']}"
    calls = measure.warm_up(prepared.run, first)

    benchmark.group = case.label
    benchmark.extra_info.update(
        flops=case.flops, visible_pairs=case.visible_pairs, threads=THREADS, impl=name
    )
    benchmark.pedantic(prepared.run, rounds=ROUNDS, iterations=calls, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["gflops"] = case.flops / seconds / 1e9
    # onnxruntime's threads spin on after its calls: let them stop before the next benchmark
    time.sleep(measure.SETTLE_AFTER.get(name, 0))
