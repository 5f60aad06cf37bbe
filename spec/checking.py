"""What the properties share: calling an implementation, and failing with a reproduction."""

from __future__ import annotations

import numpy as np
from refattn.spec.cases import Case
from refattn.spec.tolerance import mismatch

from refattn.call import AttentionCall, Result


def run(impl, query, key, value, options, *, lse=False, weights=False) -> Result:
    """Call `impl` (an Adapter) on these arguments; what it computed, None for what was not
    asked."""
    call = AttentionCall.check(query, key, value, **options, return_lse=lse, return_weights=weights)
    return impl.result(call)


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

    def result(self, call: AttentionCall) -> Result:
        try:
            return self._impl.result(call)
        except Exception as error:
            raise Raised(error, call.describe("impl")) from error

    def __call__(self, query, key, value, **options):
        call = AttentionCall.check(query, key, value, **options)
        return call.returns(*self.result(call))
