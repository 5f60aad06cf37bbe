"""Hypothesis strategies for attention calls, shaped by what an implementation can do.

Every strategy draws sizes first and seeds last, so shrinking makes shapes small and values
simple before anything else: a counterexample ends up a handful of tokens and heads.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from refattn.spec.cases import Case, MHACase, Upstream

from refattn.capabilities import CAPABILITIES, exclusive_pairs

DTYPES = ("float64", "float32", "float16", "bfloat16")  # shrinks toward float64: no rounding
SMALL = 8  # lengths and dims up to this are drawn first; larger ones exercise kernel tiles
# Where fast kernels change path, drawn on purpose rather than left to a lucky seed:
TILES = (16, 32, 64, 128, 256)  # key and query tile widths (refattn's, FlashAttention's, torch's)
HEAD_DIMS = (16, 32, 64, 80, 96, 128, 160, 192, 256)  # register blocks end at 64, 128, 256
LONG_KEYS = 4096  # decode shapes: split-KV kernels split the keys past a few hundred
# scales and softcaps at the edges of their legal ranges, beside the middle ones
EDGE_SCALES = (0.0, 1e-7, -1e-7, 100.0, -100.0)
EDGE_SOFTCAPS = (1e-3, 0.05, 1e3, 1e4)
BIAS_MAGNITUDES = (1.0, 1e-3, 30.0)  # standard deviations of a bias: flat to near one-hot
_FEATURE_VALUES = (False, True, "always")


def _check_options(**options) -> None:
    for name, value in options.items():
        if value not in _FEATURE_VALUES:
            raise ValueError(f"{name} should be False, True or 'always', but got {value!r}")


def _size(low: int, high: int):
    """Sizes from [low, high]: small ones first (they shrink there), then the long tail, and
    the lengths on either side of a tile boundary (k·T - 1, k·T, k·T + 1 for T in TILES)."""
    if high <= SMALL or low > SMALL:
        return st.integers(low, high)
    edges = tile_edges(SMALL + 1, high)
    tail = st.integers(SMALL + 1, high)
    return st.one_of(
        st.integers(low, SMALL), st.one_of(tail, st.sampled_from(edges)) if edges else tail
    )


def tile_edges(low: int, high: int) -> list[int]:
    """The lengths in [low, high] next to a multiple of a tile width: k·T - 1, k·T, k·T + 1."""
    near = {k * t + d for t in TILES for k in range(1, high // t + 2) for d in (-1, 0, 1)}
    return sorted(n for n in near if low <= n <= high)


@st.composite
def cases(
    draw,
    capabilities,
    *,
    dtypes=None,
    max_len=320,
    max_dim=256,
    max_heads=4,
    max_group=8,
    long_keys=LONG_KEYS,
    max_batch_dims=2,
    budget=2**19,
    min_lq=1,
    max_lq=None,
    min_lk=1,
    max_lk=None,
    square=False,
    min_batch_dims=0,
    mask=True,
    bias=True,
    causal=True,
    window=True,
    kv_lengths=True,
    softcap=True,
    scale=True,
    gqa=True,
    dv=True,
    strided=True,
    magnitudes=(1.0,),
):
    """Returns a strategy for `Case`s that `capabilities` (a set of names) can run.

    Each feature option (mask, bias, causal, window, kv_lengths, softcap, scale, gqa, dv,
    strided) is True (default: drawn when the implementation has it), False (never) or
    "always" (always drawn; the implementation must have it). `causal` may also name an
    alignment, "top_left" or "bottom_right", to always draw that one.

    dtypes: the dtypes to draw from (default: every float dtype the implementation has).
    max_len, max_dim, max_heads (of key/value heads), max_group (query heads per key/value
    head, with gqa), max_batch_dims: upper bounds of the sizes (defaults 320, 256, 4, 8, 2);
    budget (default 2**19) bounds B·Hq·Lq·Lk·max(Dk, Dv) so the float64 reference stays
    quick. min_lq and min_lk (default 1) may be 0 when the implementation has "empty"; max_lq
    and max_lk default to max_len; square=True (default False) draws Lk = Lq. long_keys
    (default LONG_KEYS): with at most SMALL queries and no max_lk, Lk may reach this (decode
    shapes, where split-KV kernels change path); 0 never draws past max_len.
    Lengths and head dims next to the tile widths and register blocks of common kernels
    (TILES, HEAD_DIMS), scales and softcaps at the edges of their ranges (EDGE_SCALES,
    EDGE_SOFTCAPS, and negative scales) and the largest group are drawn on purpose.
    min_batch_dims (default 0): at least this many batch dims.
    magnitudes: standard deviations to draw q, k and v entries with (default (1.0,)).
    With "combined_masks", masking features are drawn together, except the pairs in
    `capabilities.exclusive` (see refattn.capabilities.Capabilities).
    """
    caps = frozenset(capabilities)
    unknown = caps - set(CAPABILITIES)
    if unknown:
        raise ValueError(
            f"capabilities should be names from refattn.capabilities, got {sorted(unknown)}"
        )
    alignment = causal if causal in ("top_left", "bottom_right") else None
    _check_options(
        mask=mask,
        bias=bias,
        causal="always" if alignment else causal,
        window=window,
        kv_lengths=kv_lengths,
        softcap=softcap,
        scale=scale,
        gqa=gqa,
        dv=dv,
        strided=strided,
    )

    def wanted(name: str, option, capability: str | None = None) -> bool | str:
        capability = capability or name
        if option == "always" and capability not in caps:
            raise ValueError(f"{name}='always' needs capability {capability!r}")
        return option if capability in caps else False

    # Dtype and sizes first: they shrink before anything else.
    allowed = [d for d in DTYPES if d in caps and (dtypes is None or d in dtypes)]
    if not allowed:
        raise ValueError(f"dtypes should overlap the implementation's {sorted(caps)}, got {dtypes}")
    dtype = draw(st.sampled_from(allowed), label="dtype")
    empty_ok = "empty" in caps
    Lq = draw(
        _size(min_lq if empty_ok else max(min_lq, 1), max_len if max_lq is None else max_lq),
        label="Lq",
    )
    if square:
        Lk = Lq
    else:
        high = max_len if max_lk is None else max_lk
        lengths = _size(min_lk if empty_ok else max(min_lk, 1), high)
        if max_lk is None and Lq <= SMALL and long_keys > high:
            longer = st.integers(high + 1, long_keys)
            lengths = st.one_of(lengths, longer, st.sampled_from(tile_edges(high + 1, long_keys)))
        Lk = draw(lengths, label="Lk")
    Dk = draw(
        st.one_of(
            _size(1, min(SMALL, max_dim)),
            st.sampled_from([d for d in HEAD_DIMS if d <= max_dim] or [1]),
            st.sampled_from(tile_edges(SMALL + 1, min(max_dim, 129)) or [1]),  # a block tail
        ),
        label="Dk",
    )
    Dv = Dk
    if wanted("dv", dv) and (dv == "always" or draw(st.booleans(), label="Dv differs")):
        Dv = draw(_size(1, max_dim).filter(lambda d: d != Dk), label="Dv")
    room = max(1, budget // max(1, Lq * Lk * max(Dk, Dv)))
    Hkv = draw(st.integers(1, max(1, min(max_heads, room))), label="Hkv")
    group = 1
    top = min(max_group, room // Hkv)
    if wanted("gqa", gqa) and top >= 2:
        low = 2 if gqa == "always" else 1
        group = draw(st.one_of(st.integers(low, top), st.just(top)), label="GQA group")
    Hq = Hkv * group
    room //= Hq
    batch = []
    for _ in range(draw(st.integers(min_batch_dims, max_batch_dims), label="batch dims")):
        low = 2 if min_batch_dims and room >= 2 else 1  # two elements, to be independent of
        size = draw(st.integers(low, max(low, min(3, room))), label="batch size")
        batch.append(size)
        room = max(1, room // size)
    batch = tuple(batch)
    case = Case(batch=batch, Hq=Hq, Hkv=Hkv, Lq=Lq, Lk=Lk, Dk=Dk, Dv=Dv, dtype=dtype)

    # Masking features: all together only if the implementation can combine them.
    features = {
        "mask": wanted("mask", mask),
        "bias": wanted("bias", bias),
        "causal": _causal_wanted(caps, causal, alignment),
        "window": wanted("window", window),
        "kv_lengths": wanted("kv_lengths", kv_lengths),
    }
    forced = [name for name, option in features.items() if option == "always"]
    exclusive = exclusive_pairs(capabilities)
    for pair in exclusive:
        if pair <= set(forced):
            raise ValueError(f"{sorted(pair)} cannot be combined by this implementation")
    if "combined_masks" in caps:
        chosen = []
        for name, option in features.items():
            clash = any(frozenset((name, other)) in exclusive for other in {*forced, *chosen})
            if option == "always" or (
                option and not clash and draw(st.booleans(), label=f"use {name}")
            ):
                chosen.append(name)
    elif len(forced) > 1:
        raise ValueError(f"{forced} together need capability 'combined_masks'")
    else:
        optional = [name for name, option in features.items() if option]
        pick = forced or [draw(st.sampled_from([None, *optional]), label="masking")]
        chosen = [name for name in pick if name is not None]
    full = (*batch, Hq, Lq, Lk)
    for name in chosen:
        case = _draw_masking(draw, case, name, full, caps, alignment)

    # scale and softcap: float32 numbers for a float64 call to an implementation whose options
    # are 32-bit floats (no float64_options), so that their rounding is not what is tested.
    width = 32 if dtype == "float64" and "float64_options" not in caps else 64

    def of_width(x: float) -> float:
        return float(np.float32(x)) if width == 32 else x

    if wanted("softcap", softcap) and (
        softcap == "always" or draw(st.booleans(), label="use softcap")
    ):
        middle = st.floats(0.5, 30.0, width=width)
        edges = st.sampled_from([of_width(c) for c in EDGE_SOFTCAPS])
        case = case.replace(softcap=draw(st.one_of(middle, edges), label="softcap"))
    if wanted("scale", scale) and (scale == "always" or draw(st.booleans(), label="use scale")):
        low = of_width(0.01)  # bounds of the width's floats
        middle = st.floats(low, 4.0, width=width)
        edges = st.sampled_from([of_width(x) for x in EDGE_SCALES])
        scales = st.one_of(middle, middle.map(lambda x: -x), edges)
        case = case.replace(scale=draw(scales, label="scale"))
    if strided and (strided == "always" or draw(st.booleans(), label="strided")):
        case = case.replace(strided=True)
    magnitude = draw(st.sampled_from(magnitudes), label="magnitude")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    return case.replace(magnitude=magnitude, seed=seed)


def seen_rows(query, key, options, impl) -> np.ndarray:
    """The rows a property compares: every row under the spec's own semantics; under another
    declared fully masked semantics (the mean of V, NaN), only the rows that see some key, since
    what the others return is that semantics', checked where it is stated (ATT-W4)."""
    from refattn.spec import oracle

    seeing = oracle.visibility(query, key, options).any(axis=-1)
    if impl.semantics.fully_masked == "zero" and impl.semantics.fill is None:
        return np.ones(seeing.shape, dtype=bool)
    return seeing


@st.composite
def upstreams(draw, capabilities, *, lse=True, step=None):
    """Returns a strategy for `Upstream`s: the gradients of a loss with respect to a call's
    outputs, for a backward.

    lse (default True): draw a grad_lse too, sometimes, when the implementation has "lse"
    ("always": every time; False: never). step (default None): round the entries to
    multiples of step within ±4, so that sums of a few of them scaled by powers of 2 are exact.
    Shrinks toward no zeros and no grad_lse.
    """
    _check_options(lse=lse)
    if lse == "always" and "lse" not in capabilities:
        raise ValueError("lse='always' needs capability 'lse'")
    with_lse = lse == "always" or (
        bool(lse) and "lse" in capabilities and draw(st.booleans(), label="grad_lse")
    )
    zeros = draw(st.sampled_from([0.0, 0.25, 1.0]), label="share of zeros in the upstream")
    seed = draw(st.integers(0, 2**32 - 1), label="upstream seed")
    return Upstream(seed=seed, zeros=zeros, lse=with_lse, step=step)


def option_float(x: float, case: Case, impl) -> float:
    """A scale or softcap for `case` as `impl` can take it: rounded to a float32 number for a
    float64 call to an implementation whose options are 32-bit floats (no float64_options),
    so that their rounding is not what is tested."""
    if case.dtype == "float64" and "float64_options" not in impl.capabilities:
        return float(np.float32(x))
    return x


def _causal_wanted(caps, causal, alignment):
    if alignment:
        needed = f"causal_{alignment}"
        if needed not in caps:
            raise ValueError(f"causal={alignment!r} needs capability {needed!r}")
        return "always"
    if causal == "always" and not ({"causal_top_left", "causal_bottom_right"} & caps):
        raise ValueError("causal='always' needs a causal capability")
    return causal if {"causal_top_left", "causal_bottom_right"} & caps else False


def _draw_masking(draw, case: Case, name: str, full, caps, alignment) -> Case:
    if name == "mask":
        return case.replace(
            mask_shape=draw(broadcast_shapes(full), label="mask shape"),
            mask_density=draw(st.sampled_from([0.7, 0.3, 1.0, 0.0]), label="mask density"),
        )
    if name == "bias":
        return case.replace(
            bias_shape=draw(broadcast_shapes(full), label="bias shape"),
            bias_hidden=draw(st.sampled_from([0.0, 0.3]), label="bias -inf share"),
            bias_magnitude=draw(st.sampled_from(BIAS_MAGNITUDES), label="bias magnitude"),
        )
    if name == "causal":
        options = [a for a in ("top_left", "bottom_right") if f"causal_{a}" in caps]
        chosen = alignment or draw(st.sampled_from(options), label="causal")
        return case.replace(causal=chosen)
    if name == "window":
        side = st.one_of(st.none(), st.integers(0, max(case.Lq, case.Lk)))
        return case.replace(
            window=(draw(side, label="window left"), draw(side, label="window right"))
        )
    if name == "kv_lengths":
        count = math.prod(case.batch)
        lengths = draw(
            st.lists(st.integers(0, case.Lk), min_size=count, max_size=count), label="kv_lengths"
        )
        return case.replace(kv_lengths=tuple(lengths))
    raise AssertionError(name)


@st.composite
def broadcast_shapes(draw, full: tuple[int, ...]):
    """Returns a strategy for shapes that broadcast to `full`, (..., Lq, Lk) last, or 1 in
    place of Lq (the same keys for every query) or of Lk (one entry for all of a query's keys:
    a query padding mask).

    Shrinks toward (Lq, Lk): no leading dims, one row of keys per query.
    """
    *leading, Lq, Lk = full
    kept = draw(st.integers(0, len(leading)), label="leading dims kept")
    shape = [
        size if draw(st.booleans(), label=f"keep dim of {size}") else 1
        for size in leading[len(leading) - kept :]
    ]
    one_row = draw(st.booleans(), label="same row for every query")
    one_key = draw(st.booleans(), label="same entry for every key")
    return (*shape, 1 if one_row else Lq, 1 if one_key else Lk)


@st.composite
def mha_cases(draw, capabilities, *, max_len=24, max_heads=4, gqa=True, dv=True, dtypes=None):
    """Returns a strategy for `MHACase`s: a multi-head layer and its input.

    max_len (default 24) bounds the tokens, max_heads (default 4) the query heads. gqa and dv
    (default True) allow fewer kv heads and a value head dim of its own, when the
    implementation has them. dtypes: as for `cases`.
    """
    caps = frozenset(capabilities)
    allowed = [d for d in DTYPES if d in caps and (dtypes is None or d in dtypes)]
    dtype = draw(st.sampled_from(allowed), label="dtype")
    L = draw(_size(1, max_len), label="L")
    num_kv_heads = draw(st.integers(1, max_heads), label="num_kv_heads")
    group = 1
    if gqa and "gqa" in caps and max_heads // num_kv_heads >= 2:
        group = draw(st.integers(1, max_heads // num_kv_heads), label="GQA group")
    head_dim = draw(_size(1, 32), label="head_dim")
    value_head_dim = head_dim
    if dv and "dv" in caps:
        value_head_dim = draw(_size(1, 32), label="value_head_dim")
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=2), label="batch"))
    return MHACase(
        batch=batch,
        L=L,
        d_model=draw(_size(1, 32), label="d_model"),
        num_heads=num_kv_heads * group,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        value_head_dim=value_head_dim,
        dtype=dtype,
        seed=draw(st.integers(0, 2**32 - 1), label="seed"),
    )
