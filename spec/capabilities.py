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
    "lse": "returning the log-sum-exp of each row's scores",
    "weights": "returning the attention weights",
    "empty": "zero-length query or key sequences (Lq = 0 or Lk = 0)",
}

ALL = frozenset(CAPABILITIES)
MASKING = ("mask", "bias", "causal_top_left", "causal_bottom_right", "window", "kv_lengths")
