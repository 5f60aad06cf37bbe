"""Argument checks shared by every refattn entry point.

Each check raises TypeError (wrong kind of thing) or ValueError (right kind, wrong value) with a
message that names the argument and says what was expected and what came in:
"key.shape[-1] should be 64 (query's Dk), but got 32".

Shape letters, here and everywhere in refattn (Python and C):
    B...  batch dims (any number, the same for query, key and value)
    Hq    query heads               Hkv   key/value heads (Hq a multiple of Hkv)
    Lq    query length              Lk    key/value length
    Dk    query/key head dim        Dv    value head dim
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numpy as np

from refattn.dtypes import FLOAT_DTYPES, NAMES, compute_dtype, finfo

CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")


# ndarray subclasses that pass isinstance(x, np.ndarray) but would be misread: a masked array's
# mask is ignored by the native core (a masked-out NaN reaches the output) and breaks the
# reference's broadcasting; np.matrix keeps two dimensions under indexing and reduction.
_REFUSED_SUBCLASSES = (
    (np.ma.MaskedArray, "numpy.ma.MaskedArray", "a masked array's mask would be ignored"),
    (np.matrix, "numpy.matrix", "np.matrix keeps 2 dimensions: pass np.asarray(...)"),
)


def check_plain_array(name: str, x, what: str = "a numpy.ndarray") -> None:
    """Refuse anything that is not an ndarray, and the ndarray subclasses attention would
    misread (masked arrays, np.matrix). `what` is the expectation the message states."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} should be {what}, but got {type(x).__name__}")
    for cls, cls_name, why in _REFUSED_SUBCLASSES:
        if isinstance(x, cls):
            raise TypeError(f"{name} should be {what} ({why}), but got {cls_name}")


def check_float_array(name: str, x, *, min_ndim: int = 0) -> np.ndarray:
    check_plain_array(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}.dtype should be {NAMES}, but got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} should have at least {min_ndim} dimensions, but got shape {x.shape}"
        )
    return x


def check_same_dtype(name: str, x: np.ndarray, expected: np.dtype, whose: str) -> None:
    if x.dtype != expected:
        raise TypeError(f"{name}.dtype should be {expected} ({whose}), but got {x.dtype}")


def check_size(what: str, got: int, expected: int, why: str) -> None:
    if got != expected:
        raise ValueError(f"{what} should be {expected} ({why}), but got {got}")


def check_broadcastable(name: str, x: np.ndarray, target: tuple[int, ...], letters: str) -> None:
    """x must broadcast *to* target (NumPy rules, without growing target)."""
    ok = x.ndim <= len(target) and all(
        size in (1, want) for size, want in zip(reversed(x.shape), reversed(target), strict=False)
    )
    if not ok:
        raise ValueError(
            f"{name}.shape should be broadcastable to {letters} = {target}, but got {x.shape}"
        )


def check_mask(mask, target: tuple[int, ...], letters: str) -> np.ndarray | None:
    if mask is None:
        return None
    check_plain_array("mask", mask, "a numpy.ndarray of bool")
    if mask.dtype != np.bool_:
        raise TypeError(
            f"mask.dtype should be bool (True = may attend), but got {mask.dtype}; "
            "pass additive scores as bias="
        )
    check_broadcastable("mask", mask, target, letters)
    return mask


def broadcast_base(x: np.ndarray) -> np.ndarray:
    """The smallest view of x that holds all its distinct elements: every axis along which x
    is broadcast (stride 0, as np.broadcast_to makes) indexed down to length 1. It broadcasts
    back to x.shape, and an index into it (0 along those axes) is also an index into x."""
    index = tuple(
        slice(0, 1) if stride == 0 and n > 1 else slice(None)
        for n, stride in zip(x.shape, x.strides, strict=True)
    )
    return x[index]


def check_bias(bias, target: tuple[int, ...], letters: str, dtype: np.dtype) -> np.ndarray | None:
    if bias is None:
        return None
    bias = check_float_array("bias", bias)
    check_broadcastable("bias", bias, target, letters)
    # The checks run on the broadcast base (and in_compute_dtype casts it): a (Lq, Lk) view of
    # one row of Lk costs Lk elements, and checking the view itself would materialise Lq·Lk.
    # Its first bad element is also the view's first in C order (0 along the broadcast axes).
    base = broadcast_base(bias)
    # -inf is how a bias masks a key; NaN and +inf have no meaning as a score offset.
    bad = np.isnan(base) | np.isposinf(base)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"bias should be finite or -inf, but got {base[where]} at index {where}")
    # A float64 bias beyond the compute dtype's range would turn into ±inf in the cast: +inf
    # makes the row NaN and -inf silently hides a key the caller meant to keep.
    largest = float(finfo(dtype).max)
    if float(finfo(base.dtype).max) > largest:
        with np.errstate(invalid="ignore"):
            bad = np.isfinite(base) & (np.abs(base) > largest)
    else:
        bad = np.zeros((), dtype=bool)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"bias should be finite in {dtype} (the compute dtype, |bias| <= {largest:.4g}) "
            f"or -inf, but got {base[where]} at index {where}"
        )
    return bias


def in_compute_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """x (a checked bias) in the compute dtype, copied only when the dtype differs, and then
    only its broadcast base: a stride-0 view is cast as the few values it holds and broadcast
    again, so that the native core takes the stride-0 axes as they are."""
    if x.dtype == dtype:
        return x
    base = broadcast_base(x)
    if base.shape == x.shape:
        return x.astype(dtype)
    return np.broadcast_to(base.astype(dtype), x.shape)


def check_causal(causal) -> str | None:
    if causal is None or causal is False:
        return None
    if isinstance(causal, np.bool_):
        causal = bool(causal)
    if causal is False:
        return None
    if causal is True:
        return "top_left"  # the PyTorch habit: is_causal=True aligns top-left
    if isinstance(causal, str) and causal in CAUSAL_ALIGNMENTS:
        return causal
    raise ValueError(
        f"causal should be None, True, 'top_left' or 'bottom_right', but got {causal!r}"
    )


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool | np.bool_)


def check_window(window) -> tuple[int | None, int | None] | None:
    if window is None:
        return None
    if not isinstance(window, tuple | list) or len(window) != 2:
        raise TypeError(f"window should be a pair (left, right), but got {window!r}")
    checked = []
    for side, size in zip(("left", "right"), window, strict=True):
        index = len(checked)
        if size is None:
            checked.append(None)
        elif not _is_int(size):
            raise TypeError(
                f"window[{index}] ({side}) should be an int >= 0 or None, "
                f"but got {type(size).__name__} {size!r}"
            )
        elif size < 0:
            raise ValueError(
                f"window[{index}] ({side}) should be an int >= 0 or None, but got {size}"
            )
        else:
            checked.append(int(size))
    return checked[0], checked[1]


def check_kv_lengths(kv_lengths, batch_shape: tuple[int, ...], Lk: int) -> np.ndarray | None:
    if kv_lengths is None:
        return None
    if isinstance(kv_lengths, np.ndarray):
        check_plain_array("kv_lengths", kv_lengths, "ints or a numpy.ndarray of them")
    lengths = np.asarray(kv_lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"kv_lengths should hold integers, but got dtype {lengths.dtype}")
    try:
        lengths = np.broadcast_to(lengths, batch_shape)
    except ValueError:
        raise ValueError(
            f"kv_lengths.shape should be broadcastable to the batch shape B... = {batch_shape}, "
            f"but got {lengths.shape}"
        ) from None
    bad = (lengths < 0) | (lengths > Lk)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"kv_lengths should be in [0, Lk={Lk}], but got {lengths[where]} at index {where}"
        )
    return lengths.astype(np.int64)


def _magnitude(x: numbers.Rational) -> str:
    """A huge int or fraction for a message, as 1.234e+400: its digits could run to thousands
    (and str() refuses more than 4300)."""
    num, den = abs(x.numerator), x.denominator
    exponent = math.floor(math.log10(num) - math.log10(den))
    mantissa = float(Fraction(num, den) / Fraction(10) ** exponent)
    if mantissa >= 10:  # log10 rounded down across a power of ten
        mantissa, exponent = mantissa / 10, exponent + 1
    elif mantissa < 1:  # or up
        mantissa, exponent = mantissa * 10, exponent - 1
    return f"{'-' if x < 0 else ''}{mantissa:.4g}e{exponent:+d}"


def check_real(name: str, x, dtype: np.dtype, *, positive: bool = False) -> float:
    """x as a float: a real number (not a bool), finite, > 0 if `positive`, and within the range
    of the compute dtype, or TypeError/ValueError naming the argument."""
    if not isinstance(x, numbers.Real) or isinstance(x, bool | np.bool_):
        raise TypeError(f"{name} should be a real number, but got {type(x).__name__} {x!r}")
    try:
        value = float(x)
    except OverflowError:  # an int or a Fraction beyond float64's range
        value = math.inf if x > 0 else -math.inf
    # A finite x beyond float64 (an int, a Fraction, a long double) becomes ±inf: it is too
    # large, not infinite.
    overflowed = math.isinf(value) and (
        isinstance(x, numbers.Rational) or (isinstance(x, np.floating) and bool(np.isfinite(x)))
    )
    if not math.isfinite(value) and not overflowed:
        raise ValueError(f"{name} should be finite, but got {value}")
    huge = isinstance(x, numbers.Rational) and max(abs(x.numerator), x.denominator) >= 2**64
    shown = _magnitude(x) if huge else str(x if overflowed else value)
    if positive and not x > 0:
        raise ValueError(f"{name} should be > 0, but got {shown}")
    largest = float(finfo(dtype).max)
    if abs(value) > largest:
        raise ValueError(
            f"{name} should be finite in {dtype} (the compute dtype, |{name}| <= {largest:.4g}), "
            f"but got {shown}"
        )
    if positive and float(np.asarray(value, dtype=dtype)) == 0:
        # A softcap that rounds to 0 in the compute dtype would divide by zero.
        tiny = float(finfo(dtype).smallest_subnormal)
        raise ValueError(
            f"{name} should be > 0 in {dtype} (the compute dtype, {name} >= {tiny:.4g}), "
            f"but got {shown}"
        )
    return value


def check_scale(scale, dtype: np.dtype) -> float | None:
    # None stands for the default 1/sqrt(Dk): it keeps the variance of q·k near 1 for
    # unit-variance q and k.
    if scale is None:
        return None
    return check_real("scale", scale, dtype)


def check_softcap(softcap, dtype: np.dtype) -> float | None:
    if softcap is None:
        return None
    return check_real("softcap", softcap, dtype, positive=True)


def check_count(name: str, x) -> int:
    """A size or a count (heads, widths): an int >= 1, not a bool."""
    if not _is_int(x):
        raise TypeError(f"{name} should be an int, but got {type(x).__name__} {x!r}")
    if x < 1:
        raise ValueError(f"{name} should be at least 1, but got {x}")
    return int(x)


def check_flag(name: str, x) -> bool:
    if not isinstance(x, bool | np.bool_):
        raise TypeError(f"{name} should be a bool, but got {type(x).__name__} {x!r}")
    return bool(x)


def check_attention(
    query,
    key,
    value,
    *,
    mask,
    bias,
    causal,
    window,
    kv_lengths,
    scale,
    softcap,
    return_lse,
    return_weights,
) -> dict:
    """Check one attention call; return its arguments checked and normalised: the fields of
    refattn.call.AttentionCall, which calls this with every option (its defaults are there)."""
    query = check_float_array("query", query, min_ndim=3)
    key = check_float_array("key", key)
    value = check_float_array("value", value)
    check_same_dtype("key", key, query.dtype, "query's")
    check_same_dtype("value", value, query.dtype, "query's")
    check_size("key.ndim", key.ndim, query.ndim, "query's ndim")
    check_size("value.ndim", value.ndim, query.ndim, "query's ndim")
    *batch, Hq, Lq, Dk = query.shape
    batch_shape = tuple(batch)
    if key.shape[:-3] != batch_shape:
        raise ValueError(
            f"key.shape[:-3] should be {batch_shape} (query's batch dims), but got {key.shape[:-3]}"
        )
    if value.shape[:-3] != batch_shape:
        raise ValueError(
            f"value.shape[:-3] should be {batch_shape} (query's batch dims), "
            f"but got {value.shape[:-3]}"
        )
    Hkv, Lk, _ = key.shape[-3:]
    check_size("key.shape[-1]", key.shape[-1], Dk, "query's Dk")
    check_size("value.shape[-3]", value.shape[-3], Hkv, "key's Hkv")
    check_size("value.shape[-2]", value.shape[-2], Lk, "key's Lk")
    if Dk < 1:
        raise ValueError(f"query.shape[-1] (Dk) should be at least 1, but got {Dk}")
    if Hq < 1 or Hkv < 1:
        raise ValueError(f"heads should be at least 1, but got Hq={Hq}, Hkv={Hkv}")
    if Hq % Hkv:
        raise ValueError(
            f"query.shape[-3] (Hq) should be a multiple of key.shape[-3] (Hkv) = {Hkv}, "
            f"but got {Hq}"
        )
    dtype = compute_dtype(query.dtype)
    target = (*batch_shape, Hq, Lq, Lk)
    letters = "(B..., Hq, Lq, Lk)"
    return {
        "query": query,
        "key": key,
        "value": value,
        "mask": check_mask(mask, target, letters),
        "bias": check_bias(bias, target, letters, dtype),
        "causal": check_causal(causal),
        "window": check_window(window),
        "kv_lengths": check_kv_lengths(kv_lengths, batch_shape, Lk),
        "scale": check_scale(scale, dtype),
        "softcap": check_softcap(softcap, dtype),
        "return_lse": check_flag("return_lse", return_lse),
        "return_weights": check_flag("return_weights", return_weights),
    }
