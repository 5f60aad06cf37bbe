"""Describing an implementation: its protocol and capabilities read off its signature, declared
in code (refattn.declare) or on the command line (--protocol, --with, --without)."""

import pytest

import refattn
from refattn.adapters import ImplementationNotFound, load
from refattn.cli import main


def test_the_refattn_protocol_is_read_off_the_signature():
    impl = load("sdpa_functions:refattn_protocol")
    assert {"mask", "causal_top_left", "causal_bottom_right", "scale", "lse"} <= impl.capabilities
    assert {"bias", "window", "kv_lengths", "softcap", "weights"}.isdisjoint(impl.capabilities)
    assert "combined_masks" in impl.capabilities  # mask and causal together
    assert "refattn protocol" in impl.notes[0]


def test_a_declaration_in_code_narrows_the_capabilities():
    impl = load("sdpa_functions:declared_without_float64")
    assert "float64" not in impl.capabilities and "empty" not in impl.capabilities
    assert "float32" in impl.capabilities
    assert any("-float64" in note for note in impl.notes)


def test_with_and_without_from_the_caller():
    impl = load("sdpa_functions:correct", with_=("bfloat16",), without=("scale",))
    assert "bfloat16" in impl.capabilities and "scale" not in impl.capabilities
    with pytest.raises(ImplementationNotFound, match="SDPA protocol has no way to pass window"):
        load("sdpa_functions:correct", with_=("window",))
    with pytest.raises(ValueError, match="unknown capabilities \\['widow'\\]"):
        load("sdpa_functions:correct", with_=("widow",))
    native = load("native:scalar", without=("float64",))
    assert "float64" not in native.capabilities and "float32" in native.capabilities
    with pytest.raises(ImplementationNotFound, match="are for your own functions"):
        load("native", with_=("bfloat16",))


def test_declare_checks_what_it_is_given():
    with pytest.raises(ValueError, match="protocol should be one of"):
        refattn.declare(protocol="torch")
    with pytest.raises(TypeError, match="a list of capability names, not a string"):
        refattn.declare(with_="bfloat16")


def test_conform_with_and_without(capsys):
    argv = ["conform", "sdpa_functions:correct", "--only", "ATT-D1", "--max-examples", "5"]
    assert main([*argv, "--without", "float64,empty", "--with", "float16"]) == 0
    assert "conforms" in capsys.readouterr().out
    assert main([*argv, "--with", "window"]) == 2
    assert "the SDPA protocol has no way to pass window" in capsys.readouterr().err
    assert main([*argv, "--with", "nope"]) == 2
    assert "unknown capabilities ['nope']" in capsys.readouterr().err


def test_a_declared_semantics_costs_one_line(capsys):
    """finite_mask masks with -1e9: declared, ATT-W4 says it differs and nothing else fails
    because of it (without the declaration W4 fails, tests/test_buggy_functions.py)."""
    argv = ["conform", "sdpa_functions:finite_mask", "--max-examples", "20"]
    argv += ["--only", "ATT-W4,ATT-W3,ATT-M3,ATT-M4,ATT-S3,ATT-N1,ATT-N2,ATT-C1"]
    assert main([*argv, "--semantics", "mask_fill=-1e9"]) == 0
    out = capsys.readouterr().out
    assert "ATT-W4 DIFFERS: declared mask_fill=-1e9" in out or "ATT-W4 DIFFERS: declared" in out
    assert "0 FAIL" in out


def test_a_causal_flag_that_means_bottom_right():
    impl = load("sdpa_functions:correct", semantics={"causal_flag": "bottom_right"})
    assert "causal_bottom_right" in impl.capabilities
    assert "causal_top_left" not in impl.capabilities
    from refattn.spec.registry import INVARIANTS, all_invariants
    from refattn.spec.runner import DIFFERS, FAIL, run_invariant

    all_invariants()
    assert run_invariant(INVARIANTS["ATT-M1"], impl).status == DIFFERS
    # its flag is passed for bottom-right calls: a top-left function fails them
    assert run_invariant(INVARIANTS["ATT-M2"], impl, max_examples=50).status == FAIL


def test_semantics_are_checked():
    with pytest.raises(ValueError, match="fully_masked should be one of"):
        refattn.declare(semantics={"fully_masked": "average"})
    with pytest.raises(ValueError, match="semantics has no \\['masked'\\]"):
        load("sdpa_functions:correct", semantics="masked=zero")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_torch_tensor_function_runs_with_no_wrapper(device, capsys):
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    argv = ["conform", "sdpa_functions:torch_sdpa", "--framework", "torch", "--device", device]
    argv += ["--only", "ATT-N1,ATT-D1,ATT-M4", "--max-examples", "20", "--with", "bfloat16"]
    assert main(argv) == 0
    assert "conforms: 3 PASS" in capsys.readouterr().out
    impl = load("sdpa_functions:torch_sdpa", framework="torch", device=device)
    assert any(f"Called with torch arrays on {device}" in note for note in impl.notes)


def test_a_jax_array_function(capsys):
    pytest.importorskip("jax")
    argv = ["conform", "sdpa_functions:jax_arrays", "--framework", "jax", "--without", "float64"]
    argv += ["--only", "ATT-N1,ATT-W4,ATT-D1", "--max-examples", "15"]
    assert main(argv) == 0, capsys.readouterr().out
