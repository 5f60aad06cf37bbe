"""A user's attention function, named `module.path:function`, in one of two protocols.

The SDPA protocol, that of torch.nn.functional.scaled_dot_product_attention on NumPy arrays:

    fn(query, key, value, attn_mask=None, is_causal=False, scale=None) -> array

    query (B, Hq, Lq, Dk), key (B, Hkv, Lk, Dk), value (B, Hkv, Lk, Dv): NumPy arrays
    attn_mask  bool (True = may attend) or float (added to the scores), broadcastable to
               (B, Hq, Lq, Lk); never given together with is_causal
    is_causal  True: key j visible to query i iff j <= i (top-left)
    scale      None: 1/sqrt(Dk)
    enable_gqa (optional) passed True when key and value have fewer heads than query
    returns    (B, Hq, Lq, Dv)

It gives the capabilities float32, float64, mask, bias, causal_top_left, scale, float64_options
(a Python float scale), dv and empty, and gqa when the function declares enable_gqa.

The refattn protocol, that of refattn.reference.attention (query, key, value in refattn's
layout (B..., H, L, D), then keyword options with refattn's names):

    fn(query, key, value, *, mask=None, bias=None, causal=None, window=None, kv_lengths=None,
       scale=None, softcap=None, return_lse=False, return_weights=False)

Its capabilities are the options its signature names (all of them with **options): mask, bias,
causal (both alignments), window, kv_lengths, scale, softcap, lse (return_lse), weights
(return_weights), combined_masks when it names two masking options; and float32, float64,
float64_options, gqa, dv and empty, which every call of the protocol can carry.

A function is taken to follow the refattn protocol when its signature names a refattn option
(mask, bias, causal, ...) and none of attn_mask and is_causal; otherwise the SDPA protocol.
Declare what the signature cannot say with `refattn.declare` (in code) or --with/--without
(refattn conform and the pytest plugin):

    @refattn.declare(protocol="sdpa", with_=["bfloat16"], without=["float64"])
    def sdpa(query, key, value, attn_mask=None, is_causal=False, scale=None): ...

float16 and bfloat16 are never inferred: the spec computes them in float32 (P may be rounded),
which a plain NumPy function does not do unless it means to; declare them.

Gradients. A function of the SDPA protocol that has a `backward` attribute claims the
capability backward: its backward pass, declared beside it (`sdpa.backward = sdpa_backward`),
with the same protocol and the loss's gradient with respect to the output after the arrays:

    fn.backward(query, key, value, grad_out, attn_mask=None, is_causal=False, scale=None)
        -> (dq, dk, dv), or (dq, dk, dv, d_attn_mask) when attn_mask is a float (additive) mask

    grad_out   dO = ∂L/∂out, (B, Hq, Lq, Dv) in the query's dtype
    dq, dk, dv ∂L/∂query, ∂L/∂key, ∂L/∂value, in their shapes (with GQA, a kv head's gradient
               sums those of the query heads that use it)
    d_attn_mask ∂L/∂attn_mask, in the shape of the attn_mask given (not broadcast)

It takes enable_gqa when the function does (a backward without it cannot be checked with the
forward's capabilities, and loading says so). Raise NotImplementedError for a call it cannot
differentiate (say, a float attn_mask): that example is set aside, never failed.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import replace

import numpy as np

from refattn.adapters import (
    Adapter,
    ImplementationNotFound,
    Prepared,
    Snippet,
    WrongReturn,
    _kind,
    reference_snippet,
    returned_array,
    returned_result,
)
from refattn.adapters._layout import from_4d, scores_from_4d, scores_to_4d, to_4d
from refattn.adapters.frameworks import FRAMEWORKS, converter, to_numpy
from refattn.call import OPTIONS, AttentionCall, AttentionGradients, Result
from refattn.capabilities import CAPABILITIES, Capabilities, Semantics

PROTOCOLS = ("sdpa", "refattn")
PROTOCOL = ("query", "key", "value", "attn_mask", "is_causal", "scale")
BACKWARD_PROTOCOL = ("query", "key", "value", "grad_out", "attn_mask", "is_causal", "scale")
PROTOCOL_CAPABILITIES = (
    "float32",
    "float64",
    "mask",
    "bias",
    "causal_top_left",
    "scale",
    "float64_options",
    "dv",
    "empty",
)
OPTIONAL = {"enable_gqa": "gqa"}  # keyword in the signature -> the capability it adds
# What each protocol can carry at all: --with cannot add what the call has no way to pass.
SDPA_EXPRESSIBLE = frozenset({*PROTOCOL_CAPABILITIES, "gqa", "float16", "bfloat16"})
# The refattn protocol: option name -> the capabilities it gives.
REFATTN_OPTIONS = {
    "mask": ("mask",),
    "bias": ("bias",),
    "causal": ("causal_top_left", "causal_bottom_right"),
    "window": ("window",),
    "kv_lengths": ("kv_lengths",),
    "scale": ("scale",),
    "softcap": ("softcap",),
    "return_lse": ("lse",),
    "return_weights": ("weights",),
}
REFATTN_ALWAYS = ("float32", "float64", "float64_options", "gqa", "dv", "empty")
MASKING = ("mask", "bias", "causal", "window", "kv_lengths")


def declare(
    *,
    protocol: str | None = None,
    with_=(),
    without=(),
    semantics=None,
    framework=None,
    device=None,
):
    """A decorator saying what an attention function can do beyond its signature: its
    protocol ("sdpa" or "refattn"), capabilities it has (with_) and lacks (without), and its
    semantics where the spec chooses (a dict: fully_masked, mask_fill, causal_flag, float64;
    see refattn.capabilities.SEMANTICS), and the arrays it takes and returns: framework "numpy"
    (the default), "torch" or "jax", on `device` ("cuda", "mps", ...; default the CPU)."""
    checked = check_declaration(protocol=protocol, with_=with_, without=without, where="declare")
    checked["semantics"] = Semantics.of(semantics)
    if framework is not None and framework not in FRAMEWORKS:
        raise ValueError(f"declare: framework should be one of {FRAMEWORKS}, but got {framework!r}")
    checked["framework"], checked["device"] = framework, device

    def decorate(fn):
        fn.__refattn__ = checked
        return fn

    return decorate


def check_declaration(*, protocol=None, with_=(), without=(), where="declare") -> dict:
    """A declaration checked: protocol one of PROTOCOLS, capability names known."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"{where}: protocol should be one of {PROTOCOLS}, but got {protocol!r}")
    for label, names in (("with", with_), ("without", without)):
        if isinstance(names, str):
            raise TypeError(f"{where}: {label} should be a list of capability names, not a string")
        unknown = sorted(set(names) - set(CAPABILITIES))
        if unknown:
            raise ValueError(
                f"{where}: {label} names unknown capabilities {unknown}; "
                f"known: {', '.join(CAPABILITIES)}"
            )
    both = sorted(set(with_) & set(without))
    if both:
        raise ValueError(f"{where}: {both} both added and removed")
    return {"protocol": protocol, "with": tuple(with_), "without": tuple(without)}


def resolve(name: str):
    """The function named `module.path:function` (the function part may be dotted)."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ImplementationNotFound(f"expected module.path:function, but got {name!r}")
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise ImplementationNotFound(
                f"cannot import {module_name!r} for {name!r}: {error}. Run from the folder that "
                "holds it (refattn conform puts the current directory on the path), under pytest "
                "set pythonpath = ['.'] in its configuration, or install the package"
            ) from None
        raise
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImplementationNotFound(
                f"module {module_name!r} has no {attribute!r} (for {name!r})"
            ) from None
    if not callable(target):
        raise ImplementationNotFound(f"{name!r} is a {type(target).__name__}, not a function")
    return target


def keywords(fn, protocol=PROTOCOL, arrays: int = 3) -> tuple[set[str], bool]:
    """The parameter names of fn that can be given by keyword (its first `arrays`, which the
    arrays are passed to by position, may be named anything), and whether it takes **kwargs."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return set(protocol), False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= arrays or any(p.kind is p.VAR_POSITIONAL for p in parameters):
        named = set(protocol[:arrays])  # the arrays: by position, whatever their names
    else:
        named = set()
    names = named | {p.name for p in parameters[arrays:] if p.kind is not p.VAR_KEYWORD}
    names |= {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def adapter(
    name: str, *, protocol=None, with_=(), without=(), semantics=None, framework=None, device=None
) -> Adapter:
    """The adapter of the user function named `name`: its protocol and capabilities inferred
    from its signature, then the function's own declaration (refattn.declare), then these
    arguments (the command line's --protocol, --with, --without)."""
    fn = resolve(name)
    declared = getattr(fn, "__refattn__", {})
    given = check_declaration(protocol=protocol, with_=with_, without=without, where=name)
    chosen = given["protocol"] or declared.get("protocol") or infer_protocol(fn, name)
    meant = Semantics.of(semantics if semantics is not None else declared.get("semantics"))
    framework = framework or declared.get("framework") or "numpy"
    device = device or declared.get("device")
    convert = converter(framework, device)
    if chosen == "refattn":
        base = refattn_adapter(name, fn, convert)
    else:
        base = sdpa_adapter(name, fn, meant.causal_flag, convert)
    added = {*declared.get("with", ()), *given["with"]}
    removed = {*declared.get("without", ()), *given["without"]}
    if chosen == "sdpa":
        impossible = sorted(added - SDPA_EXPRESSIBLE)
        if impossible:
            raise ImplementationNotFound(
                f"{name}: the SDPA protocol has no way to pass {', '.join(impossible)}; "
                "write the function to the refattn protocol (the reference's own signature) "
                "to claim them"
            )
    capabilities = Capabilities((base.capabilities | added) - removed)
    notes = list(base.notes)
    if added or removed:
        notes.append(
            "Declared: "
            + ", ".join([*(f"+{c}" for c in sorted(added)), *(f"-{c}" for c in sorted(removed))])
            + "."
        )
    if meant.differing():
        notes.append(f"Declared semantics: {meant}.")
    if framework != "numpy":
        notes.append(f"Called with {framework} arrays on {device or 'the CPU'}; outputs read back.")
    return replace(base, capabilities=capabilities, semantics=meant, notes=tuple(notes))


def infer_protocol(fn, name: str) -> str:
    """ "refattn" when the signature names a refattn option and no SDPA keyword, else "sdpa"."""
    names, _ = keywords(fn)
    if names & set(REFATTN_OPTIONS) and not names & {"attn_mask", "is_causal"}:
        return "refattn"
    return "sdpa"


def refattn_adapter(name: str, fn, convert=lambda x: x) -> Adapter:
    """The adapter of a function with the refattn protocol (refattn.reference.attention's),
    whose arrays `convert` takes to the function's framework."""
    names, var_keyword = keywords(fn)
    offered = set(OPTIONS) if var_keyword else names & set(OPTIONS)
    capabilities = {c for option in offered & set(REFATTN_OPTIONS) for c in REFATTN_OPTIONS[option]}
    capabilities |= set(REFATTN_ALWAYS)
    if len(offered & set(MASKING)) > 1:
        capabilities.add("combined_masks")
    module, _, attribute = name.partition(":")
    setup = (f"from {module} import {attribute.split('.')[0]}",)
    notes = (
        "refattn protocol: fn(query, key, value, **options) with refattn's layout and option "
        "names (as refattn.reference.attention).",
        "Options its signature takes: " + (", ".join(sorted(offered)) or "none") + ".",
    )

    def prepare(call: AttentionCall) -> Prepared:
        inputs = [convert(x) for x in (call.query, call.key, call.value)]
        options = {n: convert(x) for n, x in call.options().items()}
        run = functools.partial(fn, *inputs, **options)
        return Prepared(run, lambda returned: returned_result(call, _read_back(returned)))

    return Adapter(
        name,
        prepare,
        Capabilities(capabilities),
        notes=notes,
        snippet_of=lambda call, p: reference_snippet(call, p, attribute, setup),
    )


def _read_back(returned):
    """What a function returned, its arrays as NumPy arrays (tuples kept as tuples)."""
    if isinstance(returned, tuple | list):
        return tuple(None if x is None else to_numpy(x) for x in returned)
    return None if returned is None else to_numpy(returned)


def sdpa_adapter(name: str, fn, causal_flag: str = "top_left", convert=lambda x: x) -> Adapter:
    """The adapter of a function with the SDPA protocol, whose is_causal aligns `causal_flag`
    and whose arrays `convert` takes to the function's framework."""
    names, var_keyword = keywords(fn)
    missing = [p for p in PROTOCOL if p not in names] if not var_keyword else []
    if missing:
        raise ImplementationNotFound(
            f"{name} should take the SDPA protocol's parameters "
            f"(query, key, value by position, then attn_mask=None, is_causal=False, scale=None), "
            f"or the refattn protocol's (query, key, value, *, mask=None, causal=None, ...), "
            f"but has no {', '.join(missing)}"
        )
    declared = {k for k in OPTIONAL if k in names}
    backward = getattr(fn, "backward", None)
    if backward is not None:
        _check_backward(name, backward, declared)
    claimed = {*PROTOCOL_CAPABILITIES, *(OPTIONAL[k] for k in declared)}
    if causal_flag == "bottom_right":  # its flag means the other alignment
        claimed = (claimed - {"causal_top_left"}) | {"causal_bottom_right"}
    capabilities = Capabilities(claimed | ({"backward"} if backward is not None else set()))
    notes = [
        "SDPA protocol: fn(query, key, value, attn_mask=None, is_causal=False, scale=None) on "
        "NumPy (B, H, L, D) arrays; batch dims are flattened into B.",
        "Declared optional keywords: " + (", ".join(sorted(declared)) or "none") + ".",
        "Gradients: "
        + (
            "fn.backward(query, key, value, grad_out, attn_mask=None, is_causal=False, "
            "scale=None) -> (dq, dk, dv[, d_attn_mask])."
            if backward is not None
            else "none (fn has no backward attribute)."
        ),
    ]

    def arguments(call: AttentionCall) -> tuple[tuple, dict]:
        """The arrays and keywords the function is called with, in its own protocol."""
        batch = call.batch_shape
        scores = call.mask if call.mask is not None else call.bias
        keywords = {
            "attn_mask": None if scores is None else scores_to_4d(scores, batch),
            "is_causal": call.causal == causal_flag,
            "scale": call.scale,
        }
        if "enable_gqa" in declared:
            keywords["enable_gqa"] = call.Hq != call.Hkv
        return tuple(to_4d(x, batch) for x in (call.query, call.key, call.value)), keywords

    def prepare(call: AttentionCall) -> Prepared:
        arrays, keywords = arguments(call)
        arrays = [convert(x) for x in arrays]
        keywords = {n: convert(x) for n, x in keywords.items()}
        run = functools.partial(fn, *arrays, **keywords)
        batch = call.batch_shape

        def output(out) -> Result:
            out = returned_array(None if out is None else _read_back(out))
            return Result(from_4d(out, batch), None, None)

        return Prepared(run, output)

    def backward_arguments(call: AttentionCall, grad_out) -> tuple[tuple, dict]:
        arrays, keywords = arguments(call)  # the forward's keywords, enable_gqa included
        return (*arrays, to_4d(grad_out, call.batch_shape)), keywords

    def prepare_backward(call: AttentionCall, grad_out, grad_lse) -> Prepared:
        arrays, keywords = backward_arguments(call, grad_out)
        arrays = [convert(x) for x in arrays]
        keywords = {n: convert(x) for n, x in keywords.items()}
        run = functools.partial(backward, *arrays, **keywords)

        def output(returned) -> AttentionGradients:
            if isinstance(returned, tuple | list):  # else _gradients says what it got
                returned = _read_back(returned)
            return _gradients(call, returned)

        return Prepared(run, output)

    module, _, attribute = name.partition(":")
    setup = (f"from {module} import {attribute.split('.')[0]}",)

    def written(function: str, names, positional, keywords, prefix: str) -> Snippet:
        """`function(query, key, value, ..., attn_mask=..., is_causal=...)`, as refattn calls it."""
        arrays, parts = {}, []
        for what, array in zip(names, positional, strict=True):
            arrays[prefix + what] = array
            parts.append(f'data["{prefix}{what}"]')
        for what, value in keywords.items():
            if isinstance(value, np.ndarray):
                arrays[prefix + what] = value
                parts.append(f'{what}=data["{prefix}{what}"]')
            else:
                parts.append(f"{what}={value!r}")
        return Snippet(setup, f"{function}({', '.join(parts)})", arrays)

    def snippet(call: AttentionCall, prefix: str) -> Snippet:
        """`fn(query, key, value, attn_mask=..., is_causal=...)`: the call refattn made."""
        return written(attribute, PROTOCOL[:3], *arguments(call), prefix)

    def backward_snippet(call: AttentionCall, grad_out, grad_lse, prefix: str) -> Snippet:
        """`fn.backward(query, key, value, grad_out, attn_mask=..., ...)`: the call refattn made."""
        positional, keywords = backward_arguments(call, grad_out)
        return written(f"{attribute}.backward", BACKWARD_PROTOCOL[:4], positional, keywords, prefix)

    return Adapter(
        name,
        prepare,
        capabilities,
        deviations={},
        packages=(),
        notes=tuple(notes),
        snippet_of=snippet,
        prepare_backward=None if backward is None else prepare_backward,
        backward_snippet_of=None if backward is None else backward_snippet,
    )


def _check_backward(name: str, backward, declared: set[str]) -> None:
    """ImplementationNotFound unless fn.backward is a function with the backward protocol (and
    enable_gqa when fn declares it)."""
    if not callable(backward):
        raise ImplementationNotFound(
            f"{name}.backward should be a function, but is a {type(backward).__name__}"
        )
    names, var_keyword = keywords(backward, BACKWARD_PROTOCOL, 4)
    wanted = [*BACKWARD_PROTOCOL, *sorted(declared)]
    missing = [p for p in wanted if p not in names] if not var_keyword else []
    if missing:
        also = "".join(f", {k}" for k in sorted(declared))  # what fn itself declares
        raise ImplementationNotFound(
            f"{name}.backward should take (query, key, value, grad_out by position, then "
            f"attn_mask=None, is_causal=False, scale=None{also}), but has no {', '.join(missing)}"
        )


def _gradients(call: AttentionCall, returned) -> AttentionGradients:
    """What fn.backward returned, in refattn's layout: (dq, dk, dv), and d_attn_mask after
    them when the call's attn_mask is a float one (its bias)."""
    batch = call.batch_shape
    wanted = ["dq", "dk", "dv"] + ["d_attn_mask"] * (call.bias is not None)
    if not isinstance(returned, tuple | list) or len(returned) != len(wanted):
        raise WrongReturn(
            f"returned {_kind(returned)} from backward, but the call asks for a tuple "
            f"({', '.join(wanted)})"
        )
    d_q, d_k, d_v, *d_mask = (returned_array(x, n) for x, n in zip(returned, wanted, strict=True))
    d_q, d_k, d_v = (from_4d(x, batch) for x in (d_q, d_k, d_v))
    d_bias = None
    if d_mask:
        given = scores_to_4d(call.bias, batch)
        if d_mask[0].shape != given.shape:
            raise WrongReturn(
                f"returned an array {d_mask[0].dtype} {d_mask[0].shape} as d_attn_mask, but "
                f"d_attn_mask should have the attn_mask's shape {given.shape}"
            )
        d_bias = scores_from_4d(d_mask[0], call.bias.shape, batch)
    return AttentionGradients(d_q, d_k, d_v, d_bias)
