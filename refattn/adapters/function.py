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
"""

from __future__ import annotations

import functools
import importlib
import inspect

import numpy as np

from refattn.adapters import Adapter, ImplementationNotFound, Prepared, Snippet, returned_array
from refattn.adapters._layout import from_4d, scores_to_4d, to_4d
from refattn.call import AttentionCall, Result
from refattn.capabilities import Capabilities

PROTOCOL = ("query", "key", "value", "attn_mask", "is_causal", "scale")
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


def keywords(fn) -> tuple[set[str], bool]:
    """The parameter names of fn that can be given by keyword (its first three, which the
    arrays are passed to by position, may be named anything), and whether it takes **kwargs."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return set(PROTOCOL), False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in parameters):
        named = set(PROTOCOL[:3])  # the arrays: by position, whatever their names
    else:
        named = set()
    names = named | {p.name for p in parameters[3:] if p.kind is not p.VAR_KEYWORD}
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
    capabilities = Capabilities({*PROTOCOL_CAPABILITIES, *(OPTIONAL[k] for k in declared)})
    notes = [
        "SDPA protocol: fn(query, key, value, attn_mask=None, is_causal=False, scale=None) on "
        "NumPy (B, H, L, D) arrays; batch dims are flattened into B.",
        "Declared optional keywords: " + (", ".join(sorted(declared)) or "none") + ".",
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

    module, _, attribute = name.partition(":")
    setup = (f"from {module} import {attribute.split('.')[0]}",)

    def snippet(call: AttentionCall, prefix: str) -> Snippet:
        """`fn(query, key, value, attn_mask=..., is_causal=...)`: the call refattn made."""
        positional, keywords = arguments(call)
        arrays, parts = {}, []
        for what, array in zip(("query", "key", "value"), positional, strict=True):
            arrays[prefix + what] = array
            parts.append(f'data["{prefix}{what}"]')
        for what, value in keywords.items():
            if isinstance(value, np.ndarray):
                arrays[prefix + what] = value
                parts.append(f'{what}=data["{prefix}{what}"]')
            else:
                parts.append(f"{what}={value!r}")
        return Snippet(setup, f"{attribute}({', '.join(parts)})", arrays)

    return Adapter(
        name,
        prepare,
        capabilities,
        deviations={},
        packages=(),
        notes=tuple(notes),
        snippet_of=snippet,
    )
