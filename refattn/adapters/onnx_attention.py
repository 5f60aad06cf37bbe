"""ONNX: the Attention operator (opset 24, or 25 for a window) in a one-node model.

    onnxruntime     run by onnxruntime's CPUExecutionProvider
    onnx-reference  run by onnx.reference.ReferenceEvaluator, ONNX's own Python reference

Layout: refattn's (B..., H, L, D) is ONNX's 4-D (B, H, L, D) with the batch dims flattened into
one B; a mask or bias keeps its broadcast dims. The model has symbolic dims, so one model (one
onnxruntime session) serves every shape; models are cached per dtype, inputs and attributes.

Options, refattn -> ONNX: mask -> attn_mask (bool, True = attend); bias -> attn_mask (float,
added); causal "top_left" -> is_causal=1; window (left, right) -> left_window_size,
right_window_size (opset 25; None -> -1, unbounded); kv_lengths -> nonpad_kv_seqlen (opset 24);
scale -> scale; softcap -> softcap; return_weights -> the 4th output with
qk_matmul_output_mode=3 (the softmax probabilities). GQA and Dv != Dk are native.

Causal "bottom_right" -> is_causal=1 with nonpad_kv_seqlen = Lk for every batch element. In
ONNX the causal diagonal (and a window's) sits at offset = nonpad_kv_seqlen - Lq, "the count of
valid keys preceding the query block" (the operator's documentation): with every key valid
that is Lk - Lq, bottom-right. The same rule makes kv_lengths move the diagonal, so kv_lengths
cannot be combined with causal or a window with the spec's meaning; and attn_mask is either a
bool mask or a float bias, not both. Those pairs are declared exclusive.

onnxruntime has a kernel for Attention up to opset 24; at opset 25, which windows need, it
expands the operator's function body into primitive ONNX ops (a graph of about 70 nodes).
"""

from __future__ import annotations

import functools

import numpy as np

from refattn.adapters import Adapter, Prepared, require
from refattn.adapters._layout import from_4d, lengths_to_1d, scores_to_4d, to_4d
from refattn.call import AttentionCall, Result
from refattn.capabilities import Capabilities

OPSET = 24  # the highest opset with an Attention kernel in onnxruntime 1.32
WINDOW_OPSET = 25  # left_window_size and right_window_size appear here
IR_VERSION = 10

RUNTIMES = {"onnxruntime": "onnxruntime", "reference": "onnx-reference"}

CAPABILITIES = Capabilities(
    {
        "float32",
        "float64",
        "mask",
        "bias",
        "causal_top_left",
        "causal_bottom_right",
        "window",
        "kv_lengths",
        "combined_masks",
        "gqa",
        "dv",
        "scale",
        "softcap",
        "weights",
    },
    exclusive=[("mask", "bias"), ("kv_lengths", "causal"), ("kv_lengths", "window")],
)

NOTES = (
    "Exclusive pairs: mask+bias (attn_mask is one input, bool or float); kv_lengths+causal and "
    "kv_lengths+window (nonpad_kv_seqlen moves the causal and window diagonal to offset "
    "nonpad_kv_seqlen - Lq, where the spec keeps it at 0 or Lk - Lq).",
    "Bottom-right causal is is_causal=1 with nonpad_kv_seqlen = Lk (offset Lk - Lq).",
    "scale and softcap are attributes of type FLOAT, 32-bit, so float64_options is not "
    "claimed: float64 calls are given float32 numbers for them, which the attributes carry "
    "exactly.",
    "Not in the operator: returning lse.",
    "float16 is not claimed: the spec's float16 is computed in float32, the operator's in "
    "float16: Q·Kᵀ is in the input type by its definition (softmax_precision covers the softmax "
    "only) and the weights output is of the input type. Measured: max error 0.0037 (onnxruntime "
    "opset 24) and 0.0027 (onnx.reference) on a 2 x 140 call whose float32-computed float16 "
    "answer errs by 0.0002; softmax_precision=FLOAT changes neither.",
    "An attn_mask whose last dim is shorter than the keys is padded with -inf by ONNX's rule, "
    "not broadcast: the adapter spells a mask broadcast along the keys, (..., Lq, 1), out "
    "along Lk.",
)


def adapter(runtime: str, threads: int | None = None) -> Adapter:
    """The adapter of the Attention operator run by `runtime`: "onnxruntime" or "reference";
    threads: onnxruntime's intra-op threads per session (None: its default)."""
    name = RUNTIMES[runtime]
    onnx = require("onnx", extra="onnx", implementation=name)
    packages = ("onnx",)
    notes = list(NOTES)
    capabilities = CAPABILITIES
    threads_how = ""
    if runtime == "onnxruntime":
        require("onnxruntime", extra="onnx", implementation=name)
        packages = ("onnx", "onnxruntime")
        threads_how = (
            "SessionOptions.intra_op_num_threads={n}, inter_op_num_threads=1, sequential execution"
        )
        notes.append(
            f"Models use opset {OPSET}, which onnxruntime runs with its Attention kernel, and "
            f"opset {WINDOW_OPSET} for a window, which it runs by expanding the operator's "
            "function body into primitive ops."
        )
        notes.append(
            "onnxruntime's kernel refuses an attn_mask of rank 1 ('attn_mask must be 2D or 3D or "
            "4D tensor') or one whose Lq dim is 1 ('inconsistent q_sequence_length'), though the "
            "operator takes any mask broadcastable to (B, Hq, Lq, Lk); the adapter spells such a "
            "mask out along Lq (the batch and head dims it broadcasts itself)."
        )
        notes.append(
            "empty is not claimed: onnxruntime's Attention kernel refuses Lq = 0 and Lk = 0 "
            "('Q sequence length must be greater than 0', 'KV sequence length must be greater "
            "than 0')."
        )
    else:
        capabilities = Capabilities(CAPABILITIES | {"empty"}, exclusive=CAPABILITIES.exclusive)
        notes.append(f"Models use opset {OPSET}, and {WINDOW_OPSET} for a window.")
    return Adapter(
        name,
        functools.partial(prepare, onnx, runtime, threads),
        capabilities,
        deviations={},
        packages=packages,
        notes=tuple(notes),
        title="onnxruntime Attention" if runtime == "onnxruntime" else "onnx.reference Attention",
        threads_how=threads_how,
        score_copies=1.2,
    )


def prepare(onnx, runtime, threads, call: AttentionCall) -> Prepared:
    """refattn's call as the ONNX Attention operator (see the module docstring): the model and
    its session built here (cached), the session's run alone in `run`."""
    batch = call.batch_shape
    Lq, Lk = call.Lq, call.Lk
    feeds = {
        "Q": np.ascontiguousarray(to_4d(call.query, batch)),
        "K": np.ascontiguousarray(to_4d(call.key, batch)),
        "V": np.ascontiguousarray(to_4d(call.value, batch)),
    }
    scores = call.mask if call.mask is not None else call.bias
    if scores is not None:
        scores = scores_to_4d(scores, batch)
        if scores.shape[-1] != Lk:
            # ONNX pads an attn_mask whose last dim is short with -inf (the operator's
            # documented rule, onnx.reference does it) rather than broadcasting it: a mask
            # broadcast along the keys, (..., Lq, 1), is spelled out along them.
            scores = np.broadcast_to(scores, (*scores.shape[:-1], Lk))
        if runtime == "onnxruntime" and (scores.ndim < 2 or scores.shape[-2] != Lq):
            # onnxruntime's kernel refuses a 1-D attn_mask and one whose Lq dim broadcasts
            # (explicit checks); the same mask, spelled out along Lq, is what it takes.
            scores = np.broadcast_to(scores, (*scores.shape[:-2], Lq, Lk))
        feeds["attn_mask"] = np.ascontiguousarray(scores)
    if call.kv_lengths is not None:
        feeds["nonpad_kv_seqlen"] = lengths_to_1d(call.kv_lengths, batch)
    elif call.causal == "bottom_right":
        feeds["nonpad_kv_seqlen"] = np.full(call.B, Lk, dtype=np.int64)
    attributes = {}
    if call.causal:
        attributes["is_causal"] = 1
    if call.window is not None:
        left, right = call.window
        attributes["left_window_size"] = -1 if left is None else int(left)
        attributes["right_window_size"] = -1 if right is None else int(right)
    if call.scale is not None:
        attributes["scale"] = float(call.scale)
    if call.softcap is not None:
        attributes["softcap"] = float(call.softcap)
    if call.return_weights:
        attributes["qk_matmul_output_mode"] = 3
    opset = WINDOW_OPSET if call.window is not None else OPSET
    inputs = tuple((n, x.dtype.str, x.ndim) for n, x in feeds.items())
    attributes = tuple(sorted(attributes.items()))
    model = _model(onnx, runtime, threads, opset, inputs, attributes, call.return_weights)

    def output(outputs) -> Result:
        out = from_4d(outputs[0], batch)
        return Result(out, None, from_4d(outputs[1], batch) if call.return_weights else None)

    return Prepared(functools.partial(model, feeds), output)


_INPUT_DIMS = {
    "Q": ("B", "Hq", "Lq", "Dk"),
    "K": ("B", "Hkv", "Lk", "Dk"),
    "V": ("B", "Hkv", "Lk", "Dv"),
    "nonpad_kv_seqlen": ("B",),
}
_ORDER = ("Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen")


@functools.lru_cache(maxsize=256)
def _model(onnx, runtime: str, threads, opset: int, inputs: tuple, attributes: tuple, weights):
    """A callable feeds -> outputs running the one-node model (cached: sessions are costly)."""
    from onnx import helper

    types = {n: helper.np_dtype_to_tensor_dtype(np.dtype(d)) for n, d, _ in inputs}
    given = {n: ndim for n, _, ndim in inputs}
    dtype = types["Q"]

    def info(name, dims):
        return helper.make_tensor_value_info(name, types.get(name, dtype), list(dims))

    graph_inputs = [
        info(n, _INPUT_DIMS.get(n) or [f"m{i}" for i in range(given[n])])
        for n in _ORDER
        if n in given
    ]
    node_inputs = [n if n in given else "" for n in _ORDER]
    while node_inputs[-1] == "":
        node_inputs.pop()
    node_outputs = ["Y", "", "", "QK"] if weights else ["Y"]
    graph_outputs = [info("Y", ("B", "Hq", "Lq", "Dv"))]
    if weights:
        graph_outputs.append(info("QK", ("B", "Hq", "Lq", "Lk")))
    node = helper.make_node("Attention", node_inputs, node_outputs, **dict(attributes))
    graph = helper.make_graph([node], "attention", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_VERSION
    if runtime == "reference":
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(model)
        return lambda feeds: evaluator.run(None, feeds)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # errors come back as exceptions; keep the console quiet
    if threads is not None:
        options.intra_op_num_threads = threads  # the calling thread counts as one of them
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return lambda feeds: session.run(None, feeds)
