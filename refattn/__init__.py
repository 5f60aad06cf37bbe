"""refattn: the executable specification of attention.

- `refattn.reference` — the readable NumPy definition of what attention must compute.
- `refattn.attention` — the implementation to call: the native C core (`refattn.native`), with
  the reference's signature and semantics, plus `num_threads=` and `isa=`.
- `refattn.native` — the native core itself, and `refattn.native.info()`.
- `refattn.masks` — the structural masks spelled out as bool arrays.
- `refattn.multi_head_attention`, `MHAParams`, `KVCache` — layers built on any attention function.
- `refattn.merge_partials` — combine attention over disjoint key chunks.
- `refattn.AttentionCall` — one checked call, the vocabulary every part speaks; `refattn.adapters`
  reaches any implementation with it, and `refattn.Unsupported` is what your own attention
  function raises for an option it does not have (the spec then skips, never fails);
  `refattn.declare` says what your function can do beyond what its signature says.
- `refattn.spec` — the invariants, checked against any implementation (imported on its own,
  not by `import refattn`: it pulls in hypothesis).
"""

from refattn import masks, native, reference
from refattn.adapters import Unsupported
from refattn.adapters.function import declare
from refattn.call import AttentionCall
from refattn.mha import KVCache, MHAParams, multi_head_attention
from refattn.native import attention
from refattn.reference import merge_partials
from refattn.similarity import additive_attention, general_attention

__version__ = "0.2.0"

__all__ = [
    "AttentionCall",
    "KVCache",
    "MHAParams",
    "Unsupported",
    "additive_attention",
    "attention",
    "declare",
    "general_attention",
    "masks",
    "merge_partials",
    "multi_head_attention",
    "native",
    "reference",
]
