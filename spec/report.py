"""Conformance reports: a terminal table, Markdown and JSON."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone

from spec.runner import DEVIATION, FAIL, PASS, SKIP, Outcome

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
    counts = {s: sum(o.status == s for o in outcomes) for s in (PASS, FAIL, DEVIATION, SKIP)}
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
    details = [o for o in outcomes if o.status in (FAIL, DEVIATION, SKIP)]
    if details:
        lines.append("")
    for o in details:
        lines.append(f"{o.id} {o.status}: " + o.detail.replace("\n", "\n    "))
    lines += ["", f"{impl_name} {summary(outcomes)}"]
    return "\n".join(lines)


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def as_json(outcomes: list[Outcome], impl, settings: dict) -> dict:
    """Machine-readable: implementation, versions, machine, settings, per-invariant results."""
    return {
        "implementation": impl.name,
        "versions": impl.versions(),
        "capabilities": sorted(impl.capabilities),
        "declared_deviations": dict(impl.deviations),
        "machine": machine(),
        "settings": settings,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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


def markdown(outcomes: list[Outcome], impl, settings: dict) -> str:
    """A report for docs/conformance/<impl>.md."""
    versions = ", ".join(f"{k} {v}" for k, v in impl.versions().items())
    lines = [
        f"# Conformance of `{impl.name}`",
        "",
        f"{summary(outcomes)}.",
        "",
        f"- versions: {versions}",
        "- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        f"- capabilities: {', '.join(sorted(impl.capabilities))}",
        "",
        "| ID | title | level | status | examples |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        examples = str(o.examples) if o.status != SKIP else "-"
        lines.append(
            f"| [{o.id}](../../SPEC.md#{o.id.lower()}) | {o.title} | {o.level} | "
            f"{o.status} | {examples} |"
        )
    details = [o for o in outcomes if o.status in (FAIL, DEVIATION, SKIP)]
    if details:
        lines += ["", "## Details", ""]
    for o in details:
        lines += [f"### {o.id} — {o.status}", "", "```", o.detail, "```", ""]
    return "\n".join(lines).rstrip() + "\n"
