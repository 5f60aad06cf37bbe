"""The benchmark table: median ms per case for each implementation, and native's speed-ups."""

import pytest

_MEDIANS: dict[str, dict[str, float]] = {}  # case -> impl -> median seconds


@pytest.fixture
def medians():
    return _MEDIANS


def pytest_terminal_summary(terminalreporter):
    if not _MEDIANS:
        return
    impls = ("native", "numpy", "torch")
    header = f"{'case':32} " + " ".join(f"{i + ' ms':>10}" for i in impls)
    header += f" {'vs numpy':>9} {'vs torch':>9}"
    lines = ["refattn native vs peers, float32, 2 threads (median ms; speed-up = peer/native)"]
    lines += [header, "-" * len(header)]
    for case, times in _MEDIANS.items():
        cells = " ".join(f"{times[i] * 1e3:10.2f}" if i in times else f"{'-':>10}" for i in impls)
        native = times.get("native")
        ratios = " ".join(
            f"{times[p] / native:8.2f}x" if p in times and native else f"{'-':>9}"
            for p in ("numpy", "torch")
        )
        lines.append(f"{case:32} {cells} {ratios}")
    terminalreporter.write_line("")
    for line in lines:
        terminalreporter.write_line(line)
