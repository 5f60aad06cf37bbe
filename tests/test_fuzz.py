"""Fuzzing the native core: arbitrary shapes, strides, dtypes, masks and options, each call
checked against the float64 reference within the tolerance model, or against the reference's
exception when the call is bad.

    pytest -m fuzz                              the dedicated run: REFATTN_FUZZ_CASES cases
                                                (default 10 000), a fresh random seed each run
    pytest tests/test_fuzz.py                   the slice in the default run and in CI:
                                                REFATTN_FUZZ_SLICE cases (default 150),
                                                derandomized; and the sweep of the split-K
                                                path, a NaN or -inf key at every position
                                                of a tile, in every tile of a chunk

Run both under the sanitizer build (README, "Sanitizers") to catch memory errors that do not
change a result. Each case also checks that the call left its inputs untouched. A failure
prints the drawn call; `FuzzCall.code()` has the shapes, layouts and options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refattn.spec.tolerance import expect

from refattn import native
from refattn._checks import check_attention

ISAS = native.available_isas()
DTYPES = ("float32", "float64", "float16")
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
    # NaN and ±Inf anywhere in q and k; in v NaN (any weight times NaN is NaN), and Inf only
    # where no weight can underflow to 0 in one dtype and not in the other.
    scores_specials = draw(st.sampled_from([(), (np.nan,), (np.inf, -np.inf, np.nan)]))
    # (not so small that it rounds to 0 in float32 but not in float64: Inf·scale would then be
    # NaN in one and ±Inf in the other)
    scales = st.floats(-2, 2).filter(lambda x: x == 0 or abs(x) > 1e-30)
    scale = draw(st.one_of(st.none(), st.sampled_from([0.0, -1.0, 1.0]), scales), label="scale")
    safe_v = magnitude == 1.0 and scale is None
    v_specials = draw(st.sampled_from([(), (np.nan,)] + ([(np.inf, -np.inf)] if safe_v else [])))
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
        options["bias"] = lay_out(bias, draw(st.sampled_from(MASK_LAYOUTS[:4])))
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

CASES_RUN = {"cases": 0, "errors": 0}
NO_OPTIONS = dict.fromkeys(("mask", "bias", "causal", "window", "kv_lengths", "scale", "softcap"))


def _snapshot(x):
    return np.array(x, copy=True) if isinstance(x, np.ndarray) else x


def check_call(call: FuzzCall) -> None:
    """The native call equals the reference within the tolerance model, or raises what the
    reference raises; either way it leaves its inputs as they were."""
    CASES_RUN["cases"] += 1
    before = [_snapshot(x) for x in (*call.args, *call.options.values())]
    try:
        check_attention(*call.args, **{**NO_OPTIONS, **call.options})
    except (TypeError, ValueError) as error:
        want_error = error
    else:
        want_error = None
        want = expect(*call.args, **call.options)
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
        assert want.problems(**dict(zip(names, got, strict=True))) == []
    after = [_snapshot(x) for x in (*call.args, *call.options.values())]
    for b, a in zip(before, after, strict=True):
        if isinstance(b, np.ndarray) and b.dtype.kind in "biufc":
            assert b.dtype == a.dtype and np.array_equal(b, a, equal_nan=b.dtype.kind in "fc")


def _fuzz(cases: int, *, derandomize: bool) -> None:
    @settings(
        max_examples=cases,
        derandomize=derandomize,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz_calls())
    def run(call):
        check_call(call)

    start = dict(CASES_RUN)
    run()
    ran = CASES_RUN["cases"] - start["cases"]
    errors = CASES_RUN["errors"] - start["errors"]
    report = f"fuzz: {ran} native calls checked ({errors} bad ones refused like the reference)"
    print(report)
    if os.environ.get("REFATTN_FUZZ_REPORT"):
        with open(os.environ["REFATTN_FUZZ_REPORT"], "a") as log:
            log.write(f"{report}; build: {native.info()['build']}\n")
    assert ran >= cases


def test_fuzz_slice():
    """The slice of the fuzz target in the default run (and in CI, under the sanitizers)."""
    _fuzz(int(os.environ.get("REFATTN_FUZZ_SLICE", "150")), derandomize=True)


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
def test_fuzz():
    """The dedicated fuzz run: `pytest -m fuzz`, REFATTN_FUZZ_CASES cases (default 10 000)."""
    _fuzz(int(os.environ.get("REFATTN_FUZZ_CASES", "10000")), derandomize=False)
