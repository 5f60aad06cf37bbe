"""Tables of bad calls, and of odd but legitimate ones, for every public entry point.

BAD_CALLS: each call must raise `error` (TypeError for the wrong kind of thing, ValueError for
the right kind with a wrong value) with a message holding every string in `says`: the
argument's name, what was expected and what came in. `entry` says which entry points it is
made against (see tests/test_bad_calls.py):

    attention       refattn.attention (native) and refattn.reference.attention
    native          refattn.attention only (its extra arguments: num_threads, isa)
    merge_partials  refattn.merge_partials(outs, lses)
    mha             refattn.multi_head_attention(x, context, params=..., ...), run with the
                    reference and with the native core as its attention function
    kv_cache        KVCache.append(key, value) on a cache that already holds one token
    mha_params      MHAParams.init(d_model, num_heads, **options)

LEGIT_CALLS: odd inputs that are legitimate (strided, reversed, read-only, misaligned or
broadcast views, zero-size dims, scale 0 or negative, ...); both attention entry points must
return the right answer: the float64 reference's on contiguous copies, within the tolerance
model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

B, H, LQ, LK, D = 2, 4, 3, 5, 8


def qkv(dtype=np.float32, *, hq=H, hkv=H, lq=LQ, lk=LK, dk=D, dv=D, batch=(B,)):
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((*batch, hq, lq, dk)).astype(dtype),
        rng.standard_normal((*batch, hkv, lk, dk)).astype(dtype),
        rng.standard_normal((*batch, hkv, lk, dv)).astype(dtype),
    )


@dataclass(frozen=True)
class BadCall:
    """A call that must raise `error` with a message matching every string in `says`."""

    name: str
    args: tuple
    error: type
    says: tuple[str, ...]
    options: dict = field(default_factory=dict)
    entry: str = "attention"


def _with(name, error, says, *, args=None, entry="attention", **options):
    return BadCall(name, qkv() if args is None else args, error, says, options, entry)


def _misaligned(x: np.ndarray) -> np.ndarray:
    """x copied into a buffer whose elements start one byte off their natural alignment."""
    raw = np.zeros(x.nbytes + 1, dtype=np.uint8)[1:].view(x.dtype).reshape(x.shape)
    raw[...] = x
    assert not raw.flags.aligned
    return raw


def _read_only(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x.flags.writeable = False
    return x


def _masked(x: np.ndarray) -> np.ma.MaskedArray:
    """x as a masked array whose first element is masked out, and NaN (or True, for bools)
    underneath: what a call that honoured the mask would never see."""
    data = np.array(x)
    data.flat[0] = True if data.dtype == bool else np.nan
    mask = np.zeros(data.shape, dtype=bool)
    mask.flat[0] = True
    return np.ma.masked_array(data, mask=mask)


def _matrix(x) -> np.matrix:
    with warnings.catch_warnings():  # np.matrix warns that it is not recommended: it is the point
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(x)


q, k, v = qkv()
_one = np.ones((LQ, LK))
_nan_bias = np.where(np.arange(LQ * LK).reshape(LQ, LK) == 7, np.nan, 0.0)

# The reference's signature: made against refattn.attention and refattn.reference.attention.
ATTENTION_BAD = [
    # not arrays, or arrays of the wrong dtype
    BadCall("query is a list", (q.tolist(), k, v), TypeError, ("query", "numpy.ndarray", "list")),
    BadCall("key is a tuple", (q, tuple(k), v), TypeError, ("key", "numpy.ndarray", "tuple")),
    BadCall("value is None", (q, k, None), TypeError, ("value", "numpy.ndarray", "NoneType")),
    BadCall("query is a float", (1.0, k, v), TypeError, ("query", "numpy.ndarray", "float")),
    BadCall("key is an int array", (q, k.astype(np.int64), v), TypeError, ("key.dtype", "int64")),
    BadCall("query is uint8", (q.astype(np.uint8), k, v), TypeError, ("query.dtype", "uint8")),
    BadCall("value is bool", (q, k, v > 0), TypeError, ("value.dtype", "bool")),
    BadCall(
        "query is complex", (q.astype(np.complex64), k, v), TypeError, ("query.dtype", "complex64")
    ),
    BadCall(
        "value is complex128",
        (q, k, v.astype(np.complex128)),
        TypeError,
        ("value.dtype", "complex128"),
    ),
    BadCall("query is object", (q.astype(object), k, v), TypeError, ("query.dtype", "object")),
    # ndarray subclasses that would be misread: a masked array's mask is ignored, np.matrix
    # stays 2-D under indexing
    BadCall(
        "query is a masked array",
        (_masked(q), k, v),
        TypeError,
        ("query should be a numpy.ndarray", "mask would be ignored", "numpy.ma.MaskedArray"),
    ),
    BadCall("key is a masked array", (q, _masked(k), v), TypeError, ("key should", "MaskedArray")),
    BadCall(
        "value is a masked array (a masked-out NaN)",
        (q, k, _masked(v)),
        TypeError,
        ("value should be a numpy.ndarray", "numpy.ma.MaskedArray"),
    ),
    BadCall(
        "query is a masked array of ints",
        (np.ma.masked_array(q.astype(int)), k, v),
        TypeError,
        ("query should be a numpy.ndarray", "numpy.ma.MaskedArray"),
    ),
    BadCall("key is a string array", (q, k.astype(str), v), TypeError, ("key.dtype", "<U")),
    BadCall(
        "query is big-endian",
        (q.astype(">f4"), k, v),
        TypeError,
        ("query.dtype should be float16, bfloat16, float32 or float64", ">f4"),
    ),
    BadCall(
        "mixed float32 and float64",
        (q, k.astype(np.float64), v),
        TypeError,
        ("key.dtype should be float32", "float64"),
    ),
    BadCall(
        "mixed float64 and float32",
        (q.astype(np.float64), k.astype(np.float64), v),
        TypeError,
        ("value.dtype should be float64", "float32"),
    ),
    BadCall(
        "mixed float16 and float32",
        (q.astype(np.float16), k.astype(np.float16), v),
        TypeError,
        ("value.dtype should be float16", "float32"),
    ),
    # wrong ranks
    BadCall("query of rank 2", (q[0, 0], k, v), ValueError, ("query", "at least 3", "(3, 8)")),
    BadCall(
        "query of rank 0",
        (np.zeros((), np.float32), k, v),
        ValueError,
        ("query", "at least 3", "()"),
    ),
    BadCall("key of another rank", (q, k[0], v), ValueError, ("key.ndim should be 4", "got 3")),
    BadCall(
        "value of a higher rank", (q, k, v[None]), ValueError, ("value.ndim should be 4", "got 5")
    ),
    # mismatched sizes
    BadCall("batch dims differ", (q, k[:1], v[:1]), ValueError, ("key.shape[:-3]", "(2,)", "(1,)")),
    BadCall(
        "value batch dims differ",
        (q, k, v[:1]),
        ValueError,
        ("value.shape[:-3] should be (2,)", "(1,)"),
    ),
    BadCall(
        "head dims differ",
        (q, k[..., :4], v),
        ValueError,
        ("key.shape[-1] should be 8", "Dk", "got 4"),
    ),
    BadCall(
        "value length differs",
        (q, k, v[..., :4, :]),
        ValueError,
        ("value.shape[-2] should be 5", "got 4"),
    ),
    BadCall(
        "value heads differ", (q, k, v[:, :2]), ValueError, ("value.shape[-3] should be 4", "got 2")
    ),
    BadCall(
        "Hq not a multiple of Hkv",
        qkv(hq=4, hkv=3),
        ValueError,
        ("query.shape[-3] (Hq) should be a multiple", "3", "got 4"),
    ),
    BadCall(
        "Hq smaller than Hkv",
        qkv(hq=2, hkv=4),
        ValueError,
        ("query.shape[-3] (Hq) should be a multiple", "4", "got 2"),
    ),
    # zero-size dims that leave nothing to compute with
    BadCall("zero kv heads", qkv(hkv=0), ValueError, ("heads should be at least 1", "Hkv=0")),
    BadCall("zero query heads", qkv(hq=0), ValueError, ("heads should be at least 1", "Hq=0")),
    BadCall("zero head dim", qkv(dk=0), ValueError, ("Dk", "at least 1", "got 0")),
    # masks
    _with(
        "mask of floats",
        TypeError,
        ("mask.dtype should be bool", "float32", "bias="),
        mask=np.ones((LQ, LK), dtype=np.float32),
    ),
    _with(
        "mask of int8 0/1",
        TypeError,
        ("mask.dtype should be bool", "int8"),
        mask=np.ones((LQ, LK), dtype=np.int8),
    ),
    _with("mask is a list", TypeError, ("mask", "numpy.ndarray", "list"), mask=[[True] * LK] * LQ),
    _with("mask is a Python bool", TypeError, ("mask", "numpy.ndarray", "bool"), mask=True),
    _with(
        "mask is a masked array",
        TypeError,
        ("mask should be a numpy.ndarray of bool", "mask would be ignored", "numpy.ma.MaskedArray"),
        mask=_masked(np.ones((LQ, LK), dtype=bool)),
    ),
    _with(
        "mask is a np.matrix",
        TypeError,
        ("mask should be a numpy.ndarray of bool", "np.asarray", "numpy.matrix"),
        mask=_matrix(np.ones((LQ, LK), dtype=bool)),
    ),
    _with(
        "mask not broadcastable",
        ValueError,
        ("mask.shape", "(2, 4, 3, 5)", "(3, 4)"),
        mask=np.ones((LQ, LK - 1), dtype=bool),
    ),
    _with(
        "mask over queries and keys swapped",
        ValueError,
        ("mask.shape", "(5, 3)"),
        mask=np.ones((LK, LQ), dtype=bool),
    ),
    _with(
        "mask larger than the scores",
        ValueError,
        ("mask.shape", "(3, 2, 4, 3, 5)"),
        mask=np.ones((3, B, H, LQ, LK), dtype=bool),
    ),
    # biases
    _with("bias of ints", TypeError, ("bias.dtype", "int64"), bias=np.zeros((LQ, LK), np.int64)),
    _with("bias of bools", TypeError, ("bias.dtype", "bool"), bias=np.zeros((LQ, LK), bool)),
    _with(
        "bias complex", TypeError, ("bias.dtype", "complex128"), bias=np.zeros((LQ, LK), complex)
    ),
    _with("bias is a float", TypeError, ("bias", "numpy.ndarray", "float"), bias=0.5),
    _with("bias is a list", TypeError, ("bias", "numpy.ndarray", "list"), bias=_one.tolist()),
    _with(
        "bias is a masked array",
        TypeError,
        ("bias should be a numpy.ndarray", "mask would be ignored", "numpy.ma.MaskedArray"),
        bias=_masked(_one),
    ),
    _with(
        "bias is a np.matrix",
        TypeError,
        ("bias should be a numpy.ndarray", "np.asarray", "numpy.matrix"),
        bias=_matrix(_one),
    ),
    _with(
        "bias not broadcastable",
        ValueError,
        ("bias.shape", "(5, 3)"),
        bias=np.zeros((LK, LQ), np.float32),
    ),
    _with(
        "bias with NaN",
        ValueError,
        ("bias should be finite or -inf", "nan", "(1, 2)"),
        bias=_nan_bias,
    ),
    _with(
        "bias with NaN, float32",
        ValueError,
        ("bias should be finite or -inf", "nan", "(1, 2)"),
        bias=_nan_bias.astype(np.float32),
    ),
    _with(
        "bias with +inf",
        ValueError,
        ("bias should be finite or -inf", "inf"),
        bias=np.full((LQ, LK), np.inf),
    ),
    # broadcast (stride-0) biases are checked on the values they hold: the index is the
    # view's first bad element, 0 along the broadcast axes
    _with(
        "bias broadcast over batch, heads and queries with NaN",
        ValueError,
        ("bias should be finite or -inf", "nan", "at index (0, 0, 0, 3)"),
        bias=np.broadcast_to(np.where(np.arange(LK) == 3, np.nan, 0.0), (B, H, LQ, LK)),
    ),
    _with(
        "bias broadcast over the keys with +inf",
        ValueError,
        ("bias should be finite or -inf", "inf", "at index (2, 0)"),
        bias=np.broadcast_to(np.array([[0.0], [1.0], [np.inf]]), (LQ, LK)),
    ),
    _with(
        "broadcast float64 bias that overflows float32",
        ValueError,
        ("bias should be finite in float32", "-1e+300", "at index (1, 0, 4)"),
        bias=np.broadcast_to(
            np.where(np.arange(H * LK).reshape(H, 1, LK) == LK + 4, -1e300, 0.0), (H, LQ, LK)
        ),
    ),
    _with(
        "float64 bias that overflows float32",
        ValueError,
        ("bias should be finite in float32 (the compute dtype", "1e+300", "(0, 0)"),
        bias=np.full((LQ, LK), 1e300),
    ),
    _with(
        "float64 bias that overflows float32 to -inf",
        ValueError,
        ("bias should be finite in float32", "-1e+39", "(2, 4)"),
        bias=np.where(_one.cumsum().reshape(LQ, LK) == LQ * LK, -1e39, 0.0),
    ),
    # causal
    _with(
        "causal misspelt",
        ValueError,
        ("causal should be", "'top_left'", "'lower_right'"),
        causal="lower_right",
    ),
    _with("causal is 1", ValueError, ("causal should be", "but got 1"), causal=1),
    # windows
    _with("window not a pair", TypeError, ("window should be a pair", "3"), window=3),
    _with("window of three", TypeError, ("window should be a pair", "(1, 2, 3)"), window=(1, 2, 3)),
    _with("window negative", ValueError, ("window[0] (left)", ">= 0", "-1"), window=(-1, 0)),
    _with("window right negative", ValueError, ("window[1] (right)", ">= 0", "-4"), window=(0, -4)),
    _with("window of floats", TypeError, ("window[1] (right)", "int", "float"), window=(1, 2.5)),
    _with("window of bools", TypeError, ("window[0] (left)", "int", "bool"), window=(True, 1)),
    # kv_lengths
    _with(
        "kv_lengths negative",
        ValueError,
        ("kv_lengths should be in [0, Lk=5]", "-1"),
        kv_lengths=np.array([2, -1]),
    ),
    _with(
        "kv_lengths past Lk",
        ValueError,
        ("kv_lengths should be in [0, Lk=5]", "6"),
        kv_lengths=np.array([6, 1]),
    ),
    _with(
        "kv_lengths past int64",
        ValueError,
        ("kv_lengths should be in [0, Lk=5]", "9223372036854775813"),
        kv_lengths=np.uint64(2**63 + 5),
    ),
    _with(
        "kv_lengths too big for any integer dtype",
        TypeError,
        ("kv_lengths should hold integers", "object"),
        kv_lengths=2**70,
    ),
    _with(
        "kv_lengths of floats",
        TypeError,
        ("kv_lengths should hold integers", "float64"),
        kv_lengths=np.array([1.0, 2.0]),
    ),
    _with(
        "kv_lengths of bools",
        TypeError,
        ("kv_lengths should hold integers", "bool"),
        kv_lengths=np.array([True, False]),
    ),
    _with(
        "kv_lengths a masked array",
        TypeError,
        ("kv_lengths should be ints or a numpy.ndarray", "numpy.ma.MaskedArray"),
        kv_lengths=np.ma.masked_array([LK, 2], mask=[False, True]),
    ),
    _with(
        "kv_lengths of the wrong shape",
        ValueError,
        ("kv_lengths.shape", "(2,)", "(3,)"),
        kv_lengths=np.array([1, 2, 3]),
    ),
    # scale
    _with("scale NaN", ValueError, ("scale should be finite", "nan"), scale=float("nan")),
    _with("scale inf", ValueError, ("scale should be finite", "inf"), scale=float("inf")),
    _with("scale -inf", ValueError, ("scale should be finite", "-inf"), scale=-np.inf),
    _with(
        "scale that overflows float32",
        ValueError,
        ("scale should be finite in float32 (the compute dtype", "1e+300"),
        scale=1e300,
    ),
    # numbers beyond float64: float() raises OverflowError; the message shows their size
    _with(
        "scale an int beyond float64",
        ValueError,
        ("scale should be finite in float32 (the compute dtype", "but got 1e+400"),
        scale=10**400,
    ),
    _with(
        "scale a Fraction beyond float64",
        ValueError,
        ("scale should be finite in float32 (the compute dtype", "but got 3.333e+399"),
        scale=Fraction(10**400, 3),
    ),
    _with(
        "scale an int of more digits than str() shows",
        ValueError,
        ("scale should be finite in float32", "but got -1e+5000"),
        scale=-(10**5000),
    ),
    *(
        [
            _with(
                "scale a long double beyond float64",
                ValueError,
                ("scale should be finite in float32", "but got 1e+400"),
                scale=np.longdouble("1e400"),
            )
        ]
        if np.isfinite(np.longdouble("1e400"))  # x86's 80-bit long double; elsewhere it is inf
        else []
    ),
    _with("scale a string", TypeError, ("scale should be a real number", "str"), scale="0.1"),
    _with("scale complex", TypeError, ("scale should be a real number", "complex"), scale=1j),
    _with("scale a bool", TypeError, ("scale should be a real number", "bool"), scale=True),
    _with(
        "scale an array", TypeError, ("scale should be a real number", "ndarray"), scale=np.ones(1)
    ),
    # softcap
    _with("softcap zero", ValueError, ("softcap should be > 0", "0.0"), softcap=0.0),
    _with("softcap negative", ValueError, ("softcap should be > 0", "-5.0"), softcap=-5.0),
    _with("softcap NaN", ValueError, ("softcap should be finite", "nan"), softcap=float("nan")),
    _with("softcap inf", ValueError, ("softcap should be finite", "inf"), softcap=np.inf),
    _with(
        "softcap that rounds to 0 in float32",
        ValueError,
        ("softcap should be > 0 in float32 (the compute dtype", "1e-300"),
        softcap=1e-300,
    ),
    _with(
        "softcap that overflows float32",
        ValueError,
        ("softcap should be finite in float32", "1e+300"),
        softcap=1e300,
    ),
    _with("softcap a string", TypeError, ("softcap should be a real number", "str"), softcap="30"),
    _with(
        "softcap an int beyond float64",
        ValueError,
        ("softcap should be finite in float32 (the compute dtype", "but got 1e+400"),
        softcap=10**400,
    ),
    _with(
        "softcap a negative Fraction beyond float64",
        ValueError,
        ("softcap should be > 0", "but got -1e+400"),
        softcap=Fraction(-(10**400)),
    ),
    _with(
        "softcap a Fraction that rounds to 0",
        ValueError,
        ("softcap should be > 0 in float32 (the compute dtype", "but got 1e-400"),
        softcap=Fraction(1, 10**400),
    ),
    # flags
    _with(
        "return_lse a string", TypeError, ("return_lse should be a bool", "str"), return_lse="no"
    ),
    _with(
        "return_weights 1", TypeError, ("return_weights should be a bool", "int"), return_weights=1
    ),
]

# The native core's own arguments.
NATIVE_BAD = [
    _with(
        "num_threads 0",
        ValueError,
        ("num_threads should be from 1 to 1024", "0"),
        entry="native",
        num_threads=0,
    ),
    _with(
        "num_threads too many",
        ValueError,
        ("num_threads should be from 1 to 1024", "100000"),
        entry="native",
        num_threads=100000,
    ),
    _with(
        "num_threads a float",
        TypeError,
        ("num_threads should be an int or None", "float"),
        entry="native",
        num_threads=1.5,
    ),
    _with(
        "num_threads a bool",
        TypeError,
        ("num_threads should be an int or None", "bool"),
        entry="native",
        num_threads=True,
    ),
    _with(
        "isa unknown", ValueError, ("isa should be one of", "'sse2'"), entry="native", isa="sse2"
    ),
    _with("isa not a string", ValueError, ("isa should be one of", "2"), entry="native", isa=2),
]

_out, _lse = np.zeros((2, 3, 4)), np.zeros((2, 3))


def _merge(name, outs, lses, error, says):
    return BadCall(name, (outs, lses), error, says, entry="merge_partials")


MERGE_BAD = [
    _merge("no chunks", [], [], ValueError, ("outs should hold at least one chunk", "none")),
    _merge(
        "fewer lses than outs",
        [_out, _out],
        [_lse],
        ValueError,
        ("lses should have one entry per chunk (2)", "got 1"),
    ),
    _merge(
        "outs is an array",
        np.stack([_out]),
        [_lse],
        TypeError,
        ("outs should be a sequence of arrays", "ndarray"),
    ),
    _merge("lses is None", [_out], None, TypeError, ("lses should be a sequence", "NoneType")),
    _merge("outs is a string", "out", [_lse], TypeError, ("outs should be a sequence", "str")),
    _merge(
        "a chunk is a list",
        [_out.tolist()],
        [_lse],
        TypeError,
        ("outs[0] should be a numpy.ndarray", "list"),
    ),
    _merge(
        "a chunk is a masked array",
        [_out, _masked(_out)],
        [_lse, _lse],
        TypeError,
        ("outs[1] should be a numpy.ndarray", "numpy.ma.MaskedArray"),
    ),
    _merge(
        "an lse is a masked array",
        [_out],
        [_masked(_lse)],
        TypeError,
        ("lses[0] should be a numpy.ndarray", "numpy.ma.MaskedArray"),
    ),
    _merge(
        "a chunk is a np.matrix",
        [_matrix(_out[0])],
        [_lse[0]],
        TypeError,
        ("outs[0] should be a numpy.ndarray", "numpy.matrix"),
    ),
    _merge(
        "a chunk of ints",
        [_out, _out.astype(int)],
        [_lse, _lse],
        TypeError,
        ("outs[1].dtype", "int64"),
    ),
    _merge(
        "lse complex",
        [_out],
        [_lse.astype(complex)],
        TypeError,
        ("lses[0].dtype", "complex128"),
    ),
    _merge(
        "mixed float32 and float64 chunks",
        [_out, _out.astype(np.float32)],
        [_lse, _lse],
        TypeError,
        ("outs[1].dtype should be float64 (outs[0]'s)", "float32"),
    ),
    _merge(
        "mixed lse dtypes",
        [_out, _out],
        [_lse, _lse.astype(np.float32)],
        TypeError,
        ("lses[1].dtype should be float64 (lses[0]'s)", "float32"),
    ),
    _merge(
        "chunks of different shapes",
        [_out, _out[:, :2]],
        [_lse, _lse[:, :2]],
        ValueError,
        ("outs[1].shape should be (2, 3, 4)", "(2, 2, 4)"),
    ),
    _merge(
        "lse of the wrong shape",
        [_out],
        [_lse[:, :2]],
        ValueError,
        ("lses[0].shape should be (2, 3)", "(2, 2)"),
    ),
    _merge(
        "out of rank 1",
        [_out[0, 0]],
        [_lse[0, 0]],
        ValueError,
        ("outs[0] should have at least 2 dimensions", "(4,)"),
    ),
]


def mha_layer(dtype=np.float64):
    """x (2, 6, 16) and the parameters of a layer of 4 query heads over 2 kv heads of 4."""
    from refattn import MHAParams

    params = MHAParams.init(16, 4, num_kv_heads=2, seed=3, dtype=dtype)
    x = np.random.default_rng(1).standard_normal((2, 6, 16)).astype(dtype)
    return x, params


def _mha(name, error, says, *, x=None, context=None, **options):
    from refattn import KVCache

    default_x, params = mha_layer()
    options = {"params": params, "num_heads": 4, "num_kv_heads": 2, **options}
    if options.get("kv_cache") == "cache":
        options["kv_cache"] = KVCache()
    args = (default_x if x is None else x, context)
    return BadCall(name, args, error, says, options, entry="mha")


def _params(**changes):
    from dataclasses import replace

    return replace(mha_layer()[1], **changes)


_x, _p = mha_layer()
# 6 query heads over 4 kv heads of 4, every width consistent: only the head counts disagree
_rng = np.random.default_rng(8)
_six_over_four = type(_p)(
    w_q=_rng.standard_normal((16, 24)),
    w_k=_rng.standard_normal((16, 16)),
    w_v=_rng.standard_normal((16, 16)),
    w_o=_rng.standard_normal((24, 16)),
)
MHA_BAD = [
    _mha("x is a list", TypeError, ("x should be a numpy.ndarray", "list"), x=_x.tolist()),
    _mha("x of ints", TypeError, ("x.dtype", "int64"), x=_x.astype(int)),
    _mha(
        "x is a masked array",
        TypeError,
        ("x should be a numpy.ndarray", "numpy.ma.MaskedArray"),
        x=_masked(_x),
    ),
    _mha(
        "x is a np.matrix", TypeError, ("x should be a numpy.ndarray", "matrix"), x=_matrix(_x[0])
    ),
    _mha(
        "context is a masked array",
        TypeError,
        ("context should be a numpy.ndarray", "numpy.ma.MaskedArray"),
        context=_masked(_x),
    ),
    _mha("x of rank 1", ValueError, ("x should have at least 2 dimensions", "(16,)"), x=_x[0, 0]),
    _mha(
        "x too narrow",
        ValueError,
        ("params.w_q.shape[0] should be 8 (x's Dm)", "got 16"),
        x=_x[..., :8],
    ),
    _mha(
        "context of another dtype",
        TypeError,
        ("context.dtype should be float64 (x's)", "float32"),
        context=_x.astype(np.float32),
    ),
    _mha(
        "context batch differs",
        ValueError,
        ("context.shape[:-2] should be (2,)", "(1,)"),
        context=_x[:1],
    ),
    _mha(
        "params not MHAParams",
        TypeError,
        ("params should be a refattn.MHAParams", "dict"),
        params={"w_q": _p.w_q},
    ),
    _mha(
        "params of another dtype",
        TypeError,
        ("params.w_q.dtype should be float64 (x's)", "float32"),
        params=_params(w_q=_p.w_q.astype(np.float32)),
    ),
    _mha(
        "a weight of rank 1",
        ValueError,
        ("params.w_k.ndim should be 2", "(8,)"),
        params=_params(w_k=_p.w_k[0]),
    ),
    _mha(
        "a bias of the wrong length",
        ValueError,
        ("params.b_v.shape[0] should be 8 (params.w_v's)", "got 7"),
        params=_params(b_v=_p.b_v[:7]),
    ),
    _mha(
        "a weight that is a masked array",
        TypeError,
        ("params.w_v should be a numpy.ndarray", "numpy.ma.MaskedArray"),
        params=_params(w_v=_masked(_p.w_v)),
    ),
    _mha(
        "a weight that is a np.matrix",
        TypeError,
        ("params.w_q should be a numpy.ndarray", "numpy.matrix"),
        params=_params(w_q=_matrix(_p.w_q)),
    ),
    _mha(
        "a weight that is a list",
        TypeError,
        ("params.w_o should be a numpy.ndarray", "list"),
        params=_params(w_o=_p.w_o.tolist()),
    ),
    _mha("num_heads 0", ValueError, ("num_heads should be at least 1", "0"), num_heads=0),
    _mha("num_heads a float", TypeError, ("num_heads should be an int", "float"), num_heads=4.0),
    _mha("num_heads a bool", TypeError, ("num_heads should be an int", "bool"), num_heads=True),
    _mha(
        "num_kv_heads a float",
        TypeError,
        ("num_kv_heads should be an int", "float"),
        num_kv_heads=2.0,
    ),
    _mha(
        "num_heads not a multiple of num_kv_heads (widths that fit)",
        ValueError,
        ("num_heads should be a multiple of num_kv_heads = 4", "but got 6"),
        params=_six_over_four,
        num_heads=6,
        num_kv_heads=4,
    ),
    _mha(
        "num_kv_heads more than num_heads",
        ValueError,
        ("num_heads should be a multiple of num_kv_heads = 8", "but got 4"),
        num_kv_heads=8,
    ),
    _mha(
        "num_kv_heads negative",
        ValueError,
        ("num_kv_heads should be at least 1", "-2"),
        num_kv_heads=-2,
    ),
    _mha(
        "num_heads not dividing the width",
        ValueError,
        ("params.w_q.shape[1] (16) should be a multiple of num_heads = 6",),
        num_heads=6,
    ),
    _mha(
        "kv_cache not a KVCache",
        TypeError,
        ("kv_cache should be a refattn.KVCache or None", "dict"),
        kv_cache={},
    ),
    _mha(
        "kv_cache with a context",
        ValueError,
        ("kv_cache is for self-attention", "context should be None"),
        context=_x,
        kv_cache="cache",
    ),
    _mha(
        "kv_cache with top-left causal",
        ValueError,
        ("causal should be True or 'bottom_right' with a kv_cache", "'top_left'"),
        causal="top_left",
        kv_cache="cache",
    ),
    _mha(
        "kv_cache with causal 1",
        ValueError,
        ("causal should be None, True, 'top_left' or 'bottom_right'", "but got 1"),
        causal=1,
        kv_cache="cache",
    ),
    _mha(
        "kv_cache with a bad mask",
        ValueError,
        ("mask.shape should be broadcastable", "(2, 4, 6, 6)", "(6, 5)"),
        mask=np.ones((6, 5), bool),
        kv_cache="cache",
    ),
    _mha(
        "mask over the wrong heads",
        ValueError,
        ("mask.shape should be broadcastable", "(2, 4, 6, 6)", "(3, 1, 1)"),
        mask=np.ones((3, 1, 1), bool),
    ),
    _mha(
        "bias with NaN",
        ValueError,
        ("bias should be finite or -inf", "nan"),
        bias=np.full((6, 6), np.nan),
    ),
    _mha("window negative", ValueError, ("window[1] (right)", "-1"), window=(2, -1)),
    _mha(
        "kv_lengths past Lk",
        ValueError,
        ("kv_lengths should be in [0, Lk=6]", "7"),
        kv_lengths=np.array([7, 2]),
    ),
    _mha("scale NaN", ValueError, ("scale should be finite", "nan"), scale=np.nan),
    _mha("softcap 0", ValueError, ("softcap should be > 0", "0"), softcap=0),
    _mha(
        "attention not callable",
        TypeError,
        ("attention should be a function", "str"),
        attention="native",
    ),
]


def _append(name, key, value, error, says):
    return BadCall(name, (key, value), error, says, entry="kv_cache")


_key, _value = np.ones((1, 2, 1, 4)), np.ones((1, 2, 1, 3))  # what the cache already holds
KV_CACHE_BAD = [
    _append("key is a list", _key.tolist(), _value, TypeError, ("key should be a numpy", "list")),
    _append("value of ints", _key, _value.astype(int), TypeError, ("value.dtype", "int64")),
    _append(
        "key is a masked array",
        _masked(_key),
        _value,
        TypeError,
        ("key should be a numpy.ndarray", "numpy.ma.MaskedArray"),
    ),
    _append(
        "value is a masked array",
        _key,
        _masked(_value),
        TypeError,
        ("value should be a numpy.ndarray", "numpy.ma.MaskedArray"),
    ),
    _append(
        "key of rank 2", _key[0, 0], _value, ValueError, ("key should have at least 3", "(1, 4)")
    ),
    _append(
        "value of another dtype than key",
        _key,
        _value.astype(np.float32),
        TypeError,
        ("value.dtype should be float64 (key's)", "float32"),
    ),
    _append(
        "key of another dtype than the cache",
        _key.astype(np.float32),
        _value.astype(np.float32),
        TypeError,
        ("key.dtype should be float64 (the cache's)", "float32"),
    ),
    _append(
        "value length differs from key's",
        _key,
        np.ones((1, 2, 2, 3)),
        ValueError,
        ("value.shape[:-1] should be (1, 2, 1) (key's)", "(1, 2, 2)"),
    ),
    _append(
        "other heads than the cache",
        np.ones((1, 3, 1, 4)),
        np.ones((1, 3, 1, 3)),
        ValueError,
        ("key.shape should be (1, 2, 'L', 4) (the cache's)", "(1, 3, 1, 4)"),
    ),
    _append(
        "other head dim than the cache",
        _key,
        np.ones((1, 2, 1, 5)),
        ValueError,
        ("value.shape should be (1, 2, 'L', 3) (the cache's)", "(1, 2, 1, 5)"),
    ),
    _append(
        "other batch than the cache",
        np.ones((2, 2, 1, 4)),
        np.ones((2, 2, 1, 3)),
        ValueError,
        ("key.shape should be (1, 2, 'L', 4) (the cache's)", "(2, 2, 1, 4)"),
    ),
]


def _init(name, args, error, says, **options):
    return BadCall(name, args, error, says, options, entry="mha_params")


MHA_PARAMS_BAD = [
    _init("num_heads 0", (16, 0), ValueError, ("num_heads should be at least 1", "got 0")),
    _init("num_heads a float", (16, 2.5), TypeError, ("num_heads should be an int", "float 2.5")),
    _init("num_heads a bool", (16, True), TypeError, ("num_heads should be an int", "bool")),
    _init("d_model a float", (16.0, 4), TypeError, ("d_model should be an int", "float 16.0")),
    _init("d_model negative", (-16, 4), ValueError, ("d_model should be at least 1", "-16")),
    _init(
        "num_heads more than d_model, no head_dim",
        (8, 16),
        ValueError,
        ("num_heads should be at most d_model = 8 when head_dim is not given", "got 16"),
    ),
    _init(
        "num_heads not a multiple of num_kv_heads",
        (16, 4),
        ValueError,
        ("num_heads should be a multiple of num_kv_heads = 3", "but got 4"),
        num_kv_heads=3,
    ),
    _init(
        "num_kv_heads 0",
        (16, 4),
        ValueError,
        ("num_kv_heads should be at least 1", "got 0"),
        num_kv_heads=0,
    ),
    _init(
        "num_kv_heads a bool",
        (16, 4),
        TypeError,
        ("num_kv_heads should be an int", "bool"),
        num_kv_heads=True,
    ),
    _init(
        "head_dim a float", (16, 4), TypeError, ("head_dim should be an int", "float"), head_dim=4.0
    ),
    _init(
        "value_head_dim negative",
        (16, 4),
        ValueError,
        ("value_head_dim should be at least 1", "-1"),
        value_head_dim=-1,
    ),
    _init(
        "d_context a numpy float",
        (16, 4),
        TypeError,
        ("d_context should be an int", "float64"),
        d_context=np.float64(8),
    ),
    _init("d_out 0", (16, 4), ValueError, ("d_out should be at least 1", "got 0"), d_out=0),
    _init("bias 1", (16, 4), TypeError, ("bias should be a bool", "int 1"), bias=1),
    _init(
        "dtype int32",
        (16, 4),
        TypeError,
        ("dtype should be float16, bfloat16, float32 or float64", "int32"),
        dtype=np.int32,
    ),
    _init(
        "dtype not a dtype",
        (16, 4),
        TypeError,
        ("dtype should be float16, bfloat16, float32 or float64", "'nope'"),
        dtype="nope",
    ),
    _init(
        "d_model beyond the address space",
        (2**64, 4),
        ValueError,
        (
            "params.w_q (d_model, num_heads · head_dim) should hold at most",
            "(1.845e+19, 1.845e+19)",
        ),
    ),
    _init(
        "head_dim beyond the address space",
        (16, 4),
        ValueError,
        ("params.w_q (d_model, num_heads · head_dim) should hold at most", "(16, 1.845e+19)"),
        head_dim=2**62,
    ),
    _init(
        "d_out beyond the address space",
        (16, 4),
        ValueError,
        ("params.w_o (num_heads · value_head_dim, d_out) should hold at most", "(16, 1e+5000)"),
        d_out=10**5000,
    ),
    _init("seed negative", (16, 4), ValueError, ("seed should be an int >= 0", "-1"), seed=-1),
    _init("seed a float", (16, 4), TypeError, ("seed should be an int >= 0", "float"), seed=1.5),
]

BAD_CALLS = ATTENTION_BAD + NATIVE_BAD + MERGE_BAD + MHA_BAD + KV_CACHE_BAD + MHA_PARAMS_BAD


@dataclass(frozen=True)
class LegitCall:
    """Odd but legitimate input: `args` and `options` as given, and `plain`, the same call on
    contiguous, writable, aligned copies (what the answer is computed from)."""

    name: str
    args: tuple
    options: dict = field(default_factory=dict)
    plain: tuple | None = None  # None: np.array copies of args


def _legit(name, args, plain=None, **options):
    return LegitCall(name, args, options, plain)


def _legit_calls() -> list[LegitCall]:
    q, k, v = qkv()
    q64, k64, v64 = qkv(np.float64)
    heads_last = np.ascontiguousarray(np.moveaxis(q, -3, -2))  # (B, L, H, D) in memory
    return [
        _legit("transposed query view", (np.moveaxis(heads_last, -2, -3), k, v)),
        _legit("keys and values reversed (negative stride)", (q, k[..., ::-1, :], v[..., ::-1, :])),
        _legit("head dim reversed in q and k", (q[..., ::-1], k[..., ::-1], v)),
        _legit("every other element", tuple(x[..., ::2] for x in qkv(dk=2 * D, dv=2 * D))),
        _legit("batch reversed, float64", (q64[::-1], k64[::-1], v64[::-1])),
        _legit("read-only arrays", tuple(_read_only(x) for x in (q, k, v))),
        _legit("misaligned float32", tuple(_misaligned(x) for x in (q, k, v))),
        _legit("misaligned float64", tuple(_misaligned(x) for x in (q64, k64, v64))),
        _legit("misaligned bias", (q, k, v), bias=_misaligned(np.ones((LQ, LK)))),
        _legit(
            "query broadcast over queries (stride 0)", (np.broadcast_to(q[:, :, :1], q.shape), k, v)
        ),
        _legit(
            "value broadcast over its head dim (stride 0)",
            (q, k, np.broadcast_to(v[..., :1], v.shape)),
        ),
        _legit("float16", tuple(x.astype(np.float16) for x in (q, k, v))),
        _legit("no queries", qkv(lq=0)),
        _legit("no keys", qkv(lk=0)),
        _legit("no keys, float64 with lse", qkv(np.float64, lk=0)),
        _legit("empty batch", qkv(batch=(0,))),
        _legit("no batch dims", qkv(batch=())),
        _legit("two batch dims, one empty", qkv(batch=(3, 0))),
        _legit("value head dim 0", qkv(dv=0)),
        _legit("GQA, one kv head", qkv(hkv=1)),
        _legit("scale 0", (q, k, v), scale=0.0),
        _legit("scale negative", (q, k, v), scale=-2.0),
        _legit("scale an int", (q, k, v), scale=3),
        _legit("scale a numpy float32", (q, k, v), scale=np.float32(0.25)),
        _legit("scale subnormal in float32", (q, k, v), scale=1e-42),
        _legit("softcap tiny", (q, k, v), softcap=1e-30),
        _legit("kv_lengths a list", (q, k, v), kv_lengths=[0, LK]),
        _legit("kv_lengths a Python int", (q, k, v), kv_lengths=2),
        _legit("kv_lengths uint8", (q, k, v), kv_lengths=np.array([1, 3], np.uint8)),
        _legit("window of numpy ints", (q, k, v), window=(np.int64(1), np.uint8(0))),
        _legit("window huge", (q, k, v), window=(2**70, 2**64)),
        _legit("window (0, 0)", (q, k, v), window=(0, 0)),
        _legit("causal a numpy bool", (q, k, v), causal=np.bool_(True)),
        _legit("mask 0-d", (q, k, v), mask=np.array(False)),
        _legit(
            "mask reversed, read-only", (q, k, v), mask=_read_only(np.eye(LQ, LK, dtype=bool))[::-1]
        ),
        _legit(
            "mask broadcast (stride 0)",
            (q, k, v),
            mask=np.broadcast_to(np.eye(LQ, LK, dtype=bool), (B, 1, LQ, LK)),
        ),
        _legit("bias -inf everywhere", (q, k, v), bias=np.full(LK, -np.inf)),
        _legit(
            "bias float16 with float64 input", (q64, k64, v64), bias=np.ones((LQ, LK), np.float16)
        ),
        _legit("bias float64 near float32's range", (q, k, v), bias=np.full((LQ, LK), -3e38)),
        _legit(
            "float64 bias broadcast over batch, heads and queries (stride 0), cast to float32",
            (q, k, v),
            bias=np.broadcast_to(np.linspace(-1, 1, LK), (B, H, LQ, LK)),
        ),
        _legit(
            "float64 bias broadcast over the keys (stride 0), cast to float32",
            (q, k, v),
            bias=np.broadcast_to(np.array([[0.5], [-1.0], [-np.inf]]), (LQ, LK)),
        ),
    ]


LEGIT_CALLS = _legit_calls()
