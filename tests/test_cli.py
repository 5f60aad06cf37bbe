"""The `refattn` command: spec, conform, and SPEC.md kept current."""

import json
import sys
from pathlib import Path

import pytest
from refattn.spec.pictures import MASK_PICTURES
from refattn.spec.registry import all_invariants
from refattn.spec.render import markdown

import refattn
from refattn.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_spec_md_is_current():
    """SPEC.md is what `refattn spec --markdown` renders; regenerate it when the spec changes."""
    assert (ROOT / "SPEC.md").read_text() == markdown(all_invariants()), (
        "SPEC.md is stale: run `refattn spec --markdown > SPEC.md`"
    )


def test_spec_md_embeds_the_mask_pictures_and_they_are_committed():
    """The pictures under the mask invariants exist; `refattn plot spec-masks` draws them."""
    spec_md = (ROOT / "SPEC.md").read_text()
    ids = {inv.id for inv in all_invariants()}
    for invariant_id, picture in MASK_PICTURES.items():
        assert invariant_id in ids and invariant_id.startswith("ATT-M")
        assert f"]({picture.path})" in spec_md
        image = (ROOT / picture.path).read_bytes()
        assert image.startswith(b"\x89PNG\r\n\x1a\n"), (
            f"{picture.path}: run refattn plot spec-masks"
        )


def test_spec_prints_every_invariant(capsys):
    assert main(["spec"]) == 0
    text = capsys.readouterr().out
    for inv in all_invariants():
        assert f"{inv.id}  {inv.level}" in text


def test_conform_reference_passes_and_writes_reports(tmp_path, capsys):
    json_path, md_path = tmp_path / "r.json", tmp_path / "r.md"
    status = main(
        [
            "conform",
            "reference",
            "--only",
            "ATT-W1,ATT-N1",
            "--max-examples",
            "5",
            "--json",
            str(json_path),
            "--markdown",
            str(md_path),
        ]
    )
    assert status == 0
    captured = capsys.readouterr()
    assert "ATT-W1" in captured.out and "reference conforms: 2 PASS" in captured.out
    assert "[ 1/2] ATT-W1" in captured.err  # a progress line per invariant
    report = json.loads(json_path.read_text())
    assert report["implementation"] == "reference" and report["conforms"] is True
    assert [r["id"] for r in report["results"]] == ["ATT-W1", "ATT-N1"]
    assert report["settings"]["max_examples"] == 5 and "numpy" in report["versions"]
    assert "| ATT-W1 |" in md_path.read_text()


def test_conform_skip_leaves_invariants_out(capsys):
    assert (
        main(
            [
                "conform",
                "reference",
                "--only",
                "ATT-W1,ATT-W2",
                "--skip",
                "ATT-W2",
                "--max-examples",
                "3",
            ]
        )
        == 0
    )
    assert "ATT-W2" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["conform", "no-such-impl"], "implementation should be one of"),
        (["conform", "reference", "--only", "ATT-Z9"], "--only: unknown invariant IDs ['ATT-Z9']"),
        (["conform", "reference", "--max-examples", "0"], "--max-examples should be at least 1"),
        (["conform", "reference", "--deviations", "/no/such/file"], "--deviations: cannot read"),
    ],
)
def test_conform_usage_errors_exit_2(argv, says, capsys):
    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_deviations_file(tmp_path, capsys):
    path = tmp_path / "deviations.txt"
    path.write_text("# known differences\nATT-W1  # rows do not sum to one here\n")
    assert (
        main(
            [
                "conform",
                "reference",
                "--only",
                "ATT-W1",
                "--max-examples",
                "3",
                "--deviations",
                str(path),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "DEVIATION" in captured.out and "declared: rows do not sum to one here" in captured.out
    path.write_text("ATT-W1 ATT-W2\n")
    assert main(["conform", "reference", "--deviations", str(path)]) == 2
    assert "expected 'ID  # reason'" in capsys.readouterr().err


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = "pip install '.[test]' && pytest"
    assert readme.count("    pip install ") == 2, "the README keeps exactly two set-up commands"
    assert command in readme and command in (ROOT / ".ci" / "run").read_text()
    assert "pip install . && refattn conform" in readme


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"refattn {refattn.__version__}"


def test_spec_prints_one_invariant_in_full(capsys):
    assert main(["spec", "att-m8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ATT-M8  SHOULD") and "formula:" in out and "why:" in out
    assert "ATT-M7" not in out
    assert main(["spec", "ATT-Z9"]) == 2
    assert "unknown invariant ID 'ATT-Z9'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["plot", "mask", "--lq", "3"], ["plot", "spec-masks"], ["plot", "weights"]]
)
def test_plot_without_matplotlib_names_the_extra(argv, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "pip install 'refattn[plot]'" in capsys.readouterr().err
