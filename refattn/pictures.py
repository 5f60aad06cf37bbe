"""Pictures: the benchmark plot, attention weights as a heatmap, and which keys a query may see.

Drawn with matplotlib's object-oriented API (no pyplot, no global state), written as PNG.
matplotlib is optional: `pip install 'refattn[plot]'`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from refattn import masks, reference

DPI = 100
HIDDEN, VISIBLE, PADDING = "#e8e8e8", "#2b6cb0", "#c9b79c"  # cell colours of mask pictures
EDGE = "#d62728"  # the causal edge
IMPL_STYLE = {  # one colour and marker per implementation, the same in every plot
    "native": ("#d62728", "o"),
    "torch": ("#1f77b4", "s"),
    "onnxruntime": ("#2ca02c", "^"),
    "jax": ("#9467bd", "D"),
    "numpy": ("#7f7f7f", "v"),
    "reference": ("#bcbd22", "x"),
}


@dataclass(frozen=True)
class MaskPanel:
    """One mask picture's panel: Lq queries, Lk keys, and the structural masks applied."""

    Lq: int
    Lk: int
    causal: str | None = None  # None, "top_left" or "bottom_right"
    window: tuple[int | None, int | None] | None = None
    kv_length: int | None = None  # one sequence: keys j >= kv_length are padding

    @property
    def offset(self) -> int:
        """How far key positions run ahead of query positions (see refattn.masks)."""
        return self.Lk - self.Lq if self.causal == "bottom_right" else 0

    @property
    def title(self) -> str:
        return ", ".join(self.title_parts)

    @property
    def title_parts(self) -> list[str]:
        parts = [f"Lq={self.Lq}, Lk={self.Lk}"]
        if self.causal:
            parts.append(f"causal='{self.causal}'")
        if self.window is not None:
            parts.append(f"window={self.window}")
        if self.kv_length is not None:
            parts.append(f"kv_lengths=[{self.kv_length}]")
        return parts


class MissingMatplotlib(ImportError):
    """matplotlib is not installed; the message names the extra that brings it."""


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingMatplotlib(
            "pictures need matplotlib, which is not installed: pip install 'refattn[plot]'"
        ) from None


def _figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save(figure, path) -> None:
    figure.savefig(path, dpi=DPI, format="png")


# ------------------------------------------------------------------------------ mask pictures


def mask_grid(panel) -> np.ndarray:
    """(Lq, Lk) ints: 1 where query i may see key j, 2 for padding keys, 0 otherwise.

    Visibility comes from refattn.masks, the masks the reference applies."""
    kv = None if panel.kv_length is None else np.array(panel.kv_length)
    seen = np.broadcast_to(
        masks.visible(panel.Lq, panel.Lk, causal=panel.causal, window=panel.window, kv_lengths=kv),
        (panel.Lq, panel.Lk),
    )
    grid = seen.astype(int)
    if panel.kv_length is not None:
        grid[:, panel.kv_length :] = 2
    return grid


def _wrap_parts(parts: list[str], width: int) -> list[str]:
    """Join parts with ', ' into lines of at most `width` characters, never splitting a part."""
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += ", " + part
        else:
            lines[-1] += ","
            lines.append(part)
    return lines


def _draw_mask(ax, panel, title_width: int = 60) -> None:
    from matplotlib.colors import ListedColormap

    grid = mask_grid(panel)
    ax.imshow(
        grid,
        cmap=ListedColormap([HIDDEN, VISIBLE, PADDING]),
        vmin=0,
        vmax=2,
        extent=(-0.5, panel.Lk - 0.5, panel.Lq - 0.5, -0.5),  # cell (i, j) centred on (j, i)
        interpolation="nearest",
    )
    # Cell borders, and the causal edge between j = i + offset and j = i + offset + 1.
    for x in np.arange(panel.Lk + 1) - 0.5:
        ax.axvline(x, color="white", linewidth=1.5)
    for y in np.arange(panel.Lq + 1) - 0.5:
        ax.axhline(y, color="white", linewidth=1.5)
    if panel.causal:
        xs, ys = [], []
        for i in range(panel.Lq):
            edge = min(max(i + panel.offset + 0.5, -0.5), panel.Lk - 0.5)
            xs += [edge, edge]
            ys += [i - 0.5, i + 0.5]
        ax.plot(xs, ys, color=EDGE, linewidth=2.5, solid_capstyle="butt")
    ax.set_xticks(range(panel.Lk))
    ax.set_yticks(range(panel.Lq))
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("key j →")
    ax.set_ylabel("← query i")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    title = "\n".join(_wrap_parts(panel.title_parts, title_width))
    if panel.causal:
        title += f"\noffset = {panel.offset}: key j visible iff j ≤ i + {panel.offset}"
    ax.set_title(title, fontsize=9, pad=8)
    ax.set_xlim(-0.5, panel.Lk - 0.5)
    ax.set_ylim(panel.Lq - 0.5, -0.5)


def mask_figure(panels: Sequence, title: str | None = None):
    """A figure with one panel per mask configuration; returns (figure, axes)."""
    require_matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    widest = max(p.Lk for p in panels)
    tallest = max(p.Lq for p in panels)
    cell = 0.42
    panel_width = max(3.6, widest * cell + 1.2)
    width = len(panels) * panel_width
    title_lines = max(
        len(_wrap_parts(p.title_parts, int(12 * panel_width))) + bool(p.causal) for p in panels
    )
    suptitle = textwrap.fill(title, width=int(11 * width)) if title else ""
    suptitle_lines = suptitle.count("\n") + 1 if title else 0
    height = tallest * cell + 1.4 + 0.2 * (title_lines + suptitle_lines)
    figure = _figure(width, height)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        _draw_mask(ax, panel, title_width=int(12 * panel_width))
    handles = [
        Patch(color=VISIBLE, label="visible (may attend)"),
        Patch(color=HIDDEN, label="hidden"),
    ]
    if any(p.kv_length is not None for p in panels):
        handles.append(Patch(color=PADDING, label="padding (j ≥ kv_length)"))
    if any(p.causal for p in panels):
        handles.append(Line2D([], [], color=EDGE, linewidth=2.5, label="causal edge"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    if title:
        figure.suptitle(suptitle, fontsize=10)
        # Constrained layout puts panel titles flush against the suptitle; a wrapped suptitle
        # then reads as one with them. Room to breathe between the rows of text:
        figure.get_layout_engine().set(h_pad=0.12)
    return figure, axes


def mask_picture(panels: Sequence, path, title: str | None = None) -> None:
    figure, _ = mask_figure(panels, title)
    save(figure, path)


# --------------------------------------------------------------------------- weights heatmaps

DEMO_SENTENCE = "the cat sat on the mat because it was tired"


def demo_inputs(sentence: str = DEMO_SENTENCE, *, dim: int = 16, seed: int = 0):
    """Tokens and (Lq, D) embeddings, one seeded standard-normal vector per distinct word.

    q = k = the embeddings: self-attention without learned projections, so a word attends most
    to itself and to repeats of itself (the two 'the's), and the rest is chance."""
    tokens = sentence.split()
    if not tokens:
        raise ValueError("the sentence should have at least one word, but got none")
    rng = np.random.default_rng(seed)
    vocabulary = {}
    for token in tokens:
        if token not in vocabulary:
            vocabulary[token] = rng.standard_normal(dim)
    embeddings = np.stack([vocabulary[t] for t in tokens])
    return tokens, embeddings


def attention_weights(query, key, *, causal=None, window=None) -> np.ndarray:
    """(Lq, Lk) weights of refattn.reference for (Lq, D) queries and (Lk, D) keys."""
    query, key = np.asarray(query), np.asarray(key)
    if query.ndim != 2 or key.ndim != 2:
        raise ValueError(
            f"query and key should be (L, D) after indexing, but got {query.shape} and {key.shape}"
        )
    value = np.zeros((1, key.shape[0], 1), dtype=key.dtype)  # weights do not depend on V
    _, weights = reference.attention(
        query[None], key[None], value, causal=causal, window=window, return_weights=True
    )
    return weights[0]


def weights_figure(weights, query_tokens, key_tokens, title: str):
    Lq, Lk = weights.shape
    figure = _figure(max(4.5, 0.55 * Lk + 2.5), max(3.5, 0.5 * Lq + 2.0))
    ax = figure.subplots()
    image = ax.imshow(weights, cmap="Blues", vmin=0, vmax=max(float(np.nanmax(weights)), 1e-12))
    ax.set_xticks(range(Lk), labels=key_tokens, rotation=60, ha="left", rotation_mode="anchor")
    ax.set_yticks(range(Lq), labels=query_tokens)
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("key (attended to) →")
    ax.set_ylabel("← query (attending)")
    if Lq * Lk <= 400:
        top = float(np.nanmax(weights)) or 1.0
        for i in range(Lq):
            for j in range(Lk):
                w = weights[i, j]
                color = "white" if w > 0.6 * top else "black"
                ax.text(
                    j,
                    i,
                    f"{w:.2f}"[1:] if 0 < w < 1 else f"{w:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=color,
                )
    figure.colorbar(image, ax=ax, label="weight (each row sums to 1)", shrink=0.8)
    ax.set_title(title, fontsize=10)
    return figure, ax


def weights_picture(weights, query_tokens, key_tokens, path, title: str) -> None:
    figure, _ = weights_figure(np.asarray(weights), query_tokens, key_tokens, title)
    save(figure, path)


# ------------------------------------------------------------------------------ benchmark plot


def _sweeps(document: dict) -> dict:
    """(B, H, D, causal) -> cases with Lq = Lk, ordered by N: the lines of the plot."""
    found: dict = {}
    for case in document["cases"]:
        if case["Lq"] == case["Lk"]:
            found.setdefault((case["B"], case["H"], case["D"], case["causal"]), []).append(case)
    sweeps = {key: sorted(cases, key=lambda c: c["Lq"]) for key, cases in sorted(found.items())}
    # Lines need two lengths at least; one-length groups (the batch cases) only when that is all.
    groups = {key[:3] for key, cases in sweeps.items() if len(cases) > 1}
    if groups:
        sweeps = {key: cases for key, cases in sweeps.items() if key[:3] in groups}
    return sweeps


def bench_plot(document: dict, path) -> None:
    """GFLOP/s against N per implementation, one panel per (B, H, D) and causal or not."""
    sweeps = _sweeps(document)
    if not sweeps:
        raise ValueError("the plot needs cases with Lq = Lk, but the run has none")
    groups = sorted({key[:3] for key in sweeps})
    figure = _figure(11, 3.6 * len(groups) + 0.8)
    axes = figure.subplots(len(groups), 2, squeeze=False, sharey="row")
    peak = document["machine"]["matmul_peak_gflops"]["median"]
    # what timed the peak, as the report says it: "torch.mm float16 (torch's CPU gemm) 4096×..."
    peak_by = document["machine"]["matmul_peak_gflops"].get("how", "NumPy matmul").split(" (")[0]
    impls = list(document["implementations"])
    for row, (B, H, D) in enumerate(groups):
        for column, causal in enumerate((False, True)):
            ax = axes[row][column]
            cases = sweeps.get((B, H, D, causal), [])
            for name in impls:
                color, marker = IMPL_STYLE.get(name, ("black", "."))
                points = [(c["Lq"], c["results"][name]) for c in cases]
                points = [(n, r) for n, r in points if r["status"] == "ok"]
                if not points:
                    continue
                ns = [n for n, _ in points]
                rates = np.array([r["gflops"] for _, r in points])
                # min–max of the time as a range of rates: the fastest sample, the highest rate
                slowest = np.array(
                    [r["gflops"] * r["ms"]["median"] / r["ms"]["max"] for _, r in points]
                )
                fastest = np.array(
                    [r["gflops"] * r["ms"]["median"] / r["ms"]["min"] for _, r in points]
                )
                low, high = np.maximum(rates - slowest, 0), np.maximum(fastest - rates, 0)
                ax.errorbar(
                    ns,
                    rates,
                    yerr=[low, high],
                    color=color,
                    marker=marker,
                    markersize=5,
                    linewidth=1.5,
                    capsize=2,
                    label=document["implementations"][name]["title"],
                )
            ax.axhline(
                peak,
                color="black",
                linestyle="--",
                linewidth=1,
                label=f"{peak_by} peak, {peak:.0f} GFLOP/s",
            )
            ax.set_xscale("log", base=2)
            if cases:
                ax.set_xticks([c["Lq"] for c in cases], labels=[str(c["Lq"]) for c in cases])
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.set_xlabel("sequence length N (Lq = Lk)")
            ax.set_ylabel("GFLOP/s" + (" (visible pairs)" if causal else ""))
            kind = "causal" if causal else "no mask"
            ax.set_title(f"B={B}, H={H}, D={D}, {kind}", fontsize=10)
            if not cases:
                ax.text(
                    0.5, 0.5, "not in this run", transform=ax.transAxes, ha="center", color="grey"
                )
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=9
    )
    settings = document["settings"]
    figure.suptitle(
        f"refattn bench: attention GFLOP/s vs sequence length, {settings['dtype']}, "
        f"{settings['threads']} threads, {document['machine']['cpu']} ({document['created'][:10]})",
        fontsize=11,
    )
    save(figure, path)


# ------------------------------------------------------------------------ `refattn plot` verbs


def _tokens(text: str | None, length: int, what: str) -> list[str]:
    if text is None:
        return [str(i) for i in range(length)]
    tokens = text.split()
    if len(tokens) != length:
        raise ValueError(f"{what} should have {length} words (one per row), but got {len(tokens)}")
    return tokens


def _load_slice(path: str, index: tuple[int, ...], what: str) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    if array.ndim < 2:
        raise ValueError(f"{what} should be (..., L, D), but got shape {array.shape} from {path}")
    lead = array.ndim - 2
    if len(index) > lead:
        raise ValueError(f"--index has {len(index)} entries but {what} has {lead} leading dims")
    chosen = array[tuple(index) + (0,) * (lead - len(index))]
    if not np.issubdtype(chosen.dtype, np.floating):
        raise ValueError(f"{what} should hold floats, but got {chosen.dtype} from {path}")
    return chosen


def weights_command(args) -> list[str]:
    """`refattn plot weights`: from .npy files, or the demo sentence."""
    masking = []
    if args.causal:
        masking.append(f"causal='{args.causal}'")
    if args.window is not None:
        masking.append(f"window={args.window}")
    if args.query:
        index = tuple(int(i) for i in args.index.split(",") if i.strip())
        query = _load_slice(args.query, index, "the query")
        key = _load_slice(args.key, index, "the key") if args.key else query
        query_tokens = _tokens(args.tokens, query.shape[0], "--tokens")
        key_text = (
            args.key_tokens
            if args.key_tokens is not None
            else (args.tokens if not args.key else None)
        )
        key_tokens = _tokens(key_text, key.shape[0], "--key-tokens")
        source = f"{args.query}" + (f" · {args.key}" if args.key else "")
        if index:
            source += f" [{','.join(map(str, index))}]"
    else:
        query_tokens, query = demo_inputs(args.sentence, dim=args.dim, seed=args.seed)
        key, key_tokens = query, query_tokens
        source = f"demo: q = k = seeded word embeddings (D={args.dim}, seed {args.seed})"
    weights = attention_weights(query, key, causal=args.causal, window=args.window)
    title = "attention weights, refattn.reference\n" + source
    if masking:
        title += ", " + ", ".join(masking)
    weights_picture(weights, query_tokens, key_tokens, args.out, title)
    return [args.out]


def mask_command(args) -> list[str]:
    """`refattn plot mask`: one panel per causal alignment asked for."""
    Lk = args.lk if args.lk is not None else args.lq
    if args.lq < 1 or Lk < 1:
        raise ValueError(f"--lq and --lk should be at least 1, but got {args.lq} and {Lk}")
    if args.kv_length is not None and not 0 <= args.kv_length <= Lk:
        raise ValueError(f"--kv-length should be between 0 and Lk={Lk}, but got {args.kv_length}")
    alignments = {"none": [None], "both": ["top_left", "bottom_right"]}.get(
        args.causal, [args.causal]
    )
    panels = [
        MaskPanel(args.lq, Lk, causal=a, window=args.window, kv_length=args.kv_length)
        for a in alignments
    ]
    mask_picture(panels, args.out, "which keys each query may see (refattn.masks)")
    return [args.out]


def bench_command(args) -> list[str]:
    """`refattn plot bench`: the benchmark plot again, from a `refattn bench --json` file."""
    import json
    from pathlib import Path

    document = json.loads(Path(args.json).read_text())
    if document.get("schema") != "refattn-bench/1":
        raise ValueError(
            f"{args.json} is not a `refattn bench --json` file (schema refattn-bench/1)"
        )
    bench_plot(document, args.out)
    return [args.out]
