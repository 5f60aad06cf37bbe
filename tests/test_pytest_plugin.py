"""The pytest entry point: `pytest --pyargs refattn.spec --refattn-impl IMPL` runs one test per
invariant; a missing capability is a skip, a declared deviation an expected failure."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

HERE = Path(__file__).parent


@pytest.fixture
def spec_run(pytester, monkeypatch):
    """Run `pytest --pyargs refattn.spec` in a subprocess, tests/sdpa_functions.py importable."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))

    def run(*args):
        return pytester.runpytest_subprocess(
            "--pyargs",
            "refattn.spec",
            "-p",
            "no:cacheprovider",
            "--refattn-max-examples",
            "10",
            *args,
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


def test_a_project_with_its_own_spec_package_tests_cleanly(tmp_path):
    """refattn's plugin is loaded by every pytest run of the environment: it must not claim the
    top-level name `spec`, which a user's project may use for its own package."""
    project = tmp_path / "project"
    (project / "spec").mkdir(parents=True)
    (project / "spec" / "__init__.py").write_text("WHAT = 'the project own spec'\n")
    (project / "tests").mkdir()
    (project / "tests" / "test_own.py").write_text(
        "import spec\n\n\ndef test_own_spec():\n    assert spec.WHAT == 'the project own spec'\n"
    )
    (project / "pyproject.toml").write_text("[tool.pytest.ini_options]\npythonpath = ['.']\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
