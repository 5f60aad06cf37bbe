"""`refattn conform`: choose invariants, read deviations, run, report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from refattn.spec.registry import all_invariants
from refattn.spec.report import as_json, markdown, table
from refattn.spec.runner import DEFAULT_MAX_EXAMPLES, DEFAULT_SEED, run_all

from refattn.adapters import load


class UsageError(ValueError):
    """A conform argument that cannot be used; the CLI exits 2 with this message."""


def read_deviations(path: str) -> dict[str, str]:
    """A deviations file: one invariant ID per line, then `# reason`; blank lines and lines
    starting with # are ignored."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise UsageError(f"--deviations: cannot read {path}: {error.strerror}") from None
    deviations = {}
    for number, line in enumerate(text.splitlines(), 1):
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        inv_id, _, reason = body.partition("#")
        inv_id = inv_id.strip()
        if not inv_id or " " in inv_id:
            raise UsageError(f"{path}:{number}: expected 'ID  # reason', but got {line!r}")
        deviations[inv_id] = reason.strip() or "declared in " + path
    return deviations


def select(only: list[str] | None, skip: list[str] | None):
    """The invariants to run, in SPEC.md order; unknown IDs are usage errors."""
    invariants = all_invariants()
    known = {inv.id for inv in invariants}
    for flag, ids in (("--only", only), ("--skip", skip)):
        unknown = sorted(set(ids or ()) - known)
        if unknown:
            raise UsageError(f"{flag}: unknown invariant IDs {unknown}; see `refattn spec`")
    return [
        inv for inv in invariants if (not only or inv.id in only) and inv.id not in (skip or ())
    ]


def _progress(total: int, stream):
    done = 0

    def report(inv, outcome):
        nonlocal done
        if outcome is None:
            print(f"[{done + 1:2}/{total}] {inv.id:7} {inv.title} ...", file=stream, flush=True)
            return
        done += 1
        print(
            f"[{done:2}/{total}] {inv.id:7} {outcome.status} ({outcome.examples} examples, "
            f"{outcome.seconds:.1f}s)",
            file=stream,
            flush=True,
        )

    return report


def conform(
    impl_name,
    *,
    only=None,
    skip=None,
    deviations_file=None,
    max_examples=DEFAULT_MAX_EXAMPLES,
    seed=DEFAULT_SEED,
    json_path=None,
    markdown_path=None,
    jobs=1,
    stdout=None,
    stderr=None,
) -> int:
    """Run the spec against one implementation; return the exit status (0 conforms, 1 not).

    The table goes to stdout, progress lines and warnings to stderr (default: sys's)."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if max_examples < 1:
        raise UsageError(f"--max-examples should be at least 1, but got {max_examples}")
    if jobs < 1:
        raise UsageError(f"--jobs should be at least 1, but got {jobs}")
    impl = load(impl_name)
    invariants = select(only, skip)
    deviations = dict(impl.deviations)
    if deviations_file:
        from_file = read_deviations(deviations_file)
        known = {inv.id for inv in all_invariants()}
        for inv_id in sorted(set(from_file) - known):
            print(f"warning: {deviations_file}: {inv_id} matches no invariant", file=stderr)
        deviations.update(from_file)
    start = time.perf_counter()
    outcomes = run_all(
        impl,
        invariants,
        max_examples=max_examples,
        seed=seed,
        deviations=deviations,
        progress=_progress(len(invariants), stderr),
        jobs=jobs,
    )
    wall = time.perf_counter() - start
    print(table(outcomes, impl.name), file=stdout)
    print(f"wall time {wall:.0f}s with {jobs} job{'s' if jobs > 1 else ''}", file=stderr)
    settings = {
        "max_examples": max_examples,
        "seed": seed,
        "jobs": jobs,
        "only": only or [],
        "skip": skip or [],
        "deviations_file": deviations_file,
    }
    if json_path:
        report = as_json(outcomes, impl, settings, deviations, wall)
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(markdown(outcomes, impl, settings, deviations, wall))
    return 1 if any(o.blocking for o in outcomes) else 0
