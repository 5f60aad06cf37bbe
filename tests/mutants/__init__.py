"""A mutation suite for the spec: realistic attention kernel bugs, and correct controls.

"A conformance suite is worth the bugs it catches in code nobody showed it, and the correct
code it leaves alone." Each module holds kernels of one bug class, written to the SDPA
protocol on NumPy (B, H, L, D) arrays (causal_or_mask: the refattn protocol, which can pass a
mask with causal) and independently of refattn (nothing here imports it):

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

# Run by the default `pytest` (about two minutes on 2 cores): one quick mutant of each class,
# and one control. Everything else runs with `pytest -m mutants`.
SAMPLE = (
    "mutants.online_softmax:stale_max_rescale",
    "mutants.split_kv:merge_max_not_sum",
    "mutants.masks:mask_head_zero_for_all",
    "mutants.causal:causal_bottom_right",
    "mutants.gqa:gqa_modulo",
    "mutants.precision:p_half_before_pv",
    "mutants.nan_handling:fully_masked_mean",
    "mutants.options:scale_or_default",
)
SAMPLE_CONTROLS = ("mutants.controls:online_k64_q32",)

# MUST-level mutants that `refattn conform` does not catch at its defaults (100 examples,
# seed 0), each with why; the spec change that would catch it goes in tests/mutants/README.md.
# Their tests are xfail(strict=True): when the spec catches one, remove it from here. Empty
# since the strategies draw tile edges, head dims past 128, long decode keys, masks broadcast
# along the keys, GQA groups up to 8 and scales of both signs (and causal_or_mask moved to the
# refattn protocol, which can pass a mask with causal).
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
