"""Pictures: mask diagrams show what refattn.masks computes; weights and plots are real PNGs."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="pictures need the `plot` extra")

from matplotlib.colors import to_rgb
from matplotlib.image import imread
from refattn.spec.pictures import MASK_PICTURES

from refattn import masks, pictures, reference
from refattn.cli import main
from refattn.pictures import MaskPanel

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOURS = {
    "visible": np.array(to_rgb(pictures.VISIBLE)),
    "hidden": np.array(to_rgb(pictures.HIDDEN)),
    "padding": np.array(to_rgb(pictures.PADDING)),
}


def _cell_colours(figure, ax, panel, path) -> np.ndarray:
    """(Lq, Lk) names of the colour found at the centre of each cell of the saved PNG."""
    pictures.save(figure, path)
    image = imread(path)[..., :3]  # rows from the top
    height = image.shape[0]
    names = np.empty((panel.Lq, panel.Lk), dtype=object)
    for i in range(panel.Lq):
        for j in range(panel.Lk):
            x, y = ax.transData.transform((j, i))  # pixels from the bottom left
            pixel = image[round(height - y), round(x)]
            names[i, j] = min(COLOURS, key=lambda n: np.abs(COLOURS[n] - pixel).sum())
    return names


@pytest.mark.parametrize(
    "panel",
    [
        MaskPanel(4, 7, causal="top_left"),
        MaskPanel(4, 7, causal="bottom_right"),
        MaskPanel(7, 4, causal="bottom_right"),  # Lq > Lk: the first rows see nothing
        MaskPanel(6, 6, window=(2, 1)),
        MaskPanel(3, 8, causal="bottom_right", window=(1, None), kv_length=6),
        MaskPanel(3, 5, kv_length=0),
    ],
    ids=lambda p: p.title,
)
def test_mask_picture_shows_what_refattn_masks_computes(panel, tmp_path):
    figure, axes = pictures.mask_figure([panel], "test")
    shown = _cell_colours(figure, axes[0], panel, tmp_path / "mask.png")
    lengths = None if panel.kv_length is None else np.array(panel.kv_length)
    visible = np.broadcast_to(
        masks.visible(
            panel.Lq, panel.Lk, causal=panel.causal, window=panel.window, kv_lengths=lengths
        ),
        (panel.Lq, panel.Lk),
    )
    expected = np.where(visible, "visible", "hidden").astype(object)
    if panel.kv_length is not None:
        expected[:, panel.kv_length :] = "padding"
    assert (shown == expected).all(), f"picture:\n{shown}\nrefattn.masks:\n{expected}"


def test_both_alignments_side_by_side_differ_when_lq_differs_from_lk(tmp_path):
    top, bottom = MaskPanel(4, 7, "top_left"), MaskPanel(4, 7, "bottom_right")
    figure, axes = pictures.mask_figure([top, bottom])
    path = tmp_path / "both.png"
    assert (_cell_colours(figure, axes[0], top, path) == "visible").sum() == 10
    assert (_cell_colours(figure, axes[1], bottom, path) == "visible").sum() == 4 + 5 + 6 + 7


def test_spec_masks_writes_every_picture(tmp_path, capsys):
    assert main(["plot", "spec-masks", "--dir", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in written) == sorted(p.file for p in MASK_PICTURES.values())
    for path in written:
        assert Path(path).read_bytes().startswith(PNG_SIGNATURE)


def test_plot_mask_command(tmp_path):
    out = tmp_path / "m.png"
    argv = ["plot", "mask", "--lq", "3", "--lk", "6", "--causal", "both", "--window", "1,none"]
    assert main([*argv, "--kv-length", "5", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert imread(out).shape[1] > 600  # two panels side by side


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--lq", "3", "--kv-length", "4"], "--kv-length should be between 0 and Lk=3"),
        (["--lq", "0"], "--lq and --lk should be at least 1"),
    ],
)
def test_plot_mask_errors(argv, says, tmp_path, capsys):
    assert main(["plot", "mask", *argv, "--out", str(tmp_path / "m.png")]) == 2
    assert says in capsys.readouterr().err


def test_demo_weights_are_the_reference_weights():
    tokens, embeddings = pictures.demo_inputs(seed=0)
    assert tokens[0] == tokens[4] == "the"
    np.testing.assert_array_equal(embeddings[0], embeddings[4])  # one vector per word
    weights = pictures.attention_weights(embeddings, embeddings, causal="top_left")
    _, expected = reference.attention(
        embeddings[None], embeddings[None], embeddings[None], causal=True, return_weights=True
    )
    np.testing.assert_allclose(weights, expected[0])
    np.testing.assert_allclose(weights.sum(axis=1), 1)
    assert weights[0, 0] == 1 and weights[0, 1:].max() == 0


def test_plot_weights_demo_and_files(tmp_path):
    demo = tmp_path / "demo.png"
    assert main(["plot", "weights", "--causal", "top_left", "--out", str(demo)]) == 0
    assert demo.read_bytes().startswith(PNG_SIGNATURE)

    rng = np.random.default_rng(0)
    np.save(tmp_path / "q.npy", rng.standard_normal((2, 3, 4, 8)))  # (B, H, Lq, D)
    np.save(tmp_path / "k.npy", rng.standard_normal((2, 3, 5, 8)))
    out = tmp_path / "files.png"
    argv = ["plot", "weights", "--query", str(tmp_path / "q.npy"), "--key", str(tmp_path / "k.npy")]
    argv += ["--index", "1,2", "--tokens", "a b c d", "--key-tokens", "v w x y z"]
    assert main([*argv, "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_weights_errors(tmp_path, capsys):
    np.save(tmp_path / "q.npy", np.zeros((4, 8)))
    argv = ["plot", "weights", "--query", str(tmp_path / "q.npy"), "--tokens", "a b"]
    assert main([*argv, "--out", str(tmp_path / "w.png")]) == 2
    assert "--tokens should have 4 words (one per row), but got 2" in capsys.readouterr().err
    assert main(["plot", "weights", "--query", str(tmp_path / "none.npy")]) == 2


def test_pictures_without_matplotlib_name_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", "mask", "--lq", "2", "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "refattn plot mask: pictures need matplotlib, which is not installed: "
        "pip install 'refattn[plot]'"
    )
