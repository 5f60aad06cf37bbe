"""The spec against the native core: every invariant, the gradient ones (ATT-G) against its
backward, for each instruction set this machine runs and for 1 and 2 threads. The test id
carries the invariant ID, the ISA and the threads.

The strategies draw Lq and Lk up to 320 and Dk, Dv up to 128, past the kernels' tiles (96 query
rows and 256 keys for AVX-512, 96 and 128 for AVX2, 32 and 64 for scalar) and their register
blocks (6 rows; 16 or 8 keys per panel), so tile and vector tails are part of every run.
bfloat16 draws reach the scalar bfloat16 kernels under "scalar", and the float32 ones (bfloat16
converted) under "avx512" and "avx2".
"""

from functools import partial

import pytest
from refattn.spec.registry import all_invariants
from refattn.spec.runner import property_test

from refattn import native
from refattn.adapters import Adapter

INVARIANTS = all_invariants()
THREADS = (1, 2)
# float32 and float16 under "amx_bf16" and "avx512_bf16" run the "avx512" kernels: their own,
# the bfloat16 ones, are checked against every invariant in tests/test_native_low_precision.py,
# bfloat16 drawn alone.
PARAMS = [
    pytest.param(inv, isa, threads, id=f"{inv.id}-{isa}-{threads}threads")
    for isa in native.available_isas()
    if isa not in native.BFLOAT16_ONLY_ISAS
    for threads in THREADS
    for inv in INVARIANTS
]


@pytest.mark.parametrize(("inv", "isa", "threads"), PARAMS)
def test_native_conforms(inv, isa, threads):
    """The native core, with `isa` kernels on `threads` threads, satisfies invariant `inv`."""
    impl = Adapter.of(
        f"native:{isa}",
        partial(native.attention, isa=isa, num_threads=threads),
        backward=partial(native.attention_backward, isa=isa, num_threads=threads),
    )
    assert set(inv.requires) <= impl.capabilities  # the gradient invariants too
    property_test(inv, impl)()
