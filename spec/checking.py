"""What the properties share: calling an implementation, and failing with a reproduction."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from refattn.spec.cases import Case
from refattn.spec.tolerance import mismatch


class Result(NamedTuple):
    out: np.ndarray
    lse: np.ndarray | None
    weights: np.ndarray | None


def run(impl, query, key, value, options, *, lse=False, weights=False) -> Result:
    """Call `impl` and unpack what it returns into a Result (None for what was not asked)."""
    returned = impl(query, key, value, **options, return_lse=lse, return_weights=weights)
    if not (lse or weights):
        return Result(np.asarray(returned), None, None)
    returned = list(returned)
    out = np.asarray(returned.pop(0))
    got_lse = np.asarray(returned.pop(0)) if lse else None
    got_weights = np.asarray(returned.pop(0)) if weights else None
    return Result(out, got_lse, got_weights)


class Failure(AssertionError):
    """An invariant does not hold: what was compared, what came out, and how to reproduce it."""


def fail(what: str, problem: str, *, impl, case: Case, how: str = "") -> None:
    lines = [f"{what}: {problem}"]
    if how:
        lines.append(f"  how: {how}")
    lines.append("  reproduce:")
    lines += ["    " + line for line in case.repro(impl.name).splitlines()]
    raise Failure("\n".join(lines))


def expect_close(what, got, want, atol, *, impl, case, how="") -> None:
    """got within atol of want, NaN and Inf in the same places."""
    problem = mismatch(got, want, atol)
    if problem:
        fail(what, problem, impl=impl, case=case, how=how)


def expect_identical(what, got, want, *, impl, case, how="") -> None:
    """got bit-for-bit equal to want (NaN meeting NaN)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        fail(what, f"shape {got.shape}, expected {want.shape}", impl=impl, case=case, how=how)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if not same.all():
        index = tuple(int(i) for i in np.argwhere(~same)[0])
        problem = f"not bit-identical at {index}: got {got[index]!r}, expected {want[index]!r}"
        fail(what, problem, impl=impl, case=case, how=how)


def expect(condition: bool, what: str, problem: str, *, impl, case, how="") -> None:
    if not condition:
        fail(what, problem, impl=impl, case=case, how=how)


class Raised(Exception):
    """The implementation raised instead of returning: the exception and the call that raised."""

    def __init__(self, error: BaseException, call: str):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error
        self.call = call

    def failure(self, impl_name: str, recipe) -> Failure:
        """A Failure naming the call, with a reproduction of the case it was made from."""
        lines = [f"{impl_name} raised {self}", f"  call: {self.call}"]
        if recipe is not None:
            lines.append("  reproduce (the case the call was made from):")
            lines += ["    " + line for line in recipe.repro(impl_name).splitlines()]
        return Failure("\n".join(lines))


class Watched:
    """`impl` with every exception it raises wrapped in Raised, naming the call."""

    def __init__(self, impl):
        self._impl = impl

    def __getattr__(self, name):
        return getattr(self._impl, name)

    def __call__(self, query, key, value, **options):
        try:
            return self._impl(query, key, value, **options)
        except Exception as error:
            raise Raised(error, describe_call(query, key, value, options)) from error


def describe_call(query, key, value, options) -> str:
    """impl(query float32 (2, 4, 8), ..., causal='top_left'): arrays by dtype and shape."""

    def show(x):
        if isinstance(x, np.ndarray):
            return f"{x.dtype} {x.shape}"
        return repr(x)

    given = {"query": query, "key": key, "value": value}
    given.update({n: x for n, x in options.items() if x is not None and x is not False})
    return "impl(" + ", ".join(f"{n}={show(x)}" for n, x in given.items()) + ")"
