"""Conformance reports: a terminal table, Markdown and JSON."""

from __future__ import annotations

from datetime import datetime, timezone

from refattn.spec.registry import all_invariants
from refattn.spec.runner import DEVIATION, DIFFERS, FAIL, PASS, SKIP, Outcome

from refattn import machine
from refattn.capabilities import CAPABILITIES, exclusive_pairs

_COLUMNS = ("ID", "title", "level", "status", "examples", "time")


def _rows(outcomes: list[Outcome]) -> list[tuple[str, ...]]:
    return [
        (
            o.id,
            o.title,
            o.level,
            o.status,
            str(o.examples) if o.status != SKIP else "-",
            f"{o.seconds:.1f}s",
        )
        for o in outcomes
    ]


def summary(outcomes: list[Outcome]) -> str:
    statuses = (PASS, FAIL, DIFFERS, DEVIATION, SKIP)
    counts = {s: sum(o.status == s for o in outcomes) for s in statuses}
    if not counts[DIFFERS]:
        del counts[DIFFERS]  # a line only when semantics are declared
    must_failed = sum(o.blocking for o in outcomes)
    verdict = "conforms" if not must_failed else f"does NOT conform ({must_failed} MUST failed)"
    return f"{verdict}: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def table(outcomes: list[Outcome], impl_name: str) -> str:
    """The terminal report: one row per invariant, then the details of what did not pass."""
    rows = [_COLUMNS, *_rows(outcomes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [f"refattn conform {impl_name}", ""]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    details = [o for o in outcomes if o.status in (FAIL, DIFFERS, DEVIATION, SKIP)]
    if details:
        lines.append("")
    for o in details:
        lines.append(f"{o.id} {o.status}: " + o.detail.replace("\n", "\n    "))
    total = sum(o.seconds for o in outcomes)
    lines += ["", f"{impl_name} {summary(outcomes)} ({total:.0f}s)"]
    return "\n".join(lines)


def _duration(total: float, wall: float | None, settings: dict) -> str:
    jobs = settings.get("jobs", 1)
    if wall is None:
        return f"{total:.0f} s in the invariants"
    return f"{wall:.0f} s wall time ({total:.0f} s in the invariants, {jobs} job(s))"


def capability_text(capabilities) -> str:
    """The capabilities, with the masking pairs that do not combine."""
    text = ", ".join(sorted(capabilities))
    pairs = sorted("+".join(sorted(p)) for p in exclusive_pairs(capabilities))
    return text + (f" (never combined: {', '.join(pairs)})" if pairs else "")


def as_json(outcomes: list[Outcome], impl, settings: dict, deviations=None, wall=None) -> dict:
    """Machine-readable: implementation, versions, machine, settings, per-invariant results."""
    return {
        "implementation": impl.name,
        "versions": impl.versions(),
        "capabilities": sorted(impl.capabilities),
        "semantics": getattr(impl, "semantics", None) and impl.semantics.differing(),
        "exclusive_pairs": sorted(sorted(p) for p in exclusive_pairs(impl.capabilities)),
        "declared_deviations": dict(impl.deviations if deviations is None else deviations),
        "notes": list(getattr(impl, "notes", ())),
        "machine": machine.describe(),
        "settings": settings,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(sum(o.seconds for o in outcomes), 1),  # in the invariants
        "wall_seconds": None if wall is None else round(wall, 1),
        "summary": summary(outcomes),
        "conforms": not any(o.blocking for o in outcomes),
        "results": [
            {
                "id": o.id,
                "title": o.title,
                "level": o.level,
                "status": o.status,
                "examples": o.examples,
                "seconds": round(o.seconds, 3),
                "detail": o.detail,
            }
            for o in outcomes
        ],
    }


def markdown(
    outcomes: list[Outcome], impl, settings: dict, deviations=None, wall=None, spec_md=None
) -> str:
    """A report for docs/conformance/<impl>.md. spec_md: the path of SPEC.md relative to the
    report, for links to each invariant; None (a report outside the repository) writes each
    failing invariant's statement into the report instead."""
    deviations = dict(impl.deviations if deviations is None else deviations)
    versions = ", ".join(f"{k} {v}" for k, v in impl.versions().items())
    box = machine.describe()
    total = sum(o.seconds for o in outcomes)
    lacking = sorted(set(CAPABILITIES) - set(impl.capabilities))
    lines = [
        f"# Conformance of `{impl.name}`",
        "",
        f"**{summary(outcomes)}.**",
        "",
        f"- versions: {versions}",
        f"- machine: {box['processor']} ({' '.join(box['isa_flags']) or 'no SIMD flags read'}), "
        f"{box['cpu_count']} CPUs, {box['platform']}",
        "- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        f"- run: {datetime.now(timezone.utc):%Y-%m-%d}, {_duration(total, wall, settings)}",
        f"- capabilities: {capability_text(impl.capabilities)}",
        f"- semantics: {getattr(impl, 'semantics', 'the spec')}",
        f"- not claimed: {', '.join(lacking) or 'none'}",
    ]
    notes = list(getattr(impl, "notes", ()))
    if notes:
        lines += ["", "## How the implementation is called", ""]
        lines += [f"- {note}" for note in notes]
    if deviations:
        lines += ["", "## Declared deviations", ""]
        lines += [f"- {inv_id}: {reason}" for inv_id, reason in sorted(deviations.items())]
    lines += [
        "",
        "## Results",
        "",
        "| ID | title | level | status | examples | time |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        examples = str(o.examples) if o.status != SKIP else "-"
        name = f"[{o.id}]({spec_md}#{o.id.lower()})" if spec_md else o.id
        lines.append(
            f"| {name} | {o.title} | {o.level} | {o.status} | {examples} | {o.seconds:.1f}s |"
        )
    details = [o for o in outcomes if o.status in (FAIL, DIFFERS, DEVIATION, SKIP)]
    if details:
        lines += ["", "## Details", ""]
    statements = {} if spec_md else {inv.id: inv.statement for inv in all_invariants()}
    for o in details:
        lines += [f"### {o.id} — {o.status}", ""]
        if o.id in statements and o.status == FAIL:
            lines += [f"> {statements[o.id]}", ""]
        lines += ["```", o.detail, "```", ""]
    return "\n".join(lines).rstrip() + "\n"
