"""Multi-head attention and a KV cache for incremental decoding, on top of any attention function.

    Q = x·W_q + b_q         split into Hq heads of Dk       (B..., Hq, Lq, Dk)
    K = c·W_k + b_k         split into Hkv heads of Dk      (B..., Hkv, Lk, Dk)
    V = c·W_v + b_v         split into Hkv heads of Dv      (B..., Hkv, Lk, Dv)
    y = concat_h(attention(Q, K, V)_h) · W_o + b_o         (B..., Lq, Do)

with c = x for self-attention (context=None) and c = context for cross-attention.
x is (B..., Lq, Dm) and context (B..., Lk, Dc).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from refattn._checks import (
    _is_int,
    _magnitude,
    check_causal,
    check_count,
    check_flag,
    check_float_array,
    check_same_dtype,
    check_size,
)
from refattn.call import call_signature, check_option_names
from refattn.dtypes import FLOAT_DTYPES, NAMES


@dataclass(frozen=True)
class MHAParams:
    """Projection weights (and optional biases) of one multi-head attention layer."""

    w_q: np.ndarray  # (Dm, Hq·Dk)
    w_k: np.ndarray  # (Dc, Hkv·Dk)
    w_v: np.ndarray  # (Dc, Hkv·Dv)
    w_o: np.ndarray  # (Hq·Dv, Do)
    b_q: np.ndarray | None = None  # (Hq·Dk,)
    b_k: np.ndarray | None = None  # (Hkv·Dk,)
    b_v: np.ndarray | None = None  # (Hkv·Dv,)
    b_o: np.ndarray | None = None  # (Do,)

    @classmethod
    def init(
        cls,
        d_model: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        value_head_dim: int | None = None,
        d_context: int | None = None,
        d_out: int | None = None,
        bias: bool = True,
        dtype=np.float64,
        seed: int = 0,
    ) -> MHAParams:
        """Seeded random parameters: Glorot-uniform weights, small normal biases.

        Every size is an int >= 1. head_dim defaults to d_model // num_heads (so num_heads may
        not exceed d_model without it), value_head_dim to head_dim, num_kv_heads to num_heads,
        d_context to d_model and d_out to d_model. num_heads must be a multiple of num_kv_heads
        (query head h uses kv head h // (num_heads // num_kv_heads)). dtype is float16, bfloat16,
        float32 or float64; seed an int >= 0.
        """
        d_model = check_count("d_model", d_model)
        num_heads = check_count("num_heads", num_heads)
        sizes = {
            "num_kv_heads": num_kv_heads,
            "head_dim": head_dim,
            "value_head_dim": value_head_dim,
            "d_context": d_context,
            "d_out": d_out,
        }
        for name, size in sizes.items():
            if size is not None:
                check_count(name, size)
        num_kv_heads = num_heads if num_kv_heads is None else int(num_kv_heads)
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads should be a multiple of num_kv_heads = {num_kv_heads}, "
                f"but got {num_heads}"
            )
        if head_dim is None and num_heads > d_model:
            raise ValueError(
                f"num_heads should be at most d_model = {d_model} when head_dim is not given "
                f"(it defaults to d_model // num_heads), but got {num_heads}"
            )
        head_dim = d_model // num_heads if head_dim is None else int(head_dim)
        value_head_dim = head_dim if value_head_dim is None else int(value_head_dim)
        d_context = d_model if d_context is None else int(d_context)
        d_out = d_model if d_out is None else int(d_out)
        bias = check_flag("bias", bias)
        dtype = _check_dtype(dtype)
        if not _is_int(seed):
            raise TypeError(f"seed should be an int >= 0, but got {type(seed).__name__} {seed!r}")
        if seed < 0:
            raise ValueError(f"seed should be an int >= 0, but got {seed}")
        rng = np.random.default_rng(int(seed))
        shapes = {
            "w_q": ((d_model, num_heads * head_dim), "d_model, num_heads · head_dim"),
            "w_k": ((d_context, num_kv_heads * head_dim), "d_context, num_kv_heads · head_dim"),
            "w_v": ((d_context, num_kv_heads * value_head_dim), "d_context, num_kv_heads · Dv"),
            "w_o": ((num_heads * value_head_dim, d_out), "num_heads · value_head_dim, d_out"),
        }
        # Beyond the address space NumPy fails with messages that name no argument (or an
        # OverflowError); within it but beyond this machine's memory, MemoryError says so.
        most = np.iinfo(np.intp).max
        for name, (shape, made_of) in shapes.items():
            if shape[0] * shape[1] * dtype.itemsize > most:
                shown = ", ".join(str(n) if n < 2**64 else _magnitude(n) for n in shape)
                raise ValueError(
                    f"params.{name} ({made_of}) should hold at most {most} bytes, "
                    f"but got shape ({shown}) of {dtype}"
                )

        def glorot(n_in, n_out):
            limit = (6.0 / (n_in + n_out)) ** 0.5
            return rng.uniform(-limit, limit, size=(n_in, n_out)).astype(dtype)

        def small(n):
            return (0.1 * rng.standard_normal(n)).astype(dtype) if bias else None

        return cls(
            w_q=glorot(d_model, num_heads * head_dim),
            w_k=glorot(d_context, num_kv_heads * head_dim),
            w_v=glorot(d_context, num_kv_heads * value_head_dim),
            w_o=glorot(num_heads * value_head_dim, d_out),
            b_q=small(num_heads * head_dim),
            b_k=small(num_kv_heads * head_dim),
            b_v=small(num_kv_heads * value_head_dim),
            b_o=small(d_out),
        )


class KVCache:
    """Keys and values of the tokens seen so far, for decoding one step at a time.

    Pass the same cache to successive `multi_head_attention(..., kv_cache=cache, causal=True)`
    calls on consecutive pieces of a sequence: each call appends its keys and values, and its
    queries attend to everything cached so far. Storage grows by doubling, so appending a token
    costs amortised O(1) copies of the cache.

    `key`, `value` and what `append` returns are read-only views of the cache's storage (no
    copy per step): writing into them raises ValueError instead of corrupting the cache. Copy
    them (`np.array(cache.key)`) to get arrays of your own.
    """

    def __init__(self):
        self._key: np.ndarray | None = None  # (B..., Hkv, capacity, Dk)
        self._value: np.ndarray | None = None  # (B..., Hkv, capacity, Dv)
        self.length = 0

    @property
    def key(self) -> np.ndarray | None:
        """The cached keys, (B..., Hkv, length, Dk), a read-only view; None before the first
        append."""
        return self._cached(self._key)

    @property
    def value(self) -> np.ndarray | None:
        """The cached values, (B..., Hkv, length, Dv), a read-only view; None before the first
        append."""
        return self._cached(self._value)

    def _cached(self, storage: np.ndarray | None) -> np.ndarray | None:
        if storage is None:
            return None
        view = storage[..., : self.length, :]
        view.flags.writeable = False  # the view only: the storage stays writable for append
        return view

    def append(self, key: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append (B..., Hkv, L, Dk) keys and (B..., Hkv, L, Dv) values; return all so far, as
        the read-only views `key` and `value` give."""
        key = check_float_array("key", key, min_ndim=3)
        value = check_float_array("value", value, min_ndim=3)
        check_same_dtype("value", value, key.dtype, "key's")
        if value.shape[:-1] != key.shape[:-1]:
            raise ValueError(
                f"value.shape[:-1] should be {key.shape[:-1]} (key's), but got {value.shape[:-1]}"
            )
        if self._key is None:
            self._key, self._value = key[..., :0, :].copy(), value[..., :0, :].copy()
        cached_key, cached_value = self._key, self._value
        for name, new, old in (("key", key, cached_key), ("value", value, cached_value)):
            if new.dtype != old.dtype:
                raise TypeError(
                    f"{name}.dtype should be {old.dtype} (the cache's), but got {new.dtype}"
                )
            if new.shape[:-2] + new.shape[-1:] != old.shape[:-2] + old.shape[-1:]:
                expected = (*old.shape[:-2], "L", old.shape[-1])
                raise ValueError(
                    f"{name}.shape should be {expected} (the cache's), but got {new.shape}"
                )
        end = self.length + key.shape[-2]
        if end > cached_key.shape[-2]:
            self._grow(max(end, 2 * cached_key.shape[-2], 16))
        self._key[..., self.length : end, :] = key
        self._value[..., self.length : end, :] = value
        self.length = end
        return self.key, self.value

    def _grow(self, capacity: int) -> None:
        def grown(old):
            new = np.empty((*old.shape[:-2], capacity, old.shape[-1]), dtype=old.dtype)
            new[..., : self.length, :] = old[..., : self.length, :]
            return new

        self._key, self._value = grown(self._key), grown(self._value)


def project(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, heads: int) -> np.ndarray:
    """(B..., L, D) -> (B..., heads, L, D_head): x·W + b split into heads (head h holds columns
    h·D_head to (h+1)·D_head of x·W + b), in x's dtype (bfloat16's matmul returns float32)."""
    y = x @ w
    if b is not None:
        y = y + b
    y = y.astype(x.dtype, copy=False)
    *batch, length, width = y.shape
    return np.moveaxis(y.reshape(*batch, length, heads, width // heads), -2, -3)


_NOT_PASSED_ON = ("return_lse", "return_weights")  # the layer returns y alone


def _check_dtype(dtype) -> np.dtype:
    try:
        checked = np.dtype(dtype)
    except TypeError:  # not a dtype at all: "float" is one, "nope" is not
        raise TypeError(
            f"dtype should be {NAMES}, but got {type(dtype).__name__} {dtype!r}"
        ) from None
    if not any(checked == allowed for allowed in FLOAT_DTYPES):
        raise TypeError(f"dtype should be {NAMES}, but got {checked}")
    return checked


def _check_params(params, dtype: np.dtype) -> None:
    """Weights 2-D and biases 1-D (or None), all float arrays in x's dtype."""
    if not isinstance(params, MHAParams):
        raise TypeError(f"params should be a refattn.MHAParams, but got {type(params).__name__}")
    for name, w in vars(params).items():
        if w is None and name.startswith("b_"):
            continue
        w = check_float_array(f"params.{name}", w)
        check_same_dtype(f"params.{name}", w, dtype, "x's")
        want = 2 if name.startswith("w_") else 1
        if w.ndim != want:
            raise ValueError(f"params.{name}.ndim should be {want}, but got shape {w.shape}")
    for name, w in (("b_q", params.w_q), ("b_k", params.w_k), ("b_v", params.w_v)):
        b = getattr(params, name)
        if b is not None:
            check_size(f"params.{name}.shape[0]", b.shape[0], w.shape[1], f"params.w_{name[2]}'s")
    if params.b_o is not None:
        check_size("params.b_o.shape[0]", params.b_o.shape[0], params.w_o.shape[1], "params.w_o's")


def _check_width(what: str, width: int, heads: int, heads_name: str) -> int:
    if width % heads:
        raise ValueError(f"{what} ({width}) should be a multiple of {heads_name} = {heads}")
    return width // heads


@call_signature(without=_NOT_PASSED_ON)
def multi_head_attention(
    x,
    context=None,
    *,
    params: MHAParams,
    num_heads: int,
    num_kv_heads: int | None = None,
    kv_cache: KVCache | None = None,
    attention: Callable | None = None,
    **options,
):
    """Multi-head attention of x (B..., Lq, Dm) over context (B..., Lk, Dc), or over x itself.

    The options (masks, scale, softcap) are those of `refattn.reference.attention`, over
    (B..., Hq, Lq, Lk), and are passed on to `attention`.
    With `kv_cache`, x holds the newest Lq tokens of a sequence (self-attention only): their keys
    and values are appended to the cache and the queries attend to every cached token. Masks
    then cover all Lk cached tokens, and a causal mask is aligned bottom-right (query i of this
    call is token Lk - Lq + i), so causal may be True or "bottom_right".

    `attention` is the attention function to run the heads with (default: `refattn.attention`,
    the native core); any function with the reference's signature works, e.g.
    `refattn.reference.attention` for the readable float64-capable definition.
    Returns y, (B..., Lq, Do), in x's dtype.
    """
    check_option_names("multi_head_attention", options, without=_NOT_PASSED_ON)
    x = check_float_array("x", x, min_ndim=2)
    source = x if context is None else check_float_array("context", context, min_ndim=2)
    _check_params(params, x.dtype)
    num_heads = check_count("num_heads", num_heads)
    num_kv_heads = num_heads if num_kv_heads is None else check_count("num_kv_heads", num_kv_heads)
    # Checked here, with the arguments' names: after the projection attention would only see
    # query.shape[-3] and key.shape[-3].
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_heads should be a multiple of num_kv_heads = {num_kv_heads}, but got {num_heads}"
        )
    if kv_cache is not None and not isinstance(kv_cache, KVCache):
        raise TypeError(
            f"kv_cache should be a refattn.KVCache or None, but got {type(kv_cache).__name__}"
        )
    if attention is not None and not callable(attention):
        raise TypeError(
            f"attention should be a function or None, but got {type(attention).__name__}"
        )
    if context is not None:
        check_same_dtype("context", source, x.dtype, "x's")
        if source.shape[:-2] != x.shape[:-2]:
            raise ValueError(
                f"context.shape[:-2] should be {x.shape[:-2]} (x's batch dims), "
                f"but got {source.shape[:-2]}"
            )
    if kv_cache is not None:
        if context is not None:
            raise ValueError("kv_cache is for self-attention: context should be None with it")
        # check_causal refuses what attention would (1, arrays, misspellings); of what it takes,
        # only an explicit top-left alignment contradicts a cache (True means bottom-right here)
        causal = options.get("causal")
        if check_causal(causal) == "top_left" and isinstance(causal, str):
            raise ValueError(
                "causal should be True or 'bottom_right' with a kv_cache (the new queries come "
                f"after the cached keys), but got {causal!r}"
            )
    check_size("params.w_q.shape[0]", params.w_q.shape[0], x.shape[-1], "x's Dm")
    check_size("params.w_k.shape[0]", params.w_k.shape[0], source.shape[-1], "the context's Dc")
    check_size("params.w_v.shape[0]", params.w_v.shape[0], source.shape[-1], "the context's Dc")
    Dk = _check_width("params.w_q.shape[1]", params.w_q.shape[1], num_heads, "num_heads")
    Dk_of_keys = _check_width(
        "params.w_k.shape[1]", params.w_k.shape[1], num_kv_heads, "num_kv_heads"
    )
    check_size("params.w_k.shape[1] / num_kv_heads", Dk_of_keys, Dk, "the queries' head dim Dk")
    Dv = _check_width("params.w_v.shape[1]", params.w_v.shape[1], num_kv_heads, "num_kv_heads")
    check_size("params.w_o.shape[0]", params.w_o.shape[0], num_heads * Dv, "num_heads · Dv")

    q = project(x, params.w_q, params.b_q, num_heads)
    k = project(source, params.w_k, params.b_k, num_kv_heads)
    v = project(source, params.w_v, params.b_v, num_kv_heads)
    if kv_cache is not None:
        cached = kv_cache.length
        k, v = kv_cache.append(k, v)
        causal = "bottom_right" if causal else None
        if causal and q.shape[-2] == 1 and options.get("window") is None:
            causal = None  # one new query sees every cached key: there is nothing to hide
        options = {**options, "causal": causal}

    if attention is None:
        from refattn import attention  # the native core; imported late: refattn imports us
    try:
        heads = attention(q, k, v, **options)
    except BaseException:
        # A call that fails (a bad mask, say, or Ctrl-C) leaves the cache as it found it, so
        # that the caller can retry the step; the stale entries are overwritten next time.
        if kv_cache is not None:
            kv_cache.length = cached
        raise
    *batch, _, Lq, _ = heads.shape
    merged = np.moveaxis(heads, -3, -2).reshape(*batch, Lq, num_heads * Dv)
    y = merged @ params.w_o
    if params.b_o is not None:
        y = y + params.b_o
    return y.astype(x.dtype, copy=False)
