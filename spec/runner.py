"""Running invariants against an implementation: PASS, FAIL, SKIP or DEVIATION for each."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import FlakyFailure, Unsatisfiable
from hypothesis.reporting import with_reporter
from refattn.spec.cases import Case, MHACase
from refattn.spec.checking import Example, Failure, Raised, Refused, Watched
from refattn.spec.registry import MUST, Invariant
from refattn.spec.repro import reproduction

from refattn.capabilities import SEMANTICS

PASS, FAIL, SKIP, DEVIATION = "PASS", "FAIL", "SKIP", "DEVIATION"
DIFFERS = "DIFFERS"  # the implementation's declared semantics is not the spec's, and holds
NOT_RUN = "NOT RUN"  # a supervised run interrupted before it reached the invariant
DEFAULT_MAX_EXAMPLES = 100
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Outcome:
    """What running one invariant against one implementation gave."""

    id: str
    title: str
    level: str
    status: str
    examples: int
    seconds: float
    detail: str = ""  # why skipped, how it failed, or the declared deviation

    @property
    def blocking(self) -> bool:
        """A MUST that failed: the implementation does not conform."""
        return self.level == MUST and self.status == FAIL


class Refusals(list):
    """The reasons an implementation gave for refusing examples (Unsupported raised at run
    time), one per refused example."""


def property_test(
    inv: Invariant,
    impl,
    *,
    max_examples=None,
    seed=None,
    on_example=None,
    on_call=None,
    refusals: Refusals | None = None,
):
    """The invariant's property as a hypothesis test of `impl`, ready to call (or for pytest).

    max_examples None keeps the active hypothesis profile's; seed None draws at random. A
    failure is a checking.Failure with its example (the calls made) attached. An example the
    implementation refuses (Unsupported, NotImplementedError) is set aside with hypothesis'
    reject(), its reason appended to `refusals`. on_call(call, example) is called before each
    call of the implementation (a supervisor times calls out with it).
    """
    options = {
        "deadline": None,
        "database": None,
        "print_blob": False,
        "report_multiple_bugs": False,
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    }
    if max_examples is not None:
        options["max_examples"] = max_examples
    refusals = Refusals() if refusals is None else refusals

    @settings(**options)
    @given(data=st.data())
    def test(data):
        if on_example is not None:
            on_example()
        example = Example()
        try:
            inv.check(Watched(impl, example, on_call), _Draws(data, example))
        except Refused as refusal:
            refusals.append(str(refusal))
            reject()
        except Raised as raised:
            failure = raised.failure(impl.name)
            failure.example = example
            raise failure from raised.error
        except Failure as failure:
            failure.example = example
            raise

    test.__name__ = f"test_{inv.id.replace('-', '_')}"
    seeded = test if seed is None else hypothesis_seed(seed)(test)

    @functools.wraps(seeded)
    def run():
        with _global_constants_only():
            return seeded()

    return run


@contextlib.contextmanager
def _global_constants_only():
    """hypothesis (6.131 and later) mixes into its draws constants it finds in the "local"
    modules loaded (not the standard library, not site-packages): which modules those are
    depends on how the run was started (an editable install, pytest's own, a worker), so the
    same seed drew different examples in different runs. The spec's runs draw from hypothesis'
    global constants alone. (A private hook; without it, hypothesis' default stands.)"""
    from hypothesis.internal.conjecture import providers

    local = getattr(providers, "_get_local_constants", None)
    if local is None or not hasattr(providers, "Constants"):
        yield
        return
    none = providers.Constants()
    providers._get_local_constants = lambda: none
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = local
        providers.CONSTANTS_CACHE.cache.clear()


class _Draws:
    """hypothesis' `data`, noting in the example the last Case or MHACase drawn."""

    def __init__(self, data, example: Example):
        self._data = data
        self._example = example

    def draw(self, strategy, label=None):
        value = self._data.draw(strategy, label=label)
        if isinstance(value, Case | MHACase):
            self._example.recipe = value
        return value


def missing_capabilities(inv: Invariant, impl) -> list[str]:
    return [c for c in inv.requires if c not in impl.capabilities]


def run_invariant(
    inv: Invariant,
    impl,
    *,
    max_examples=DEFAULT_MAX_EXAMPLES,
    seed=DEFAULT_SEED,
    deviations: Mapping[str, str] | None = None,
    repro_dir=None,
    on_call=None,
) -> Outcome:
    """Run one invariant; a declared deviation is still run, to show what it looks like.

    A failure's detail ends with its reproduction; inputs too large to print go to an .npz in
    `repro_dir` (default: a temporary folder)."""
    start = time.perf_counter()
    missing = missing_capabilities(inv, impl)
    if missing:
        reason = f"needs {', '.join(missing)}, which {impl.name} does not provide"
        status, reason = _semantics_line(inv, impl, SKIP, reason)
        return Outcome(inv.id, inv.title, inv.level, status, 0, 0.0, reason)
    examples = 0

    def count():
        nonlocal examples
        examples += 1

    report: list[str] = []
    refusals = Refusals()
    test = property_test(
        inv,
        impl,
        max_examples=max_examples,
        seed=seed,
        on_example=count,
        on_call=on_call,
        refusals=refusals,
    )
    try:
        with with_reporter(report.append):
            test()
        status, detail = PASS, _refused_text(refusals, examples)
    except Unsatisfiable:  # every example was refused: the implementation lacks the feature
        if not refusals:
            raise
        status, detail = SKIP, f"{impl.name} refused every example: {refusals[0]}"
    except Exception as error:  # a failure, or whatever the implementation raised
        status = FAIL
        detail = _failure_text(error, report, impl, inv, repro_dir)
    seconds = time.perf_counter() - start
    status, detail = _semantics_line(inv, impl, status, detail)
    declared = (deviations or {}).get(inv.id)
    if declared is not None:
        observed = "observed: " + (detail.splitlines()[0] if status == FAIL else "it passed")
        status, detail = DEVIATION, f"declared: {declared}\n{observed}\n{detail}".rstrip()
    return Outcome(inv.id, inv.title, inv.level, status, examples, seconds, detail)


def _semantics_line(inv: Invariant, impl, status: str, detail: str) -> tuple[str, str]:
    """The invariant that states the spec's own choice where the implementation declares
    another (refattn.capabilities.SEMANTICS) says so: DIFFERS when the implementation does what
    it declares (checked by the same property, under its semantics), FAIL when it does not."""
    semantics = getattr(impl, "semantics", None)
    for name, value in (semantics.differing() if semantics else {}).items():
        if semantics.invariant_of(name) != inv.id:
            continue
        what = f"declared {name}={value}: {SEMANTICS[name][0]}"
        if status == PASS:
            return DIFFERS, f"{what}; it does what it declares".rstrip()
        if status == SKIP and name == "causal_flag":
            return DIFFERS, f"{what}; ATT-M2 checks its flag as bottom-right"
        if status == FAIL:
            return status, f"{detail}\n  (checked under the {what})"
    return status, detail


def _refused_text(refusals: Refusals, examples: int) -> str:
    if not refusals:
        return ""
    return f"{len(refusals)} of {examples} examples refused by the implementation: {refusals[0]}"


def _failure_text(error: BaseException, report: list[str], impl, inv, repro_dir) -> str:
    """The failure's message, hypothesis' shrunk draws other than the case, and the
    reproduction of the failing check."""
    flaky = ""
    if isinstance(error, FlakyFailure):  # failed, then passed when retried: report the first
        flaky = "\n  (intermittent: this example failed once and passed when tried again)"
        error = error.exceptions[0]
    message = (
        str(error)
        if isinstance(error, AssertionError)
        else (f"raised {type(error).__name__}: {error}")
    )
    notes = [*map(str, report), *getattr(error, "__notes__", ())]
    draws = [
        " ".join(note.split()) for note in notes if note.startswith("Draw ") and "Case(" not in note
    ]
    text = message + flaky
    if draws:
        text += "\n  other draws:\n    " + "\n    ".join(draws)
    example = getattr(error, "example", None)
    if example is not None:
        if example.recipe is not None:
            text += f"\n  case: {example.recipe.code()}"
        if example.calls:
            code = reproduction(impl, example, error).text(repro_dir, f"{impl.name}-{inv.id}")
            text += "\n  reproduce (every input of the check, each call as the implementation takes"
            text += " it, the spec's value):\n" + "\n".join("    " + ln for ln in code.splitlines())
    return text


def run_all(
    impl,
    invariants: Iterable[Invariant],
    *,
    max_examples=DEFAULT_MAX_EXAMPLES,
    seed=DEFAULT_SEED,
    deviations: Mapping[str, str] | None = None,
    progress: Callable[[Invariant, Outcome | None], None] | None = None,
    jobs: int = 1,
) -> list[Outcome]:
    """Run each invariant in turn, calling `progress(inv, None)` before and
    `progress(inv, outcome)` after each.

    jobs > 1 runs invariants in that many supervised worker processes (refattn.spec.supervisor),
    each loading the implementation by its name (so `impl.name` must be loadable); each
    invariant runs exactly as it would here, with the same seed, and `progress(inv, outcome)`
    is called as they finish. Results come back in the order of `invariants`.
    """
    invariants = list(invariants)
    if jobs > 1 and len(invariants) > 1:
        from refattn.spec.supervisor import Settings, run_supervised

        settings = Settings(impl.name, max_examples, seed, dict(deviations or {}), None)
        return run_supervised(settings, invariants, jobs=jobs, progress=progress)
    outcomes = []
    for inv in invariants:
        if progress:
            progress(inv, None)
        outcome = run_invariant(
            inv, impl, max_examples=max_examples, seed=seed, deviations=deviations
        )
        outcomes.append(outcome)
        if progress:
            progress(inv, outcome)
    return outcomes
