"""What an implementation can be asked to do: the vocabulary of capabilities.

An adapter declares the capabilities it has. An invariant that requires a capability the
implementation lacks is SKIPPED, never failed; optional features (a mask in a property about
weights, say) are drawn only when the implementation has them.
"""

CAPABILITIES = {
    "float16": "float16 inputs (computed in float32, output in float16)",
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
