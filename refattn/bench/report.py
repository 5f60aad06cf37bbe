"""What `refattn bench` reports: the JSON document (schema "refattn-bench/1") and its table.

Derived figures, per case and implementation, all from medians:
    GFLOP/s   = flops / median time, flops = 4·B·H·pairs·D (causal: visible pairs only)
    % peak    = GFLOP/s / the matmul peak measured in the same run
    GB/s      = bytes of K and V / median time (decode cases, Lq = 1: they read K and V once)
    % read    = GB/s / the streaming-read bandwidth measured in the same run
    native ×  = the peer's median time / native's median time (> 1: native is faster)
"""

from __future__ import annotations

import os
import platform

import numpy as np

from refattn import machine
from refattn.bench import measure
from refattn.bench.cases import LOW_PRECISION

SCHEMA = "refattn-bench/1"
BUSY_WARNING_PERCENT = 2.0
FLOPS_COUNTED = (
    "4·B·H·pairs·D: 2·D for q·k and 2·D for p·v per (query, key) pair; a causal case counts "
    "only its visible pairs, N(N+1)/2 per head when Lq = Lk = N"
)
# The gradients: the forward's two products and the backward's five (q·k again, dO·vᵀ, Pᵀ·dO,
# dS·k, dSᵀ·q), as FlashAttention-2's backward counts them.
BACKWARD_FLOPS = 14 / 4
FLOPS_COUNTED_BACKWARD = (
    "14·B·H·pairs·D: the forward's q·k and p·v, and the backward's five products (q·k again, "
    "dO·vᵀ, Pᵀ·dO, dS·k, dSᵀ·q), 2·D each per (query, key) pair; a causal case counts only its "
    "visible pairs"
)


def _spread(values: list[float], how: str) -> dict:
    return {
        "median": float(np.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "samples": [float(v) for v in values],
        "how": how,
    }


def peak_how(dtype: str, by: str | None) -> str:
    """What measure.matmul_rate timed for dtype, `by` "torch" or "numpy"."""
    if by == "torch":
        return f"torch.mm {dtype} (torch's CPU gemm)"
    if dtype in LOW_PRECISION:
        return f"NumPy float32 matmul (OpenBLAS gemm; torch, for a {dtype} one, not installed)"
    return f"NumPy {dtype} matmul (OpenBLAS gemm)"


def build(*, timing, memory, settings, impls, cpus, created, command, elapsed, busy) -> dict:
    threads, dtype = settings["threads"], settings["dtype"]
    n = settings["peak_n"]
    peak = _spread(
        timing["matmul_gflops"],
        f"{peak_how(dtype, timing.get('peak_by'))} {n}×{n} @ {n}×{n}, {threads} threads; "
        f"samples at the start and the end",
    )
    rows, cols = settings["stream_shape"]
    read = "float32" if dtype in LOW_PRECISION else dtype  # measure.stream_rate
    stream = _spread(
        timing["stream_gbps"],
        f"NumPy {read} matrix-vector product over a {rows}×{cols} matrix "
        f"({rows * cols * np.dtype(read).itemsize / 2**20:.0f} MiB, OpenBLAS gemv), "
        f"{threads} threads: bytes of the matrix / time; samples at the start and the end",
    )
    work = BACKWARD_FLOPS if settings.get("backward") else 1
    cases = []
    for entry in timing["cases"]:
        case, results = entry["case"], entry["results"]
        for result in results.values():
            if result["status"] != "ok":
                continue
            seconds = result["ms"]["median"] / 1e3
            result["gflops"] = work * case["flops"] / seconds / 1e9
            result["pct_peak"] = 100 * result["gflops"] / peak["median"]
            if case["decode"]:
                result["gbps"] = case["kv_bytes"] / seconds / 1e9
                result["pct_stream"] = 100 * result["gbps"] / stream["median"]
        speedup = {}
        native = results.get("native", {})
        if native.get("status") == "ok":
            for name, result in results.items():
                if name != "native" and result["status"] == "ok":
                    speedup[name] = result["ms"]["median"] / native["ms"]["median"]
        cases.append({**case, "results": results, "native_speedup": speedup})
    seen = timing.get("threads_seen", {})
    return {
        "schema": SCHEMA,
        "created": created,
        "command": command,
        "elapsed_s": elapsed,
        "settings": {
            **settings,
            "min_sample_s": measure.MIN_SAMPLE_S,
            "warmup_s": measure.WARMUP_S,
            "settle_s": measure.SETTLE_S,
            "settle_after_s": measure.SETTLE_AFTER,
            "primer_below_s": measure.PRIME_BELOW_S,
            "long_call_rounds": measure.LONG_ROUNDS,
            "statistic": "median of the rounds, with min and max; per call",
            "sample": "one untimed call (for calls under primer_below_s), then enough timed "
            "calls back to back to last min_sample_s; implementations interleaved, the order "
            "rotating every round and reversed every other round, each sample after a pause "
            "of settle_s (settle_after_s after the named ones, whose idle threads spin "
            "longer); calls of primer_below_s or more: one call a sample, in the first "
            "long_call_rounds rounds only",
            "causal_alignment": "bottom-right (the same as top-left when Lq = Lk)",
            "flops_counted": FLOPS_COUNTED_BACKWARD if settings.get("backward") else FLOPS_COUNTED,
            "timed": "each implementation's gradients of the case, dQ, dK and dV for dO: its "
            "forward and its backward, as a training step runs them"
            if settings.get("backward")
            else "each implementation's forward call",
        },
        "machine": {
            "cpu": machine.cpu_model(),
            "isa_flags": machine.isa_flags(),
            "cpus_allowed": len(os.sched_getaffinity(0)),
            "cpus_pinned": cpus,
            "python": platform.python_version(),
            "matmul_peak_gflops": peak,
            "stream_read_gbps": stream,
            "busy_elsewhere": busy,
        },
        "implementations": {
            name: {
                "title": info.get("title", name),
                "threads": info.get("threads_how", "")
                + (f" (reports {seen[name]})" if name in seen else ""),
                "versions": info.get("versions", {}),
            }
            for name in impls
            for info in [timing["implementations"].get(name, {})]
        },
        "cases": cases,
        "memory": memory,
    }


# --------------------------------------------------------------------------------------- table


def _ms(ms: dict) -> str:
    def fmt(x):
        return f"{x:.3g}" if x < 100 else f"{x:.0f}"

    return f"{fmt(ms['median']):>7} ({fmt(ms['min'])}–{fmt(ms['max'])})"


def _rounds(settings: dict) -> str:
    rounds, long = settings["repeat"], settings.get("long_call_rounds")
    if long is None or long >= rounds:
        return f"{rounds} rounds"
    return f"{rounds} rounds ({long} for calls of {settings['primer_below_s']:g} s or more)"


def _flags(box: dict) -> str:
    return " ".join(box.get("isa_flags", [])) or "ISA flags not recorded"  # older documents


def table(document: dict) -> str:
    settings, box = document["settings"], document["machine"]
    peak, stream = box["matmul_peak_gflops"], box["stream_read_gbps"]
    impls = list(document["implementations"])
    has_native = "native" in impls
    what = "forward + backward (gradients), " if settings.get("backward") else ""
    lines = [
        f"refattn bench: {what}{settings['dtype']}, {settings['threads']} threads, "
        f"{_rounds(settings)} (median, min–max per call), {document['created']}",
        f"machine: {box['cpu']} ({_flags(box)}), CPUs {box['cpus_pinned']} of "
        f"{box['cpus_allowed']}",
        f"matmul peak {peak['median']:.0f} GFLOP/s (min–max {peak['min']:.0f}–{peak['max']:.0f}): "
        f"{peak['how']}",
        f"streaming read {stream['median']:.1f} GB/s (min–max {stream['min']:.1f}–"
        f"{stream['max']:.1f}): {stream['how']}",
        f"a sample: {settings['sample']}",
        f"GFLOP/s counts {settings['flops_counted']}. Causal is {settings['causal_alignment']}.",
        _busy_line(box["busy_elsewhere"]),
        "threads:",
        *(f"  {name}: {info['threads']}" for name, info in document["implementations"].items()),
        "",
    ]
    header = f"{'case':<26} {'impl':<12} {'median ms (min–max)':<24} {'GFLOP/s':>8} {'% peak':>7}"
    header += f" {'GB/s':>6} {'% read':>6}"
    if has_native:
        header += f" {'native ×':>9}"
    lines += [header, "-" * len(header)]
    for case in document["cases"]:
        first = True
        for name in impls:
            result = case["results"][name]
            label = case["label"] if first else ""
            first = False
            if result["status"] != "ok":
                lines.append(f"{label:<26} {name:<12} {result['status']}: {result['reason']}")
                continue
            row = f"{label:<26} {name:<12} {_ms(result['ms']):<24} {result['gflops']:>8.1f}"
            row += f" {result['pct_peak']:>6.0f}%"
            if "gbps" in result:
                row += f" {result['gbps']:>6.1f} {result['pct_stream']:>5.0f}%"
            else:
                row += f" {'':>6} {'':>6}"
            if name in case["native_speedup"]:
                row += f" {case['native_speedup'][name]:>8.2f}×"
            lines.append(row.rstrip())
    if has_native:
        lines.append("native × = the peer's median time / native's: above 1, native is faster.")
    if document["memory"]:
        lines += ["", _memory_table(document["memory"], backward=settings.get("backward", False))]
    lines.append(f"\nelapsed {document['elapsed_s']:.0f} s")
    return "\n".join(lines) + "\n"


def _busy_line(busy: dict) -> str:
    line = (
        f"other processes used {busy['cpu_s']:.1f} CPU-seconds while timing ran "
        f"({busy['percent_of_machine']:.1f}% of this machine over {busy['wall_s']:.0f} s)"
    )
    if busy["percent_of_machine"] > BUSY_WARNING_PERCENT:
        line += ": the machine was not quiet; times may be slower and noisier than it can do"
    return line


def _memory_table(memory: list[dict], *, backward: bool) -> str:
    lines = [
        "peak memory: one fresh process per implementation and case; one call after a warm-up",
        "  peak = the most resident memory (VmHWM) during that call, over the process after "
        "imports",
        "  beyond = peak − inputs − output: the implementation's own working memory",
        *(
            ["  (the gradients: inputs q, k, v and dO; outputs out, dQ, dK and dV)"]
            if backward
            else []
        ),
        f"{'case':<26} {'impl':<12} {'inputs+out MiB':>14} {'peak MiB':>9} {'beyond MiB':>11}",
    ]
    lines.append("-" * len(lines[-1]))
    last = None
    for entry in memory:
        label = entry["case"]["label"] if entry["case"]["id"] != last else ""
        last = entry["case"]["id"]
        name = entry["impl"]
        if entry["status"] != "ok":
            lines.append(f"{label:<26} {name:<12} {entry['status']}: {entry['reason']}")
            continue
        io = entry["inputs_mib"] + entry["output_mib"]
        lines.append(
            f"{label:<26} {name:<12} {io:>14.0f} {entry['peak_over_baseline_mib']:>9.0f} "
            f"{entry['beyond_inputs_outputs_mib']:>11.0f}"
        )
    return "\n".join(lines)
