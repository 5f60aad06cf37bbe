"""Adapters: every implementation reached through one call type, `refattn.call.AttentionCall`.

An adapter says what an implementation can do (`capabilities`) and where it knowingly differs
from the spec (`deviations`, ID -> reason), and prepares a call for it in three steps that
`refattn conform` and `refattn bench` share:

    prepared = adapter.prepare(call)   the inputs in the implementation's own array type,
                                       layout and option names (torch tensors, an ONNX session)
    returned = prepared.run()          the implementation's own call, and nothing else: this is
                                       what the bench times
    result = prepared.output(returned) back to a Result of NumPy arrays in refattn's layout

`adapter.result(call)` does all three, after refusing, with Unsupported, a call that needs a
capability the adapter does not claim: refusals are derived from the capabilities here, once,
never written by an adapter. `adapter(query, key, value, **options)` is the reference's own
protocol, for the layers (`refattn.multi_head_attention(..., attention=adapter)`).

Adapters translate layouts and option names; they never emulate a missing feature, because then
the spec would be checking the adapter instead of the implementation.

Implementations by name (`load`):

    reference       refattn.reference.attention
    native          refattn.native.attention, the C core with the kernels it picks
    native:ISA      the same with the kernels of one instruction set (avx512, avx2, scalar)
    numpy           the textbook formula in NumPy, softmax(q·kᵀ/sqrt(D))·v (a baseline)
    torch           torch.nn.functional.scaled_dot_product_attention, CPU, default backend
    torch-math      the same, forced to the math backend (torch.nn.attention.sdpa_kernel)
    torch-flash     the same, forced to the CPU flash backend
    jax             jax.nn.dot_product_attention, XLA on the CPU
    onnxruntime     a one-node ONNX model with the Attention op, run by onnxruntime
    onnx-reference  the same model run by onnx.reference.ReferenceEvaluator
    module.path:fn  a user's function following the SDPA protocol (refattn.adapters.function)
"""

from __future__ import annotations

import functools
import importlib
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from refattn.call import AttentionCall, Result, call_signature
from refattn.capabilities import ALL, Capabilities, Semantics, combinable, exclusive_pairs


class ImplementationNotFound(LookupError):
    """The name does not refer to a known implementation or an importable function."""


class PeerNotInstalled(ImportError):
    """A peer implementation's package is missing; the message names the extra to install."""


class Unsupported(NotImplementedError):
    """A call the implementation cannot run. Raise it (or NotImplementedError) from your own
    attention function for an option it does not have: the spec then sets that example aside
    and reports the reason (an invariant none of whose examples ran is a SKIP), never a FAIL.

    `derived` marks refattn's own refusal of a call that needs a capability the adapter does
    not claim (Adapter.refusal): the spec draws only what is claimed, so meeting one there is a
    bug of the spec's, reported as a failure."""

    def __init__(self, message: str = "", *, derived: bool = False):
        super().__init__(message)
        self.derived = derived


class WrongReturn(TypeError):
    """The implementation returned something other than what the call asks for."""


@dataclass(frozen=True)
class Prepared:
    """A call made ready for one implementation: `run()` is the implementation's own call,
    `output(returned)` turns what it returned into a Result in refattn's layout."""

    run: Callable[[], object]
    output: Callable[[object], Result]


@dataclass(frozen=True)
class Snippet:
    """A call written as code in the implementation's own protocol, for reproductions: `setup`
    lines (imports), an expression `code` that refers to its arrays as data["name"]."""

    setup: tuple[str, ...]
    code: str
    arrays: dict


def reference_snippet(call: AttentionCall, prefix: str, function: str, setup, **fixed) -> Snippet:
    """`function(query, key, value, **options)`: a call in the reference's own protocol."""
    arrays, arguments = {}, []
    for name in ("query", "key", "value"):
        arrays[prefix + name] = getattr(call, name)
        arguments.append(f'data["{prefix}{name}"]')
    for name, value in {**call.options(), **fixed}.items():
        if isinstance(value, np.ndarray):
            arrays[prefix + name] = value
            arguments.append(f'{name}=data["{prefix}{name}"]')
        else:
            arguments.append(f"{name}={value!r}")
    return Snippet(tuple(setup), f"{function}({', '.join(arguments)})", arrays)


@dataclass(frozen=True)
class Adapter:
    """An implementation: what it can do, and how to prepare a call for it."""

    name: str
    prepare: Callable[[AttentionCall], Prepared] = field(repr=False)
    capabilities: frozenset = ALL
    semantics: Semantics = field(default_factory=Semantics)  # where the spec chooses: its choices
    deviations: Mapping[str, str] = field(default_factory=dict)
    packages: tuple[str, ...] = ()  # distributions whose versions the reports show
    notes: tuple[str, ...] = ()  # how the implementation is called; why a capability is not claimed
    title: str = ""  # how tables and plots name it (default: the name)
    threads_how: str = ""  # how its threads were set, when `load` was given a count
    # For refattn bench: the working memory of a call, in arrays the size of the (B, H, Lq, Lk)
    # scores (0: it streams over the keys), used to skip a case that would not fit; and the
    # largest B·H·Lq·Lk the default grid times it at (None: every case).
    score_copies: float = 0.0
    bench_max_scores: int | None = None
    # How a reproduction writes a call: Snippet for (call, prefix of its array names), in the
    # implementation's own protocol; None: through refattn, `load(name)(query, key, value, ...)`.
    snippet_of: Callable[[AttentionCall, str], Snippet] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, name: str, function: Callable, capabilities=ALL, **fields) -> Adapter:
        """The adapter of a NumPy function with the reference's own protocol,
        function(query, key, value, **options) -> out or (out, lse?, weights?)."""
        return cls(name, reference_protocol(function), capabilities, **fields)

    def refusal(self, call: AttentionCall) -> str | None:
        """Why this implementation cannot run `call` (a capability it lacks), or None."""
        missing = sorted(call.needs() - self.capabilities)
        if missing:
            return f"{self.name} does not claim {', '.join(missing)}, which {call.describe()} needs"
        features = call.masking()
        for i, first in enumerate(features):
            for second in features[i + 1 :]:
                if not combinable(self.capabilities, first, second):
                    return f"{self.name} cannot combine {first} and {second} in one call"
        return None

    def result(self, call: AttentionCall) -> Result:
        """Run `call`: refuse it (Unsupported) if it needs what the adapter lacks, else prepare,
        run and convert its output."""
        why = self.refusal(call)
        if why:
            raise Unsupported(why, derived=True)
        prepared = self.prepare(call)
        returned = prepared.run()
        try:
            result = prepared.output(returned)
        except WrongReturn:
            raise
        except Exception as error:  # what came back is not what the call asks for
            raise WrongReturn(
                f"returned {_kind(returned)}, which cannot be read: {error}"
            ) from None
        _check_shapes(call, result)
        return result

    @call_signature
    def __call__(self, query, key, value, **options):
        """The reference's protocol: arrays and keyword options in, out (and lse, weights) out."""
        call = AttentionCall.check(query, key, value, **options)
        return call.returns(*self.result(call))

    def snippet(self, call: AttentionCall, prefix: str = "") -> Snippet:
        """The call as code, for a reproduction (see Snippet)."""
        if self.snippet_of is not None:
            return self.snippet_of(call, prefix)
        setup = ("from refattn.adapters import load", f"impl = load({self.name!r})")
        return reference_snippet(call, prefix, "impl", setup)

    @property
    def label(self) -> str:
        return self.title or self.name

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        found = {"python": platform.python_version(), "numpy": np.__version__}
        for package in ("refattn", *self.packages):
            try:
                found[package] = version(package)
            except PackageNotFoundError:
                found[package] = "not installed"
        return found


def returned_result(call: AttentionCall, returned) -> Result:
    """What a function with the reference's protocol returned, as a Result: one array when the
    call asks for neither lse nor weights, else a tuple (out, lse?, weights?) in that order."""
    wanted = ["out"] + ["lse"] * call.return_lse + ["weights"] * call.return_weights
    if len(wanted) == 1:
        parts = [returned]
    elif isinstance(returned, tuple | list) and len(returned) == len(wanted):
        parts = list(returned)
    else:
        raise WrongReturn(
            f"returned {_kind(returned)}, but the call asks for a tuple ({', '.join(wanted)})"
        )
    arrays = {name: returned_array(part, name) for name, part in zip(wanted, parts, strict=True)}
    return Result(arrays["out"], arrays.get("lse"), arrays.get("weights"))


def returned_array(x, name: str = "out") -> np.ndarray:
    """What an implementation returned as one output, as a NumPy array; WrongReturn if it is
    not an array (None, a tuple, ...)."""
    if x is None or isinstance(x, tuple | list | dict | str | bytes):
        raise WrongReturn(f"returned {_kind(x)} as {name}, but {name} should be an array")
    return np.asarray(x)


def _check_shapes(call: AttentionCall, result: Result) -> None:
    """WrongReturn unless out, lse and weights have the shapes the call asks for."""
    expected = {
        "out": ((*call.batch_shape, call.Hq, call.Lq, call.Dv), "(B..., Hq, Lq, Dv)"),
        "lse": ((*call.batch_shape, call.Hq, call.Lq), "(B..., Hq, Lq)"),
        "weights": (call.scores_shape, "(B..., Hq, Lq, Lk)"),
    }
    for name, array in zip(result._fields, result, strict=True):
        shape, letters = expected[name]
        if array is not None and array.shape != shape:
            raise WrongReturn(
                f"returned {_kind(array)} as {name}, but {name} should be {letters} = {shape}"
            )


def _kind(x) -> str:
    if isinstance(x, tuple | list):
        return f"a {type(x).__name__} of {len(x)}"
    if isinstance(x, np.ndarray):
        return f"an array {x.dtype} {x.shape}"
    return "None" if x is None else f"a {type(x).__name__}"


def reference_protocol(function: Callable, **fixed) -> Callable[[AttentionCall], Prepared]:
    """`prepare` for a NumPy function with the reference's own protocol (fixed keywords added)."""

    def prepare(call: AttentionCall) -> Prepared:
        run = functools.partial(
            function, call.query, call.key, call.value, **call.options(), **fixed
        )
        return Prepared(run, functools.partial(returned_result, call))

    return prepare


def require(module: str, *, extra: str, implementation: str):
    """Import a peer's module, or raise PeerNotInstalled naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] != module.split(".")[0]:
            raise  # the peer is there but broken: show the real error
        raise PeerNotInstalled(
            f"{implementation} needs {module}, which is not installed: "
            f"pip install 'refattn[{extra}]'"
        ) from None


def refuse(implementation: str, **options) -> None:
    """Raise Unsupported for the first option that is given (not None, not False): for what an
    implementation cannot take although it claims the capability (say, one input dtype)."""
    for name, value in options.items():
        if value is not None and value is not False:
            raise Unsupported(f"{implementation} has no {name} (got {name}={_short(value)})")


def _short(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape}"
    return repr(value)


_OPENBLAS_THREADS = (
    "OpenBLAS: OPENBLAS_NUM_THREADS={n} and OPENBLAS_THREAD_TIMEOUT=22 before import "
    "(the rest of NumPy is single-threaded)"
)


def _reference(threads: int | None = None) -> Adapter:
    from refattn import reference

    setup = ("from refattn import reference",)
    return Adapter(
        "reference",
        reference_protocol(reference.attention),
        snippet_of=lambda call, p: reference_snippet(call, p, "reference.attention", setup),
        title="refattn.reference",
        threads_how=_OPENBLAS_THREADS,
        score_copies=4.5,
        bench_max_scores=2**25,  # (1,8,2048,64): the readable one is slow by design
    )


def _native(isa: str | None = None) -> Callable[..., Adapter]:
    """The native core, with the kernels it picks (isa None) or those of one instruction set."""

    def factory(threads: int | None = None) -> Adapter:
        from refattn import native

        name = "native" if isa is None else f"native:{isa}"
        if isa is not None and isa not in native.available_isas():
            raise ImplementationNotFound(
                f"{name} needs the {isa} kernels, which this CPU (or this build) cannot run; "
                f"available: {', '.join('native:' + n for n in native.available_isas())}"
            )
        fixed = {"isa": isa} if isa else {}
        if threads is not None:
            fixed["num_threads"] = threads
        setup = ("from refattn import native",)
        return Adapter(
            name,
            reference_protocol(native.attention, **fixed),
            snippet_of=lambda call, p: reference_snippet(
                call, p, "native.attention", setup, **fixed
            ),
            title="refattn.native",
            threads_how="num_threads={n} on every call",
        )

    return factory


def _numpy(threads: int | None = None) -> Adapter:
    from refattn.adapters import naive

    return naive.adapter()


def _torch(backend: str | None) -> Callable[..., Adapter]:
    def factory(threads: int | None = None) -> Adapter:
        from refattn.adapters import torch_sdpa

        return torch_sdpa.adapter(backend, threads)

    return factory


def _jax(threads: int | None = None) -> Adapter:
    from refattn.adapters import jax_dpa

    return jax_dpa.adapter()


def _onnx(runtime: str) -> Callable[..., Adapter]:
    def factory(threads: int | None = None) -> Adapter:
        from refattn.adapters import onnx_attention

        return onnx_attention.adapter(runtime, threads)

    return factory


# Name -> factory(threads=None). Add an implementation here (and to
# refattn.spec.publish.IMPLEMENTATIONS to publish its conformance report).
BUILTIN: dict[str, Callable[..., Adapter]] = {
    "reference": _reference,
    "native": _native(),
    "native:avx512": _native("avx512"),
    "native:avx2": _native("avx2"),
    "native:scalar": _native("scalar"),
    "numpy": _numpy,
    "torch": _torch(None),
    "torch-math": _torch("math"),
    "torch-flash": _torch("flash"),
    "jax": _jax,
    "onnxruntime": _onnx("onnxruntime"),
    "onnx-reference": _onnx("reference"),
}


def load(
    name: str,
    *,
    threads: int | None = None,
    protocol=None,
    with_=(),
    without=(),
    semantics=None,
    framework=None,
    device=None,
) -> Adapter:
    """The adapter for an implementation name (see `BUILTIN`) or `module.path:function`.

    threads: run it with this many threads, set the way its library offers (`threads_how`
    says how); None leaves the library's default. Some libraries read their thread settings
    when they load (OpenBLAS, OpenMP): `refattn bench` sets those in a fresh process first.
    protocol, with_, without, semantics, framework, device: what a user's function is, takes
    and can do beyond what its signature says (refattn.adapters.function); `without` also
    narrows a built-in one.
    """
    if name in BUILTIN:
        if protocol is not None or with_ or semantics is not None or framework or device:
            raise ImplementationNotFound(
                f"{name} is built in: its capabilities and semantics are its adapter's; "
                "--protocol, --with and --semantics are for your own functions (--without "
                "narrows a run)"
            )
        impl = BUILTIN[name](threads=threads)
        if without:
            from dataclasses import replace

            from refattn.adapters.function import check_declaration

            check_declaration(without=without, where=name)
            kept = Capabilities(
                impl.capabilities - set(without), exclusive=exclusive_pairs(impl.capabilities)
            )
            impl = replace(impl, capabilities=kept)
        return impl
    family = name.partition(":")[0]
    variants = [n for n in BUILTIN if n.startswith(family + ":")]
    if variants:  # native:avx9: a variant of a built-in, not a module path
        raise ImplementationNotFound(
            f"{name!r} is not one of {family}'s variants: {', '.join(variants)}"
        )
    if ":" in name:
        from refattn.adapters import function

        return function.adapter(
            name,
            protocol=protocol,
            with_=with_,
            without=without,
            semantics=semantics,
            framework=framework,
            device=device,
        )
    known = ", ".join(BUILTIN)
    raise ImplementationNotFound(
        f"implementation should be one of {known}, or module.path:function, but got {name!r}"
    )


__all__ = [
    "BUILTIN",
    "Adapter",
    "ImplementationNotFound",
    "PeerNotInstalled",
    "Prepared",
    "Snippet",
    "Unsupported",
    "WrongReturn",
    "load",
    "refuse",
    "require",
]
