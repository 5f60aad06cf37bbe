"""The registry of invariants: stable IDs, statements, formulas, levels and their properties."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from refattn.capabilities import CAPABILITIES

MUST = "MUST"
SHOULD = "SHOULD"

# One section per group of invariants, in the order SPEC.md presents them.
SECTIONS = {
    "W": "Weights",
    "M": "Masks",
    "S": "Scaling",
    "H": "Heads",
    "A": "Algebra",
    "N": "Numerics",
    "C": "Composition",
    "D": "Shapes",
    "G": "Gradients",
}

_ID = re.compile(r"^ATT-([A-Z])(\d+)$")


@dataclass(frozen=True)
class Invariant:
    """One statement of the spec, and the hypothesis property that checks it.

    `check(impl, data)` draws its inputs from `data` (hypothesis' st.data()) and raises
    AssertionError, with a reproduction in the message, when `impl` breaks the statement.
    """

    id: str
    title: str
    level: str
    statement: str
    formula: str
    rationale: str
    requires: tuple[str, ...]
    check: Callable = field(repr=False, compare=False)

    @property
    def section(self) -> str:
        return SECTIONS[_ID.match(self.id).group(1)]


INVARIANTS: dict[str, Invariant] = {}


def invariant(*, id, title, level, statement, formula, rationale, requires=()):
    """Register the decorated property `check(impl, data)` as invariant `id`."""
    match = _ID.match(id)
    if not match or match.group(1) not in SECTIONS:
        raise ValueError(f"id should look like ATT-<section letter><number>, but got {id!r}")
    if id in INVARIANTS:
        raise ValueError(f"invariant {id} is registered twice")
    if level not in (MUST, SHOULD):
        raise ValueError(f"level should be MUST or SHOULD, but got {level!r}")
    unknown = set(requires) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"{id} requires unknown capabilities {sorted(unknown)}")

    def register(check):
        INVARIANTS[id] = Invariant(
            id=id,
            title=title,
            level=level,
            statement=_dedent(statement),
            formula=formula.strip(),
            rationale=_dedent(rationale),
            requires=tuple(requires),
            check=check,
        )
        return check

    return register


def _dedent(text: str) -> str:
    return " ".join(text.split())


def sort_key(inv: Invariant) -> tuple[int, int]:
    letter, number = _ID.match(inv.id).groups()
    return list(SECTIONS).index(letter), int(number)


def all_invariants() -> list[Invariant]:
    """Every registered invariant, in SPEC.md order."""
    import refattn.spec.invariants  # noqa: F401  (registers them on import)

    return sorted(INVARIANTS.values(), key=sort_key)
