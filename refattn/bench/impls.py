"""The implementations `refattn bench` times, each called the way its users call it.

Every implementation gets the same q, k, v (B, H, L, D) and is prepared once per case: inputs
are put into its own array type and layout (torch tensors, jax device arrays in (B, T, N, H),
an onnxruntime session), outside the timing. The timed call is then the library's ordinary
call on those inputs, with its default scale 1/sqrt(D) and its own kernel choice.

Threads are set equal for everyone, each in the only way its library offers; `threads_how`
says which. Some settings are read only when a library loads (OpenBLAS, OpenMP), so
`refattn bench` times in a fresh subprocess whose environment it sets first (`environment`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from refattn.bench.cases import Case


class Unsupported(Exception):
    """This implementation cannot run this case as asked; the message says why."""


@dataclass(frozen=True)
class Prepared:
    """A case made ready for one implementation: `run()` is the timed call, `output(result)`
    turns what it returned into a NumPy array in refattn's (B, H, Lq, D) layout."""

    run: Callable[[], object]
    output: Callable[[object], np.ndarray] = np.asarray


@dataclass(frozen=True)
class Impl:
    """One implementation: how to load it, set its threads, and prepare a case for it."""

    name: str
    title: str
    modules: tuple[str, ...]  # what must be importable
    install: str  # how to get it, for the error message
    threads_how: str  # how its threads are set; {n} is the count
    # Working memory in (B, H, Lq, Lk) score-sized arrays, an estimate used only to skip a case
    # that would not fit (0: streams over the keys). `refattn bench` measures the real peak;
    # these are rounded up from it at (1,8,4096,64), where the scores are 512 MiB: reference
    # 4.1, numpy 3.0, onnxruntime 1.1, jax 2.2 (plus its own copy of the inputs).
    score_copies: float
    # The default grid times it only up to this many score elements (B·H·Lq·Lk); None: always.
    default_max_scores: int | None
    load: Callable[[int, str], Callable[[Case, np.ndarray, np.ndarray, np.ndarray], Prepared]]
    versions: Callable[[], dict[str, str]]

    def missing(self) -> str | None:
        """Why it cannot be used here, or None when it can."""
        if self.name == "native":  # a compiled extension: only importing it tells
            module = self.modules[0]
            try:
                importlib.import_module(module)
            except ImportError as error:
                return (
                    f"native: {module} is not importable ({error}). {self.install}, "
                    "or leave it out: --impls " + ",".join(n for n in IMPLS if n != "native")
                )
            return None
        absent = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if absent:
            return f"{self.name}: {', '.join(absent)} is not installed ({self.install})"
        return None


def _version(*distributions: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in distributions:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


# ---------------------------------------------------------------------------------------------
# native: refattn's C/OpenMP core


def _load_native(threads: int, dtype: str):
    from refattn import native

    def prepare(case, q, k, v):
        causal = "bottom_right" if case.causal else None
        run = functools.partial(native.attention, q, k, v, causal=causal, num_threads=threads)
        return Prepared(run)

    return prepare


def _native_versions() -> dict[str, str]:
    from refattn import native

    return {**_version("refattn"), "refattn.native.info()": str(native.info())}


# ---------------------------------------------------------------------------------------------
# numpy: the textbook formula, materialising the scores


def naive_attention(q, k, v, *, causal: bool = False):
    """softmax(q·kᵀ/sqrt(D)) · v, written as the textbook writes it (bottom-right causal)."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    scores = (q @ k.swapaxes(-1, -2)) * q.shape[-1] ** -0.5  # a Python float keeps the dtype
    if causal:
        scores = np.where(np.tri(Lq, Lk, Lk - Lq, dtype=bool), scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v


def _load_numpy(threads: int, dtype: str):
    def prepare(case, q, k, v):
        return Prepared(functools.partial(naive_attention, q, k, v, causal=case.causal))

    return prepare


# ---------------------------------------------------------------------------------------------
# reference: refattn.reference, the readable definition (slow by design)


def _load_reference(threads: int, dtype: str):
    from refattn import reference

    def prepare(case, q, k, v):
        causal = "bottom_right" if case.causal else None
        return Prepared(functools.partial(reference.attention, q, k, v, causal=causal))

    return prepare


# ---------------------------------------------------------------------------------------------
# torch: F.scaled_dot_product_attention, CPU, its default kernel choice (flash for float32)


def _load_torch(threads: int, dtype: str):
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    torch.set_num_threads(threads)
    # Settable only before any parallel work; in a fresh process it is the first thing done.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    torch.set_grad_enabled(False)

    def prepare(case, q, k, v):
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))  # shares memory: no copy
        if case.causal and case.Lq != case.Lk:
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(case.Lq, case.Lk)  # is_causal would align top-left
            run = functools.partial(scaled_dot_product_attention, tq, tk, tv, attn_mask=mask)
        else:
            run = functools.partial(scaled_dot_product_attention, tq, tk, tv, is_causal=case.causal)
        return Prepared(run, lambda out: out.numpy())

    return prepare


# ---------------------------------------------------------------------------------------------
# onnxruntime: the ONNX Attention operator (opset 23), CPU execution provider


def attention_model(case: Case) -> bytes:
    """A one-node ONNX model: Y = Attention(Q, K, V), 4-D (B, H, L, D) inputs."""
    from onnx import TensorProto, helper

    element = TensorProto.FLOAT if case.dtype == "float32" else TensorProto.DOUBLE
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], is_causal=int(case.causal))
    inputs = [
        helper.make_tensor_value_info(name, element, [case.B, case.H, length, case.D])
        for name, length in (("Q", case.Lq), ("K", case.Lk), ("V", case.Lk))
    ]
    output = helper.make_tensor_value_info("Y", element, [case.B, case.H, case.Lq, case.D])
    graph = helper.make_graph([node], "attention", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    return model.SerializeToString()


def _load_onnxruntime(threads: int, dtype: str):
    import onnxruntime as ort

    def prepare(case, q, k, v):
        if case.causal and case.Lq != case.Lk:
            raise Unsupported(
                "ONNX Attention's is_causal aligns top-left without a KV cache (past_key); "
                "this case is bottom-right"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # the calling thread counts as one of them
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            attention_model(case), options, providers=["CPUExecutionProvider"]
        )
        feeds = {"Q": q, "K": k, "V": v}
        return Prepared(lambda: session.run(None, feeds)[0])

    return prepare


# ---------------------------------------------------------------------------------------------
# jax: jax.nn.dot_product_attention, jit-compiled, XLA on CPU


def _load_jax(threads: int, dtype: str):
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    def prepare(case, q, k, v):
        if case.causal and case.Lq != case.Lk:
            raise Unsupported("jax.nn.dot_product_attention's is_causal aligns top-left")
        # jax's layout is (B, T, N, H): sequence before heads. Transposed once, here.
        jq, jk, jv = (
            jax.device_put(np.ascontiguousarray(x.transpose(0, 2, 1, 3))) for x in (q, k, v)
        )
        function = jax.jit(functools.partial(jax.nn.dot_product_attention, is_causal=case.causal))

        def run():
            return function(jq, jk, jv).block_until_ready()  # jax dispatches asynchronously

        return Prepared(run, lambda out: np.asarray(out).transpose(0, 2, 1, 3))

    return prepare


# ---------------------------------------------------------------------------------------------

_OPENBLAS_THREADS = (
    "OpenBLAS: OPENBLAS_NUM_THREADS={n} and OPENBLAS_THREAD_TIMEOUT=22 before import "
    "(the rest of NumPy is single-threaded)"
)
_MATERIALISES = 2**27  # 512 MiB of float32 scores, (1,8,4096,64): the default grid's budget

IMPLS: dict[str, Impl] = {
    impl.name: impl
    for impl in (
        Impl(
            name="native",
            title="refattn.native",
            modules=("refattn.native",),
            install="Build the native core (pip install -e . with a C compiler and OpenMP)",
            threads_how="num_threads={n} on every call",
            score_copies=0,
            default_max_scores=None,
            load=_load_native,
            versions=_native_versions,
        ),
        Impl(
            name="reference",
            title="refattn.reference",
            modules=("numpy",),
            install="part of refattn",
            threads_how=_OPENBLAS_THREADS,
            score_copies=4.5,
            default_max_scores=2**25,  # (1,8,2048,64): the readable one is slow by design
            load=_load_reference,
            versions=lambda: _version("refattn", "numpy"),
        ),
        Impl(
            name="numpy",
            title="naive NumPy",
            modules=("numpy",),
            install="part of refattn",
            threads_how=_OPENBLAS_THREADS,
            score_copies=3.2,
            # (1,8,2048,64): beyond it the naive formula only streams memory (7 % of peak at
            # (1,8,4096,64), 2.5 s a call): a minute of the default grid that shows nothing new
            default_max_scores=2**25,
            load=_load_numpy,
            versions=lambda: _version("numpy"),
        ),
        Impl(
            name="torch",
            title="torch SDPA",
            modules=("torch",),
            install="pip install 'refattn[peers]'",
            threads_how="torch.set_num_threads({n}), torch.set_num_interop_threads(1)",
            score_copies=0,
            default_max_scores=None,
            load=_load_torch,
            versions=lambda: _version("torch"),
        ),
        Impl(
            name="onnxruntime",
            title="onnxruntime Attention",
            modules=("onnxruntime", "onnx"),
            install="pip install 'refattn[peers]'",
            threads_how="SessionOptions.intra_op_num_threads={n}, inter_op_num_threads=1, "
            "sequential execution",
            score_copies=1.2,
            default_max_scores=None,
            load=_load_onnxruntime,
            versions=lambda: _version("onnxruntime", "onnx"),
        ),
        Impl(
            name="jax",
            title="jax (XLA)",
            modules=("jax", "jaxlib"),
            install="pip install 'refattn[peers]'",
            threads_how="XLA has no thread-count setting: its pool follows the process's CPU "
            "affinity ({n} cores)",
            score_copies=2.5,
            default_max_scores=_MATERIALISES,
            load=_load_jax,
            versions=lambda: _version("jax", "jaxlib"),
        ),
    )
}

PEERS = tuple(name for name in IMPLS if name != "native")


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
    if threads == 1:  # the one XLA setting there is: no intra-op thread pool at all
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env
