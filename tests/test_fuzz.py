"""Fuzzing the native core and the layers on it.

Four targets, each a hypothesis strategy and a check:
    attention  native calls over arbitrary shapes, strides, dtypes (bfloat16 and float16
               too, through every ISA's kernels for them: amx_bf16, avx512_bf16 and scalar for
               bfloat16, avx512 and scalar for float16, and the conversion of the others),
               masks and options, checked
               against the float64 reference within the tolerance model, or against the
               reference's exception when the call is bad
    merge      attention over random key chunks (empty ones, ones some or every row sees nothing
               of, NaN and ±Inf placed anywhere) merged by merge_partials, against the reference
               over all keys
    decode     multi-head layers (GQA, Dv != Dk, masks, biases, windows) decoded piece by piece
               with a KVCache, against one causal call and the float64 layer
    hostile    merge_partials, multi_head_attention, KVCache.append and MHAParams.init with
               hostile arguments: TypeError or ValueError in the project's form, nothing else

    pytest -m fuzz                              the dedicated run: REFATTN_FUZZ_CASES cases of
                                                each target (default 10 000), a fresh random
                                                seed each run
    pytest tests/test_fuzz.py                   the slices in the default run and in CI:
                                                REFATTN_FUZZ_SLICE cases of each (default: 150,
                                                60, 40, 200, see SLICE), derandomized; and the
                                                sweep of the split-K path, a NaN or -inf key at
                                                every position of a tile, in every tile of a
                                                chunk

Run both under the sanitizer build (README, "Sanitizers") to catch memory errors that do not
change a result. Each attention case also checks that the call left its inputs untouched. A
failure prints the drawn case's story: shapes, layouts, options and what was replaced.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refattn.spec.tolerance import OUTPUT_ROUNDING, as_float64, expect, expect_layer, mismatch

from refattn import (
    KVCache,
    MHAParams,
    masks,
    merge_partials,
    multi_head_attention,
    native,
    reference,
)
from refattn._checks import compute_dtype
from refattn.call import AttentionCall
from refattn.dtypes import BFLOAT16

ISAS = native.available_isas()
DTYPES = ("float32", "float64", "float16", "bfloat16")  # bfloat16: each ISA's own kernels
# How an array reaches the core: each keeps the values and changes the memory around them
# (or, for the broadcasts, makes the values constant along an axis with stride 0).
LAYOUTS = (
    "c",
    "fortran",
    "heads-inner",  # (B, L, H, D) in memory: H and L strides swapped
    "reversed-L",  # negative stride along L
    "reversed-D",  # negative stride along the head dim: the wrapper copies
    "every-other-D",  # step 2 along the head dim: copied
    "misaligned",  # elements one byte off alignment: copied
    "read-only",
    "broadcast-L",  # stride 0 along L
    "broadcast-batch",  # stride 0 along the first batch dim
)
MASK_LAYOUTS = ("c", "fortran", "reversed", "read-only", "broadcast")
# Scales of every size, down to float64's smallest subnormal: below 1.4e-45 a float32 call's
# scale is 0 (a float32 call takes its scale in float32, as SPEC.md's float64_options says), and
# Inf·0 is NaN where a float64 call has ±Inf.
SCALES = st.one_of(
    st.floats(-2, 2),
    st.sampled_from([1e-31, -3e-36, 1e-38, 1e-40, -1e-44, 1.4e-45, 7e-46, 1e-300, 5e-324]),
)


def _misaligned(x: np.ndarray) -> np.ndarray:
    raw = np.zeros(x.nbytes + x.itemsize + 1, dtype=np.uint8)[1 : x.nbytes + 1]
    out = raw.view(x.dtype).reshape(x.shape)
    out[...] = x
    return out


def lay_out(x: np.ndarray, layout: str) -> np.ndarray:
    """x with the same values (or, for broadcasts, constant along an axis) in another layout."""
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "heads-inner" and x.ndim >= 3:
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -3, -2)), -3, -2)
    if layout == "reversed-L" and x.ndim >= 2:
        return np.ascontiguousarray(x[..., ::-1, :])[..., ::-1, :]
    if layout == "reversed-D":
        return np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    if layout == "every-other-D":
        wide = np.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "misaligned" and x.size:
        return _misaligned(x)
    if layout == "read-only":
        x = x.copy()
        x.flags.writeable = False
        return x
    if layout == "broadcast-L" and x.ndim >= 2 and x.shape[-2] > 0:
        return np.broadcast_to(x[..., :1, :], x.shape)
    if layout == "broadcast-batch" and x.ndim >= 4 and x.shape[0] > 0:
        return np.broadcast_to(x[:1], x.shape)
    return x


@dataclass
class FuzzCall:
    """One drawn call: its arrays, options and native-only arguments, and what it is."""

    args: tuple
    options: dict
    native_options: dict
    story: dict  # shapes, layouts, special values, the bad input if any: printed on failure

    def code(self) -> str:
        return repr(self.story)

    def __repr__(self) -> str:
        return f"FuzzCall({self.story})"


def _values(draw, rng, shape, dtype, magnitude, specials, label):
    x = (rng.standard_normal(shape) * magnitude).astype(dtype)
    if x.size and specials:
        for value in draw(
            st.lists(st.sampled_from(specials), max_size=3), label=f"{label} specials"
        ):
            x.flat[rng.integers(x.size)] = value
    return x


def _broadcastable_shape(draw, target, label):
    """A shape that broadcasts to target: trailing dims kept or set to 1, leading ones dropped."""
    keep = draw(st.integers(0, len(target)), label=f"{label} rank")
    dims = [n if draw(st.booleans()) else 1 for n in target[len(target) - keep :]]
    return tuple(dims)


# Split-K: with few query tiles and Lk >= 1024 the native core splits the keys into chunks (512
# keys, or 384 for some Lk with tiles of 128 or 64) of tiles of 256 (AVX-512), 128 (AVX2) or 64
# keys (scalar, and float64), each chunk with its own running max and sum.
TILE_KEYS = (64, 128, 256)


def poison_tiles(k: np.ndarray, period: int, offset: int, value, *, dim: int) -> None:
    """k[..., j, dim] = value at keys j = offset, offset + period, … below 512: the same
    in-tile position of every tile of the first chunk when period is the kernel's tile."""
    k[..., offset : min(512, k.shape[-2]) : period, dim] = value


@st.composite
def fuzz_calls(draw) -> FuzzCall:
    """Returns a strategy for native calls over the whole option space, ~1 in 8 of them bad."""
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    dtype = np.dtype(draw(st.sampled_from(DTYPES), label="dtype"))
    batch = tuple(draw(st.lists(st.integers(0, 3), max_size=2), label="batch"))
    Hkv = draw(st.integers(1, 3), label="Hkv")
    Hq = Hkv * draw(st.integers(1, 3), label="G")
    decode = draw(st.integers(0, 9), label="decode") == 9
    if decode:  # few queries, many keys: split-K
        Lq, Lk = draw(st.integers(1, 2)), draw(st.integers(1024, 1400))
        batch = batch[:1]
    else:
        Lq, Lk = draw(st.integers(0, 40), label="Lq"), draw(st.integers(0, 70), label="Lk")
    Dk = draw(st.integers(1, 40), label="Dk")
    Dv = draw(st.integers(0, 24), label="Dv")
    magnitude = draw(st.sampled_from([1.0, 0.01, 30.0]), label="magnitude")
    # NaN and ±Inf anywhere in q, k and v, with scores of any size: where an Inf value weighs
    # next to nothing, Inf·0 = NaN and Inf·tiny = Inf are both right (see _weightless_infs).
    scores_specials = draw(st.sampled_from([(), (np.nan,), (np.inf, -np.inf, np.nan)]))
    scale = draw(st.one_of(st.none(), st.sampled_from([0.0, -1.0, 1.0]), SCALES), label="scale")
    v_specials = draw(st.sampled_from([(), (np.nan,), (np.inf, -np.inf), (np.inf, np.nan)]))
    q = _values(draw, rng, (*batch, Hq, Lq, Dk), dtype, magnitude, scores_specials, "query")
    k = _values(draw, rng, (*batch, Hkv, Lk, Dk), dtype, magnitude, scores_specials, "key")
    v = _values(draw, rng, (*batch, Hkv, Lk, Dv), dtype, magnitude, v_specials, "value")
    poison = None
    if decode and scores_specials:  # the same in-tile position of every tile of a chunk
        poison = draw(
            st.one_of(
                st.none(),
                st.tuples(
                    st.sampled_from(TILE_KEYS),
                    st.integers(0, max(TILE_KEYS) - 1),
                    st.sampled_from(scores_specials),
                ),
            ),
            label="split poison",
        )
        if poison is not None:
            period, offset, value = poison
            poison_tiles(k, period, offset % period, value, dim=int(rng.integers(Dk)))
    layouts = [draw(st.sampled_from(LAYOUTS), label=f"{n} layout") for n in ("q", "k", "v")]
    q, k, v = (lay_out(x, lay) for x, lay in zip((q, k, v), layouts, strict=True))

    target = (*batch, Hq, Lq, Lk)
    options = {}
    if draw(st.booleans(), label="mask?"):
        shape = _broadcastable_shape(draw, target, "mask")
        density = draw(st.sampled_from([0.1, 0.5, 0.9, 1.0]), label="density")
        mask = np.asarray(rng.random(shape) < density)
        layout = draw(st.sampled_from(MASK_LAYOUTS), label="mask layout")
        if layout == "reversed" and mask.ndim:
            mask = np.ascontiguousarray(mask[..., ::-1])[..., ::-1]
        elif layout == "broadcast" and mask.ndim:
            mask = np.broadcast_to(mask[..., :1], mask.shape)
        elif layout != "broadcast":
            mask = lay_out(mask, layout)
        options["mask"] = mask
    if draw(st.booleans(), label="bias?"):
        shape = _broadcastable_shape(draw, target, "bias")
        bias_dtype = draw(st.sampled_from(DTYPES), label="bias dtype")
        bias = np.asarray(rng.standard_normal(shape), dtype=bias_dtype)
        if bias.size and draw(st.booleans(), label="bias -inf?"):
            bias[rng.random(shape) < 0.3] = -np.inf
        layout = draw(st.sampled_from((*MASK_LAYOUTS, "broadcast-rows")), label="bias layout")
        if layout == "broadcast" and bias.ndim:  # stride 0 along the keys, as for masks
            bias = np.broadcast_to(bias[..., :1], bias.shape)
        elif layout == "broadcast-rows" and bias.size:  # stride 0 along all but the keys
            bias = np.broadcast_to(bias[(0,) * (bias.ndim - 1)], bias.shape)
        options["bias"] = lay_out(bias, layout)
    causal = draw(st.sampled_from([None, None, True, False, "top_left", "bottom_right"]))
    if causal is not None:
        options["causal"] = causal
    if draw(st.booleans(), label="window?"):
        side = st.one_of(st.none(), st.integers(0, Lk + 2))
        options["window"] = (draw(side, label="left"), draw(side, label="right"))
    if draw(st.booleans(), label="kv_lengths?"):
        options["kv_lengths"] = (
            rng.integers(0, Lk + 1, size=batch)
            if draw(st.booleans())
            else int(rng.integers(0, Lk + 1))
        )
    if scale is not None:
        options["scale"] = scale
    if draw(st.booleans(), label="softcap?"):
        options["softcap"] = draw(st.floats(0.5, 50), label="softcap")
    native_options = {
        "isa": draw(st.sampled_from([None, *ISAS]), label="isa"),
        "num_threads": draw(st.sampled_from([None, 1, 2, 3]), label="num_threads"),
        "return_lse": draw(st.booleans(), label="return_lse"),
        "return_weights": draw(st.booleans(), label="return_weights"),
    }
    args = [q, k, v]
    bad = None
    if draw(st.integers(0, 7), label="bad?") == 7:  # hypothesis favours 0: 7 is rarer
        bad = draw(st.sampled_from(BAD_INPUTS), label="bad input")
        bad_options = dict(options)
        bad(args, bad_options, rng)
        options = bad_options
    story = {
        "seed": seed,
        "dtype": dtype.name,
        "q": q.shape,
        "k": k.shape,
        "v": v.shape,
        "layouts": layouts,
        "specials": (scores_specials, v_specials),
        "split poison": poison,
        "options": {n: getattr(o, "shape", o) for n, o in options.items()},
        "native": native_options,
        "bad": getattr(bad, "__name__", None),
    }
    return FuzzCall(tuple(args), options, native_options, story)


def _negative_window(args, options, rng):
    options["window"] = (-int(rng.integers(1, 5)), None)


def _kv_lengths_past_lk(args, options, rng):
    options["kv_lengths"] = args[1].shape[-2] + 1


def _kv_lengths_negative(args, options, rng):
    options["kv_lengths"] = -1


def _softcap_not_positive(args, options, rng):
    options["softcap"] = float(rng.choice([0.0, -1.0, -np.inf]))


def _scale_not_finite(args, options, rng):
    options["scale"] = float(rng.choice([np.nan, np.inf, -np.inf, 1e300]))


def _bias_nan(args, options, rng):
    bias = np.zeros(args[1].shape[-2])
    if bias.size:
        bias[rng.integers(bias.size)] = np.nan
    options["bias"] = bias if bias.size else np.full(1, np.nan)


def _mask_of_ints(args, options, rng):
    options["mask"] = np.ones(args[1].shape[-2], dtype=np.int8)


def _mixed_dtypes(args, options, rng):
    other = np.float64 if args[0].dtype != np.float64 else np.float32
    args[int(rng.integers(1, 3))] = args[2].astype(other)


def _int_query(args, options, rng):
    args[0] = args[0].astype(np.int32) if np.isfinite(args[0]).all() else args[0].astype(object)


def _query_list(args, options, rng):
    args[0] = args[0].tolist()


def _hkv_not_dividing(args, options, rng):
    q, Hkv = args[0], args[1].shape[-3]
    if Hkv > 1:  # one more query head: Hq = G·Hkv + 1
        extra = np.zeros((*q.shape[:-3], 1, *q.shape[-2:]), dtype=q.dtype)
        args[0] = np.concatenate([q, extra], axis=-3)
    else:  # no query heads at all
        args[0] = q[..., :0, :, :]


def _rank(args, options, rng):
    args[1] = args[1][None]


def _head_dim(args, options, rng):
    args[1] = np.concatenate([args[1], args[1][..., :1]], axis=-1)


BAD_INPUTS = [
    _negative_window,
    _kv_lengths_past_lk,
    _kv_lengths_negative,
    _softcap_not_positive,
    _scale_not_finite,
    _bias_nan,
    _mask_of_ints,
    _mixed_dtypes,
    _int_query,
    _query_list,
    _hkv_not_dividing,
    _rank,
    _head_dim,
]

CASES_RUN = collections.Counter()  # cases and errors of the attention target, one per layer


def _snapshot(x):
    return np.array(x, copy=True) if isinstance(x, np.ndarray) else x


def options_in_compute_dtype(query, options: dict) -> dict:
    """The options as a call computes with them: a float32 call (float16 and float32 inputs)
    takes its scale in float32, so a scale below 1.4e-45 is 0 there (SPEC.md, "float64_options")
    and the float64 reference must be given that 0, not the float64 number."""
    scale = options.get("scale")
    if scale is None or compute_dtype(query.dtype) == np.float64:
        return options
    return {**options, "scale": float(np.float32(scale))}


# How far below its row's lse a visible key's score may lie and still weigh more than 0 in any
# implementation computing in the dtype. A weight is a product of exps (FlashAttention's tile
# weight and each rescale factor after it; a chunk's weight in a merge), each exponent at least
# the whole log-weight; float32's exp is subnormal from -87 and 0 below -104 in the SIMD kernels,
# float64's from -708. Below, a weight may be 0 in one implementation and not in another.
SURELY_WEIGHED = {"float32": -80.0, "float64": -700.0}


def _weightless_infs(query, key, value, options: dict, want) -> np.ndarray:
    """(B..., Hq, Lq, Dv) bool: components of out that sum a ±Inf value with a weight too small
    to be surely > 0 in the compute dtype: Inf·0 = NaN and Inf·tiny = ±Inf are both right."""
    q, k, v, options = as_float64(query, key, value, options)
    call = AttentionCall.check(q, k, v, **options)
    q, k, v = reference._heads_aligned(call)
    visible = np.broadcast_to(reference._visible(call), call.scores_shape)
    with np.errstate(invalid="ignore"):
        log_weight = reference._scores(q, k, call) - want.lse[..., None]
    # the implementation's scores may lie a few score errors from the reference's
    limit = SURELY_WEIGHED[compute_dtype(query.dtype).name] + 4 * want.tol.score_error + 1
    tiny = visible & (log_weight < limit) & (log_weight > -np.inf)  # NaN rows are surely NaN
    return (tiny[..., :, :, None] & np.isinf(v)[..., None, :, :]).any(axis=-2)


def _inf_values_outcome(query, key, value, options: dict, want) -> np.ndarray:
    """What each out component is when every visible ±Inf value weighs > 0 (score > -inf): ±Inf
    of their sign, or NaN where the signs meet, a visible value is NaN, a ±Inf value has score
    -inf (weight exactly 0) or the row is NaN. Finite components are left as want has them."""
    q, k, v, options = as_float64(query, key, value, options)
    call = AttentionCall.check(q, k, v, **options)
    q, k, v = reference._heads_aligned(call)
    visible = np.broadcast_to(reference._visible(call), call.scores_shape)
    with np.errstate(invalid="ignore"):
        scores = reference._scores(q, k, call)
    seen = visible[..., None]  # (B..., Hq, Lq, Lk, 1)
    weighed = (visible & (scores > -np.inf))[..., None]
    v = v[..., None, :, :]  # (B..., Hq, 1, Lk, Dv)
    plus = (weighed & (v == np.inf)).any(axis=-2)
    minus = (weighed & (v == -np.inf)).any(axis=-2)
    nan = (seen & np.isnan(v)).any(axis=-2) | (seen & ~weighed & np.isinf(v)).any(axis=-2)
    nan |= np.isnan(want.lse)[..., None] | (plus & minus)
    outcome = np.where(plus, np.inf, np.where(minus, -np.inf, want.out))
    return np.where(nan, np.nan, outcome)


def accept_weightless_infs(got, query, key, value, options: dict, want):
    """got, with each component that sums a ±Inf value of a weight too small to be surely > 0
    set to the reference's when it is NaN or the Inf every weight > 0 gives: either is right."""
    maybe = _weightless_infs(query, key, value, options, want)
    if not maybe.any():
        return got
    outcome = _inf_values_outcome(query, key, value, options, want)
    got64 = got.astype(np.float64)
    accepted = maybe & (np.isnan(got64) | (got64 == outcome))
    return np.where(accepted, want.out, got64).astype(got.dtype)


def check_call(call: FuzzCall) -> None:
    """The native call equals the reference within the tolerance model, or raises what the
    reference raises; either way it leaves its inputs as they were."""
    CASES_RUN["cases"] += 1
    before = [_snapshot(x) for x in (*call.args, *call.options.values())]
    try:
        AttentionCall.check(*call.args, **call.options)
    except (TypeError, ValueError) as error:
        want_error = error
    else:
        want_error = None
        options = options_in_compute_dtype(call.args[0], call.options)
        want = expect(*call.args, **options)
    flags = call.native_options
    if want_error is not None:
        CASES_RUN["errors"] += 1
        with pytest.raises(type(want_error)) as raised:
            native.attention(*call.args, **call.options, **flags)
        assert str(raised.value) == str(want_error)
    else:
        got = native.attention(*call.args, **call.options, **flags)
        got = got if isinstance(got, tuple) else (got,)
        assert got[0].dtype == call.args[0].dtype, (got[0].dtype, call.args[0].dtype)
        names = ["out"] + ["lse"] * flags["return_lse"] + ["weights"] * flags["return_weights"]
        assert len(got) == len(names)
        out = accept_weightless_infs(got[0], *call.args, options, want)
        assert want.problems(**dict(zip(names, (out, *got[1:]), strict=True))) == []
    after = [_snapshot(x) for x in (*call.args, *call.options.values())]
    for b, a in zip(before, after, strict=True):
        if isinstance(b, np.ndarray) and b.dtype == BFLOAT16:  # its bits: NumPy sees a void
            b, a = b.view(np.uint16), a.view(np.uint16)
        if isinstance(b, np.ndarray) and b.dtype.kind in "biufc":
            assert b.dtype == a.dtype and np.array_equal(b, a, equal_nan=b.dtype.kind in "fc")


# The layers: merge_partials, multi-head attention with a KV cache, and hostile arguments to
# every layer entry point.


@dataclass
class MergeCase:
    """Attention over chunks of the keys, to be merged: the whole call and where it is cut."""

    args: tuple
    options: dict  # of the call over all keys; causal and window are folded into the mask
    bounds: list  # (start, stop) of each chunk, empty chunks included
    attention: dict  # "impl" ("native" or "reference") and the native flags
    nan_out: bool  # outs of rows that see nothing in a chunk replaced by NaN (0/0 partials)
    story: dict

    def __repr__(self) -> str:
        return f"MergeCase({self.story})"


@st.composite
def merge_cases(draw) -> MergeCase:
    """Returns a strategy for split-KV calls: random chunkings (empty chunks included), chunks
    some rows or every row see nothing of, NaN and ±Inf in q, k and v, any mask and bias."""
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    dtype = np.dtype(draw(st.sampled_from(DTYPES), label="dtype"))
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=2), label="batch"))
    Hkv = draw(st.integers(1, 2), label="Hkv")
    Hq = Hkv * draw(st.integers(1, 3), label="G")
    Lq, Lk = draw(st.integers(0, 12), label="Lq"), draw(st.integers(0, 80), label="Lk")
    Dk, Dv = draw(st.integers(1, 16), label="Dk"), draw(st.integers(0, 12), label="Dv")
    cuts = sorted(draw(st.lists(st.integers(0, Lk), max_size=5), label="cuts"))
    bounds = list(zip([0, *cuts], [*cuts, Lk], strict=True))
    magnitude = draw(st.sampled_from([1.0, 0.01, 30.0]), label="magnitude")
    v_specials = draw(st.sampled_from([(), (np.nan,), (np.inf, -np.inf), (np.inf, np.nan)]))
    # A visible key whose score is -inf weighs 0 but its value still enters (0·NaN = NaN); in a
    # chunk whose visible scores are all -inf that key's chunk is fully masked, out 0: the merge
    # cannot see it. So ±Inf in q and k (which make -inf scores) only with finite values.
    scores_specials = draw(
        st.sampled_from([(), (np.nan,)] + ([(np.inf, -np.inf, np.nan)] if not v_specials else []))
    )
    q = _values(draw, rng, (*batch, Hq, Lq, Dk), dtype, magnitude, scores_specials, "query")
    k = _values(draw, rng, (*batch, Hkv, Lk, Dk), dtype, magnitude, scores_specials, "key")
    v = _values(draw, rng, (*batch, Hkv, Lk, Dv), dtype, magnitude, v_specials, "value")
    target = (*batch, Hq, Lq, Lk)
    options = {}
    mask = None
    if draw(st.booleans(), label="mask?"):
        density = draw(st.sampled_from([0.1, 0.5, 0.9, 1.0]), label="density")
        mask = rng.random(_broadcastable_shape(draw, target, "mask")) < density
    causal = draw(st.sampled_from([None, "top_left", "bottom_right"]), label="causal")
    window = None
    if draw(st.booleans(), label="window?"):
        side = st.one_of(st.none(), st.integers(0, Lk + 2))
        window = (draw(side, label="left"), draw(side, label="right"))
    hidden = [c for c in range(len(bounds)) if draw(st.booleans(), label=f"chunk {c} hidden?")]
    if mask is not None or causal or window or hidden:
        # one mask over all keys, each chunk's a slice of it
        full = np.broadcast_to(
            masks.visible(Lq, Lk, causal=causal, window=window, mask=mask), target
        ).copy()
        for c in hidden:
            start, stop = bounds[c]
            rows = rng.random(Lq) < draw(st.sampled_from([1.0, 0.5]), label=f"chunk {c} rows")
            full[..., rows, start:stop] = False  # these rows see nothing of chunk c
        options["mask"] = full
    if draw(st.booleans(), label="bias?"):
        bias = rng.standard_normal(_broadcastable_shape(draw, target, "bias"))
        if bias.size and draw(st.booleans(), label="bias -inf?"):
            bias[rng.random(bias.shape) < 0.3] = -np.inf
        options["bias"] = bias.astype(draw(st.sampled_from(DTYPES), label="bias dtype"))
    if draw(st.booleans(), label="kv_lengths?"):
        options["kv_lengths"] = rng.integers(0, Lk + 1, size=batch)
    scale = draw(st.one_of(st.none(), SCALES), label="scale")
    if scale is not None:
        options["scale"] = scale
    if draw(st.booleans(), label="softcap?"):
        options["softcap"] = draw(st.floats(0.5, 50), label="softcap")
    impl = draw(st.sampled_from(["native", "reference"]), label="chunks by")
    attention = {"impl": impl}
    if impl == "native":
        attention["isa"] = draw(st.sampled_from([None, *ISAS]), label="isa")
        attention["num_threads"] = draw(st.sampled_from([None, 1, 2]), label="num_threads")
    nan_out = draw(st.booleans(), label="NaN outs where a chunk sees nothing?")
    story = {
        "seed": seed,
        "dtype": dtype.name,
        "q": q.shape,
        "k": k.shape,
        "v": v.shape,
        "bounds": bounds,
        "specials": (scores_specials, v_specials),
        "causal": causal,
        "window": window,
        "hidden chunks": hidden,
        "options": {n: getattr(o, "shape", o) for n, o in options.items()},
        "attention": attention,
        "nan_out": nan_out,
    }
    return MergeCase((q, k, v), options, bounds, attention, nan_out, story)


def _chunk(options: dict, start: int, stop: int) -> dict:
    """The options of keys [start, stop): mask and bias sliced, kv_lengths shifted and clipped."""
    chunk = dict(options)
    for name in ("mask", "bias"):
        if name in options and options[name].ndim and options[name].shape[-1] > 1:
            chunk[name] = options[name][..., start:stop]
    if "kv_lengths" in options:
        chunk["kv_lengths"] = np.clip(options["kv_lengths"] - start, 0, stop - start)
    return chunk


def check_merge(case: MergeCase) -> None:
    """The chunks' partials merged by merge_partials equal attention over all keys: the float64
    reference's, within the tolerance of ATT-C1 (chunk outs rounded before the merge)."""
    CASES_RUN["merge"] += 1
    q, k, v = case.args
    flags = dict(case.attention)
    impl = native.attention if flags.pop("impl") == "native" else reference.attention
    outs, lses = [], []
    for start, stop in case.bounds:
        out, lse = impl(
            q,
            k[..., start:stop, :],
            v[..., start:stop, :],
            **_chunk(case.options, start, stop),
            return_lse=True,
            **flags,
        )
        if case.nan_out:
            out = np.where((lse == -np.inf)[..., None], np.nan, out).astype(out.dtype)
        outs.append(out)
        lses.append(lse)
    out, lse = merge_partials(outs, lses)
    assert out.dtype == q.dtype and lse.dtype == compute_dtype(q.dtype), (out.dtype, lse.dtype)
    options = options_in_compute_dtype(q, case.options)
    want = expect(q, k, v, **options)
    largest_v = float(np.nanmax(np.abs(np.where(np.isinf(v), 0, v)), initial=0).astype(float))
    atol = want.tol.out + 4 * want.tol.lse * largest_v + OUTPUT_ROUNDING[q.dtype.name] * largest_v
    out = accept_weightless_infs(out, q, k, v, options, want)
    assert mismatch(out, want.out, atol) is None, mismatch(out, want.out, atol)
    assert mismatch(lse, want.lse, 2 * want.tol.lse) is None, mismatch(
        lse, want.lse, 2 * want.tol.lse
    )


@dataclass
class DecodeCase:
    """A multi-head layer, its input and options, and the pieces it is decoded in."""

    x: np.ndarray
    params: MHAParams
    heads: dict  # num_heads, num_kv_heads
    options: dict  # over the whole sequence (mask and bias (..., L, L)), causal implied
    bounds: list  # (start, stop) of each piece
    attention: dict
    story: dict

    def __repr__(self) -> str:
        return f"DecodeCase({self.story})"


@st.composite
def decode_cases(draw) -> DecodeCase:
    """Returns a strategy for KV-cache decoding: random layers (GQA, Dv != Dk), dtypes, piece
    lengths, masks and biases over the whole sequence, windows, softcaps and scales."""
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    dtype = np.dtype(draw(st.sampled_from(("float32", "float64", "float16")), label="dtype"))
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=2), label="batch"))
    num_kv_heads = draw(st.integers(1, 3), label="num_kv_heads")
    num_heads = num_kv_heads * draw(st.integers(1, 3), label="G")
    L = draw(st.integers(1, 24), label="L")
    cuts = sorted(draw(st.sets(st.integers(1, max(L - 1, 1)), max_size=6), label="cuts"))
    cuts = [c for c in cuts if c < L]
    if draw(st.booleans(), label="one token at a time?"):
        cuts = list(range(1, L))
    bounds = list(zip([0, *cuts], [*cuts, L], strict=True))
    params = MHAParams.init(
        draw(st.integers(1, 16), label="d_model"),
        num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=draw(st.integers(1, 8), label="head_dim"),
        value_head_dim=draw(st.integers(1, 8), label="value_head_dim"),
        bias=draw(st.booleans(), label="projection biases?"),
        dtype=dtype,
        seed=seed % 1000,
    )
    magnitude = draw(st.sampled_from([1.0, 0.1, 5.0]), label="magnitude")
    x = _values(draw, rng, (*batch, L, params.w_q.shape[0]), dtype, magnitude, (np.nan,), "x")
    target = (*batch, num_heads, L, L)
    options = {}
    if draw(st.booleans(), label="mask?"):
        density = draw(st.sampled_from([0.3, 0.8, 1.0]), label="density")
        shape = (*_broadcastable_shape(draw, target[:-2], "mask"), L, L)
        options["mask"] = rng.random(shape) < density
    if draw(st.booleans(), label="bias?"):
        bias = rng.standard_normal((L, L))
        bias[rng.random((L, L)) < 0.2] = -np.inf
        options["bias"] = bias.astype(dtype)
    if draw(st.booleans(), label="window?"):
        left = draw(st.one_of(st.none(), st.integers(0, L)), label="left")
        options["window"] = (left, draw(st.sampled_from([None, 0, 2]), label="right"))
    if draw(st.booleans(), label="softcap?"):
        options["softcap"] = draw(st.floats(0.5, 50), label="softcap")
    scale = draw(st.one_of(st.none(), st.floats(-2, 2)), label="scale")
    if scale is not None:
        options["scale"] = scale
    impl = draw(st.sampled_from(["native", "reference"]), label="attention")
    attention = {"impl": impl}
    if impl == "native":
        attention["isa"] = draw(st.sampled_from([None, *ISAS]), label="isa")
    heads = {"num_heads": num_heads, "num_kv_heads": num_kv_heads}
    story = {
        "seed": seed,
        "dtype": dtype.name,
        "x": x.shape,
        "heads": heads,
        "w": {n: getattr(w, "shape", None) for n, w in vars(params).items()},
        "bounds": bounds,
        "options": {n: getattr(o, "shape", o) for n, o in options.items()},
        "attention": attention,
    }
    return DecodeCase(x, params, heads, options, bounds, attention, story)


def _piece(options: dict, start: int, stop: int) -> dict:
    """The options of the queries [start, stop) against the cached keys [0, stop)."""
    piece = dict(options)
    for name in ("mask", "bias"):
        if name in options:
            piece[name] = options[name][..., start:stop, :stop]
    return piece


def check_decode(case: DecodeCase) -> None:
    """Decoding piece by piece with a KV cache gives what one causal call over the whole
    sequence gives; both within the tolerance of the float64 layer (expect_layer)."""
    CASES_RUN["decode"] += 1
    flags = dict(case.attention)
    if flags.pop("impl") == "native":

        def attention(*args, **options):
            return native.attention(*args, **options, **flags)
    else:
        attention = reference.attention
    layer = {"params": case.params, "attention": attention, **case.heads}
    whole = multi_head_attention(case.x, causal=True, **case.options, **layer)
    cache = KVCache()
    pieces = [
        multi_head_attention(
            case.x[..., start:stop, :],
            causal=True,
            kv_cache=cache,
            **_piece(case.options, start, stop),
            **layer,
        )
        for start, stop in case.bounds
    ]
    y = np.concatenate(pieces, axis=-2)
    L, (Hkv, Dk) = case.x.shape[-2], (case.heads["num_kv_heads"], case.params.w_k.shape[1])
    assert cache.length == L
    assert cache.key.shape == (*case.x.shape[:-2], Hkv, L, Dk // Hkv)
    assert y.dtype == whole.dtype == case.x.dtype
    options = options_in_compute_dtype(case.x, case.options)
    want = expect_layer(case.x, case.params, causal=True, **case.heads, **options)
    assert mismatch(whole, want.y, want.tol) is None, ("whole", mismatch(whole, want.y, want.tol))
    assert mismatch(y, want.y, want.tol) is None, ("pieces", mismatch(y, want.y, want.tol))


def _matrix(x):
    with warnings.catch_warnings():  # np.matrix warns that it is not recommended: it is the point
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(x)


def _hostile_pool() -> list:
    """Values no argument of a layer takes, or takes only by luck: each entry point must refuse
    them with TypeError or ValueError (or, where one happens to be legitimate, compute)."""
    masked = np.ma.masked_array(np.zeros((2, 3)), mask=[[True, False, False]] * 2)
    return [
        None, True, False, np.bool_(True), 0, 1, -1, 3, 2**62, 2**64, 2**70, 10**400,
        -(10**400), np.int64(2), np.uint64(2**64 - 1), 0.0, -0.0, 0.5, 2.5, 1e-320, 1e300,
        float("nan"), float("inf"), -float("inf"), np.float32("nan"), np.longdouble("1e400"),
        1j, Fraction(1, 3), Fraction(10**400), "", "x", "top_left", "float32", b"\x00",
        [], [1, 2], [[1.0, 2.0]], [None], (), (1,), (1, 2), (None, None), (-1, 2**70), (1.5, 2),
        {}, {"w_q": 1}, set(), object(), Ellipsis, NotImplemented, np.ma.masked, masked,
        _matrix(np.zeros((2, 3))), np.float64, np.dtype("int8"), KVCache(), iter([1]),
        np.zeros(()), np.zeros(0), np.zeros((0, 0, 0)), np.zeros((2, 3), np.int64),
        np.zeros((2, 3), bool), np.zeros((2, 3), np.complex64), np.zeros((2, 3), object),
        np.zeros((2, 3), "U1"), np.zeros((2, 3), "datetime64[s]"), np.zeros((2, 3), ">f8"),
        np.zeros((2, 3), np.longdouble), np.full((2, 3), np.nan), np.zeros((2, 3), np.float16),
        np.broadcast_to(np.zeros(1), (4, 3, 2)), np.zeros((1, 1, 1, 1, 1, 1), np.float32),
    ]  # fmt: skip


def _mutations(x) -> list:
    """x made wrong in the ways a caller gets an argument wrong: dtype, rank, size, kind."""
    if isinstance(x, MHAParams):
        return [dataclasses.replace(x, **{name: None}) for name in ("w_q", "w_o")] + [
            dataclasses.replace(x, **{name: _mutations(getattr(x, name))[i]})
            for name in ("w_q", "w_k", "w_v", "w_o", "b_q", "b_o")
            if getattr(x, name) is not None
            for i in (0, 3, 6, 9, 12)
        ]
    if isinstance(x, list):  # merge_partials' chunks
        return [
            x[:-1],
            [*x, x[0]],
            tuple(x),
            x[:0],
            iter(x),
            np.stack(x),
            [x[0].tolist(), *x[1:]],
        ] + [[m, *x[1:]] for m in _mutations(x[0])]
    if not isinstance(x, np.ndarray):
        return []
    other = np.float32 if x.dtype == np.float64 else np.float64
    mutated = [
        x.astype(np.int64), x.astype(bool), x.astype(np.complex64), x.astype(object),
        x.astype(">f8"), x.astype(np.longdouble), x.astype(other), x.astype(np.float16),
        x[None], x[0] if x.ndim else x, x[..., :0], x[..., :1], x.T, x.reshape(-1), x.tolist(),
        np.ma.masked_array(x), np.full_like(x, np.nan), np.concatenate([x, x], axis=-1),
        np.broadcast_to(x, (2, *x.shape)),
    ]  # fmt: skip
    if x.ndim == 2:
        mutated.append(_matrix(x))
    return mutated


def _valid_merge(rng):
    batch, Lq, Dv = (2,), 3, 4
    outs = [rng.standard_normal((*batch, Lq, Dv)) for _ in range(3)]
    lses = [rng.standard_normal((*batch, Lq)) for _ in range(3)]
    return merge_partials, [outs, lses], {}


def _valid_mha(rng):
    params = MHAParams.init(8, 4, num_kv_heads=2, seed=1)
    x = rng.standard_normal((2, 5, 8))
    defaults = "context num_kv_heads mask bias causal window kv_lengths scale softcap kv_cache"
    options = dict.fromkeys([*defaults.split(), "attention"])
    options.update(params=params, num_heads=4, num_kv_heads=2)
    if rng.random() < 0.5:
        cache = KVCache()
        multi_head_attention(x[:, :3], params=params, num_heads=4, num_kv_heads=2, kv_cache=cache)
        options.update(kv_cache=cache, causal=True)
    return multi_head_attention, [x], options


def _valid_append(rng):
    cache = KVCache()
    cache.append(np.ones((1, 2, 1, 4)), np.ones((1, 2, 1, 3)))
    return cache.append, [rng.standard_normal((1, 2, 2, 4)), rng.standard_normal((1, 2, 2, 3))], {}


def _valid_init(rng):
    options = {"num_kv_heads": 2, "head_dim": 4, "value_head_dim": 3, "d_context": 5}
    options.update(d_out=6, bias=True, dtype=np.float32, seed=7)
    return MHAParams.init, [8, 4], options


HOSTILE_TARGETS = {
    "merge_partials": _valid_merge,
    "multi_head_attention": _valid_mha,
    "KVCache.append": _valid_append,
    "MHAParams.init": _valid_init,
}


@dataclass
class HostileCall:
    """A valid call to a layer entry point with one to three arguments replaced."""

    function: object
    args: list
    options: dict
    story: dict

    def __repr__(self) -> str:
        return f"HostileCall({self.story})"


@st.composite
def hostile_calls(draw) -> HostileCall:
    """Returns a strategy for calls to merge_partials, multi_head_attention, KVCache.append and
    MHAParams.init with one to three arguments replaced by hostile values: a pool of wrong kinds
    of thing, and the right argument made wrong (dtype, rank, size, kind)."""
    target = draw(st.sampled_from(sorted(HOSTILE_TARGETS)), label="target")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    function, args, options = HOSTILE_TARGETS[target](np.random.default_rng(seed))
    names = list(range(len(args))) + sorted(options)
    replaced = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique_by=str))
    story = {"target": target, "seed": seed, "replaced": {}}
    for name in replaced:
        original = args[name] if isinstance(name, int) else options[name]
        pool = _hostile_pool()  # fresh each time: a KVCache or an iterator in it changes as used
        choices = pool + _mutations(original)
        index = draw(st.integers(0, len(choices) - 1), label=f"{name} replacement")
        value = choices[index]
        if isinstance(name, int):
            args[name] = value
        else:
            options[name] = value
        story["replaced"][name] = (
            f"pool[{index}]" if index < len(pool) else f"mutation {index - len(pool)}",
            type(value).__name__,
            getattr(value, "shape", None),
            getattr(value, "dtype", None),
        )
    return HostileCall(function, args, options, story)


def check_hostile(call: HostileCall) -> None:
    """The call computes or raises TypeError or ValueError in the project's form ("... should
    be ..., but got ..."), never another exception; a refused call leaves a KV cache as it was."""
    CASES_RUN["hostile"] += 1
    cache = call.options.get("kv_cache")
    length = cache.length if isinstance(cache, KVCache) else None
    try:
        call.function(*call.args, **call.options)
    except (TypeError, ValueError) as error:
        CASES_RUN["hostile errors"] += 1
        if "attention" not in call.story["replaced"]:  # a caller's function raises its own
            assert re.search(r"should (be|have|hold)", str(error)), (type(error), str(error))
        if length is not None:
            assert cache.length == length


# name: (strategy, check, what one case is)
TARGETS = {
    "attention": (fuzz_calls, check_call, "native calls"),
    "merge": (merge_cases, check_merge, "split-KV calls merged and"),
    "decode": (decode_cases, check_decode, "layers decoded piece by piece and"),
    "hostile": (hostile_calls, check_hostile, "calls with hostile arguments"),
}
# Cases of each target in the default run's slice (REFATTN_FUZZ_SLICE sets them all).
SLICE = {"attention": 150, "merge": 60, "decode": 40, "hostile": 200}


def _fuzz(target: str, cases: int, *, derandomize: bool) -> None:
    strategy, check, what = TARGETS[target]

    @settings(
        max_examples=cases,
        derandomize=derandomize,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy())
    def run(case):
        check(case)

    key = "cases" if target == "attention" else target
    start = CASES_RUN.copy()
    run()
    ran = CASES_RUN[key] - start[key]
    if target == "attention":
        errors = CASES_RUN["errors"] - start["errors"]
        report = f"fuzz: {ran} native calls checked ({errors} bad ones refused like the reference)"
    elif target == "hostile":
        errors = CASES_RUN["hostile errors"] - start["hostile errors"]
        report = f"fuzz: {ran} {what} checked ({errors} refused with TypeError or ValueError)"
    else:
        report = f"fuzz: {ran} {what} checked"
    print(report)
    if os.environ.get("REFATTN_FUZZ_REPORT"):
        with open(os.environ["REFATTN_FUZZ_REPORT"], "a") as log:
            log.write(f"{report}; build: {native.info()['build']}\n")
    assert ran >= cases


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_slice(target):
    """The slice of each fuzz target in the default run (and in CI, under the sanitizers)."""
    _fuzz(target, int(os.environ.get("REFATTN_FUZZ_SLICE", SLICE[target])), derandomize=True)


@pytest.mark.parametrize(
    ("isa", "dtype"),
    [*((isa, "float32") for isa in ISAS), (None, "float64")],  # float64: the scalar kernels
)
@pytest.mark.parametrize("value", [np.nan, -np.inf], ids=["nan", "-inf"])
def test_fuzz_split_poison_every_tile_position(isa, dtype, value):
    """The split path with a special key at in-tile position t of every tile of the first
    chunk, for every tile size and every t, the second chunk clean: each call checked like a
    fuzz case. 16 query heads at a time, one position each (16 tiles: still split into two
    chunks of 512 keys). A -inf key component scores ±inf, with a value of Inf at one key."""
    rng = np.random.default_rng(12)
    H, Lk, D = 16, 1024, 8
    q = rng.standard_normal((1, H, 1, D)).astype(dtype)
    clean_k = rng.standard_normal((1, H, Lk, D)).astype(dtype)
    v = rng.standard_normal((1, H, Lk, D)).astype(dtype)
    if value == -np.inf:
        v[:, :, 5, 2] = np.inf  # 0·Inf where the key at 5 scores -inf
    flags = {"isa": isa, "num_threads": 2, "return_lse": True, "return_weights": False}
    for period in TILE_KEYS:
        for t0 in range(0, period, H):
            k = clean_k.copy()
            for h in range(H):
                poison_tiles(k[:, h], period, t0 + h, value, dim=h % D)
            story = {
                "q": q.shape,
                "k": k.shape,
                "dtype": dtype,
                "split poison": (period, t0, value),
            }
            check_call(FuzzCall((q, k, v), {}, flags, story))


@pytest.mark.fuzz
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz(target):
    """The dedicated fuzz run: `pytest -m fuzz`, REFATTN_FUZZ_CASES cases of each target
    (default 10 000)."""
    _fuzz(target, int(os.environ.get("REFATTN_FUZZ_CASES", "10000")), derandomize=False)
