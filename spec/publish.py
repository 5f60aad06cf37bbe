"""Publish conformance reports: `python -m refattn.spec.publish docs/conformance`.

Runs `refattn conform` against each implementation of IMPLEMENTATIONS that is installed here,
writing DIR/<impl>.md and DIR/<impl>.json, then DIR/README.md: one table, invariants ×
implementations, built from the JSON reports in DIR (an implementation not installed here keeps
the report of its last run, with that run's date and versions).

    python -m refattn.spec.publish docs/conformance                     every implementation
    python -m refattn.spec.publish docs/conformance --only jax torch    some of them (others kept)
    python -m refattn.spec.publish docs/conformance --summary-only      just rebuild README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refattn.spec.conform import conform
from refattn.spec.registry import all_invariants
from refattn.spec.runner import (
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_SEED,
    DEVIATION,
    DIFFERS,
    FAIL,
    PASS,
    SKIP,
)

from refattn.adapters import PeerNotInstalled, load

# The implementations published, in the order of the summary's columns. Add a name here (one
# that refattn.adapters.load knows) to publish it.
IMPLEMENTATIONS = (
    "reference",
    "native",
    "torch",
    "torch-math",
    "torch-flash",
    "jax",
    "onnxruntime",
    "onnx-reference",
)

# Worker processes per implementation (default 1). JAX compiles per shape in one thread, so two
# processes halve its wall time; torch and onnxruntime use both cores already and only slow down.
JOBS = {"jax": 2}

CELL = {PASS: "PASS", FAIL: "**FAIL**", DIFFERS: "DIFFERS", DEVIATION: "DEV", SKIP: "–"}
FINDINGS = "findings.md"  # hand-written: each published FAIL, checked by a direct call


def publish(directory: Path, names, *, max_examples, seed, jobs=None, stderr=sys.stderr) -> dict:
    """Run and write the reports of `names`; return name -> exit status (None: not installed).
    jobs None takes JOBS' count for each implementation."""
    directory.mkdir(parents=True, exist_ok=True)
    statuses = {}
    for name in names:
        try:
            load(name)
        except PeerNotInstalled as error:
            print(f"publish: {name} not run here ({error}); its last report is kept", file=stderr)
            statuses[name] = None
            continue
        print(f"publish: {name}", file=stderr)
        statuses[name] = conform(
            name,
            max_examples=max_examples,
            seed=seed,
            jobs=JOBS.get(name, 1) if jobs is None else jobs,
            json_path=directory / f"{name}.json",
            markdown_path=directory / f"{name}.md",
            stdout=stderr,
            stderr=stderr,
        )
    return statuses


def summary(directory: Path, names=IMPLEMENTATIONS) -> str:
    """README.md of the reports in `directory`: who conforms, then invariants × implementations."""
    reports = {}
    for name in names:
        path = directory / f"{name}.json"
        if path.exists():
            reports[name] = json.loads(path.read_text())
    lines = [
        "# Conformance of other implementations",
        "",
        "Each implementation below was checked against every invariant of [SPEC.md](../../SPEC.md)",
        "by `refattn conform <impl>`; the reports hold each failure's shrunk counterexample and a",
        "reproduction. Regenerate them all with `python -m refattn.spec.publish docs/conformance`.",
    ]
    if (directory / FINDINGS).exists():
        lines += [
            f"Every failure published here was checked by calling the peer directly: see "
            f"[{FINDINGS}]({FINDINGS}).",
        ]
    lines += ["", "| implementation | verdict | versions | run |", "|---|---|---|---|"]
    for name, report in reports.items():
        versions = ", ".join(
            f"{k} {v}" for k, v in report["versions"].items() if k not in ("python", "numpy")
        )
        settings = report["settings"]
        wall = report.get("wall_seconds")
        took = f"{report['seconds']:.0f} s" if wall is None else f"{wall:.0f} s wall"
        jobs = settings.get("jobs", 1)
        run = (
            f"{report['date'][:10]}, {took}{f' ({jobs} jobs)' if jobs > 1 else ''}, "
            f"{settings['max_examples']} examples, seed {settings['seed']}"
        )
        lines.append(f"| [{name}]({name}.md) | {report['summary']} | {versions} | {run} |")
    lines += [
        "",
        "PASS: holds on every example. **FAIL**: a counterexample (see the report). DEV: a",
        "declared deviation, a known and intended difference (it still runs; the report shows",
        "what it does). –: skipped, the implementation lacks a capability the invariant needs.",
        "",
        "| ID | title | level | " + " | ".join(f"[{n}]({n}.md)" for n in reports) + " |",
        "|---|---|---|" + "---|" * len(reports),
    ]
    results = {
        name: {r["id"]: r["status"] for r in report["results"]} for name, report in reports.items()
    }
    for inv in all_invariants():
        cells = []
        for name in reports:
            status = results[name].get(inv.id)
            cell = CELL.get(status, "not run")
            if status in (FAIL, DEVIATION):
                cell = f"[{cell}]({name}.md#{inv.id.lower()}--{status.lower()})"
            cells.append(cell)
        lines.append(
            f"| [{inv.id}](../../SPEC.md#{inv.id.lower()}) | {inv.title} | {inv.level} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refattn.spec.publish", description="Run and publish conformance reports."
    )
    parser.add_argument("directory", type=Path, help="where to write the reports")
    parser.add_argument("--only", nargs="+", metavar="IMPL", help="publish only these")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild README.md")
    parser.add_argument("--max-examples", type=int, default=DEFAULT_MAX_EXAMPLES, metavar="N")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="N")
    parser.add_argument(
        "--jobs", type=int, default=None, metavar="N", help="worker processes (default: JOBS)"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(IMPLEMENTATIONS))
    if unknown:
        parser.error(f"--only: unknown implementations {unknown}; known: {list(IMPLEMENTATIONS)}")
    if not args.summary_only:
        publish(
            args.directory,
            args.only or IMPLEMENTATIONS,
            max_examples=args.max_examples,
            seed=args.seed,
            jobs=args.jobs,
        )
    (args.directory / "README.md").write_text(summary(args.directory))
    print(f"publish: wrote {args.directory / 'README.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
