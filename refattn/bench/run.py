"""`refattn bench`: plan the run, start the measuring subprocesses, report what they measured."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from refattn.adapters import Adapter, ImplementationNotFound, PeerNotInstalled, load
from refattn.bench import measure, report
from refattn.bench.cases import Case, cases_for, default_cases, memory_cases

DEFAULT_REPEAT = 5
MEMORY_HEADROOM = 0.75  # skip what would need more than this share of the available memory


class UsageError(ValueError):
    """A bad command line: the message says what was expected (exit status 2)."""


class BenchError(RuntimeError):
    """A measuring subprocess failed; the message carries the end of its output."""


# ------------------------------------------------------------------------------------ planning


# Timed by default, in this order, when they load: the native core and every installed peer.
DEFAULT_IMPLS = ("native", "reference", "numpy", "torch", "onnxruntime", "jax")


def choose_impls(names: list[str] | None) -> dict[str, Adapter]:
    """The implementations to time, by name (any that `refattn conform` can load), with their
    adapters: native and every installed peer of DEFAULT_IMPLS by default.

    Asking for one that is unknown or not installed is a usage error with the loader's message;
    by default only native is required (the run is about it) and missing peers are left out.
    """
    if names is None:
        chosen = {"native": _load_for_planning("native")}
        for name in DEFAULT_IMPLS[1:]:
            try:
                chosen[name] = load(name)
            except PeerNotInstalled:
                continue
        return chosen
    ordered = [n for n in DEFAULT_IMPLS if n in names] + [
        n for n in names if n not in DEFAULT_IMPLS
    ]
    return {name: _load_for_planning(name) for name in dict.fromkeys(ordered)}


def _load_for_planning(name: str) -> Adapter:
    """The adapter (threads left alone: the measuring subprocess sets them), or UsageError."""
    try:
        return load(name)
    except (ImplementationNotFound, PeerNotInstalled) as error:
        raise UsageError(f"--impls: {error}") from None
    except ImportError as error:  # the native core itself, not built or broken
        others = ",".join(n for n in DEFAULT_IMPLS if n != name)
        raise UsageError(
            f"{name}: the implementation is not importable ({error}). Build the native core "
            f"(pip install . with a C compiler; OpenMP if the compiler has it), or leave it "
            f"out: --impls {others}"
        ) from None


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes: what can be used without swapping."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def memory_estimate(impl: Adapter, case: Case) -> int:
    """Bytes an implementation would need for a case, from its score_copies (an estimate)."""
    scores = impl.score_copies * case.scores * case.itemsize
    return int(case.input_bytes + case.output_bytes + scores)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def plan_skips(cases, impls, *, default_grid: bool, available: int) -> dict[str, dict[str, str]]:
    """case id -> {impl: why it is not run}: too big for memory, or beyond the default budget."""
    skips: dict[str, dict[str, str]] = {}
    for case in cases:
        for name, impl in impls.items():
            need = memory_estimate(impl, case)
            if impl.score_copies and need > MEMORY_HEADROOM * available:
                why = (
                    f"would need ≈ {_gib(need)} (≈ {impl.score_copies:g} arrays of the "
                    f"(B,H,Lq,Lk) scores, {_gib(case.scores * case.itemsize)} each); "
                    f"{_gib(available)} available"
                )
            elif default_grid and impl.bench_max_scores and case.scores > impl.bench_max_scores:
                why = (
                    f"the default grid times {name} up to B·H·Lq·Lk = {impl.bench_max_scores:,} "
                    f"(it materialises the scores); pass --shapes to time it here"
                )
            else:
                continue
            skips.setdefault(case.id, {})[name] = why
    return skips


# ---------------------------------------------------------------------- the rest of the machine


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (/proc/stat), in seconds."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU time of this process and the subprocesses it has waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class BusyElsewhere:
    """How much CPU other processes took while we measured: a neighbour's job slows us."""

    def __enter__(self):
        self.wall, self.busy, self.own = time.monotonic(), _busy_cpu_seconds(), _own_cpu_seconds()
        return self

    def __exit__(self, *exc):
        wall = time.monotonic() - self.wall
        other = (_busy_cpu_seconds() - self.busy) - (_own_cpu_seconds() - self.own)
        other = max(0.0, other)  # the two clocks tick at different granularity
        cpus = os.cpu_count() or 1
        self.report = {
            "cpu_s": other,
            "wall_s": wall,
            "percent_of_machine": 100 * other / (wall * cpus) if wall > 0 else 0.0,
            "how": "busy CPU time of the machine (/proc/stat) minus that of refattn bench and "
            "its subprocesses (getrusage)",
        }
        return False


# ------------------------------------------------------------------------------------ progress


class Progress:
    """A progress bar on a terminal; one line per case elsewhere (logs, pipes, tests)."""

    def __init__(self, stream, what: str):
        self.stream, self.what = stream, what
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start = time.monotonic()
        self.last_case = None

    def update(self, done: int, total: int, case: str, label: str = "") -> None:
        elapsed = time.monotonic() - self.start
        clock = f"{int(elapsed // 60)}m{int(elapsed % 60):02d}s"
        if self.tty:
            width = 30
            filled = int(width * done / total) if total else width
            bar = "█" * filled + "·" * (width - filled)
            line = f"{self.what} [{bar}] {done}/{total} {clock}  {case} {label}"
            self.stream.write("\r" + line[:150].ljust(150))
        elif case != self.last_case:
            percent = 100 * done // total if total else 100
            self.stream.write(f"{self.what} [{percent:3d}%] {clock}  {case}\n")
        self.last_case = case
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------ subprocesses


def _cpus(threads: int) -> list[int]:
    """The CPUs the measuring process is pinned to: the first `threads` of those allowed."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[:threads] if threads < len(allowed) else allowed


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    settings = environment(threads)
    if "XLA_FLAGS" in settings and env.get("XLA_FLAGS"):
        settings["XLA_FLAGS"] = env["XLA_FLAGS"] + " " + settings["XLA_FLAGS"]
    env.update(settings)
    root = str(Path(__file__).resolve().parents[2])  # so the subprocess imports this refattn
    env["PYTHONPATH"] = (
        root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
    )
    return env


def run_worker(plan: dict, threads: int, on_event=None) -> dict:
    """Run `python -m refattn.bench.measure` on a plan; return its result."""
    cpus = _cpus(threads)
    with tempfile.TemporaryDirectory(prefix="refattn-bench-") as tmp:
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(plan))
        log_path = Path(tmp) / "output.log"
        read_end, write_end = os.pipe()
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "refattn.bench.measure", str(plan_path), str(write_end)],
                pass_fds=(write_end,),
                env=_worker_env(threads),
                cwd=tmp,  # not the caller's directory: `-m` would import a source tree from there
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: os.sched_setaffinity(0, cpus),
            )
        os.close(write_end)
        result = None
        with os.fdopen(read_end) as events:
            for line in events:
                event = json.loads(line)
                if event["event"] == "result":
                    result = event["result"]
                elif on_event:
                    on_event(event)
        status = process.wait()
        if status != 0 or result is None:
            tail = "\n".join(log_path.read_text().splitlines()[-15:])
            how = f"was killed by signal {-status}" if status < 0 else f"exited with {status}"
            if status == -9:
                how += " (out of memory?)"
            raise BenchError(f"the measuring subprocess {how}:\n{tail}")
    return result


# ------------------------------------------------------------------------------------- the run


def bench(
    *,
    shapes=None,
    causal: str = "both",
    dtype: str = "float32",
    impls: list[str] | None = None,
    threads: int | None = None,
    repeat: int = DEFAULT_REPEAT,
    memory_shapes=None,
    memory: bool = True,
    backward: bool = False,
    json_path: str | None = None,
    plot_path: str | None = None,
    command: str = "refattn bench",
    out=None,
    err=None,
    limits=None,
) -> dict:
    """Time the cases, measure peak memory, print the table; return the report (see report.py).

    shapes: (B, H, Lq, Lk, D) tuples, or None for the standard grid (cases.default_shapes()).
    memory_shapes: shapes whose peak memory is measured; None means the standard ones
    (cases.MEMORY_SHAPES) with the standard grid and none with given shapes.
    limits: (n, (rows, cols)), the sizes of the matmul and the matrix-vector product that
    measure the machine's limits; smaller ones make quick runs (the tests), which the report
    states. Default: measure.PEAK_N, measure.STREAM_SHAPE.
    backward: time and measure each implementation's gradients of the cases (its forward and
    its backward, as a training step runs them; implementations without a backward are
    skipped), on cases.BACKWARD_SHAPES and BACKWARD_MEMORY_SHAPES by default.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if repeat < 1:
        raise UsageError(f"--repeat should be at least 1, but got {repeat}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads should be at least 1, but got {threads}")
    chosen = choose_impls(impls)
    names = list(chosen)
    if plot_path:
        from refattn.pictures import require_matplotlib

        require_matplotlib()  # fail before the run, not after it
    threads = threads or len(os.sched_getaffinity(0))
    default_grid = shapes is None
    try:
        cases = (
            default_cases(causal=causal, dtype=dtype, backward=backward)
            if default_grid
            else cases_for(shapes, causal=causal, dtype=dtype)
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    if memory_shapes is None:
        memory_shapes = memory_cases(dtype=dtype, backward=backward) if default_grid else []
    else:
        memory_shapes = memory_cases(memory_shapes, dtype=dtype)
    if not memory:
        memory_shapes = []

    started = time.monotonic()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    available = available_memory()
    skips = plan_skips(cases, chosen, default_grid=default_grid, available=available)
    peak_n, stream_shape = limits or (measure.PEAK_N, measure.STREAM_SHAPE)
    plan = {
        "mode": "time",
        "backward": backward,
        "peak_n": peak_n,
        "stream_shape": list(stream_shape),
        "dtype": dtype,
        "threads": threads,
        "repeat": repeat,
        "impls": names,
        "cases": [c.to_json() for c in cases],
        "skips": skips,
    }
    progress = Progress(err, "timing")
    try:
        with BusyElsewhere() as busy:
            timing = run_worker(
                plan,
                threads,
                lambda e: progress.update(e["done"], e["total"], e["case"], e["label"]),
            )
    finally:
        progress.close()

    measured_memory = []
    jobs = [(case, name) for case in memory_shapes for name in names]
    progress = Progress(err, "memory")
    try:
        for done, (case, name) in enumerate(jobs):
            progress.update(done, len(jobs), case.label, name)
            measured_memory.append(
                _memory_one(case, chosen[name], threads, available, backward=backward)
            )
    finally:
        progress.close()

    document = report.build(
        timing=timing,
        memory=measured_memory,
        settings={
            "dtype": dtype,
            "threads": threads,
            "repeat": repeat,
            "grid": "default" if default_grid else "given shapes",
            "causal": causal,
            "peak_n": peak_n,
            "stream_shape": list(stream_shape),
            "backward": backward,
        },
        impls=names,
        cpus=_cpus(threads),
        created=created,
        command=command,
        elapsed=time.monotonic() - started,
        busy=busy.report,
    )
    out.write(report.table(document))
    out.flush()
    if json_path:
        Path(json_path).write_text(json.dumps(document, indent=1) + "\n")
    if plot_path:
        from refattn.pictures import bench_plot

        bench_plot(document, plot_path)
    return document


def _memory_one(case: Case, impl: Adapter, threads: int, available: int, backward=False) -> dict:
    """Peak memory of one call in a fresh process. With backward, the call is the gradients:
    its inputs are q, k, v and dO, its outputs out and dQ, dK, dV."""
    entry = {"case": case.to_json(), "impl": impl.name}
    entry["inputs_mib"] = (case.input_bytes + backward * case.output_bytes) / 2**20
    entry["output_mib"] = (case.output_bytes + backward * case.gradient_bytes) / 2**20
    need = memory_estimate(impl, case)
    if impl.score_copies and need > MEMORY_HEADROOM * available:
        entry.update(
            status="skipped",
            reason=f"would need ≈ {_gib(need)} (≈ {impl.score_copies:g} arrays of the "
            f"(B,H,Lq,Lk) scores, {_gib(case.scores * case.itemsize)} each); "
            f"{_gib(available)} available",
            estimate_mib=need / 2**20,
        )
        return entry
    plan = {"mode": "memory", "impl": impl.name, "case": case.to_json(), "threads": threads}
    plan["backward"] = backward
    try:
        entry.update(run_worker(plan, threads))
    except BenchError as error:
        entry.update(status="failed", reason=str(error).splitlines()[0])
    if entry.get("status") == "ok":
        entry["beyond_inputs_outputs_mib"] = (
            entry["peak_over_baseline_mib"] - entry["inputs_mib"] - entry["output_mib"]
        )
    return entry


def environment(threads: int) -> dict[str, str]:
    """Variables that must be set before the libraries load, so that every runtime starts with
    `threads` threads: OpenBLAS (NumPy), OpenMP (torch, native), MKL (torch's BLAS), XLA;
    and OpenBLAS's threads sleep soon after a call, rather than spin while others run."""
    env = {
        name: str(threads)
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    }
    # After each call OpenBLAS's idle threads busy-wait 2^28 cycles (~0.1 s) before sleeping,
    # taking a core from whatever runs next: torch on (1,8,1024,64) measured 25.8 ms after
    # NumPy calls, 13.4 ms with 2^22 cycles (~1.6 ms, within the pause between samples). NumPy
    # itself and the matmul peak were unchanged (44 ms; 204 GFLOP/s against 199).
    env["OPENBLAS_THREAD_TIMEOUT"] = "22"
    # jax is timed as XLA compiles it by default, not with the conformance runs' fast-compile
    # options (refattn.adapters.jax_dpa.XLA_FAST_OPTIONS, LLVM -O0).
    env["REFATTN_JAX_XLA_DEFAULTS"] = "1"
    if threads == 1:  # the one XLA setting there is: no intra-op thread pool at all
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env
