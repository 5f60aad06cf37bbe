"""refattn.spec: the executable specification of attention.

Each invariant has a stable ID (ATT-W1, ...), a statement, a formula, a level (MUST or SHOULD),
the capabilities it needs, and a hypothesis property that checks any implementation reached
through an adapter (`refattn.spec.adapters`). `refattn.spec.runner` runs them; SPEC.md is
rendered from them. Installed as `refattn.spec`, from the top-level spec/ folder.
"""

from refattn.spec.registry import MUST, SHOULD, Invariant, all_invariants

__all__ = ["MUST", "SHOULD", "Invariant", "all_invariants"]
