"""The benchmark cases: one place for the grid that `refattn bench` and tests/benchmarks time.

A case is one attention call, q (B, H, Lq, D), k and v (B, H, Lk, D), causal or not. Causal
means bottom-right alignment (the queries are the last Lq of the Lk tokens, as when decoding);
it is the same mask as top-left when Lq = Lk, which is every causal case of the default grid.

Work is counted as the textbook does: 2·D flops per (query, key) pair for Q·Kᵀ and 2·D for P·V,
so 4·B·H·pairs·D, where a causal case counts only the visible pairs (N(N+1)/2 per head when
Lq = Lk = N). A decode case (Lq = 1) is bound by memory: it reads K and V once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn.call import AttentionCall

SWEEP_N = (128, 256, 512, 1024, 2048, 4096, 8192)
SWEEP_HEADS = {64: 8, 128: 16}  # D -> H: (1,8,N,64) and (1,16,N,128), issue 8's shapes
BATCH_SHAPES = ((4, 8, 1024, 64), (8, 8, 128, 64))
DECODE_SHAPES = ((1, 32, 1, 4096, 128), (1, 32, 1, 32768, 128))
# Peak memory is measured in a fresh subprocess per implementation for these (not timed):
# the long one is where materialising the (B, H, Lq, Lk) scores needs gigabytes.
MEMORY_SHAPES = ((1, 8, 4096, 4096, 64), (1, 8, 16384, 16384, 64), (1, 32, 1, 32768, 128))

# The backward (--backward): issue 17's shapes, and the long one whose memory must stay O(N).
BACKWARD_SHAPES = ((1, 8, 2048, 2048, 64), (4, 8, 1024, 1024, 64), (1, 16, 1024, 1024, 128))
BACKWARD_MEMORY_SHAPES = ((1, 8, 16384, 16384, 64),)

CAUSAL_CHOICES = {"both": (False, True), "yes": (True,), "no": (False,)}
DTYPES = ("float32", "float64", "bfloat16", "float16")  # bfloat16: ml_dtypes arrays
# The dtypes NumPy has no BLAS for: their matmul peak is torch.mm's (where torch is installed)
# and their read bandwidth is measured in float32 (measure.matmul_rate, measure.stream_rate).
LOW_PRECISION = ("bfloat16", "float16")


@dataclass(frozen=True)
class Case:
    """One attention call to time: q (B, H, Lq, D), k and v (B, H, Lk, D)."""

    B: int
    H: int
    Lq: int
    Lk: int
    D: int
    causal: bool = False
    dtype: str = "float32"

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.B, self.H, self.Lq, self.Lk, self.D)

    @property
    def id(self) -> str:
        """A stable name: 'B1-H8-Lq1024-Lk1024-D64-causal-float32'."""
        mask = "causal" if self.causal else "full"
        return f"B{self.B}-H{self.H}-Lq{self.Lq}-Lk{self.Lk}-D{self.D}-{mask}-{self.dtype}"

    @property
    def label(self) -> str:
        """For people: '(1,8,1024,64) causal', '(1,32,1,128) kv 4096'."""
        if self.Lq == self.Lk:
            text = f"({self.B},{self.H},{self.Lq},{self.D})"
        else:
            text = f"({self.B},{self.H},{self.Lq},{self.D}) kv {self.Lk}"
        return text + (" causal" if self.causal else "")

    @property
    def decode(self) -> bool:
        return self.Lq == 1

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def scores(self) -> int:
        """Elements of the (B, H, Lq, Lk) score matrix a naive implementation materialises."""
        return self.B * self.H * self.Lq * self.Lk

    @property
    def input_bytes(self) -> int:
        return self.B * self.H * (self.Lq + 2 * self.Lk) * self.D * self.itemsize

    @property
    def output_bytes(self) -> int:
        return self.B * self.H * self.Lq * self.D * self.itemsize

    @property
    def gradient_bytes(self) -> int:
        """Bytes of dQ, dK and dV: the inputs' sizes."""
        return self.input_bytes

    @property
    def kv_bytes(self) -> int:
        """Bytes of K and V: what a decode step must read at least once."""
        return 2 * self.B * self.H * self.Lk * self.D * self.itemsize

    @property
    def visible_pairs(self) -> int:
        """(query, key) pairs per head that the mask lets through."""
        return visible_pairs(self.Lq, self.Lk, causal=self.causal)

    @property
    def flops(self) -> int:
        """4·B·H·pairs·D: Q·Kᵀ and P·V, 2·D flops each per visible pair."""
        return 4 * self.B * self.H * self.visible_pairs * self.D

    def inputs(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q, k, v drawn from a standard normal, the same for every implementation."""
        rng = np.random.default_rng(seed)
        q_shape = (self.B, self.H, self.Lq, self.D)
        kv_shape = (self.B, self.H, self.Lk, self.D)
        return tuple(
            rng.standard_normal(shape, dtype=np.float32).astype(self.dtype, copy=False)
            for shape in (q_shape, kv_shape, kv_shape)
        )

    def call(self, seed: int = 0) -> AttentionCall:
        """The call the case times: its inputs, bottom-right causal when causal."""
        q, k, v = self.inputs(seed)
        return AttentionCall.check(q, k, v, causal="bottom_right" if self.causal else None)

    def upstream(self, seed: int = 0) -> np.ndarray:
        """dO, the gradient of a loss with respect to out, (B, H, Lq, D): standard normal."""
        rng = np.random.default_rng((seed, 1))
        shape = (self.B, self.H, self.Lq, self.D)
        return rng.standard_normal(shape, dtype=np.float32).astype(self.dtype, copy=False)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "label": self.label,
            "B": self.B,
            "H": self.H,
            "Lq": self.Lq,
            "Lk": self.Lk,
            "D": self.D,
            "causal": self.causal,
            "dtype": self.dtype,
            "decode": self.decode,
            "visible_pairs": self.visible_pairs,
            "flops": self.flops,
            "kv_bytes": self.kv_bytes,
        }

    @classmethod
    def from_json(cls, data: dict) -> Case:
        return cls(*(data[name] for name in ("B", "H", "Lq", "Lk", "D", "causal", "dtype")))


def visible_pairs(Lq: int, Lk: int, *, causal: bool) -> int:
    """Pairs (i, j) with j <= i + Lk - Lq (bottom-right causal), or all Lq·Lk pairs.

    Query i sees keys 0 .. i + Lk - Lq, that is min(Lk, max(0, i + Lk - Lq + 1)) of them; for
    Lq = Lk = N the sum is N(N+1)/2.
    """
    if not causal:
        return Lq * Lk
    offset = Lk - Lq
    return sum(min(Lk, max(0, i + offset + 1)) for i in range(Lq))


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """'B,H,Lq,Lk,D' -> ints; 'B,H,N,D' is short for Lq = Lk = N."""
    parts = text.split(",")
    if len(parts) not in (4, 5):
        raise ValueError(
            f"a shape should be B,H,Lq,Lk,D (or B,H,N,D for Lq = Lk), but got {text!r}"
        )
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"a shape should be whole numbers B,H,Lq,Lk,D, but got {text!r}") from None
    if any(n < 1 for n in numbers):
        raise ValueError(f"every size in a shape should be at least 1, but got {text!r}")
    if len(numbers) == 4:
        B, H, N, D = numbers
        return (B, H, N, N, D)
    return tuple(numbers)


def cases_for(shapes, *, causal: str = "both", dtype: str = "float32") -> list[Case]:
    """Cases for given (B, H, Lq, Lk, D) shapes. A decode shape (Lq = 1) is timed non-causal
    only: bottom-right causal lets its one query see every key, the same call."""
    if causal not in CAUSAL_CHOICES:
        raise ValueError(f"causal should be one of {', '.join(CAUSAL_CHOICES)}, but got {causal!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype should be one of {', '.join(DTYPES)}, but got {dtype!r}")
    found = []
    for shape in shapes:
        for is_causal in CAUSAL_CHOICES[causal]:
            if shape[2] == 1 and is_causal and causal == "both":
                continue
            found.append(Case(*shape, causal=is_causal, dtype=dtype))
    return list(dict.fromkeys(found))  # drop repeats, keep order


def default_shapes(*, backward: bool = False) -> list[tuple[int, int, int, int, int]]:
    """The standard grid: N = 128 … 8192 at D = 64 and 128, a batch case, and decode; for the
    backward, BACKWARD_SHAPES."""
    if backward:
        return list(BACKWARD_SHAPES)
    sweep = [(1, SWEEP_HEADS[D], N, N, D) for D in SWEEP_HEADS for N in SWEEP_N]
    batch = [(B, H, N, N, D) for B, H, N, D in BATCH_SHAPES]
    return sweep + batch + list(DECODE_SHAPES)


def default_cases(*, causal: str = "both", dtype: str = "float32", backward=False) -> list[Case]:
    return cases_for(default_shapes(backward=backward), causal=causal, dtype=dtype)


def memory_cases(shapes=None, *, dtype: str = "float32", backward=False) -> list[Case]:
    """Cases for peak memory: `shapes`, or the standard ones (MEMORY_SHAPES, or for the
    backward BACKWARD_MEMORY_SHAPES)."""
    if shapes is None:
        shapes = BACKWARD_MEMORY_SHAPES if backward else MEMORY_SHAPES
    return [Case(*shape, causal=False, dtype=dtype) for shape in shapes]


# Issue 8's targets name these shapes; the default grid holds them all (tests check it).
ISSUE8_SHAPES = (
    (1, 8, 1024, 1024, 64),
    (1, 8, 2048, 2048, 64),
    (1, 8, 4096, 4096, 64),
    (4, 8, 1024, 1024, 64),
    (1, 16, 2048, 2048, 128),
    (1, 8, 128, 128, 64),
    (8, 8, 128, 128, 64),
    (1, 32, 1, 4096, 128),
    (1, 32, 1, 32768, 128),
)
