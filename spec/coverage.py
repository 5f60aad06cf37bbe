"""What the strategies draw: the share of drawn calls in each region of the call space where
kernels change path or the Definition has an edge.

    python -m refattn.spec.coverage [--examples 2000]

prints one line per region of `REGIONS` with the share of `cases()` (every capability, the
defaults of the invariants) that fell in it, and its floor. tests/test_strategies.py asserts
that every share stays at or above its floor, so that a change to the strategies cannot
quietly shrink the drawn space: a region that is no longer drawn fails that test by name.
The floors are about half the shares measured when they were set (hypothesis' generation is
deterministic for one hypothesis version, and drifts a little between versions).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from hypothesis import HealthCheck, Phase, given, settings
from refattn.spec.cases import Case
from refattn.spec.strategies import TILES, cases

from refattn.capabilities import ALL


def _masking(case: Case) -> int:
    present = (case.mask_shape, case.bias_shape, case.causal, case.window, case.kv_lengths)
    return sum(x is not None for x in present)


def _near_tile(n: int) -> bool:
    return n > 8 and any(n % t in (0, 1, t - 1) for t in TILES)


def _along(shape, axis: int) -> bool:
    return shape is not None and shape[axis] == 1


def _group(case: Case) -> int:
    return case.Hq // case.Hkv


# name -> (the region, its floor: the share of drawn calls that must fall in it)
REGIONS: dict[str, tuple[Callable[[Case], bool], float]] = {
    "float64": (lambda c: c.dtype == "float64", 0.135),
    "float32": (lambda c: c.dtype == "float32", 0.13),
    "float16": (lambda c: c.dtype == "float16", 0.11),
    "bfloat16": (lambda c: c.dtype == "bfloat16", 0.115),
    "Lq next to a tile edge (k·T - 1, k·T, k·T + 1)": (lambda c: _near_tile(c.Lq), 0.19),
    "Lk next to a tile edge": (lambda c: _near_tile(c.Lk), 0.215),
    "Lk = k·64 + 1 > 64 (a last tile of one key)": (lambda c: c.Lk > 64 and c.Lk % 64 == 1, 0.015),
    "Lq > 128 and Lk > 128": (lambda c: c.Lq > 128 and c.Lk > 128, 0.075),
    "Lk >= 512 (decode against long keys)": (lambda c: c.Lk >= 512, 0.05),
    "Lk >= 2048": (lambda c: c.Lk >= 2048, 0.015),
    "Dk in (64, 128)": (lambda c: c.Dk in (64, 128), 0.045),
    "Dk > 128": (lambda c: c.Dk > 128, 0.065),
    "Dk > 8 and not a multiple of 16": (lambda c: c.Dk > 8 and c.Dk % 16 != 0, 0.105),
    "Dv != Dk": (lambda c: c.Dv != c.Dk, 0.28),
    "GQA group >= 2": (lambda c: _group(c) >= 2, 0.245),
    "GQA group > 4 with Hkv >= 2": (lambda c: _group(c) > 4 and c.Hkv >= 2, 0.08),
    "two batch dims": (lambda c: len(c.batch) == 2, 0.105),
    "strided views": (lambda c: c.strided, 0.21),
    "negative scale": (lambda c: c.scale is not None and c.scale < 0, 0.07),
    "scale 0 or |scale| <= 1e-7": (lambda c: c.scale is not None and abs(c.scale) <= 1e-7, 0.02),
    "|scale| >= 100": (lambda c: c.scale is not None and abs(c.scale) >= 100, 0.01),
    "softcap <= 0.05": (lambda c: c.softcap is not None and c.softcap <= 0.05, 0.03),
    "softcap >= 1000": (lambda c: c.softcap is not None and c.softcap >= 1000, 0.02),
    "softcap and scale": (lambda c: c.softcap is not None and c.scale is not None, 0.06),
    "mask": (lambda c: c.mask_shape is not None, 0.19),
    "mask per head": (
        lambda c: c.mask_shape is not None and len(c.mask_shape) == len(c.batch) + 3,
        0.065,
    ),
    "mask broadcast along the queries (..., 1, Lk)": (lambda c: _along(c.mask_shape, -2), 0.11),
    "mask broadcast along the keys (..., Lq, 1)": (lambda c: _along(c.mask_shape, -1), 0.08),
    "mask hiding every key (density 0)": (
        lambda c: c.mask_shape is not None and c.mask_density == 0.0,
        0.03,
    ),
    "bias": (lambda c: c.bias_shape is not None, 0.2),
    "bias with -inf entries": (lambda c: c.bias_shape is not None and c.bias_hidden > 0, 0.085),
    "bias of magnitude 30": (lambda c: c.bias_shape is not None and c.bias_magnitude >= 30, 0.045),
    "bias broadcast along the keys": (lambda c: _along(c.bias_shape, -1), 0.09),
    "causal top-left": (lambda c: c.causal == "top_left", 0.125),
    "causal bottom-right, Lq != Lk": (lambda c: c.causal == "bottom_right" and c.Lq != c.Lk, 0.065),
    "window": (lambda c: c.window is not None, 0.23),
    "window open on one side": (lambda c: c.window is not None and None in c.window, 0.17),
    "kv_lengths": (lambda c: c.kv_lengths is not None, 0.27),
    "a kv length of 0": (lambda c: c.kv_lengths is not None and 0 in c.kv_lengths, 0.095),
    "two masking features together": (lambda c: _masking(c) >= 2, 0.345),
    "four or more masking features together": (lambda c: _masking(c) >= 4, 0.085),
}


def sample(capabilities=ALL, *, examples: int = 2000, **options) -> list[Case]:
    """The cases `cases(capabilities, **options)` draws in `examples` examples, as a run of an
    invariant draws them (hypothesis' generation phase, derandomized: the same list each run)."""
    drawn: list[Case] = []

    @settings(
        max_examples=examples,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(cases(capabilities, **options))
    def draw(case):
        drawn.append(case)

    draw()
    return drawn


def shares(drawn: list[Case]) -> dict[str, float]:
    """The share of `drawn` in each region of REGIONS."""
    return {name: sum(map(inside, drawn)) / len(drawn) for name, (inside, _) in REGIONS.items()}


def report(measured: dict[str, float]) -> str:
    """A table: each region, its share and its floor, and the regions below their floor."""
    width = max(map(len, REGIONS))
    lines = [f"{'region':<{width}}  share   floor"]
    for name, share in measured.items():
        floor = REGIONS[name][1]
        low = "  BELOW FLOOR" if share < floor else ""
        lines.append(f"{name:<{width}}  {share:6.1%}  {floor:6.1%}{low}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m refattn.spec.coverage", description=__doc__)
    parser.add_argument("--examples", type=int, default=2000, help="cases to draw (2000)")
    args = parser.parse_args(argv)
    drawn = sample(examples=args.examples)
    print(f"{len(drawn)} cases drawn by refattn.spec.strategies.cases(every capability)")
    print(report(shares(drawn)))


if __name__ == "__main__":
    main()
