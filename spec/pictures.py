"""The pictures SPEC.md shows for the mask invariants: which keys each query may see.

Each picture is a list of panels, one mask configuration each, drawn by
`refattn.pictures.mask_figure` from `refattn.masks` (so a picture cannot disagree with the
masks the reference applies). `refattn plot spec-masks` writes them all to docs/img/;
`refattn.spec.render` embeds them under their invariants. This module needs no matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from refattn.pictures import MaskPanel, mask_picture

IMAGE_DIR = "docs/img"  # relative to the repository root, where SPEC.md lives


@dataclass(frozen=True)
class MaskPicture:
    file: str
    caption: str
    panels: tuple[MaskPanel, ...]

    @property
    def path(self) -> str:
        return f"{IMAGE_DIR}/{self.file}"


MASK_PICTURES = {
    "ATT-M1": MaskPicture(
        "att-m1-causal-top-left.png",
        "causal='top_left': query i sees keys j <= i, whatever Lk is",
        (MaskPanel(6, 6, "top_left"), MaskPanel(4, 7, "top_left")),
    ),
    "ATT-M2": MaskPicture(
        "att-m2-causal-bottom-right.png",
        "causal='bottom_right': the queries are the last Lq of the Lk tokens; "
        "query i sees keys j <= i + Lk - Lq",
        (MaskPanel(6, 6, "bottom_right"), MaskPanel(4, 7, "bottom_right")),
    ),
    "ATT-M5": MaskPicture(
        "att-m5-top-left-or-bottom-right.png",
        "Top-left or bottom-right? The same Lq=4 queries against Lk=7 keys: the alignments "
        "agree only when Lq = Lk",
        (MaskPanel(4, 7, "top_left"), MaskPanel(4, 7, "bottom_right")),
    ),
    "ATT-M6": MaskPicture(
        "att-m6-window.png",
        "window=(left, right) around the diagonal j = i + offset; the offset follows the causal "
        "alignment (top-left without one)",
        (
            MaskPanel(8, 8, window=(2, 1)),
            MaskPanel(4, 8, causal="bottom_right", window=(2, 0)),
        ),
    ),
    "ATT-M7": MaskPicture(
        "att-m7-kv-lengths.png",
        "kv_lengths: keys at and after the length are padding; a length of 0 leaves every row "
        "fully masked (output 0)",
        (MaskPanel(4, 8, kv_length=5), MaskPanel(4, 8, kv_length=0)),
    ),
    "ATT-M9": MaskPicture(
        "att-m9-masks-compose.png",
        "Masks compose: bottom-right causal AND a window of 3 to the left AND kv_lengths=[7]",
        (
            MaskPanel(5, 9, causal="bottom_right"),
            MaskPanel(5, 9, causal="bottom_right", window=(3, 0)),
            MaskPanel(5, 9, causal="bottom_right", window=(3, 0), kv_length=7),
        ),
    ),
}


def draw_all(directory) -> list[str]:
    """Write every picture SPEC.md embeds for the mask invariants; returns the paths written."""
    written = []
    for invariant_id, picture in MASK_PICTURES.items():
        path = Path(directory) / picture.file
        path.parent.mkdir(parents=True, exist_ok=True)
        mask_picture(picture.panels, path, f"{invariant_id}: {picture.caption}")
        written.append(str(path))
    return written
