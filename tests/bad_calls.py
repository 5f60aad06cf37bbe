"""A table of bad attention calls: each should raise a clear error naming the argument.

Shared by the tests of every entry point with the reference's signature, so the reference and
the native core are held to the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def _with(name, error, says, *, args=None, **options):
    return BadCall(name, qkv() if args is None else args, error, says, options)


q, k, v = qkv()
BAD_CALLS = [
    BadCall("query is a list", (q.tolist(), k, v), TypeError, ("query", "numpy.ndarray", "list")),
    BadCall("key is an int array", (q, k.astype(np.int64), v), TypeError, ("key.dtype", "int64")),
    BadCall("value is bool", (q, k, v > 0), TypeError, ("value.dtype", "bool")),
    BadCall(
        "query is complex", (q.astype(np.complex64), k, v), TypeError, ("query.dtype", "complex64")
    ),
    BadCall("query is object", (q.astype(object), k, v), TypeError, ("query.dtype", "object")),
    BadCall(
        "mixed float32 and float64",
        (q, k.astype(np.float64), v),
        TypeError,
        ("key.dtype should be float32", "float64"),
    ),
    BadCall("query of rank 2", (q[0, 0], k, v), ValueError, ("query", "at least 3", "(3, 8)")),
    BadCall("key of another rank", (q, k[0], v), ValueError, ("key.ndim should be 4", "got 3")),
    BadCall("batch dims differ", (q, k[:1], v[:1]), ValueError, ("key.shape[:-3]", "(2,)", "(1,)")),
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
    BadCall("zero kv heads", qkv(hkv=0), ValueError, ("heads should be at least 1", "Hkv=0")),
    BadCall("zero head dim", qkv(dk=0), ValueError, ("Dk", "at least 1", "got 0")),
    _with(
        "mask of floats",
        TypeError,
        ("mask.dtype should be bool", "float32", "bias="),
        mask=np.ones((LQ, LK), dtype=np.float32),
    ),
    _with("mask is a list", TypeError, ("mask", "numpy.ndarray", "list"), mask=[[True] * LK] * LQ),
    _with(
        "mask not broadcastable",
        ValueError,
        ("mask.shape", "(2, 4, 3, 5)", "(3, 4)"),
        mask=np.ones((LQ, LK - 1), dtype=bool),
    ),
    _with(
        "mask larger than the scores",
        ValueError,
        ("mask.shape", "(3, 2, 4, 3, 5)"),
        mask=np.ones((3, B, H, LQ, LK), dtype=bool),
    ),
    _with("bias of ints", TypeError, ("bias.dtype", "int64"), bias=np.zeros((LQ, LK), np.int64)),
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
        bias=np.where(np.arange(LQ * LK).reshape(LQ, LK) == 7, np.nan, 0.0),
    ),
    _with(
        "bias with +inf",
        ValueError,
        ("bias should be finite or -inf", "inf"),
        bias=np.full((LQ, LK), np.inf),
    ),
    _with(
        "causal misspelt",
        ValueError,
        ("causal should be", "'top_left'", "'lower_right'"),
        causal="lower_right",
    ),
    _with("window not a pair", TypeError, ("window should be a pair", "3"), window=3),
    _with("window negative", ValueError, ("window[0] (left)", ">= 0", "-1"), window=(-1, 0)),
    _with("window of floats", TypeError, ("window[1] (right)", "int", "float"), window=(1, 2.5)),
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
        "kv_lengths of floats",
        TypeError,
        ("kv_lengths should hold integers", "float64"),
        kv_lengths=np.array([1.0, 2.0]),
    ),
    _with(
        "kv_lengths of the wrong shape",
        ValueError,
        ("kv_lengths.shape", "(2,)", "(3,)"),
        kv_lengths=np.array([1, 2, 3]),
    ),
    _with("scale NaN", ValueError, ("scale should be finite", "nan"), scale=float("nan")),
    _with("scale inf", ValueError, ("scale should be finite", "inf"), scale=float("inf")),
    _with("scale a string", TypeError, ("scale should be a real number", "str"), scale="0.1"),
    _with("softcap zero", ValueError, ("softcap should be > 0", "0.0"), softcap=0.0),
    _with("softcap negative", ValueError, ("softcap should be > 0", "-5.0"), softcap=-5.0),
    _with("softcap NaN", ValueError, ("softcap should be finite", "nan"), softcap=float("nan")),
]
