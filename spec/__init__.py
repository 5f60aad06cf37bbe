"""refattn.spec: the executable specification of attention.

Each invariant has a stable ID (ATT-W1, ...), a statement, a formula, a level (MUST or SHOULD),
the capabilities it needs, and a hypothesis property that checks any implementation reached
through an adapter (`refattn.adapters`). `refattn.spec.registry.all_invariants()` lists
them, `refattn.spec.runner` runs them; SPEC.md is rendered from them. Installed as
`refattn.spec`, from the top-level spec/ folder.

This package imports nothing itself, so that its hypothesis-free parts (the oracle, the
tolerance model) load without hypothesis and without the invariants.
"""
