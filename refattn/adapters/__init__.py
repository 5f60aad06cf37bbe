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

An adapter that claims `backward` also prepares the gradients of a call, the same three steps:

    prepared = adapter.prepare_backward(call, grad_out, grad_lse)   dO (and dlse, or None)
    returned = prepared.run()                                       forward and backward
    gradients = prepared.output(returned)                           an AttentionGradients

and `adapter.gradients(call, grad_out, grad_lse=None)` does all three, after refusing what needs
a capability it does not claim (`backward`; `lse` too when grad_lse is given).

Adapters translate layouts and option names; they never emulate a missing feature, because then
the spec would be checking the adapter instead of the implementation.

Implementations by name (`load`):

    reference       refattn.reference.attention
    native          refattn.native.attention, the C core with the kernels it picks (and
                    refattn.native.attention_backward, its backward)
    native:ISA      the same with the kernels of one instruction set (amx_bf16, avx512_bf16,
                    avx512, avx2, scalar)
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

import dataclasses
import functools
import importlib
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from refattn.call import AttentionCall, AttentionGradients, Result, call_signature
from refattn.capabilities import (
    ALL,
    FORWARD,
    Capabilities,
    Semantics,
    combinable,
    exclusive_pairs,
)


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
    `output(returned)` turns what it returned into a Result in refattn's layout (for a
    backward, an AttentionGradients)."""

    run: Callable[[], object]
    output: Callable[[object], Result | AttentionGradients]


@dataclass(frozen=True)
class Snippet:
    """A call written as code in the implementation's own protocol, for reproductions: `setup`
    lines (imports), an expression `code` that refers to its arrays as data["name"]."""

    setup: tuple[str, ...]
    code: str
    arrays: dict


def reference_snippet(
    call: AttentionCall, prefix: str, function: str, setup, *, upstream=None, **fixed
) -> Snippet:
    """`function(query, key, value, **options)`: a call in the reference's own protocol; with
    `upstream` = (grad_out, grad_lse), the backward's `function(query, key, value, grad_out,
    grad_lse=..., **options)`."""
    arrays, arguments = {}, []
    given = [(name, getattr(call, name)) for name in ("query", "key", "value")]
    if upstream is not None:
        given.append(("grad_out", upstream[0]))
    for name, array in given:
        arrays[prefix + name] = array
        arguments.append(f'data["{prefix}{name}"]')
    if upstream is not None and upstream[1] is not None:
        fixed = {"grad_lse": upstream[1], **fixed}
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
    capabilities: frozenset = FORWARD  # backward needs prepare_backward too
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
    # The gradients (capability backward): Prepared for (call, grad_out, grad_lse or None), whose
    # output is an AttentionGradients; and how a reproduction writes that call, a Snippet for
    # (call, grad_out, grad_lse, prefix) (None: `load(name).gradients(AttentionCall...)`).
    prepare_backward: Callable[..., Prepared] | None = field(default=None, repr=False)
    backward_snippet_of: Callable[..., Snippet] | None = field(default=None, repr=False)

    def __post_init__(self):
        if "backward" in self.capabilities and self.prepare_backward is None:
            raise ValueError(f"{self.name} claims backward, but has no prepare_backward")

    @classmethod
    def of(
        cls, name: str, function: Callable, capabilities=ALL, *, backward=None, **fields
    ) -> Adapter:
        """The adapter of a NumPy function with the reference's own protocol,
        function(query, key, value, **options) -> out or (out, lse?, weights?); with
        `backward`, a function with the protocol of refattn.reference.attention_backward
        (query, key, value, grad_out, *, grad_lse=None, **options) -> AttentionGradients or
        (dq, dk, dv, dbias or None). It claims `capabilities` (default: every one) with
        backward claimed exactly when `backward` is given."""
        names = set(capabilities) - {"backward"} | ({"backward"} if backward else set())
        claimed = Capabilities(names, exclusive=exclusive_pairs(capabilities))
        prepare_backward = None if backward is None else reference_backward_protocol(backward)
        return cls(
            name,
            reference_protocol(function),
            claimed,
            prepare_backward=prepare_backward,
            **fields,
        )

    def refusal(self, call: AttentionCall, *, backward=False, grad_lse=False) -> str | None:
        """Why this implementation cannot run `call` (a capability it lacks), or None. With
        backward=True, why it cannot give the call's gradients: it needs backward too, and lse
        for a grad_lse."""
        needed = set(call.needs())
        if backward:
            needed |= {"backward", "lse"} if grad_lse else {"backward"}
        missing = sorted(needed - self.capabilities)
        if missing:
            what = (
                f"the gradients of {call.describe()} need"
                if backward
                else f"{call.describe()} needs"
            )
            return f"{self.name} does not claim {', '.join(missing)}, which {what}"
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

    def gradients(self, call: AttentionCall, grad_out, grad_lse=None) -> AttentionGradients:
        """The gradients of L = Σ grad_out·out (+ Σ grad_lse·lse) for `call`: refuse it
        (Unsupported) if it needs what the adapter lacks (backward; lse for grad_lse), check
        grad_out and grad_lse (AttentionCall.check_upstream), then prepare, run and convert.
        What the call asks the forward to return (return_lse, return_weights) plays no part."""
        if call.return_lse or call.return_weights:
            call = dataclasses.replace(call, return_lse=False, return_weights=False)
        why = self.refusal(call, backward=True, grad_lse=grad_lse is not None)
        if why:
            raise Unsupported(why, derived=True)
        call.check_upstream(grad_out, grad_lse)
        prepared = self.prepare_backward(call, grad_out, grad_lse)
        returned = prepared.run()
        try:
            gradients = prepared.output(returned)
        except WrongReturn:
            raise
        except Exception as error:  # what came back is not the gradients the call asks for
            raise WrongReturn(
                f"returned {_kind(returned)} as gradients, which cannot be read: {error}"
            ) from None
        _check_gradient_shapes(call, gradients)
        return gradients

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

    def gradients_snippet(self, call: AttentionCall, grad_out, grad_lse=None, prefix="") -> Snippet:
        """The backward call as code, for a reproduction: it evaluates to the gradients, in the
        implementation's own protocol (see backward_snippet_of)."""
        if self.backward_snippet_of is not None:
            return self.backward_snippet_of(call, grad_out, grad_lse, prefix)
        setup = (
            "from refattn import AttentionCall",
            "from refattn.adapters import load",
            f"impl = load({self.name!r})",
        )
        forward = reference_snippet(call, prefix, "AttentionCall.check", ())
        arrays = {**forward.arrays, prefix + "grad_out": grad_out}
        code = f'impl.gradients({forward.code}, data["{prefix}grad_out"]'
        if grad_lse is not None:
            arrays[prefix + "grad_lse"] = grad_lse
            code += f', grad_lse=data["{prefix}grad_lse"]'
        return Snippet(setup, code + ")", arrays)

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


def returned_gradients(call: AttentionCall, returned) -> AttentionGradients:
    """What a backward with the reference's protocol returned, as AttentionGradients: an
    AttentionGradients, or a tuple (dq, dk, dv) or (dq, dk, dv, dbias), dbias given exactly
    when the call has a bias."""
    wanted = ["query", "key", "value"] + ["bias"] * (call.bias is not None)
    parts = list(returned) if isinstance(returned, tuple | list) else None
    if parts is not None and len(parts) == 4 and call.bias is None and parts[3] is None:
        parts = parts[:3]  # an AttentionGradients without a bias
    if parts is None or len(parts) != len(wanted):
        raise WrongReturn(
            f"returned {_kind(returned)} as gradients, but the call asks for a tuple "
            f"({', '.join('d' + n for n in wanted)})"
        )
    arrays = {name: returned_array(x, "d" + name) for name, x in zip(wanted, parts, strict=True)}
    return AttentionGradients(**{"bias": None, **arrays})


def _check_gradient_shapes(call: AttentionCall, gradients: AttentionGradients) -> None:
    """WrongReturn unless each gradient has its input's shape (None for a call without bias)."""
    for name, array in zip(gradients._fields, gradients, strict=True):
        given = getattr(call, name)
        if (array is None) != (given is None):
            returned = "nothing" if array is None else _kind(array)
            raise WrongReturn(
                f"returned {returned} as d{name}, but the call "
                + ("has no bias" if given is None else f"has a {name} of shape {given.shape}")
            )
        if array is not None and array.shape != given.shape:
            raise WrongReturn(
                f"returned {_kind(array)} as d{name}, but d{name} should have {name}'s shape "
                f"{given.shape}"
            )


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


def reference_backward_protocol(function: Callable, **fixed) -> Callable[..., Prepared]:
    """`prepare_backward` for a NumPy function with the protocol of
    refattn.reference.attention_backward, function(query, key, value, grad_out, *,
    grad_lse=None, **options) -> AttentionGradients or (dq, dk, dv[, dbias])."""

    def prepare(call: AttentionCall, grad_out, grad_lse) -> Prepared:
        given = {} if grad_lse is None else {"grad_lse": grad_lse}
        run = functools.partial(
            function, call.query, call.key, call.value, grad_out, **given, **call.options(), **fixed
        )
        return Prepared(run, functools.partial(returned_gradients, call))

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

    def backward_snippet(call, grad_out, grad_lse, prefix):
        upstream = (grad_out, grad_lse)
        function = "reference.attention_backward"
        return reference_snippet(call, prefix, function, setup, upstream=upstream)

    return Adapter(
        "reference",
        reference_protocol(reference.attention),
        ALL,
        snippet_of=lambda call, p: reference_snippet(call, p, "reference.attention", setup),
        prepare_backward=reference_backward_protocol(reference.attention_backward),
        backward_snippet_of=backward_snippet,
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

        def backward_snippet(call, grad_out, grad_lse, prefix):
            upstream = (grad_out, grad_lse)
            function = "native.attention_backward"
            return reference_snippet(call, prefix, function, setup, upstream=upstream, **fixed)

        return Adapter(
            name,
            reference_protocol(native.attention, **fixed),
            ALL,
            snippet_of=lambda call, p: reference_snippet(
                call, p, "native.attention", setup, **fixed
            ),
            prepare_backward=reference_backward_protocol(native.attention_backward, **fixed),
            backward_snippet_of=backward_snippet,
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
    "native:amx_bf16": _native("amx_bf16"),
    "native:avx512_bf16": _native("avx512_bf16"),
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
