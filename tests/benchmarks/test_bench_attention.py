"""Speed of the native core against naive NumPy and PyTorch, side by side in one run.

    pytest tests/benchmarks --benchmark-only

float32, 2 threads: refattn.native with num_threads=2, torch with torch.set_num_threads(2),
NumPy with its BLAS's default (every core; set OPENBLAS_NUM_THREADS=2 on a bigger machine).
Plain `pytest` does not collect this directory (see tests/conftest.py). At the end a table of
median milliseconds per case, with native's speed-up over each peer, is printed.
"""

import numpy as np
import pytest

from refattn import native

THREADS = 2
# (name, query shape (B, H, Lq, D), key/value length, causal)
CASES = [
    ("(1,8,1024,64)", (1, 8, 1024, 64), 1024, False),
    ("(1,8,2048,64)", (1, 8, 2048, 64), 2048, False),
    ("(1,16,2048,128)", (1, 16, 2048, 128), 2048, False),
    ("(1,8,1024,64) causal", (1, 8, 1024, 64), 1024, True),
    ("(1,8,2048,64) causal", (1, 8, 2048, 64), 2048, True),
    ("(1,16,2048,128) causal", (1, 16, 2048, 128), 2048, True),
    ("decode q (1,32,1,128) kv 4096", (1, 32, 1, 128), 4096, False),
]
IMPLS = ("native", "numpy", "torch")


def naive_numpy(q, k, v, causal):
    """The textbook formula: softmax(QKᵀ/√D)·V, the whole score matrix at once."""
    s = (q @ np.swapaxes(k, -1, -2)) * (q.shape[-1] ** -0.5)
    if causal:
        Lq, Lk = s.shape[-2:]
        s = np.where(np.tri(Lq, Lk, dtype=bool), s, -np.inf)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return (s / s.sum(axis=-1, keepdims=True)) @ v


def _function(impl, q, k, v, causal):
    if impl == "native":
        return lambda: native.attention(q, k, v, causal=causal or None, num_threads=THREADS)
    if impl == "numpy":
        return lambda: naive_numpy(q, k, v, causal)
    torch = pytest.importorskip("torch")
    torch.set_num_threads(THREADS)
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run():
        with torch.no_grad():
            return sdpa(tq, tk, tv, is_causal=causal)

    return run


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("case", "shape", "Lk", "causal"), CASES, ids=[c[0] for c in CASES])
def test_attention_speed(benchmark, medians, flops, case, shape, Lk, causal, impl):
    rng = np.random.default_rng(0)
    B, H, Lq, D = shape
    q = rng.standard_normal((B, H, Lq, D), dtype=np.float32)
    k = rng.standard_normal((B, H, Lk, D), dtype=np.float32)
    v = rng.standard_normal((B, H, Lk, D), dtype=np.float32)
    function = _function(impl, q, k, v, causal)
    benchmark.group = case
    benchmark.extra_info.update(impl=impl, shape=shape, Lk=Lk, causal=causal, threads=THREADS)
    rounds = 20 if Lq == 1 or B * H * Lq * Lk * D < 2**27 else 5
    benchmark.pedantic(function, rounds=rounds, warmup_rounds=1)
    medians.setdefault(case, {})[impl] = benchmark.stats.stats.median
    flops[case] = 4 * B * H * Lq * Lk * D
