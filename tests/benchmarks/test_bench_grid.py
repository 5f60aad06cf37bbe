"""`refattn bench`'s grid under pytest-benchmark: `pytest tests/benchmarks --benchmark-only`.

The cases, the implementations, the output check and the warm-up are refattn.bench's own (one
place for the grid); one benchmark group per case, so that pytest-benchmark's table compares
the implementations side by side. The normal `pytest` run does not collect them
(tests/conftest.py).

Threads: every library uses all the CPUs this process may run on, its default; torch,
onnxruntime and native are told so explicitly. OpenBLAS and OpenMP read their settings when
they load, before pytest imports them, so set them first; OPENBLAS_THREAD_TIMEOUT=22 stops
NumPy's idle threads spinning for ~0.1 s after each call while the next implementation runs
(see refattn.bench.impls.environment). For example, on one CPU:
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OPENBLAS_THREAD_TIMEOUT=22 \\
        REFATTN_BENCH_THREADS=1 taskset -c 0 pytest tests/benchmarks --benchmark-only
`refattn bench` does all this itself, interleaves the implementations and measures the
machine's limits; pytest-benchmark runs them one after another.
"""

import os
import time

import pytest

pytest.importorskip("pytest_benchmark")

from refattn.bench import measure
from refattn.bench.cases import default_cases
from refattn.bench.impls import IMPLS
from refattn.bench.run import available_memory, plan_skips

THREADS = int(os.environ.get("REFATTN_BENCH_THREADS", len(os.sched_getaffinity(0))))
ROUNDS = int(os.environ.get("REFATTN_BENCH_ROUNDS", 5))
CASES = default_cases()


@pytest.fixture(scope="module")
def skips():
    return plan_skips(CASES, list(IMPLS), default_grid=True, available=available_memory())


@pytest.fixture(scope="module")
def loaded():
    """name -> prepare, loaded once per implementation (None with the reason it is missing)."""
    cache = {}

    def load(name):
        if name not in cache:
            missing = IMPLS[name].missing()
            cache[name] = (None, missing) if missing else (IMPLS[name].load(THREADS, "float32"), "")
        return cache[name]

    return load


@pytest.mark.parametrize("name", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_attention(benchmark, case, name, loaded, skips):
    prepare, missing = loaded(name)
    if prepare is None:
        pytest.skip(missing)
    if name in skips.get(case.id, {}):
        pytest.skip(skips[case.id][name])
    q, k, v = case.inputs()
    rows = measure.check_rows(case)
    expected = measure.expected_rows(case, q, k, v, rows)
    prepared, result, first = measure.make_ready(case, prepare, q, k, v, expected, rows)
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
