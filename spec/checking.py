"""What the properties share: calling an implementation, and failing with what went wrong.

A property calls the implementation through `run` (or a layer, through the Watched adapter it is
given) and states its expectations with `expect_close`, `expect_identical` and `expect`; a
broken expectation raises Failure, which keeps what was compared. The runner then attaches the
example it came from (every call the property made, with its inputs) so that the report can
reproduce the check itself: the inputs, the call in the implementation's own protocol, and the
spec's expected value (refattn.spec.repro).
"""

from __future__ import annotations

import numpy as np
from refattn.spec.tolerance import mismatch

from refattn.adapters import Unsupported, WrongReturn
from refattn.call import AttentionCall, AttentionGradients, Result


def run(impl, query, key, value, options, *, lse=False, weights=False) -> Result:
    """Call `impl` (an Adapter) on these arguments; what it computed, None for what was not
    asked."""
    call = AttentionCall.check(query, key, value, **options, return_lse=lse, return_weights=weights)
    return impl.result(call)


def run_backward(impl, query, key, value, options, grad_out, grad_lse=None) -> AttentionGradients:
    """The gradients `impl` (an Adapter that claims backward) computes for this call, given
    grad_out (and grad_lse): dq, dk, dv and dbias (None without a bias)."""
    call = AttentionCall.check(query, key, value, **options)
    return impl.gradients(call, grad_out, grad_lse)


class Failure(AssertionError):
    """An invariant does not hold: what was compared, what came out and what was expected.

    `example` is attached by the runner: the recipe and the calls of the failing example."""

    def __init__(self, what: str, problem: str, *, how: str = "", got=None, want=None, atol=None):
        said = f"{what}: {problem}" if problem else what
        super().__init__(said + (f"\n  how: {how}" if how else ""))
        self.what, self.problem, self.how = what, problem, how
        self.got, self.want, self.atol = got, want, atol
        self.example = None


def fail(what: str, problem: str, *, how: str = "", got=None, want=None, atol=None) -> None:
    raise Failure(what, problem, how=how, got=got, want=want, atol=atol)


def expect_close(what, got, want, atol, *, how="") -> None:
    """got within atol of want, NaN and Inf in the same places."""
    problem = mismatch(got, want, atol)
    if problem:
        fail(what, problem, how=how, got=got, want=want, atol=atol)


def expect_unchanged(what, second, first, atol, spec_value, *, how="") -> None:
    """Two calls that the spec says give the same result do, within atol; the failure reports
    both calls' values, and the spec's own value as what was expected."""
    problem = mismatch(second, first, atol, labels=("the second call gave", "the first"))
    if problem:
        got, other = np.asarray(second, dtype=float), np.asarray(first, dtype=float)
        spec = ""
        if got.size and got.shape == other.shape == np.shape(spec_value):
            with np.errstate(invalid="ignore"):
                apart = np.abs(got - other)
            worst = int(np.argmax(np.where(np.isnan(apart), np.inf, apart)))
            index = np.unravel_index(worst, got.shape)
            spec = f"; the spec's value there is {np.asarray(spec_value)[index]!r}"
        fail(what, problem + spec, how=how, got=second, want=spec_value, atol=atol)


def expect_identical(what, got, want, *, how="") -> None:
    """got bit-for-bit equal to want (NaN meeting NaN)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        fail(what, f"shape {got.shape}, expected {want.shape}", how=how, got=got, want=want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if not same.all():
        index = tuple(int(i) for i in np.argwhere(~same)[0])
        problem = f"not bit-identical at {index}: got {got[index]!r}, expected {want[index]!r}"
        fail(what, problem, how=how, got=got, want=want, atol=0.0)


def expect(condition: bool, what: str, problem: str, *, how="", got=None, want=None) -> None:
    if not condition:
        fail(what, problem, how=how, got=got, want=want)


class Raised(Exception):
    """The implementation raised (or returned what the call cannot use) instead of returning."""

    def __init__(self, error: BaseException, call: AttentionCall):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error
        self.call = call

    def failure(self, impl_name: str) -> Failure:
        """A Failure naming the call; the runner attaches its example."""
        if isinstance(self.error, WrongReturn):  # what it gave back, not what it raised
            what = f"{impl_name} {self.error}"
        else:
            what = f"{impl_name} raised {self}"
        return Failure(what, "", how=f"call: {self.call.describe('impl')}")


class Refused(Exception):
    """The implementation refused the call at run time (it raised Unsupported or
    NotImplementedError): not a failure; the example is set aside and the reason reported."""


class GradientsCall:
    """A backward call logged in an Example: the call, and the gradients of the loss with
    respect to its outputs that it was given (refattn.spec.repro writes it out)."""

    def __init__(self, call: AttentionCall, grad_out, grad_lse=None):
        self.call, self.grad_out, self.grad_lse = call, grad_out, grad_lse


class Example:
    """What one example of a property did: the recipe it drew, and every call it made."""

    def __init__(self):
        self.recipe = None  # the last Case or MHACase drawn
        self.calls: list[AttentionCall] = []


class Watched:
    """`impl` with every call logged in `example` (and announced to `on_call(call, example)`
    before it is made and `on_call(None, example)` once it returns, for a supervisor that times
    calls out), and every exception it raises wrapped in Raised, naming the call."""

    def __init__(self, impl, example: Example | None = None, on_call=None):
        self._impl = impl
        self._example = example or Example()
        self._on_call = on_call

    def __getattr__(self, name):
        return getattr(self._impl, name)

    def result(self, call: AttentionCall) -> Result:
        return self._calling(call, call, lambda: self._impl.result(call))

    def gradients(self, call: AttentionCall, grad_out, grad_lse=None) -> AttentionGradients:
        """As `result`, for the gradients: logged as a GradientsCall (on_call is given the call
        itself)."""
        logged = GradientsCall(call, grad_out, grad_lse)
        return self._calling(call, logged, lambda: self._impl.gradients(call, grad_out, grad_lse))

    def _calling(self, call: AttentionCall, logged, make):
        """make() logged in the example and announced to on_call before and after it returns;
        refusals and errors wrapped."""
        self._example.calls.append(logged)
        if self._on_call is not None:
            self._on_call(call, self._example)
        try:
            made = make()
            if self._on_call is not None:
                self._on_call(None, self._example)  # it returned
            return made
        except Unsupported as refusal:
            if refusal.derived:  # refattn asked for what the adapter does not claim: a bug of ours
                raise Raised(refusal, call) from refusal
            raise Refused(str(refusal)) from refusal
        except NotImplementedError as refusal:
            raise Refused(f"{type(refusal).__name__}: {refusal}") from refusal
        except Exception as error:
            raise Raised(error, call) from error

    def __call__(self, query, key, value, **options):
        call = AttentionCall.check(query, key, value, **options)
        return call.returns(*self.result(call))
