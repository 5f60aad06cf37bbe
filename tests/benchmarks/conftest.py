"""The benchmark table: median ms per case for each implementation, native's speed-ups and
GF/s, and the machine's float32 matmul peak measured in the same run (a large NumPy sgemm)."""

import time

import numpy as np
import pytest

_MEDIANS: dict[str, dict[str, float]] = {}  # case -> impl -> median seconds
_FLOPS: dict[str, float] = {}  # case -> 4·B·H·Lq·Lk·D (causal counted as full, as PEERS.md)


@pytest.fixture
def medians():
    return _MEDIANS


@pytest.fixture
def flops():
    return _FLOPS


def matmul_peak(n: int = 4096, rounds: int = 5) -> float:
    """GF/s of an n×n float32 matmul through NumPy's BLAS: the practical peak of the machine."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e9


def pytest_terminal_summary(terminalreporter):
    if not _MEDIANS:
        return
    impls = ("native", "numpy", "torch")
    header = f"{'case':32} " + " ".join(f"{i + ' ms':>10}" for i in impls)
    header += f" {'vs numpy':>9} {'vs torch':>9} {'GF/s':>6}"
    lines = ["refattn native vs peers, float32, 2 threads (median ms; speed-up = peer/native)"]
    lines += [header, "-" * len(header)]
    for case, times in _MEDIANS.items():
        cells = " ".join(f"{times[i] * 1e3:10.2f}" if i in times else f"{'-':>10}" for i in impls)
        native = times.get("native")
        ratios = " ".join(
            f"{times[p] / native:8.2f}x" if p in times and native else f"{'-':>9}"
            for p in ("numpy", "torch")
        )
        rate = f"{_FLOPS[case] / native / 1e9:6.0f}" if native and case in _FLOPS else f"{'-':>6}"
        lines.append(f"{case:32} {cells} {ratios} {rate}")
    lines.append(f"float32 matmul peak (NumPy sgemm 4096², same run): {matmul_peak():.0f} GF/s")
    terminalreporter.write_line("")
    for line in lines:
        terminalreporter.write_line(line)
