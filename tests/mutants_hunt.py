"""Hunting the mutants of tests/mutants as `refattn conform` does, in a process of their own.

    python tests/mutants_hunt.py [--seeds 0-4] [--every] NAME ...

prints one JSON line per mutant and seed: which invariant killed it (its expected ones run
first, then every other invariant of its level, stopping at the first FAIL), at which example
that invariant first failed, how many examples ran in all. --every runs every invariant
instead and lists each one's status (for the controls).

Why a process of its own, set up like refattn conform's: hypothesis (>= 6.131) draws some of
its values from the constants of the "local" modules loaded at the time, every module outside
the standard library and site-packages (and outside tests/), refattn itself among them when it
is installed editable. The same seed then draws other examples in a process that imported
other modules: a pytest session collecting other test files, a `refattn conform --jobs 2`
worker (which never imports refattn.cli). So each hunt runs in a fresh interpreter that has
imported what `refattn conform` imports (refattn.cli's parser, refattn.spec.conform) and
nothing else local: its verdicts are the CLI's (`refattn conform NAME`, 100 examples, seed 0,
one job). This file lives in tests/, so its own constants are not drawn from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time


def cli_environment() -> None:
    """Import what `refattn conform` has imported by the time it draws its first example."""
    import refattn.cli

    refattn.cli.build_parser()
    from refattn.spec.conform import hypothesis_storage_out_of_the_way

    hypothesis_storage_out_of_the_way()  # as conform() does: no .hypothesis/ in the cwd


def _counted(inv):
    """inv with its check wrapped to note at which example it first failed."""
    from hypothesis.errors import HypothesisException

    state = {"examples": 0, "first_failure": None}

    def check(impl, data):
        state["examples"] += 1
        try:
            inv.check(impl, data)
        except HypothesisException:
            raise  # hypothesis' own control flow (unsatisfied filters), not a failure
        except Exception:
            if state["first_failure"] is None:
                state["first_failure"] = state["examples"]
            raise

    return dataclasses.replace(inv, check=check), state


def run_counted(inv, impl, seed):
    """run_invariant at the CLI's defaults; (outcome, 1-based index of the first failure)."""
    from refattn.spec.runner import DEFAULT_MAX_EXAMPLES, run_invariant

    counted, state = _counted(inv)
    outcome = run_invariant(counted, impl, max_examples=DEFAULT_MAX_EXAMPLES, seed=seed)
    return outcome, state["first_failure"]


def hunt(name: str, expected, level: str, seed: int) -> dict:
    """Run `expected` first, then every other invariant of `level` in SPEC.md's order, and
    stop at the first that fails."""
    from refattn.spec.registry import INVARIANTS, all_invariants
    from refattn.spec.runner import FAIL

    from refattn.adapters import load

    impl = load(name)
    start = time.perf_counter()
    ordered = all_invariants()  # registers them, too
    order = [INVARIANTS[i] for i in expected if INVARIANTS[i].level == level]
    order += [inv for inv in ordered if inv.level == level and inv.id not in expected]
    tried, examples = [], 0
    for inv in order:
        outcome, first = run_counted(inv, impl, seed)
        tried.append(inv.id)
        examples += outcome.examples
        if outcome.status == FAIL:
            return {
                "killed_by": inv.id,
                "first_failing_example": first,
                "examples": examples,
                "tried": tried,
                "expected_was_wrong": inv.id not in expected,
                "seconds": round(time.perf_counter() - start, 1),
                "detail": "\n".join(outcome.detail.splitlines()[:2]),
            }
    return {
        "killed_by": None,
        "first_failing_example": None,
        "examples": examples,
        "tried": tried,
        "expected_was_wrong": False,
        "seconds": round(time.perf_counter() - start, 1),
        "detail": "",
    }


def every(name: str, seed: int) -> dict:
    """Every invariant's status for `name` (a control, or a SHOULD-level mutant's MUSTs)."""
    from refattn.spec.registry import all_invariants

    from refattn.adapters import load

    impl = load(name)
    start = time.perf_counter()
    outcomes = {}
    for inv in all_invariants():
        outcome, first = run_counted(inv, impl, seed)
        outcomes[inv.id] = {
            "level": inv.level,
            "status": outcome.status,
            "first_failing_example": first,
            "detail": outcome.detail.splitlines()[0] if outcome.detail else "",
        }
    return {"outcomes": outcomes, "seconds": round(time.perf_counter() - start, 1)}


def _seeds(text: str) -> list[int]:
    if "-" in text:
        low, high = map(int, text.split("-"))
        return list(range(low, high + 1))
    return [int(s) for s in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="mutants.<module>:<function>")
    parser.add_argument("--seeds", default="0", help="a range a-b or a list a,b,c (default 0)")
    parser.add_argument("--every", action="store_true", help="run every invariant")
    args = parser.parse_args(argv)
    cli_environment()
    import mutants

    registry = mutants.registry()
    for name in args.names:
        for seed in _seeds(args.seeds):
            if args.every:
                row = every(name, seed)
            else:
                bug_class, expected, level = registry[name]
                row = {"class": bug_class, "expected": list(expected), "level": level}
                row |= hunt(name, expected, level, seed)
            print(json.dumps({"mutant": name, "seed": seed, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
