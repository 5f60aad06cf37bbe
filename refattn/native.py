"""The native core: refattn's C attention kernel, with the reference's signature and semantics.

    out = attention(query, key, value, *, mask, bias, causal, window, kv_lengths, scale,
                    softcap, return_lse, return_weights, num_threads, isa)
    grads = attention_backward(query, key, value, grad_out, *, grad_lse, out, lse, ...)

computes what `refattn.reference.attention` defines (its docstring has the formula, the shape
letters and every option), FlashAttention-2 style: tiles of queries and keys, an online
softmax, float32 accumulation (float64 for float64 inputs), OpenMP threads, and SIMD kernels
chosen at run time. float16 inputs are read as they are by every ISA's float16 kernels
(widened to float32 as they are loaded, by F16C in the SIMD ones); products, softmax and P·V
are float32; out comes back in the query's dtype, lse and weights in the compute dtype.
`attention_backward` gives the gradients of `refattn.reference.attention_backward`
(refattn._native_backward has the details).

bfloat16 inputs are computed by bfloat16 kernels where there are some: isa "amx_bf16" (Q·Kᵀ
on AMX tiles), "avx512_bf16" (vdpbf16ps) and "scalar" (portable C, their baseline) read the
bfloat16 query, key and value
as they are, accumulate products and the softmax in float32, round P to bfloat16 before P·V
and write out in bfloat16 (what spec/tolerance.py, 5, takes). With "avx512" or "avx2" they
are converted to float32 and computed by the float32 kernels, out rounded to bfloat16.

Each call takes four steps: validate (`refattn._checks`, shared with the reference), take the
buffers (any strides NumPy gives; broadcast masks and biases are passed with their broadcast
strides, never copied B·H times), call the C core (the GIL is released meanwhile), and turn its
status into an exception (MemoryError when it cannot allocate its working memory).

Extra arguments:
    num_threads: threads for this call, from 1 to 1024; default the REFATTN_NUM_THREADS
        environment variable, else OpenMP's default (OMP_NUM_THREADS, else every core). A
        call never runs on more than two threads per CPU this process may run on (its
        affinity mask, os.sched_getaffinity; the C core asks omp_get_num_procs), nor on more
        than it has work items: a larger count, from here or from OMP_NUM_THREADS, is reduced
        without a word (results are the same bit for bit whatever the thread count; each
        thread past that would only cost a stack, and libgomp ends the process when it cannot
        create one). In a process forked after a call ran on two threads or more, every call
        runs on one thread: libgomp's threads do not survive fork (README, "Threads and fork").
        info()["threads"] says how many a call may take.
    isa: "amx_bf16", "avx512_bf16", "avx512", "avx2" or "scalar", the SIMD kernels for this
        call (float32, float16 and bfloat16; float64 always runs portable C; float32 and
        float16 run the "avx512" kernels under "amx_bf16" and "avx512_bf16"); default
        REFATTN_ISA (read at import), else the fastest this CPU runs.
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np

from refattn._checks import in_compute_dtype
from refattn._native import ffi, lib
from refattn.call import AttentionCall, call_signature
from refattn.dtypes import BFLOAT16

ISAS = {
    "amx_bf16": lib.REFATTN_ISA_AMX_BF16,
    "avx512_bf16": lib.REFATTN_ISA_AVX512_BF16,
    "avx512": lib.REFATTN_ISA_AVX512,
    "avx2": lib.REFATTN_ISA_AVX2,
    "scalar": lib.REFATTN_ISA_SCALAR,
}
MAX_THREADS = 1024
_CAUSAL = {
    None: lib.REFATTN_CAUSAL_NONE,
    "top_left": lib.REFATTN_CAUSAL_TOP_LEFT,
    "bottom_right": lib.REFATTN_CAUSAL_BOTTOM_RIGHT,
}
_DTYPE = {
    np.dtype(np.float32): lib.REFATTN_FLOAT32,
    np.dtype(np.float64): lib.REFATTN_FLOAT64,
    BFLOAT16: lib.REFATTN_BFLOAT16,
    np.dtype(np.float16): lib.REFATTN_FLOAT16,
}
# The instruction sets with bfloat16 kernels; the others take bfloat16 converted to float32.
_BFLOAT16_ISAS = (lib.REFATTN_ISA_AMX_BF16, lib.REFATTN_ISA_AVX512_BF16, lib.REFATTN_ISA_SCALAR)
# Those whose kernels of their own are bfloat16 ones only: float32 and float16 run the "avx512"
# kernels under them.
BFLOAT16_ONLY_ISAS = ("amx_bf16", "avx512_bf16")


def available_isas() -> list[str]:
    """The instruction sets this build and this CPU can run, fastest first."""
    return [name for name, code in ISAS.items() if lib.refattn_isa_supported(code)]


def _isa_code(name, what: str) -> int:
    if not isinstance(name, str) or name not in ISAS:
        raise ValueError(f"{what} should be one of {', '.join(map(repr, ISAS))}, but got {name!r}")
    if not lib.refattn_isa_supported(ISAS[name]):
        raise ValueError(
            f"{what} is {name!r}, but this CPU (or this build) cannot run it; "
            f"available: {', '.join(available_isas())}"
        )
    return ISAS[name]


def _default_isa() -> tuple[int | None, str | None]:
    """The ISA chosen at import: REFATTN_ISA if set, else the fastest; or the error to raise."""
    name = os.environ.get("REFATTN_ISA", "")
    if not name:
        return lib.refattn_isa_best(), None
    try:
        return _isa_code(name, "REFATTN_ISA"), None
    except ValueError as error:
        return None, str(error)


_ISA, _ISA_ERROR = _default_isa()


def _isa(isa) -> int:
    if isa is not None:
        return _isa_code(isa, "isa")
    if _ISA is None:
        raise ValueError(_ISA_ERROR)
    return _ISA


def _threads(num_threads) -> int:
    """Threads for the call; 0 lets the C core use OpenMP's default."""
    what = "num_threads"
    if num_threads is None:
        text = os.environ.get("REFATTN_NUM_THREADS", "").strip()
        if not text:
            return 0
        what = "REFATTN_NUM_THREADS"
        try:
            num_threads = int(text)
        except ValueError:
            raise ValueError(
                f"REFATTN_NUM_THREADS should be a whole number from 1 to {MAX_THREADS}, "
                f"but got {text!r}"
            ) from None
    elif not isinstance(num_threads, int | np.integer) or isinstance(num_threads, bool):
        raise TypeError(
            f"num_threads should be an int or None, but got {type(num_threads).__name__} "
            f"{num_threads!r}"
        )
    if not 1 <= num_threads <= MAX_THREADS:
        raise ValueError(f"{what} should be from 1 to {MAX_THREADS}, but got {num_threads}")
    return int(num_threads)


def _rows(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """x in the compute dtype with aligned elements and contiguous rows: what the kernel reads
    vector by vector. Other strides (transposed heads, negative steps) are kept as they are."""
    if x.dtype != dtype:
        # float16 or bfloat16 for float32 kernels: a converted copy, C-ordered (astype
        # would keep a Fortran layout, whose rows are not contiguous)
        return np.array(x, dtype=dtype, order="C")
    flags = x.flags
    if flags.c_contiguous and flags.aligned:
        return x  # the common case, decided without walking the strides
    item = x.itemsize
    odd = any(s % item for n, s in zip(x.shape, x.strides, strict=True) if n > 1)
    if not x.flags.aligned or odd or (x.shape[-1] > 1 and x.strides[-1] != item):
        return np.array(x, dtype=dtype, order="C")  # a fresh, aligned copy
    return x


def _aligned(x: np.ndarray) -> np.ndarray:
    """x itself, or an aligned copy when its elements are misaligned (any strides are fine)."""
    odd = any(s % x.itemsize for n, s in zip(x.shape, x.strides, strict=True) if n > 1)
    return np.array(x, order="C") if odd or not x.flags.aligned else x


def _address(x: np.ndarray, keep: list):
    """x's first element as a C pointer. A C-contiguous array goes through ffi.from_buffer
    (a tenth of the cost of reading __array_interface__; bfloat16 seen as its uint16 bits,
    which the buffer protocol knows); the cdata it returns joins `keep`, which outlives the
    C call."""
    if x.flags.c_contiguous:
        buffer = ffi.from_buffer(x.view(np.uint16) if x.dtype == BFLOAT16 else x)
        keep.append(buffer)
        return buffer
    return ffi.cast("void *", x.__array_interface__["data"][0])


def _tensor(field, x: np.ndarray, nbatch: int, keep: list) -> None:
    """Describe x, (B..., H, L, last), in a refattn_tensor: its address and element strides,
    the batch dims flattened into one stride when they line up, else one offset per entry.
    x joins `keep` (a converted copy or a broadcast view may have no other owner)."""
    keep.append(x)
    field.data = _address(x, keep)
    if x.flags.c_contiguous:
        # The common case: the batch dims flatten into one stride, and rows are contiguous.
        H, L, last = x.shape[nbatch:]
        field.stride = [H * L * last, L * last, last, 1]
        return
    item = x.itemsize
    # A dim of size 1 is never stepped along: its stride may be anything NumPy left there.
    strides = [0 if n == 1 else s // item for n, s in zip(x.shape, x.strides, strict=True)]
    if x.shape[-1] == 1:
        strides[-1] = 1  # rows of one element are contiguous
    batch = [(n, s) for n, s in zip(x.shape[:nbatch], strides[:nbatch], strict=True) if n != 1]
    if all(outer[1] == inner[1] * inner[0] for outer, inner in itertools.pairwise(batch)):
        batch_stride = batch[-1][1] if batch else 0
    else:
        batch_stride = 0
        offsets = np.zeros((), dtype=np.int64)
        for n, s in zip(x.shape[:nbatch], strides[:nbatch], strict=True):
            offsets = offsets[..., None] + np.arange(n, dtype=np.int64) * s
        offsets = np.ascontiguousarray(offsets.reshape(-1))
        keep.append(offsets)
        field.batch_offsets = ffi.cast("int64_t *", offsets.__array_interface__["data"][0])
    field.stride = [batch_stride, *strides[nbatch:]]


_STATUS = {
    lib.REFATTN_ENOMEM: (MemoryError, "the native core could not allocate its working memory"),
    lib.REFATTN_EISA: (ValueError, "the native core cannot run the instruction set asked for"),
    lib.REFATTN_EINVAL: (
        RuntimeError,
        "the native core rejected the call after refattn checked it: a bug in refattn, "
        "please report it with the call's shapes and options",
    ),
}


def _raise_for(status: int, who: str) -> None:
    """The exception for a C status code other than REFATTN_OK."""
    if status != lib.REFATTN_OK:
        kind, message = _STATUS.get(status, (RuntimeError, f"unknown status {status}"))
        raise kind(f"{who}: {message}")


def _call_struct(call: AttentionCall, elem: np.dtype, isa_code: int, threads: int, keep: list):
    """A refattn_call for a checked call, its inputs (query, key and value in `elem`, bias in
    the compute dtype, masks and kv_lengths) and options filled in; its outputs left NULL.
    Arrays it points into join `keep`, which must outlive the C call."""
    dtype = call.compute_dtype
    nbatch = len(call.batch_shape)
    Lq, Lk = call.Lq, call.Lk
    c = ffi.new("refattn_call *")
    keep.append(c)
    q, k, v = _rows(call.query, elem), _rows(call.key, elem), _rows(call.value, elem)
    _tensor(c.query, q, nbatch, keep)
    _tensor(c.key, k, nbatch, keep)
    _tensor(c.value, v, nbatch, keep)
    if call.mask is not None:
        mask = np.broadcast_to(call.mask, call.scores_shape)  # strides 0: no copy
        _tensor(c.mask, mask, nbatch, keep)
    if call.bias is not None:
        bias = in_compute_dtype(call.bias, dtype)
        bias = np.broadcast_to(_aligned(bias), call.scores_shape)
        _tensor(c.bias, bias, nbatch, keep)
    if call.kv_lengths is not None:
        lengths = np.ascontiguousarray(call.kv_lengths.reshape(-1))
        keep.append(lengths)
        c.kv_lengths = ffi.cast("int64_t *", lengths.__array_interface__["data"][0])
    c.B, c.Hq, c.Hkv, c.Lq, c.Lk = math.prod(call.batch_shape), call.Hq, call.Hkv, Lq, Lk
    c.Dk, c.Dv = call.Dk, call.Dv
    c.dtype = _DTYPE[np.dtype(elem)]
    c.causal = _CAUSAL[call.causal]
    left, right = call.window if call.window is not None else (None, None)
    # A side longer than Lq + Lk hides nothing; clamping keeps huge ints out of int64.
    c.window_left = -1 if left is None else min(left, Lq + Lk)
    c.window_right = -1 if right is None else min(right, Lq + Lk)
    c.scale = call.scale_or_default
    c.softcap = 0.0 if call.softcap is None else call.softcap
    c.num_threads = threads
    c.isa = isa_code
    return c


@call_signature
def attention(query, key, value, *, num_threads=None, isa=None, **options):
    """Scaled dot-product attention in C; the semantics of `refattn.reference.attention`.

    See the module docstring for num_threads and isa, and refattn.reference.attention for
    everything else. Returns out, or (out, lse), (out, weights) or (out, lse, weights).
    """
    # 1. validate
    call = AttentionCall.check(query, key, value, **options)
    isa_code = _isa(isa)
    threads = _threads(num_threads)

    # 2. buffers: q, k, v and out in `elem` (the input dtype where the kernels take it, else
    # the compute dtype), bias, lse and weights in the compute dtype
    dtype = call.compute_dtype
    # (float16 has kernels of its own under every ISA)
    own_kernels = call.query.dtype == np.float16 or (
        call.query.dtype == BFLOAT16 and isa_code in _BFLOAT16_ISAS
    )
    elem = call.query.dtype if own_kernels else dtype
    batch = call.batch_shape
    B = math.prod(batch)
    Hq, Lq, Lk, Dv = call.Hq, call.Lq, call.Lk, call.Dv
    out = np.empty((B, Hq, Lq, Dv), dtype=elem)
    lse = np.empty((B, Hq, Lq), dtype=dtype) if call.return_lse else None
    weights = np.empty((B, Hq, Lq, Lk), dtype=dtype) if call.return_weights else None
    keep = []  # arrays that must outlive the C call
    c = _call_struct(call, elem, isa_code, threads, keep)
    c.out = _address(out, keep)
    if lse is not None:
        c.lse = _address(lse, keep)
    if weights is not None:
        c.weights = _address(weights, keep)

    # 3. call (cffi releases the GIL for the duration)
    status = lib.refattn_attention(c)

    # 4. status -> exception
    _raise_for(status, "refattn.native.attention")
    del keep
    out = out.reshape(*batch, Hq, Lq, Dv)
    if out.dtype != call.query.dtype:
        out = out.astype(call.query.dtype)
    if lse is not None:
        lse = lse.reshape(*batch, Hq, Lq)
    if weights is not None:
        weights = weights.reshape(*batch, Hq, Lq, Lk)
    return call.returns(out, lse, weights)


def info() -> dict:
    """What the native core runs with: ISA in use and available, threads (the most a call
    with the default num_threads takes here), OpenMP, build."""
    openmp = lib.refattn_openmp_version()
    try:
        threads = lib.refattn_threads(_threads(None))
    except ValueError as error:
        threads = f"error: {error}"
    return {
        "isa": None if _ISA is None else next(n for n, c in ISAS.items() if c == _ISA),
        "isa_error": _ISA_ERROR,
        "isas_available": available_isas(),
        "threads": threads,
        "openmp": openmp or None,
        "build": ffi.string(lib.refattn_build_info()).decode(),
    }


# The backward pass, in a module of its own; it takes the helpers above.
from refattn._native_backward import attention_backward  # noqa: E402, F401
