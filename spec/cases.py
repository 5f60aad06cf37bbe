"""Cases: small, printable recipes for one attention call.

A Case holds only sizes, options and seeds; `build()` turns it into arrays, deterministically.
A counterexample is therefore a one-line, copy-paste reproduction:

    from refattn.spec.cases import Case
    query, key, value, options = Case(Hq=2, Lq=3, Lk=4, Dk=8, seed=7).build()
    refattn.attention(query, key, value, **options)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np


@dataclass(frozen=True)
class Case:
    """The recipe for one call. Defaults give a plain single-head float64 call."""

    batch: tuple[int, ...] = ()
    Hq: int = 1
    Hkv: int = 1
    Lq: int = 4
    Lk: int = 4
    Dk: int = 8
    Dv: int = 8
    dtype: str = "float64"
    seed: int = 0
    magnitude: float = 1.0  # standard deviation of query, key and value entries
    strided: bool = False  # build q, k, v as non-contiguous views, (B..., L, H, D) in memory
    mask_shape: tuple[int, ...] | None = None  # the mask's broadcast form, if any
    mask_density: float = 0.5  # chance that a mask entry is True
    bias_shape: tuple[int, ...] | None = None
    bias_hidden: float = 0.0  # chance that a bias entry is -inf (hides the key)
    bias_magnitude: float = 1.0  # standard deviation of the finite bias entries
    causal: str | None = None
    window: tuple[int | None, int | None] | None = None
    kv_lengths: tuple[int, ...] | None = None  # one per batch element, flattened
    scale: float | None = None
    softcap: float | None = None

    def build(self):
        """Return (query, key, value, options): the arrays and the keyword options of the call."""
        rng = np.random.default_rng(self.seed)
        dtype = np.dtype(self.dtype)
        query = self._tensor(rng, self.Hq, self.Lq, self.Dk, dtype)
        key = self._tensor(rng, self.Hkv, self.Lk, self.Dk, dtype)
        value = self._tensor(rng, self.Hkv, self.Lk, self.Dv, dtype)
        options = {}
        if self.mask_shape is not None:
            options["mask"] = rng.random(self.mask_shape) < self.mask_density
        if self.bias_shape is not None:
            bias = self.bias_magnitude * rng.standard_normal(self.bias_shape)
            bias[rng.random(self.bias_shape) < self.bias_hidden] = -np.inf
            options["bias"] = bias.astype(dtype)
        if self.causal is not None:
            options["causal"] = self.causal
        if self.window is not None:
            options["window"] = self.window
        if self.kv_lengths is not None:
            options["kv_lengths"] = np.array(self.kv_lengths, dtype=np.int64).reshape(self.batch)
        if self.scale is not None:
            options["scale"] = self.scale
        if self.softcap is not None:
            options["softcap"] = self.softcap
        return query, key, value, options

    def _tensor(self, rng, heads: int, length: int, dim: int, dtype: np.dtype) -> np.ndarray:
        """(B..., heads, length, dim) normal entries times magnitude."""
        shape = (*self.batch, heads, length, dim)
        if not self.strided:
            return (self.magnitude * rng.standard_normal(shape)).astype(dtype)
        # Stored as (B..., length, heads, dim), the layout of a projection's output, and seen
        # through swapaxes: the view a model hands over without copying.
        stored = self.magnitude * rng.standard_normal((*self.batch, length, heads, dim))
        return np.swapaxes(stored.astype(dtype), -2, -3)

    def replace(self, **changes) -> Case:
        return replace(self, **changes)

    def code(self) -> str:
        return _code(self)

    def repro(self, impl_name: str, call: str = "impl(query, key, value, **options)") -> str:
        """A copy-paste reproduction of a call on this case."""
        return (
            "from refattn.adapters import load\n"
            "from refattn.spec.cases import Case\n"
            f"impl = load({impl_name!r})\n"
            f"query, key, value, options = {self.code()}.build()\n"
            f"{call}"
        )


@dataclass(frozen=True)
class Upstream:
    """The recipe for a backward call's upstream gradients: grad_out (dO, out's shape and dtype)
    and, with lse=True, grad_lse (dlse, lse's shape, the compute dtype), for a Case.

        grad_out, grad_lse = Upstream(seed=3, lse=True).build(case)
    """

    seed: int = 0
    zeros: float = 0.0  # the share of entries set to 0 (1.0: every one)
    lse: bool = False  # also a grad_lse (else None)
    step: float | None = None  # round every entry to a multiple of step, within ±4 (exact sums)

    def build(self, case: Case):
        """Return (grad_out, grad_lse or None), standard normal entries (see the fields)."""
        rng = np.random.default_rng((self.seed, 1))  # a stream of its own, not the case's
        rows = (*case.batch, case.Hq, case.Lq)
        compute = np.float64 if case.dtype == "float64" else np.float32
        grad_out = self._entries(rng, (*rows, case.Dv)).astype(case.dtype)
        grad_lse = self._entries(rng, rows).astype(compute) if self.lse else None
        return grad_out, grad_lse

    def _entries(self, rng, shape) -> np.ndarray:
        x = rng.standard_normal(shape)
        if self.step is not None:
            x = np.clip(np.round(x / self.step) * self.step, -4, 4)
        return np.where(rng.random(shape) < self.zeros, 0.0, x)

    def code(self) -> str:
        return _code(self)


@dataclass(frozen=True)
class MHACase:
    """The recipe for a multi-head attention layer and its input x (B..., L, Dm)."""

    batch: tuple[int, ...] = ()
    L: int = 4
    d_model: int = 8
    num_heads: int = 1
    num_kv_heads: int = 1
    head_dim: int = 8
    value_head_dim: int = 8
    dtype: str = "float64"
    seed: int = 0

    def build(self):
        """Return (x, params): the input (B..., L, Dm) and seeded MHAParams."""
        from refattn.mha import MHAParams

        dtype = np.dtype(self.dtype)
        rng = np.random.default_rng(self.seed)
        x = rng.standard_normal((*self.batch, self.L, self.d_model)).astype(dtype)
        params = MHAParams.init(
            self.d_model,
            self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            value_head_dim=self.value_head_dim,
            dtype=dtype,
            seed=self.seed,
        )
        return x, params

    def code(self) -> str:
        return _code(self)

    def repro(self, impl_name: str) -> str:
        return (
            "import refattn\n"
            "from refattn.adapters import load\n"
            "from refattn.spec.cases import MHACase\n"
            f"impl = load({impl_name!r})\n"
            f"x, params = {self.code()}.build()\n"
            f"refattn.multi_head_attention(x, params=params, num_heads={self.num_heads}, "
            f"num_kv_heads={self.num_kv_heads}, attention=impl)"
        )


def _code(recipe) -> str:
    """A recipe as Python source, leaving out the fields at their defaults."""
    defaults = type(recipe)()
    parts = [
        f"{f.name}={getattr(recipe, f.name)!r}"
        for f in fields(recipe)
        if getattr(recipe, f.name) != getattr(defaults, f.name)
    ]
    return f"{type(recipe).__name__}({', '.join(parts)})"
