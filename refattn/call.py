"""One attention call: the vocabulary every part of refattn speaks.

    call = AttentionCall.check(query, key, value, causal="bottom_right", return_lse=True)

An AttentionCall holds the arrays as given and every option, checked (refattn._checks) and
normalised: causal is None, "top_left" or "bottom_right"; window a (left, right) pair; kv_lengths
int64 of the batch shape; scale and softcap Python floats (scale None means the default
1/sqrt(Dk), kept as None so that an implementation's own default can be exercised). The sizes
are read off the arrays.

The reference and the native core take their options through it, adapters receive it, the
spec's strategies build it and `refattn bench` times it. Its fields are the one statement of the
options: an option is added here, and every signature follows (`call_signature`), every
adapter's refusal follows (`needs`: the capabilities a call asks for).

Shape letters, as everywhere in refattn:
    B...  batch dims              Hq, Hkv  query heads, key/value heads (Hq a multiple of Hkv)
    Lq    query length            Lk       key/value length
    Dk    query/key head dim      Dv       value head dim
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from refattn import _checks
from refattn.dtypes import compute_dtype

MASKING = ("mask", "bias", "causal", "window", "kv_lengths")  # the options that hide keys


@dataclass(frozen=True, eq=False)
class AttentionCall:
    """A checked call: q, k, v as given, the options normalised (see the module docstring)."""

    query: np.ndarray  # (B..., Hq, Lq, Dk)
    key: np.ndarray  # (B..., Hkv, Lk, Dk)
    value: np.ndarray  # (B..., Hkv, Lk, Dv)
    mask: np.ndarray | None = None  # bool, broadcastable to (B..., Hq, Lq, Lk); True = attend
    bias: np.ndarray | None = None  # float, broadcastable to (B..., Hq, Lq, Lk); -inf hides
    causal: str | None = None  # None, "top_left" or "bottom_right"
    window: tuple[int | None, int | None] | None = None  # (left, right); None = unbounded
    kv_lengths: np.ndarray | None = None  # int64 (B...): keys j >= kv_lengths[b] are padding
    scale: float | None = None  # multiplies q·k; None: 1/sqrt(Dk)
    softcap: float | None = None  # > 0: scores become softcap·tanh(scores/softcap)
    return_lse: bool = False
    return_weights: bool = False

    @classmethod
    def check(cls, query, key, value, **options) -> AttentionCall:
        """Check a call's arguments and return it; TypeError or ValueError naming the argument
        ("key.shape[-1] should be 64 (query's Dk), but got 32") when something is wrong."""
        check_option_names("attention", options)
        return cls(**_checks.check_attention(query, key, value, **{**OPTIONS, **options}))

    def replace(self, **changes) -> AttentionCall:
        """The same call with some arguments changed, checked again."""
        return AttentionCall.check(**{**self.arguments(), **changes})

    def arguments(self) -> dict:
        """query, key, value and every option: AttentionCall.check(**call.arguments()) == call."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def options(self) -> dict:
        """The options given, leaving out those at their defaults: for an attention function
        that takes them as keywords (`fn(call.query, call.key, call.value, **call.options())`)."""
        given = {name: getattr(self, name) for name in OPTIONS}
        return {name: x for name, x in given.items() if x is not None and x is not False}

    # The sizes, read off the arrays.
    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.query.shape[:-3])

    @property
    def Hq(self) -> int:
        return self.query.shape[-3]

    @property
    def Hkv(self) -> int:
        return self.key.shape[-3]

    @property
    def Lq(self) -> int:
        return self.query.shape[-2]

    @property
    def Lk(self) -> int:
        return self.key.shape[-2]

    @property
    def Dk(self) -> int:
        return self.query.shape[-1]

    @property
    def Dv(self) -> int:
        return self.value.shape[-1]

    @property
    def B(self) -> int:
        """The batch dims flattened into one."""
        return math.prod(self.batch_shape)

    @property
    def scores_shape(self) -> tuple[int, ...]:
        return (*self.batch_shape, self.Hq, self.Lq, self.Lk)

    @property
    def dtype(self) -> np.dtype:
        return self.query.dtype

    @property
    def compute_dtype(self) -> np.dtype:
        """float64 for float64 inputs, float32 otherwise (float16 and bfloat16 included)."""
        return compute_dtype(self.query.dtype)

    @property
    def scale_or_default(self) -> float:
        return self.Dk**-0.5 if self.scale is None else self.scale

    def masking(self) -> list[str]:
        """The masking options this call uses, in MASKING order."""
        return [name for name in MASKING if getattr(self, name) is not None]

    def needs(self) -> frozenset[str]:
        """The capabilities (refattn.capabilities) an implementation needs to run this call."""
        needed = {self.dtype.name}
        for name in ("mask", "bias", "window", "kv_lengths", "softcap"):
            if getattr(self, name) is not None:
                needed.add(name)
        if self.causal is not None:
            needed.add(f"causal_{self.causal}")
        if len(self.masking()) > 1:
            needed.add("combined_masks")
        if self.Hq != self.Hkv:
            needed.add("gqa")
        if self.Dv != self.Dk:
            needed.add("dv")
        if self.scale is not None:
            needed.add("scale")
        if self.return_lse:
            needed.add("lse")
        if self.return_weights:
            needed.add("weights")
        if self.Lq == 0 or self.Lk == 0:
            needed.add("empty")
        if self.dtype == np.float64 and any(
            x is not None and float(np.float32(x)) != x for x in (self.scale, self.softcap)
        ):
            needed.add("float64_options")  # an option a 32-bit float cannot carry
        return frozenset(needed)

    def describe(self, function: str = "attention") -> str:
        """attention(query=float32 (2, 4, 8), ..., causal='top_left'): arrays by dtype, shape."""
        given = {"query": self.query, "key": self.key, "value": self.value, **self.options()}
        return f"{function}(" + ", ".join(f"{n}={_show(x)}" for n, x in given.items()) + ")"

    def check_upstream(self, grad_out, grad_lse=None) -> None:
        """TypeError or ValueError unless grad_out (dO) has out's shape (B..., Hq, Lq, Dv) and
        dtype (the query's) and grad_lse (dlse, None or) lse's shape (B..., Hq, Lq) and dtype
        (the compute dtype), both finite: the gradients of a loss with respect to the outputs,
        as a backward pass takes them."""
        out_shape = (*self.batch_shape, self.Hq, self.Lq, self.Dv)
        _check_upstream("grad_out", grad_out, out_shape, self.dtype, "out's")
        if grad_lse is not None:
            _check_upstream("grad_lse", grad_lse, out_shape[:-1], self.compute_dtype, "lse's")

    def returns(self, out, lse=None, weights=None):
        """What an attention function returns for this call: out, or (out, lse), (out, weights)
        or (out, lse, weights), as return_lse and return_weights ask."""
        extras = ([lse] if self.return_lse else []) + ([weights] if self.return_weights else [])
        return (out, *extras) if extras else out


class Result(NamedTuple):
    """What a call computed, with None for the outputs it did not ask for."""

    out: np.ndarray  # (B..., Hq, Lq, Dv)
    lse: np.ndarray | None  # (B..., Hq, Lq)
    weights: np.ndarray | None  # (B..., Hq, Lq, Lk)


class AttentionGradients(NamedTuple):
    """The gradients of a loss with respect to each input of a call (SPEC.md, "Gradients")."""

    query: np.ndarray  # (B..., Hq, Lq, Dk), the query's dtype
    key: np.ndarray  # (B..., Hkv, Lk, Dk)
    value: np.ndarray  # (B..., Hkv, Lk, Dv)
    bias: np.ndarray | None  # the bias's own shape and dtype; None when the call has no bias


# The options and their defaults, read off the fields after query, key and value.
OPTIONS = {f.name: f.default for f in dataclasses.fields(AttentionCall)[3:]}


def check_option_names(who: str, options, *, without=()) -> None:
    """TypeError when `options` holds a name that is not an option of an attention call (or is
    one of `without`, which `who` does not take)."""
    allowed = [name for name in OPTIONS if name not in without]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"{who} got an unexpected option {unknown[0]!r}; the options are {', '.join(allowed)}"
        )


def call_signature(function=None, *, without=()):
    """Give an attention function that takes `(query, key, value, ..., **options)` the signature
    of an attention call: its own positional parameters, every option of AttentionCall (but
    those in `without`) as keyword-only parameters with their defaults, then its own
    keyword-only parameters. help() and inspect then show the
    options, written once, here. Use as @call_signature or @call_signature(without=(...)).
    """

    def decorate(fn):
        own = list(inspect.signature(fn).parameters.values())
        kept = [p for p in own if p.kind is not p.VAR_KEYWORD]
        positional = [p for p in kept if p.kind is not p.KEYWORD_ONLY]
        keyword = [p for p in kept if p.kind is p.KEYWORD_ONLY]
        taken = {p.name for p in kept}
        options = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
            for name, default in OPTIONS.items()
            if name not in without and name not in taken
        ]
        fn.__signature__ = inspect.Signature([*positional, *options, *keyword])
        return fn

    return decorate if function is None else decorate(function)


def _check_upstream(name: str, x, shape: tuple[int, ...], dtype: np.dtype, whose: str) -> None:
    """x is the gradient of an output: that output's dtype and shape, and finite."""
    _checks.check_float_array(name, x)
    _checks.check_same_dtype(name, x, dtype, whose)
    if x.shape != shape:
        raise ValueError(f"{name}.shape should be {shape} ({whose}), but got {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} should be finite, but got {x[where]} at index {where}")


def _show(x) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} {x.shape}"
    return repr(x)
