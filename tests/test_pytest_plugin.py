"""The pytest entry point: `pytest --pyargs refattn.spec --refattn-impl IMPL` runs one test per
invariant; a missing capability is a skip, a declared deviation an expected failure."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from refattn.spec.registry import all_invariants

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
    assert f"{len(all_invariants())} tests collected" in result.stdout.str()


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


def test_declared_semantics_pass_where_they_hold(spec_run):
    """jax declares that a row seeing no key is the mean of V (its semantics): W4 checks that
    instead of the spec's 0, and passes."""
    pytest.importorskip("jax")
    result = spec_run("--refattn-impl", "jax", "-k", "W4")
    result.assert_outcomes(passed=1)
    assert "refattn: semantics fully_masked=mean, mask_fill=" in result.stdout.str()


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


def test_without_an_implementation_nothing_passes(spec_run):
    """No default: collecting the conformance tests without --refattn-impl is a usage error."""
    result = spec_run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no implementation is named: pass --refattn-impl" in result.stderr.str()


def test_the_header_says_what_is_checked(spec_run):
    result = spec_run("--refattn-impl", "sdpa_functions:correct", "-k", "D1", "--refattn-seed", "3")
    header = result.stdout.str()
    assert "refattn: checking sdpa_functions:correct against the spec, seed 3" in header
    assert "10 examples per invariant" in header
    assert "refattn: capabilities " in header and "causal_top_left" in header


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("ATT-Z9  # no such", "'ATT-Z9' is not an invariant ID"),
        ("att-m8  # lower case", "'att-m8' should be 'ATT-M8': IDs are upper case"),
    ],
)
def test_a_deviations_file_is_checked_and_named_by_its_option(spec_run, tmp_path, line, says):
    deviations = tmp_path / "known.txt"
    deviations.write_text(line + "\n")
    impl = ("--refattn-impl", "sdpa_functions:correct")
    result = spec_run(*impl, "--refattn-deviations", str(deviations), "-k", "D1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--refattn-deviations: {deviations}:1: {says}" in result.stderr.str()


def test_ini_options_and_a_deviations_file_relative_to_the_config_file(pytester, monkeypatch):
    """From a pytest configuration: the deviations file is found beside it, wherever pytest is
    started from, and a deviations path outside the project does not drop the options."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    pytester.makefile(
        ".ini",
        pytest=(
            "[pytest]\nrefattn_impl = sdpa_functions:finite_mask\n"
            "refattn_deviations = attention.deviations\nrefattn_max_examples = 10\n"
        ),
    )
    pytester.makefile(".deviations", attention="ATT-W4  # averages V\n")
    sub = pytester.mkdir("elsewhere")
    monkeypatch.chdir(sub)
    result = pytester.runpytest_subprocess(
        "--pyargs", "refattn.spec", "-p", "no:cacheprovider", "-k", "W4", "-c", "../pytest.ini"
    )
    result.assert_outcomes(xfailed=1)


def test_max_examples_below_one_is_a_usage_error(spec_run):
    result = spec_run("--refattn-impl", "sdpa_functions:correct", "--refattn-max-examples", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--refattn-max-examples should be at least 1, but got 0" in result.stderr.str()


def test_a_failing_should_is_reported_not_required_unless_strict(spec_run):
    impl = ("--refattn-impl", "sdpa_functions:weights_at_values", "-k", "M8", "-rx")
    result = spec_run(*impl)
    result.assert_outcomes(xfailed=1)
    assert "SHOULD not met" in result.stdout.str()
    spec_run(*impl, "--refattn-strict").assert_outcomes(failed=1)


def test_runs_in_parallel_with_xdist(spec_run):
    pytest.importorskip("xdist")
    result = spec_run("--refattn-impl", "sdpa_functions:correct", "-n", "2", "-k", "D1 or W1 or M1")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("passed", 0) >= 1


def test_imported_into_a_users_file_it_still_needs_an_implementation(pytester):
    pytester.makepyfile(
        test_attention_spec="from refattn.spec.test_conformance import test_invariant  # noqa\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no implementation is named" in result.stderr.str()


def test_the_pytest_route_finds_the_counterexample_the_cli_finds(spec_run, capsys):
    """The same defaults (seed 0, the same examples): the same shrunk case from either route."""
    from refattn.cli import main

    assert main(["conform", "sdpa_functions:causal_off_by_one", "--only", "ATT-M1"]) == 1
    cli = [line.strip() for line in capsys.readouterr().out.splitlines() if "case: Case(" in line]
    result = spec_run(
        "--refattn-impl",
        "sdpa_functions:causal_off_by_one",
        "-k",
        "M1",
        "--refattn-max-examples",
        "100",
    )
    via_pytest = [line.strip() for line in result.stdout.lines if "case: Case(" in line]
    assert cli and via_pytest and cli[0] == via_pytest[0].lstrip("E").strip()
