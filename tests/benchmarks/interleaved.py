"""Interleaved A/B timing: native, torch and naive NumPy called in turn, round after round.

    python tests/benchmarks/interleaved.py

On a shared machine a burst of someone else's work lands on whichever implementation
pytest-benchmark is timing at that moment; calling them in turn spreads it over all of them,
so the ratios hold better. float32, 2 threads, median ms. Not collected by pytest.

Caveat: torch brings its own OpenMP runtime, whose idle threads spin for a while after each
call; on 2 cores that slows whichever call follows, which matters for sub-millisecond cases
(the small shapes at the end). Time those on their own as well.
"""

import time

import numpy as np

from refattn import native

THREADS = 2
CASES = [  # (query shape (B, H, Lq, D), Lk, causal, rounds)
    ((1, 8, 1024, 64), 1024, False, 30),
    ((1, 8, 2048, 64), 2048, False, 15),
    ((1, 16, 2048, 128), 2048, False, 6),
    ((1, 8, 1024, 64), 1024, True, 30),
    ((1, 8, 2048, 64), 2048, True, 15),
    ((1, 16, 2048, 128), 2048, True, 6),
    ((1, 32, 1, 128), 4096, False, 60),
    ((1, 8, 128, 64), 128, False, 300),
    ((8, 8, 128, 64), 128, False, 100),
]


def naive_numpy(q, k, v, causal):
    s = (q @ np.swapaxes(k, -1, -2)) * (q.shape[-1] ** -0.5)
    if causal:
        s = np.where(np.tri(*s.shape[-2:], dtype=bool), s, -np.inf)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return (s / s.sum(axis=-1, keepdims=True)) @ v


def _runs(q, k, v, causal, torch) -> dict:
    """The calls to time, by name."""
    runs = {"native": lambda: native.attention(q, k, v, causal=causal or None, num_threads=2)}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        runs["torch"] = lambda: sdpa(tq, tk, tv, is_causal=causal)
    if q.size // q.shape[-1] * k.shape[-2] <= 2**25:  # the score matrix stays modest
        runs["numpy"] = lambda: naive_numpy(q, k, v, causal)
    return runs


def main():
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    columns = ("native", "torch", "numpy")
    print(f"{'case':34} " + " ".join(f"{c + ' ms':>10}" for c in columns) + "  torch/native")
    for (B, H, Lq, D), Lk, causal, rounds in CASES:
        q = rng.standard_normal((B, H, Lq, D), dtype=np.float32)
        k, v = (rng.standard_normal((B, H, Lk, D), dtype=np.float32) for _ in range(2))
        runs = _runs(q, k, v, causal, torch)
        times = {name: [] for name in runs}
        for run in runs.values():
            run()
        for _ in range(rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
        cells = " ".join(f"{ms[c]:10.3f}" if c in ms else f"{'-':>10}" for c in columns)
        ratio = f"{ms['torch'] / ms['native']:12.2f}x" if "torch" in ms else ""
        name = f"({B},{H},{Lq},{D}) Lk={Lk}" + (" causal" if causal else "")
        print(f"{name:34} {cells} {ratio}", flush=True)


if __name__ == "__main__":
    main()
