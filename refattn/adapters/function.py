"""A user's attention function, named `module.path:function`, following the SDPA protocol:

    fn(query, key, value, attn_mask=None, is_causal=False, scale=None) -> array

    query (B, Hq, Lq, Dk), key (B, Hkv, Lk, Dk), value (B, Hkv, Lk, Dv): NumPy arrays
    attn_mask  bool (True = may attend) or float (added to the scores), broadcastable to
               (B, Hq, Lq, Lk); never given together with is_causal
    is_causal  True: key j visible to query i iff j <= i (top-left)
    scale      None: 1/sqrt(Dk)
    returns    (B, Hq, Lq, Dv), converted with numpy.asarray

That is the protocol of torch.nn.functional.scaled_dot_product_attention, on NumPy arrays. It
gives the capabilities float32, float64, mask, bias, causal_top_left, scale, float64_options (a
Python float scale), dv and empty.
Keywords the function declares in its signature widen them:

    enable_gqa   passed True when key and value have fewer heads than query (Hq a multiple of
                 Hkv, query head h using kv head h // (Hq / Hkv)): capability gqa

float16 is not part of the protocol: the spec computes float16 inputs in float32, which a plain
NumPy function does not do unless it means to.

Gradients. A function that has a `backward` attribute claims the capability backward: its
backward pass, declared beside it (`sdpa.backward = sdpa_backward`), with the same protocol and
the loss's gradient with respect to the output after the arrays:

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

import numpy as np

from refattn.adapters import (
    Adapter,
    ImplementationNotFound,
    Prepared,
    Snippet,
    WrongReturn,
    _kind,
    returned_array,
)
from refattn.adapters._layout import from_4d, scores_from_4d, scores_to_4d, to_4d
from refattn.call import AttentionCall, AttentionGradients, Result
from refattn.capabilities import Capabilities

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


def adapter(name: str) -> Adapter:
    """The adapter of the SDPA-protocol function named `name`."""
    fn = resolve(name)
    names, var_keyword = keywords(fn)
    missing = [p for p in PROTOCOL if p not in names] if not var_keyword else []
    if missing:
        raise ImplementationNotFound(
            f"{name} should take the SDPA protocol's parameters "
            f"(query, key, value by position, then attn_mask=None, is_causal=False, scale=None), "
            f"but has no {', '.join(missing)}"
        )
    declared = {k for k in OPTIONAL if k in names}
    backward = getattr(fn, "backward", None)
    if backward is not None:
        _check_backward(name, backward, declared)
    claimed = {*PROTOCOL_CAPABILITIES, *(OPTIONAL[k] for k in declared)}
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
            "is_causal": call.causal == "top_left",
            "scale": call.scale,
        }
        if "enable_gqa" in declared:
            keywords["enable_gqa"] = call.Hq != call.Hkv
        return tuple(to_4d(x, batch) for x in (call.query, call.key, call.value)), keywords

    def prepare(call: AttentionCall) -> Prepared:
        arrays, keywords = arguments(call)
        run = functools.partial(fn, *arrays, **keywords)
        batch = call.batch_shape
        return Prepared(run, lambda out: Result(from_4d(returned_array(out), batch), None, None))

    def backward_arguments(call: AttentionCall, grad_out) -> tuple[tuple, dict]:
        arrays, keywords = arguments(call)  # the forward's keywords, enable_gqa included
        return (*arrays, to_4d(grad_out, call.batch_shape)), keywords

    def prepare_backward(call: AttentionCall, grad_out, grad_lse) -> Prepared:
        arrays, keywords = backward_arguments(call, grad_out)
        run = functools.partial(backward, *arrays, **keywords)
        return Prepared(run, functools.partial(_gradients, call))

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
