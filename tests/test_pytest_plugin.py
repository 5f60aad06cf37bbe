"""The pytest entry point: `pytest --pyargs spec --refattn-impl IMPL` runs one test per
invariant; a missing capability is a skip, a declared deviation an expected failure."""

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

HERE = Path(__file__).parent


@pytest.fixture
def spec_run(pytester, monkeypatch):
    """Run `pytest --pyargs spec` in a subprocess, with tests/sdpa_functions.py importable."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))

    def run(*args):
        return pytester.runpytest_subprocess(
            "--pyargs", "spec", "-p", "no:cacheprovider", "--refattn-max-examples", "10", *args
        )

    return run


def test_one_test_per_invariant_named_by_its_id(spec_run):
    result = spec_run("--refattn-impl", "sdpa_functions:correct", "--collect-only", "-q")
    assert "test_conformance.py::test_invariant[ATT-W1]" in result.stdout.str()
    assert "38 tests collected" in result.stdout.str()


def test_passes_skips_and_failures(spec_run):
    result = spec_run("--refattn-impl", "sdpa_functions:finite_mask", "-k", "W4 or N4 or D1")
    result.assert_outcomes(passed=1, skipped=1, failed=1)
    assert "test_invariant[ATT-W4]" in result.stdout.str()
    assert "out of fully masked rows" in result.stdout.str()


def test_declared_deviation_is_an_expected_failure(spec_run, tmp_path):
    deviations = tmp_path / "known.txt"
    deviations.write_text("ATT-W4  # averages V\nATT-D1  # declared, but holds\n")
    result = spec_run(
        "--refattn-impl",
        "sdpa_functions:finite_mask",
        "--refattn-deviations",
        str(deviations),
        "-k",
        "W4 or D1",
        "-rxX",
    )
    result.assert_outcomes(xfailed=1, xpassed=1)
    assert "declared: averages V" in result.stdout.str()


def test_adapter_deviations_are_expected_failures(spec_run):
    pytest.importorskip("jax")
    result = spec_run("--refattn-impl", "jax", "-k", "W4")
    result.assert_outcomes(xfailed=1)
