"""A mutation suite for the spec: realistic attention kernel bugs, and correct controls.

"A conformance suite is worth the bugs it catches in code nobody showed it, and the correct
code it leaves alone." Each module holds kernels of one bug class, written to the SDPA
protocol on NumPy (B, H, L, D) arrays and independently of refattn (nothing here imports it):

    online_softmax  blocked online softmax over key (and query) tiles, FlashAttention-style
    split_kv        split-KV / decode merges of partial outputs by their lse
    masks           mask broadcasting, layouts, bool vs float masks
    causal          the causal diagonal, alignment, special cases, tile skipping
    gqa             which kv head serves query head h
    precision       dtypes of the steps, lossy tricks
    nan_handling    fully masked rows, NaN and Inf
    options         scale, Dv != Dk, empty sequences, batch
    controls        correct kernels, written differently from refattn.reference

Every module has a table MUTANTS = {name: (expected invariant IDs, level)}: the invariants
the bug should fail, MUST when a MUST invariant should catch it, SHOULD when only a SHOULD
one can. With tests/ on the path (pytest puts it there) each loads by name:

    PYTHONPATH=tests refattn conform mutants.online_softmax:stale_max_rescale

tests/test_mutants.py checks that each MUST-level mutant fails `refattn conform` at its
defaults (100 examples, seed 0), that each SHOULD-level one fails its SHOULD invariant, and
that the controls pass everything. The mutants that survive the defaults are listed in
SURVIVORS below, each with why; their tests are strict xfails, so that strengthening the spec
flips them and someone removes the entry.
"""

import importlib

MODULES = (
    "online_softmax",
    "split_kv",
    "masks",
    "causal",
    "gqa",
    "precision",
    "nan_handling",
    "options",
)

CONTROLS = (
    "mutants.controls:two_pass_float64",
    "mutants.controls:online_k16",
    "mutants.controls:online_k64_q32",
    "mutants.controls:online_k128",
    "mutants.controls:split_kv_lse",
)

# Run by the default `pytest` (a few minutes on 2 cores): one or two mutants of each class,
# and one control. Everything else runs with `pytest -m mutants`.
SAMPLE = ()
SAMPLE_CONTROLS = ("mutants.controls:online_k64_q32",)

# MUST-level mutants that `refattn conform` does not catch at its defaults (100 examples,
# seed 0), and why. Their tests are xfail(strict=True): when the spec catches one, remove it.
SURVIVORS: dict[str, str] = {}


def registry() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """Every mutant by its loadable name, 'mutants.<module>:<function>' ->
    (its class, the invariant IDs expected to catch it, "MUST" or "SHOULD")."""
    found = {}
    for module_name in MODULES:
        module = importlib.import_module(f"mutants.{module_name}")
        for name, (expected, level) in module.MUTANTS.items():
            if not callable(getattr(module, name, None)):
                raise AttributeError(f"mutants.{module_name}.MUTANTS names {name!r}, no function")
            found[f"mutants.{module_name}:{name}"] = (module_name, tuple(expected), level)
    return found
