"""Adapters: layouts round-trip, capabilities claimed are really there, options not claimed are
refused, missing peers say what to install. Peer tests skip when the peer is not installed."""

import sys

import numpy as np
import pytest
from refattn.spec.cases import Case
from refattn.spec.tolerance import expect

from refattn import reference
from refattn.adapters import (
    BUILTIN,
    ImplementationNotFound,
    PeerNotInstalled,
    Unsupported,
    _layout,
    load,
)
from refattn.adapters.function import PROTOCOL_CAPABILITIES
from refattn.capabilities import CAPABILITIES, Capabilities, exclusive_pairs

PEERS = ["torch", "torch-math", "torch-flash", "jax", "onnxruntime", "onnx-reference"]


@pytest.fixture(scope="module", params=PEERS)
def peer(request):
    try:
        return load(request.param)
    except PeerNotInstalled as error:
        pytest.skip(str(error))


# Layouts


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_to_4d_and_back_is_the_identity(batch):
    x = np.arange(np.prod((*batch, 2, 5, 4))).reshape(*batch, 2, 5, 4)
    flat = _layout.to_4d(x, batch)
    assert flat.shape == (int(np.prod(batch)), 2, 5, 4)
    assert np.array_equal(_layout.from_4d(flat, batch), x)


@pytest.mark.parametrize(
    "shape",
    [(6,), (5, 6), (1, 6), (2, 5, 6), (3, 1, 1, 6), (1, 3, 1, 1, 6), (2, 3, 2, 5, 6), (3, 2, 1, 6)],
)
def test_scores_to_4d_broadcasts_to_the_same_mask(shape):
    batch, full = (2, 3), (2, 3, 2, 5, 6)  # B..., Hq, Lq, Lk
    rng = np.random.default_rng(0)
    mask = rng.random(shape) < 0.5
    flat = _layout.scores_to_4d(mask, batch)
    assert flat.ndim <= 4
    spelled = np.broadcast_to(flat, (6, 2, 5, 6))
    assert np.array_equal(spelled, np.broadcast_to(mask, full).reshape(6, 2, 5, 6))


def test_lengths_to_1d_flattens_the_batch():
    lengths = np.array([[1, 2, 3], [4, 5, 6]])
    assert _layout.lengths_to_1d(lengths, (2, 3)).tolist() == [1, 2, 3, 4, 5, 6]
    assert _layout.lengths_to_1d(np.int64(4), (2,)).tolist() == [4, 4]


# What each claimed capability means, as one call that uses it (no fully masked rows: those are
# ATT-W4's business, and JAX declares a deviation there).


def _calls(capabilities):
    """(capability, case, extra options) exercising each claimed capability in a plain way."""
    dtype = "float32" if "float32" in capabilities else sorted(capabilities & set(DTYPES))[0]
    base = Case(batch=(2,), Hq=2, Hkv=2, Lq=5, Lk=7, Dk=8, Dv=8, dtype=dtype, seed=3)
    keep_first = np.ones((5, 7), dtype=bool)
    keep_first[:, 1::2] = False
    bias = np.random.default_rng(1).standard_normal((2, 1, 5, 7)).astype(dtype)
    calls = {
        "float16": (base.replace(dtype="float16"), {}),
        "float32": (base.replace(dtype="float32"), {}),
        "float64": (base.replace(dtype="float64"), {}),
        "mask": (base, {"mask": keep_first}),
        "bias": (base, {"bias": bias}),
        "causal_top_left": (base, {"causal": "top_left"}),
        "causal_bottom_right": (base, {"causal": "bottom_right"}),
        "window": (base, {"window": (1, 2)}),
        "kv_lengths": (base, {"kv_lengths": np.array([3, 7])}),
        "gqa": (base.replace(Hq=4, Hkv=2), {}),
        "dv": (base.replace(Dv=3), {}),
        "scale": (base, {"scale": 0.3}),
        "softcap": (base, {"softcap": 2.0}),
        "lse": (base, {"return_lse": True}),
        "weights": (base, {"return_weights": True}),
    }
    if "combined_masks" in capabilities:
        pair = {"mask": keep_first, "causal": "top_left", "bias": bias}
        usable = [n for n in pair if {"causal_top_left" if n == "causal" else n} <= capabilities]
        chosen = usable[:1]
        for name in usable[1:]:
            if all(frozenset((name, c)) not in exclusive_pairs(capabilities) for c in chosen):
                chosen.append(name)
        calls["combined_masks"] = (base, {n: pair[n] for n in chosen})
    return [(c, *calls[c]) for c in sorted(capabilities) if c in calls]


DTYPES = ("float16", "float32", "float64")
LOOSE = {"float16": 2e-2, "float32": 1e-4, "float64": 1e-4}  # agreement, not conformance


def test_every_claimed_capability_works(peer):
    for capability, case, extra in _calls(peer.capabilities):
        q, k, v, options = case.build()
        options.update(extra)
        got = peer(q, k, v, **options)
        want = reference.attention(q, k, v, **options)
        got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape, capability
            tolerance = LOOSE[case.dtype] * max(1.0, float(np.abs(w).max()))
            assert np.abs(g.astype(np.float64) - w).max() <= tolerance, capability
        assert got[0].dtype == q.dtype, capability


def test_no_queries_when_empty_is_claimed(peer):
    if "empty" not in peer.capabilities:
        pytest.skip(f"{peer.name} does not claim empty")
    dtype = "float32" if "float32" in peer.capabilities else "float64"
    q, k, v, _ = Case(Hq=2, Hkv=2, Lq=0, Lk=3, dtype=dtype).build()
    assert peer(q, k, v).shape == (2, 0, 8)


UNCLAIMED_OPTIONS = {
    "mask": {"mask": np.ones((5, 7), dtype=bool)},
    "bias": {"bias": np.zeros((5, 7), dtype=np.float32)},
    "causal_top_left": {"causal": "top_left"},
    "causal_bottom_right": {"causal": "bottom_right"},
    "window": {"window": (1, 1)},
    "kv_lengths": {"kv_lengths": np.array(3)},
    "softcap": {"softcap": 2.0},
    "lse": {"return_lse": True},
    "weights": {"return_weights": True},
}


def test_options_not_claimed_are_refused(peer):
    q, k, v, _ = Case(Hq=2, Hkv=2, Lq=5, Lk=7, dtype="float32").build()
    refused = [c for c in UNCLAIMED_OPTIONS if c not in peer.capabilities]
    for capability in refused:
        with pytest.raises(Unsupported):
            peer(q, k, v, **UNCLAIMED_OPTIONS[capability])


def test_exclusive_pairs_are_refused(peer):
    q, k, v, _ = Case(batch=(2,), Hq=2, Hkv=2, Lq=5, Lk=7, dtype="float32").build()
    values = {
        "mask": np.ones((5, 7), dtype=bool),
        "bias": np.zeros((5, 7), dtype=np.float32),
        "causal": "top_left",
        "window": (1, 1),
        "kv_lengths": np.array([3, 4]),
    }
    for pair in exclusive_pairs(peer.capabilities):
        with pytest.raises(Unsupported):
            peer(q, k, v, **{name: values[name] for name in pair})


def test_masks_are_not_combined_without_the_capability(peer):
    if "combined_masks" in peer.capabilities:
        pytest.skip(f"{peer.name} combines masks")
    q, k, v, _ = Case(Hq=2, Hkv=2, Lq=5, Lk=7, dtype="float32").build()
    with pytest.raises(Unsupported):
        peer(q, k, v, mask=np.ones((5, 7), dtype=bool), causal="top_left")


def test_capabilities_are_known_names(peer):
    assert set(peer.capabilities) <= set(CAPABILITIES)
    assert peer.notes, "an adapter says how it reaches its peer"


def test_printed_reproduction_runs_for_a_peer(peer):
    dtype = "float32" if "float32" in peer.capabilities else "float64"
    case = Case(batch=(2,), Hq=2, Hkv=2, Lq=3, Lk=4, dtype=dtype, seed=5)
    lines = case.repro(peer.name).splitlines()
    scope = {}
    exec("\n".join([*lines[:-1], "got = " + lines[-1]]), scope)
    q, k, v, options = case.build()
    assert np.allclose(scope["got"], reference.attention(q, k, v, **options), atol=1e-5)


def test_jax_fast_compile_stays_within_the_tolerance_of_the_default(monkeypatch):
    """The adapter's XLA_FAST_OPTIONS change XLA's code generation (refattn.adapters.jax_dpa):
    its results differ from those of XLA's default options (REFATTN_JAX_XLA_DEFAULTS=1) only
    by rounding."""
    try:
        jax = load("jax")
    except PeerNotInstalled as error:
        pytest.skip(str(error))
    cases = [
        Case(batch=(2,), Hq=4, Hkv=2, Lq=37, Lk=51, Dk=16, Dv=16, dtype="float32", seed=1),
        Case(
            Hq=2,
            Hkv=1,
            Lq=9,
            Lk=130,
            Dk=64,
            Dv=64,
            dtype="float32",
            mask_shape=(9, 130),
            mask_density=0.7,
            causal="top_left",
            seed=2,
        ),
        Case(
            batch=(3,),
            Lq=20,
            Lk=20,
            Dk=5,
            Dv=5,
            dtype="float32",
            bias_shape=(3, 1, 20, 20),
            window=(3, None),
            kv_lengths=(20, 7, 11),
            scale=0.7,
            seed=3,
        ),
    ]

    def run(case):
        q, k, v, options = case.build()
        return jax(q, k, v, **options)

    monkeypatch.setenv("REFATTN_JAX_XLA_DEFAULTS", "1")
    default = [run(c) for c in cases]
    monkeypatch.delenv("REFATTN_JAX_XLA_DEFAULTS")
    for case, want in zip(cases, default, strict=True):
        q, k, v, options = case.build()
        bound = expect(q, k, v, **options).tol.out
        assert np.abs(run(case) - want).max() <= bound, case


# Missing peers and unknown names


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("torch", "torch", "torch"),
        ("torch-flash", "torch", "torch"),
        ("jax", "jax", "jax"),
        ("onnxruntime", "onnxruntime", "onnx"),
        ("onnx-reference", "onnx", "onnx"),
    ],
)
def test_missing_peer_names_the_extra(monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(PeerNotInstalled) as error:
        load(name)
    message = str(error.value)
    assert "\n" not in message
    assert f"pip install 'refattn[{extra}]'" in message
    assert name in message


def test_every_builtin_name_is_listed_in_the_error():
    with pytest.raises(ImplementationNotFound) as error:
        load("nonsense")
    for name in BUILTIN:
        assert name in str(error.value)


# module.path:function


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("no_such_module_xyz:fn", "cannot import"),
        ("sdpa_functions:no_such_function", "has no"),
        ("sdpa_functions:np", "not a function"),
        ("sdpa_functions:", "module.path:function"),
        ("numpy:sum", "should take the SDPA protocol"),
    ],
)
def test_function_name_errors(name, problem):
    with pytest.raises(ImplementationNotFound, match=problem):
        load(name)


def test_function_capabilities_come_from_the_protocol_and_signature():
    plain = load("sdpa_functions:without_gqa")
    assert set(plain.capabilities) == set(PROTOCOL_CAPABILITIES)
    widened = load("sdpa_functions:correct")
    assert set(widened.capabilities) == {*PROTOCOL_CAPABILITIES, "gqa"}
    assert isinstance(widened.capabilities, Capabilities)


SEEN = {}


def spy(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """An SDPA-protocol function that records what it is given."""
    SEEN.update(
        shapes=(query.shape, key.shape, value.shape),
        mask=None if attn_mask is None else attn_mask.shape,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=enable_gqa,
    )
    return np.zeros((*query.shape[:-1], value.shape[-1]), dtype=query.dtype)


def test_function_receives_the_sdpa_call():
    impl = load(f"{__name__}:spy")
    q, k, v, _ = Case(batch=(2, 3), Hq=4, Hkv=2, Lq=5, Lk=7, Dv=3).build()
    out = impl(q, k, v, mask=np.ones((3, 1, 5, 7), dtype=bool), scale=0.5)
    assert out.shape == (2, 3, 4, 5, 3)
    assert SEEN == {
        "shapes": ((6, 4, 5, 8), (6, 2, 7, 8), (6, 2, 7, 3)),
        "mask": (6, 1, 5, 7),
        "is_causal": False,
        "scale": 0.5,
        "enable_gqa": True,
    }
    impl(q[:, :, :2], k[:, :, :1], v[:, :, :1], causal=True)
    assert SEEN["is_causal"] is True
    assert SEEN["enable_gqa"] is True
    impl(q[:, :, :2], k, v, causal=True)
    assert SEEN["enable_gqa"] is False
    with pytest.raises(Unsupported):
        impl(q, k, v, mask=np.ones((5, 7), dtype=bool), causal=True)
    with pytest.raises(Unsupported):
        impl(q, k, v, causal="bottom_right")
