"""The textbook formula in NumPy: softmax(q·kᵀ/sqrt(D))·v, the scores materialised.

    scores  = q·kᵀ·D^-1/2, masked to -inf above the bottom-right diagonal when causal
    weights = exp(scores - rowmax) / Σ exp(scores - rowmax)
    out     = weights·v

It is the baseline `refattn bench` times the others against, written the way a textbook or a
first implementation writes it, and nothing more: no mask or bias argument, no scale, no GQA.
Checked with `refattn conform numpy`, it shows what the spec asks beyond the formula: a row
that sees no key is exp(-inf - -inf) = NaN here (ATT-W4), and 0·NaN reaches the output
(ATT-M8).
"""

from __future__ import annotations

import functools

import numpy as np

from refattn.adapters import _OPENBLAS_THREADS, Adapter, Prepared
from refattn.call import AttentionCall, Result
from refattn.capabilities import Capabilities

CAPABILITIES = Capabilities({"float32", "float64", "causal_bottom_right", "dv"})


def naive_attention(q, k, v, *, causal: bool = False):
    """softmax(q·kᵀ/sqrt(D)) · v, written as the textbook writes it (bottom-right causal)."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    scores = (q @ k.swapaxes(-1, -2)) * q.shape[-1] ** -0.5  # a Python float keeps the dtype
    if causal:
        scores = np.where(np.tri(Lq, Lk, Lk - Lq, dtype=bool), scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v


def prepare(call: AttentionCall) -> Prepared:
    causal = call.causal == "bottom_right"
    run = functools.partial(naive_attention, call.query, call.key, call.value, causal=causal)
    return Prepared(run, lambda out: Result(np.asarray(out), None, None))


def adapter() -> Adapter:
    return Adapter(
        "numpy",
        prepare,
        CAPABILITIES,
        notes=(
            "The textbook formula: no mask, bias, scale, window, kv_lengths, softcap, GQA, "
            "lse or weights; causal is bottom-right (np.tri(Lq, Lk, Lk - Lq)).",
            "float16 is not claimed: the formula computes in the inputs' dtype.",
        ),
        title="naive NumPy",
        threads_how=_OPENBLAS_THREADS,
        score_copies=3.2,
        # (1,8,2048,64): beyond it the naive formula only streams memory (7 % of peak at
        # (1,8,4096,64), 2.5 s a call): a minute of the default grid that shows nothing new
        bench_max_scores=2**25,
    )
