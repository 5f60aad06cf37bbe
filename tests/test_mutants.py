"""The mutation suite: `refattn conform` at its defaults catches realistic kernel bugs it was
never shown (tests/mutants), and leaves correct kernels alone.

Each MUST-level mutant must FAIL a MUST invariant at the CLI's defaults (100 examples, seed 0).
To keep it quick its expected invariants run first and the hunt stops at the first MUST
FAIL; only if they all pass do the other MUST invariants run, and the summary says the
expected ID was wrong. SHOULD-level mutants must fail their SHOULD invariant and no MUST one.
Controls must pass every invariant (PASS or SKIP).

Each hunt runs in a process of its own set up as `refattn conform`'s (tests/mutants_hunt.py
says why: hypothesis draws from the constants of the modules loaded), so that what is found
here is what the CLI finds, whatever else this pytest session imports.

The default run takes a sample (mutants.SAMPLE, mutants.SAMPLE_CONTROLS); `pytest -m mutants`
runs the rest. The known survivors (mutants.SURVIVORS) are strict xfails. A summary table
(mutant, class, expected, killed by, first failing example) is printed at the end of the
module, and written as JSON to $REFATTN_MUTANTS_JSON when that is set ("{worker}" in it
becomes the xdist worker's id, so that parallel workers do not overwrite each other).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import mutants
import numpy as np
import pytest
from refattn.spec import oracle
from refattn.spec.registry import INVARIANTS, MUST, SHOULD, all_invariants
from refattn.spec.runner import DEFAULT_MAX_EXAMPLES, DEFAULT_SEED, FAIL, PASS, SKIP
from refattn.spec.tolerance import mismatch

from refattn.adapters import load

# The mutants compute NaN and Inf on purpose (and by mistake): NumPy's warnings say nothing.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

all_invariants()  # registers them
HUNT = Path(__file__).with_name("mutants_hunt.py")
REGISTRY = mutants.registry()
RESULTS: list[dict] = []  # one row per mutant hunted, for the summary


def hunt(*args: str) -> list[dict]:
    """Run tests/mutants_hunt.py in a fresh interpreter; its JSON lines."""
    done = subprocess.run(
        [sys.executable, str(HUNT), *args],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert done.returncode == 0, f"mutants_hunt.py {' '.join(args)}:\n{done.stderr[-4000:]}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _params(names, sample):
    """pytest params: the sample unmarked, the rest behind the `mutants` marker, survivors
    as strict xfails with their reason."""
    params = []
    for name in names:
        marks = [] if name in sample else [pytest.mark.mutants]
        if name in mutants.SURVIVORS:
            marks.append(pytest.mark.xfail(strict=True, reason=mutants.SURVIVORS[name]))
        params.append(pytest.param(name, marks=marks, id=name.removeprefix("mutants.")))
    return params


MUST_MUTANTS = [n for n, (_, _, level) in REGISTRY.items() if level == MUST]
SHOULD_MUTANTS = [n for n, (_, _, level) in REGISTRY.items() if level == SHOULD]


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """Print the table of what was hunted at the end of the module (and write the JSON)."""
    yield
    if not RESULTS:
        return
    path = os.environ.get("REFATTN_MUTANTS_JSON")
    if path:  # one file per xdist worker, each holding the mutants that worker hunted
        path = path.replace("{worker}", os.environ.get("PYTEST_XDIST_WORKER", "main"))
        Path(path).write_text(json.dumps(RESULTS, indent=1) + "\n")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # past pytest's capture, to the terminal
        print("\n" + table(RESULTS), flush=True)


def table(rows) -> str:
    """The summary: one line per mutant hunted."""
    lines = [
        f"{'mutant':52} {'class':14} {'expected':15} {'killed by':10} {'at':>4} {'examples':>8}"
        f" {'s':>6}"
    ]
    for row in rows:
        killed = (row["killed_by"] or "SURVIVED") + ("!" if row["expected_was_wrong"] else "")
        at = row["first_failing_example"] or "-"
        lines.append(
            f"{row['mutant'].removeprefix('mutants.'):52} {row['class']:14} "
            f"{','.join(row['expected']):15} {killed:10} {at!s:>4} {row['examples']:>8} "
            f"{row['seconds']:>6.1f}"
        )
    killed = sum(1 for row in rows if row["killed_by"])
    lines.append(
        f"killed {killed} of {len(rows)} ('at': the first failing example of the invariant "
        "that killed it; '!': not an expected invariant)"
    )
    return "\n".join(lines)


@pytest.mark.parametrize("name", _params(MUST_MUTANTS, mutants.SAMPLE))
def test_must_mutant_fails_conform(name):
    """A MUST-level mutant fails a MUST invariant at the CLI's defaults."""
    (row,) = hunt(name)
    RESULTS.append(row)
    assert row["killed_by"] is not None, (
        f"{name} passes every MUST invariant at {DEFAULT_MAX_EXAMPLES} examples, seed "
        f"{DEFAULT_SEED} (expected {', '.join(row['expected'])} to catch it)"
    )


@pytest.mark.parametrize("name", _params(SHOULD_MUTANTS, ()))
def test_should_mutant_fails_its_should_invariant(name):
    """A SHOULD-level mutant fails the SHOULD invariant it is written against."""
    (row,) = hunt(name)
    RESULTS.append(row)
    assert row["killed_by"] in row["expected"], f"{name}: expected {row['expected']}: {row}"


@pytest.mark.mutants
@pytest.mark.parametrize("name", SHOULD_MUTANTS, ids=lambda n: n.removeprefix("mutants."))
def test_should_mutant_passes_every_must(name):
    """A SHOULD-level mutant is SHOULD-level: no MUST invariant catches it."""
    (row,) = hunt("--every", name)
    failed = [i for i, o in row["outcomes"].items() if o["level"] == MUST and o["status"] == FAIL]
    assert not failed, f"{name} fails MUST invariants {failed}: it is a MUST-level mutant"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=[] if n in mutants.SAMPLE_CONTROLS else [pytest.mark.mutants],
            id=n.removeprefix("mutants."),
        )
        for n in mutants.CONTROLS
    ],
)
def test_control_passes_every_invariant(name):
    """A correct kernel written differently from the reference: PASS or SKIP, never FAIL."""
    (row,) = hunt("--every", name)
    outcomes = row["outcomes"]
    failed = [f"{i}: {o['detail']}" for i, o in outcomes.items() if o["status"] == FAIL]
    assert not failed, f"{name} (correct) fails:\n" + "\n".join(failed)
    assert {o["status"] for o in outcomes.values()} <= {PASS, SKIP}
    assert {i for i, o in outcomes.items() if o["status"] == PASS} >= {"ATT-N1", "ATT-W4", "ATT-M1"}


# SPEC.md's NaN and Inf rules, which no conform invariant draws: hand-made calls, checked
# against the spec's oracle. The controls follow them; the mutants that break only these
# rules survive `refattn conform`, and fail here (what an invariant of the rules would do).


def _rule_cases():
    """(what, query, key, value, options): one call per rule, float64, Lk = 70 (two tiles
    of 64, one split of 48 and a tail)."""
    rng = np.random.default_rng(0)

    def qkv():
        return (rng.standard_normal((1, 2, 4, 8)), *rng.standard_normal((2, 1, 2, 70, 8)))

    cases = []
    q, k, v = qkv()
    q[0, 0, 1, 3] = np.nan
    cases.append(("a NaN query makes its row NaN", q, k, v, {}))
    q, k, v = qkv()
    q[...] = np.abs(q)
    k[0, 0, 40] = np.abs(k[0, 0, 40])
    k[0, 0, 40, 2] = np.inf
    cases.append(("a +inf score at a visible key makes the row NaN", q, k, v, {}))
    q, k, v = qkv()
    v[0, 1, 10, 3] = np.nan
    v[0, 1, 11, 5] = np.inf
    cases.append(("NaN and Inf in a visible value reach their component", q, k, v, {}))
    q, k, v = qkv()
    mask = np.ones((4, 70), dtype=bool)
    mask[:, 5] = False
    mask[2] = False
    k[..., 5, :] = np.nan
    v[..., 5, :] = np.inf
    q[0, 0, 2] = np.nan
    options = {"attn_mask": mask}
    cases.append(("hidden NaN and Inf, and a NaN query in a fully masked row", q, k, v, options))
    return cases


def _breaks_rules(name):
    """The rules `name` breaks: [] for a kernel that follows them all."""
    fn = getattr(_module(name), name.partition(":")[2])
    broken = []
    for what, q, k, v, options in _rule_cases():
        mask = options.get("attn_mask")
        want = oracle.attention(q, k, v, {} if mask is None else {"mask": mask}).out
        got = fn(q, k, v, **options)
        if mismatch(got, want, 1e-12):
            broken.append(what)
    return broken


@pytest.mark.parametrize("name", mutants.CONTROLS, ids=lambda n: n.removeprefix("mutants."))
def test_controls_follow_the_nan_and_inf_rules(name):
    assert _breaks_rules(name) == []


RULE_BREAKERS = (  # mutants that break a NaN or Inf rule of SPEC.md, which no invariant draws
    "mutants.nan_handling:plus_inf_score_selects_key",
    "mutants.nan_handling:output_nan_to_num",
    "mutants.nan_handling:additive_log_mask",
)


@pytest.mark.parametrize("name", RULE_BREAKERS, ids=lambda n: n.removeprefix("mutants."))
def test_rule_breakers_fail_the_rules(name):
    assert _breaks_rules(name)


# The bookkeeping of the suite: cheap, in every run.


def _module(name):
    return importlib.import_module(name.partition(":")[0])


def test_every_kernel_is_registered_and_documented():
    """Every public function of a mutant module is in its MUTANTS table, and its docstring
    says the bug, what it imitates and what catches it."""
    for module_name in mutants.MODULES:
        module = importlib.import_module(f"mutants.{module_name}")
        public = {
            name
            for name, fn in inspect.getmembers(module, inspect.isfunction)
            if not name.startswith("_") and fn.__module__ == module.__name__
        }
        assert public == set(module.MUTANTS), (
            f"mutants.{module_name}: {public ^ set(module.MUTANTS)}"
        )
        for name in public:
            doc = inspect.getdoc(getattr(module, name)) or ""
            for part in ("Bug:", "Imitates:", "Caught by:"):
                assert part in doc, f"mutants.{module_name}.{name}: docstring lacks {part!r}"


def test_tables_name_real_invariants_at_their_level():
    """Expected IDs exist; a MUST-level mutant expects some MUST invariant, a SHOULD-level one
    only SHOULD invariants."""
    assert len(REGISTRY) >= 60
    for name, (_, expected, level) in REGISTRY.items():
        assert expected and all(i in INVARIANTS for i in expected), (name, expected)
        levels = {INVARIANTS[i].level for i in expected}
        assert (MUST in levels) if level == MUST else (levels == {SHOULD}), (name, levels)


def test_sample_survivors_and_controls_are_known():
    """The sample spreads over the classes and holds no survivor; survivors and controls are
    names that load."""
    assert set(mutants.SAMPLE) <= set(MUST_MUTANTS)
    assert not set(mutants.SAMPLE) & set(mutants.SURVIVORS)
    assert len({REGISTRY[n][0] for n in mutants.SAMPLE}) >= min(6, len(mutants.SAMPLE))
    assert set(mutants.SURVIVORS) <= set(MUST_MUTANTS)
    assert set(mutants.SAMPLE_CONTROLS) <= set(mutants.CONTROLS)
    for name in [*mutants.CONTROLS, *REGISTRY]:
        assert load(name).name == name


def test_mutants_do_not_import_refattn():
    """The mutants are a user's code the spec has never seen: none imports refattn."""
    folder = Path(mutants.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "refattn" for n in names), (path.name, names)
