"""`refattn conform`: exit codes, invariant selection, deviations, reports, missing peers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from refattn.spec.conform import spec_beside

from refattn.cli import main

ROOT = Path(__file__).resolve().parents[1]

FAST = ["--max-examples", "10"]
CORRECT = "sdpa_functions:correct"
FINITE_MASK = "sdpa_functions:finite_mask"  # fails ATT-W4 (tests/sdpa_functions.py)


def conform(capsys, *args):
    status = main(["conform", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_conforming_implementation_exits_0(capsys):
    status, out, err = conform(capsys, CORRECT, "--only", "ATT-W4,ATT-N1", *FAST)
    assert status == 0
    assert "sdpa_functions:correct conforms: 2 PASS" in out
    # a progress line before and after each invariant
    assert "[ 1/2] ATT-W4  Fully masked rows" in err
    assert "[ 1/2] ATT-W4  PASS" in err


def test_a_failed_must_exits_1_with_the_counterexample(capsys):
    status, out, _ = conform(capsys, FINITE_MASK, "--only", "ATT-W4", *FAST)
    assert status == 1
    assert "ATT-W4 FAIL: out of fully masked rows" in out
    assert "out0 = finite_mask(data[" in out and "from sdpa_functions import finite_mask" in out
    assert "does NOT conform (1 MUST failed)" in out


def test_skip_leaves_invariants_out(capsys):
    status, out, _ = conform(capsys, FINITE_MASK, "--only", "ATT-W4,ATT-D1", "--skip", "ATT-W4")
    assert status == 0
    assert "ATT-W4" not in out
    assert "ATT-D1" in out


def test_skipped_for_a_missing_capability_is_not_a_failure(capsys):
    status, out, _ = conform(capsys, CORRECT, "--only", "ATT-N4", *FAST)
    assert status == 0
    assert "ATT-N4 SKIP: needs lse, which sdpa_functions:correct does not provide" in out


def test_deviations_file_turns_a_failure_into_a_deviation(capsys, tmp_path):
    deviations = tmp_path / "known.txt"
    deviations.write_text("# known\nATT-W4  # our masked rows average V\n")
    status, out, _ = conform(
        capsys, FINITE_MASK, "--only", "ATT-W4", "--deviations", str(deviations), *FAST
    )
    assert status == 0
    assert "ATT-W4 DEVIATION: declared: our masked rows average V" in out
    assert "observed: out of fully masked rows" in out


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("ATT-Z9  # typo", "'ATT-Z9' is not an invariant ID"),
        ("att-w4  # lower case", "'att-w4' should be 'ATT-W4': IDs are upper case"),
    ],
)
def test_a_deviations_file_with_an_unknown_id_is_a_usage_error(capsys, tmp_path, line, says):
    deviations = tmp_path / "known.txt"
    deviations.write_text(f"ATT-W4  # fine\n{line}\n")
    status, out, err = conform(capsys, FINITE_MASK, "--deviations", str(deviations))
    assert (status, out) == (2, "")
    assert err.startswith(f"refattn conform: --deviations: {deviations}:2: {says}")


def test_only_takes_one_id_list_and_leaves_the_implementation_alone(capsys):
    status, out, _ = conform(capsys, "--only", "ATT-D1", CORRECT, "--only", "ATT-D2", *FAST)
    assert status == 0
    assert "sdpa_functions:correct conforms: 2 PASS" in out


def test_a_failing_should_conforms_unless_strict(capsys):
    args = ("sdpa_functions:weights_at_values", "--only", "ATT-M8", *FAST)
    status, out, _ = conform(capsys, *args)
    assert status == 0 and "ATT-M8 FAIL" in out
    status, _, _ = conform(capsys, *args, "--strict")
    assert status == 1


def test_first_parameters_may_have_any_names(capsys):
    status, out, _ = conform(capsys, "sdpa_functions:short_names", "--only", "ATT-N1", *FAST)
    assert status == 0, out


def test_reports_go_into_folders_made_before_the_run(capsys, tmp_path):
    report = tmp_path / "not" / "yet" / "report.json"
    status, _, _ = conform(capsys, CORRECT, "--only", "ATT-D1", *FAST, "--json", str(report))
    assert status == 0 and json.loads(report.read_text())["implementation"] == CORRECT


ONLY_D1 = ["--only", "ATT-D1", *FAST]


def test_a_users_package_imports_from_the_folder_conform_runs_in(tmp_path):
    """`refattn conform mypkg.attention:sdpa` from the project folder, no PYTHONPATH."""
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = Path(__file__).with_name("sdpa_functions.py").read_text()
    (package / "attention.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "refattn.cli",
            "conform",
            "mypkg.attention:correct",
            "--only",
            "ATT-D1",
            *FAST,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "mypkg.attention:correct conforms" in done.stdout
    assert not (tmp_path / ".hypothesis").exists(), "refattn conform leaves no .hypothesis/"


def test_a_refattn_folder_where_conform_runs_does_not_shadow_the_installed_package(tmp_path):
    """Run in a checkout of refattn (its source tree unbuilt), the workers still import the
    installed package that the command itself runs: the folder goes last on sys.path."""
    (tmp_path / "refattn").mkdir()
    (tmp_path / "refattn" / "__init__.py").write_text("raise ImportError('the source tree')\n")
    (tmp_path / "user_attention.py").write_text(
        Path(__file__).with_name("sdpa_functions.py").read_text()
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [Path(sys.executable).with_name("refattn"), "conform", "user_attention:correct", *ONLY_D1],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "user_attention:correct conforms" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-impl"], "implementation should be one of"),
        (["reference", "--only", "ATT-X1"], "--only: unknown invariant IDs ['ATT-X1']"),
        (
            ["native:avx9"],
            "'native:avx9' is not one of native's variants: native:amx_bf16, native:avx512_bf16",
        ),
        (["reference", "--skip", "W4"], "--skip: unknown invariant IDs ['W4']"),
        (["reference", "--max-examples", "0"], "--max-examples should be at least 1"),
        (["reference", "--jobs", "0"], "--jobs should be at least 1"),
        (["reference", "--deviations", "/no/such/file"], "--deviations: cannot read"),
        (["no_such_module_xyz:sdpa"], "cannot import 'no_such_module_xyz'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, args, message):
    status, out, err = conform(capsys, *args)
    assert status == 2
    assert out == ""
    assert message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("impl", "hidden", "module", "extra"),
    [
        ("torch", ["torch"], "torch", "torch"),
        ("jax", ["jax"], "jax", "jax"),
        # onnxruntime builds its model with onnx, imported first: hide both, so the message
        # does not depend on which of them this machine has.
        ("onnxruntime", ["onnx", "onnxruntime"], "onnx", "onnx"),
        ("onnx-reference", ["onnx"], "onnx", "onnx"),
    ],
)
def test_missing_peer_exits_2_naming_the_extra(capsys, monkeypatch, impl, hidden, module, extra):
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    status, out, err = conform(capsys, impl)
    assert (status, out) == (2, "")
    assert err == (
        f"refattn conform: {impl} needs {module}, which is not installed: "
        f"pip install 'refattn[{extra}]'\n"
    )


def test_json_report(capsys, tmp_path):
    path = tmp_path / "report.json"
    status, _, _ = conform(
        capsys, FINITE_MASK, "--only", "ATT-W4,ATT-N4", "--json", str(path), "--seed", "3", *FAST
    )
    assert status == 1
    report = json.loads(path.read_text())
    assert report["implementation"] == FINITE_MASK
    assert report["conforms"] is False
    assert report["settings"]["seed"] == 3
    assert report["settings"]["max_examples"] == 10
    assert {"python", "numpy", "refattn"} <= set(report["versions"])
    assert {"platform", "processor", "cpu_count"} <= set(report["machine"])
    assert "mask" in report["capabilities"]
    assert report["notes"]
    results = {r["id"]: r for r in report["results"]}
    assert results["ATT-W4"]["status"] == "FAIL"
    assert "reproduce" in results["ATT-W4"]["detail"]
    assert results["ATT-N4"]["status"] == "SKIP"


def test_markdown_report(capsys, tmp_path):
    path = tmp_path / "report.md"
    conform(capsys, FINITE_MASK, "--only", "ATT-W4,ATT-D1", "--markdown", str(path), *FAST)
    text = path.read_text()
    assert text.startswith("# Conformance of `sdpa_functions:finite_mask`")
    assert "- versions: python" in text
    assert "- machine: " in text
    # written outside a refattn checkout: no links to a SPEC.md that is not there, the
    # failing invariant's statement in the report instead
    assert "| ATT-W4 | Fully masked rows" in text and "SPEC.md#" not in text
    assert "### ATT-W4 — FAIL\n\n> A query that may see no key at all gets output 0" in text
    assert "## How the implementation is called" in text
    inside = ROOT / "docs" / "conformance"
    if (ROOT / "spec" / "registry.py").is_file():  # a source checkout, as in CI
        assert spec_beside(inside / "x.md") == "../../SPEC.md"


def test_jobs_give_the_same_results(capsys):
    """Invariants run in worker processes give the same statuses and example counts."""
    args = ("sdpa_functions:no_scaling", "--only", "ATT-N1,ATT-D1,ATT-W4", *FAST)
    one = conform(capsys, *args)
    two = conform(capsys, *args, "--jobs", "2")
    assert one[0] == two[0] == 1

    def rows(out):  # the table without its time column
        return [line.rsplit(maxsplit=1)[0] for line in out.splitlines() if line[:4] == "ATT-"]

    assert rows(one[1]) == rows(two[1])
    assert "[ 3/3]" in two[2]


def test_a_crash_fails_its_invariant_with_a_reproduction_and_the_run_goes_on(capsys, tmp_path):
    report = tmp_path / "report.json"
    args = ("sdpa_functions:crashes", "--only", "ATT-M3,ATT-D1", *FAST, "--json", str(report))
    status, _, _ = conform(capsys, *args)
    assert status == 1
    results = {r["id"]: r for r in json.loads(report.read_text())["results"]}
    assert results["ATT-D1"]["status"] == "PASS"
    detail = results["ATT-M3"]["detail"]
    assert results["ATT-M3"]["status"] == "FAIL"
    assert "sdpa_functions:crashes crashed the process (SIGABRT) during impl(" in detail
    assert "reproduce (the call it died in):" in detail
    assert "out = crashes(data[" in detail and "attn_mask=data[" in detail


def test_a_hang_fails_its_invariant_after_the_timeout(capsys):
    args = ("sdpa_functions:hangs", "--only", "ATT-M1,ATT-D1", *FAST, "--timeout", "2")
    status, out, _ = conform(capsys, *args)
    assert status == 1
    assert "ATT-M1 FAIL: sdpa_functions:hangs did not return within 2 s (killed) during" in out
    assert "out = hangs(data[" in out and "is_causal=True" in out
    assert "ATT-D1" in out and "1 PASS" in out


COMMAND = (sys.executable, "-m", "refattn.cli", "conform")


def test_ctrl_c_stops_the_run_and_still_writes_the_report(tmp_path):
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    process = subprocess.Popen(
        [*COMMAND, "sdpa_functions:slow", "--json", str(report), "--only", "ATT-D1,ATT-N1,ATT-W4"],
        env=env,
        cwd=tmp_path,  # `-m` puts the folder first: from the checkout, the unbuilt source tree
        # A shell's background job starts with SIGINT ignored, and Python keeps that: undo it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the first invariant has finished
        line = process.stderr.readline()
        if "PASS" in line or "FAIL" in line:
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err
    statuses = [r["status"] for r in json.loads(report.read_text())["results"]]
    assert statuses[0] in ("PASS", "FAIL") and "NOT RUN" in statuses
