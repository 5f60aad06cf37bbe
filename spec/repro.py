"""Reproductions: a failing check written out as code that, run as printed, shows the failure.

A reproduction holds every input of the failing example (each call the property made, in the
order it made them; a backward call with its grad_out and grad_lse), each call written in the
implementation's own protocol (a user's SDPA function is called as
`sdpa(query, key, value, attn_mask=..., is_causal=...)`, its backward as
`sdpa.backward(query, key, value, grad_out, ...)`, not through refattn), and the spec's expected
value for what was compared. Small inputs are written inline; larger ones go to an .npz file
that the snippet loads.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refattn.dtypes import is_float

INLINE_BYTES = 2048  # inputs up to this size are written into the snippet itself


@dataclass
class Reproduction:
    """The code of a failing check and the arrays it needs (named as the code uses them)."""

    setup: list[str]  # import lines and the like
    calls: list[str]  # one statement per call of the example, `out0 = ...`
    notes: list[str]  # what the check compared, as comments
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def text(self, directory: Path | str | None = None, name: str = "repro") -> str:
        """The snippet: inline arrays when they are small, else an .npz in `directory` (a
        temporary folder by default) that the snippet loads."""
        lines = ["import numpy as np", *self.setup]
        if sum(a.nbytes for a in self.arrays.values()) <= INLINE_BYTES:
            if any(is_float(a.dtype) and not np.isfinite(a).all() for a in self.arrays.values()):
                lines.append("nan, inf = np.nan, np.inf")
            entries = ",\n".join(f"    {k!r}: {_literal(a)}" for k, a in self.arrays.items())
            lines.append("data = {\n" + entries + ",\n}" if entries else "data = {}")
        else:
            path = self.save(directory, name)
            lines.append(f"data = np.load({str(path)!r})  # every input of the failing check")
        return "\n".join([*lines, *self.calls, *self.notes])

    def save(self, directory: Path | str | None, name: str) -> Path:
        """Write the arrays to `directory`/`name`-<digest>.npz; return the path."""
        folder = Path(directory) if directory is not None else default_directory()
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1()
        for key, array in self.arrays.items():
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        path = folder / f"{_safe(name)}-{digest.hexdigest()[:8]}.npz"
        np.savez(path, **self.arrays)
        return path


def default_directory() -> Path:
    return Path(tempfile.gettempdir()) / "refattn-repro"


def reproduction(impl, example, failure) -> Reproduction:
    """The reproduction of a failed check: every call of `example` in `impl`'s own protocol,
    each call's distance from the spec's own value of its output, and the two sides the check
    compared."""
    from refattn.spec.checking import GradientsCall
    from refattn.spec.tolerance import expect

    setup: list[str] = []
    calls: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    for i, call in enumerate(example.calls):
        if isinstance(call, GradientsCall):
            snippet = _gradients(impl, call, i, calls, arrays)
            setup += [line for line in snippet.setup if line not in setup]
            continue
        snippet = impl.snippet(call, f"c{i}_")
        setup += [line for line in snippet.setup if line not in setup]
        arrays.update(snippet.arrays)
        extras = call.return_lse or call.return_weights
        calls.append(f"out{i}{', *extras' + str(i) if extras else ''} = {snippet.code}")
        spec = expect(call.query, call.key, call.value, **call.options())
        arrays[f"spec{i}"] = spec.out
        calls.append(
            f'print("out{i}: largest difference from the spec\'s value", '
            f'np.abs(np.asarray(out{i}, float).reshape(data["spec{i}"].shape) - data["spec{i}"])'
            f'.max(initial=0), "(tolerance {spec.tol.out:.3g})")'
        )
    notes = [f"# the check: {failure.what}" + (f"; {failure.how}" if failure.how else "")]
    for name, value in (("got", failure.got), ("against", failure.want)):
        if isinstance(value, np.ndarray) or np.isscalar(value):
            arrays[name] = np.asarray(value)
    if "got" in arrays and "against" in arrays:
        notes.append('got, against = data["got"], data["against"]  # what the check compared')
        if failure.atol is not None and np.ndim(failure.atol) == 0:
            notes.append(
                'print("the check: largest difference", np.abs(np.asarray(got, float) - '
                f'against).max(initial=0), "(allowed {float(failure.atol):.3g})")'
            )
        elif failure.atol is not None:  # a bound per element
            arrays["allowed"] = np.broadcast_to(failure.atol, np.shape(failure.want)).copy()
            notes.append(
                'print("the check: elements beyond their bound", '
                'int((np.abs(np.asarray(got, float) - against) > data["allowed"]).sum()))'
            )
    return Reproduction(setup, calls, notes, arrays)


def _gradients(impl, logged, i: int, calls: list[str], arrays: dict):
    """A backward call of the example: `grads{i} = ...` in the implementation's own protocol (it
    holds dq, dk, dv and dbias in that order), each gradient's distance from the spec's value."""
    from refattn.spec.tolerance import expect_gradients

    call = logged.call
    snippet = impl.gradients_snippet(call, logged.grad_out, logged.grad_lse, f"c{i}_")
    arrays.update(snippet.arrays)
    calls.append(f"grads{i} = {snippet.code}")
    options = call.options()
    spec = expect_gradients(
        call.query, call.key, call.value, logged.grad_out, logged.grad_lse, **options
    )
    for n, name in enumerate(("query", "key", "value", "bias")):
        want = getattr(spec, name)
        if want is None:
            continue
        arrays[f"spec{i}_d{name}"] = want
        spec_name = f'data["spec{i}_d{name}"]'
        got = f"np.asarray(grads{i}[{n}], float)"
        line = (
            f'print("grads{i} d{name}: largest difference from the spec\'s value", '
            f"np.abs({got}.reshape({spec_name}.shape) - {spec_name}).max(initial=0), "
            f'"(tolerance {getattr(spec.tol, name):.3g})")'
        )
        if name == "bias":  # a protocol may return it in the (broadcast) shape it was given
            line = f"if np.size(grads{i}[3]) == {spec_name}.size:\n    {line}"
        calls.append(line)
    return snippet


def _literal(array: np.ndarray) -> str:
    """An array as Python source that rebuilds it exactly (float32 values round-trip through
    their float64 repr)."""
    body = repr(array.item() if array.ndim == 0 else array.tolist())  # nan, inf: defined above
    return f"np.array({body}, dtype={array.dtype.name!r})"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
