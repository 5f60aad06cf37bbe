"""What an implementation can be asked to do: the vocabulary of capabilities.

An adapter declares the capabilities it has, and (Semantics) its choices where the spec
chooses and peers legitimately differ. An invariant that requires a capability the
implementation lacks is SKIPPED, never failed; optional features (a mask in a property about
weights, say) are drawn only when the implementation has them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CAPABILITIES = {
    "float16": "float16 inputs (softmax and sums in float32, P may be rounded to float16 before "
    "P·V, output in float16)",
    "bfloat16": "bfloat16 inputs, ml_dtypes.bfloat16 arrays (softmax and sums in float32, P may be "
    "rounded to bfloat16 before P·V, output in bfloat16)",
    "float32": "float32 inputs",
    "float64": "float64 inputs",
    "mask": "a bool mask broadcastable to (B..., Hq, Lq, Lk), True = may attend",
    "bias": "a float bias broadcastable to (B..., Hq, Lq, Lk), added to the scores",
    "causal_top_left": "causal masking aligned top-left (j <= i)",
    "causal_bottom_right": "causal masking aligned bottom-right (j <= i + Lk - Lq)",
    "window": "a sliding window (left, right) around the diagonal",
    "kv_lengths": "per-batch key lengths (keys past them are padding)",
    "combined_masks": "several of mask, bias, causal, window and kv_lengths in one call",
    "gqa": "fewer key/value heads than query heads (Hq a multiple of Hkv)",
    "dv": "a value head dim Dv different from the query/key head dim Dk",
    "scale": "an explicit scale",
    "softcap": "softcap·tanh(scores/softcap) before bias and masks",
    "float64_options": "scale and softcap taken in float64 by float64 calls (without it, they "
    "are drawn as float32 numbers: an option that is a 32-bit float cannot carry more)",
    "lse": "returning the log-sum-exp of each row's scores",
    "weights": "returning the attention weights",
    "empty": "zero-length query or key sequences (Lq = 0 or Lk = 0)",
    "backward": "gradients of query, key, value (and bias) for a given grad_out (and grad_lse, "
    "with lse)",
}

ALL = frozenset(CAPABILITIES)
FORWARD = ALL - {"backward"}  # every capability of the forward pass
MASKING = ("mask", "bias", "causal_top_left", "causal_bottom_right", "window", "kv_lengths")
FEATURES = ("mask", "bias", "causal", "window", "kv_lengths")  # the masking options of a call


class Capabilities(frozenset):
    """The capability names of an implementation, and the masking features it cannot combine.

    A plain frozenset of names works wherever capabilities are expected; this one adds
    `exclusive`: pairs of masking features (names from FEATURES; "causal" stands for either
    alignment) that the implementation has separately but cannot give the spec's meaning
    together in one call. The strategies never draw such a pair, and an invariant that would
    need one draws without it. Example: ONNX's nonpad_kv_seqlen moves the causal diagonal, so
    kv_lengths and causal do not combine there.
    """

    exclusive: frozenset

    def __new__(cls, names=(), *, exclusive=()):
        self = super().__new__(cls, names)
        unknown = set(self) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"capabilities should be names of CAPABILITIES, got {sorted(unknown)}")
        pairs = frozenset(frozenset(pair) for pair in exclusive)
        for pair in pairs:
            if len(pair) != 2 or not pair <= set(FEATURES):
                raise ValueError(
                    f"exclusive should hold pairs of masking features {list(FEATURES)}, "
                    f"but got {sorted(pair)}"
                )
        self.exclusive = pairs
        return self

    def __repr__(self) -> str:
        names = ", ".join(sorted(self))
        pairs = ", ".join("+".join(sorted(p)) for p in sorted(self.exclusive, key=sorted))
        return f"Capabilities({{{names}}}" + (f", exclusive={{{pairs}}})" if pairs else ")")


def exclusive_pairs(capabilities) -> frozenset:
    """The exclusive pairs of a capability set (none for a plain set)."""
    return getattr(capabilities, "exclusive", frozenset())


def combinable(capabilities, first: str, second: str) -> bool:
    """Whether one call may carry both masking features `first` and `second`."""
    if "combined_masks" not in capabilities:
        return False
    return frozenset((_feature(first), _feature(second))) not in exclusive_pairs(capabilities)


def _feature(name: str) -> str:
    return "causal" if name.startswith("causal") else name


# ------------------------------------------------------------------------------------ semantics

# Where the spec chooses and implementations legitimately choose otherwise, an implementation
# declares its choice; the spec then expects what that choice gives, and the one invariant that
# states the spec's own choice reports that it differs (DIFFERS), hiding nothing else.
SEMANTICS = {
    "fully_masked": (
        "what a row that sees no key returns: zero (the spec: out 0, weights 0, lse -inf), mean "
        "(the mean of V over its keys, as a finite mask fill gives), or nan",
        ("zero", "mean", "nan"),
        "ATT-W4",
    ),
    "mask_fill": (
        "the finite score a key hidden by a mask gets instead of -inf (finfo(float32).min, "
        "-1e9, ...): hidden keys then weigh exp(fill - max), 0 until scores are huge, and a row "
        "that sees no key averages every key; fully_masked=mean without one means "
        "finfo(float32).min",
        None,
        "ATT-W3",
    ),
    "causal_flag": (
        "what a boolean causal flag (the SDPA protocol's is_causal) aligns to: top_left (the "
        "spec's True) or bottom_right",
        ("top_left", "bottom_right"),
        "ATT-M1",
    ),
    "float64": (
        "what float64 inputs are computed in: float64, or float32 (their tolerance is then "
        "float32's)",
        ("float64", "float32"),
        "ATT-N1",
    ),
}


@dataclass(frozen=True)
class Semantics:
    """An implementation's choices where the spec chooses (see SEMANTICS); the defaults are the
    spec's own."""

    fully_masked: str = "zero"
    mask_fill: float | None = None
    causal_flag: str = "top_left"
    float64: str = "float64"

    def __post_init__(self):
        for name, (_, choices, _) in SEMANTICS.items():
            value = getattr(self, name)
            if choices is not None and value not in choices:
                raise ValueError(f"semantics {name} should be one of {choices}, but got {value!r}")
        if self.mask_fill is not None:
            if isinstance(self.mask_fill, bool) or not isinstance(self.mask_fill, int | float):
                raise TypeError(
                    f"semantics mask_fill should be a number, but got {self.mask_fill!r}"
                )
            if not -math.inf < self.mask_fill < math.inf:
                raise ValueError(f"semantics mask_fill should be finite, but got {self.mask_fill}")
            if self.fully_masked == "nan":
                raise ValueError("semantics mask_fill makes fully masked rows the mean, not nan")
            object.__setattr__(self, "fully_masked", "mean")  # what a finite fill gives

    @classmethod
    def of(cls, given) -> Semantics:
        """From a Semantics, a dict, or 'name=value,name=value' (the command line's)."""
        if isinstance(given, Semantics):
            return given
        if given is None:
            return cls()
        if isinstance(given, str):
            pairs = [part.split("=", 1) for part in given.split(",") if part.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(f"semantics should be name=value[,name=value], but got {given!r}")
            given = {name.strip(): value.strip() for name, value in pairs}
            if "mask_fill" in given:
                given["mask_fill"] = float(given["mask_fill"])
        unknown = sorted(set(given) - set(SEMANTICS))
        if unknown:
            raise ValueError(f"semantics has no {unknown}; known: {', '.join(SEMANTICS)}")
        return cls(**given)

    @property
    def fill(self) -> float | None:
        """The score of a key hidden by a mask, when it is finite (else None: -inf)."""
        if self.mask_fill is not None:
            return float(self.mask_fill)
        return float(np.finfo(np.float32).min) if self.fully_masked == "mean" else None

    def differing(self) -> dict[str, object]:
        """The declared choices that are not the spec's, name -> value."""
        spec = Semantics()
        return {n: getattr(self, n) for n in SEMANTICS if getattr(self, n) != getattr(spec, n)}

    def invariant_of(self, name: str) -> str:
        """The invariant that states the spec's own choice of `name`."""
        return SEMANTICS[name][2]

    def __str__(self) -> str:
        differing = self.differing()
        return ", ".join(f"{n}={v}" for n, v in differing.items()) or "the spec's"
