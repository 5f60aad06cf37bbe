"""The `refattn` command: `spec` prints the specification, `conform` checks an implementation,
`bench` times the native core against its peers, `plot` draws weights, masks and benchmarks."""

from __future__ import annotations

import argparse
import shlex
import sys

DEFAULT_IMPL = "native"


def _spec(args) -> int:
    from refattn.spec.registry import all_invariants
    from refattn.spec.render import markdown, text

    invariants = all_invariants()
    if args.ids:
        known = {inv.id: inv for inv in invariants}
        wanted = [i.upper() for i in args.ids]
        unknown = [i for i in wanted if i not in known]
        if unknown:
            print(
                f"refattn spec: unknown invariant ID {unknown[0]!r}; the IDs are "
                f"{', '.join(known)}",
                file=sys.stderr,
            )
            return 2
        sys.stdout.write(text([known[i] for i in wanted], full=True))
        return 0
    sys.stdout.write(markdown(invariants) if args.markdown else text(invariants))
    return 0


def _conform(args) -> int:
    from refattn.adapters import ImplementationNotFound, PeerNotInstalled
    from refattn.spec.conform import UsageError, conform

    try:
        return conform(
            args.impl,
            only=args.only,
            skip=args.skip,
            deviations_file=args.deviations,
            max_examples=args.max_examples,
            seed=args.seed,
            json_path=args.json,
            markdown_path=args.markdown,
            jobs=args.jobs,
            strict=args.strict,
            timeout=args.timeout,
            protocol=args.protocol,
            with_=args.with_,
            without=args.without,
            semantics=args.semantics,
            framework=args.framework,
            device=args.device,
        )
    except (ImplementationNotFound, PeerNotInstalled, UsageError) as error:
        print(f"refattn conform: {error}", file=sys.stderr)
        return 2


def _bench(args) -> int:
    from refattn.bench import BenchError, UsageError, bench
    from refattn.pictures import MissingMatplotlib

    impls = None if args.impls is None else [n.strip() for n in args.impls.split(",") if n.strip()]
    try:
        bench(
            shapes=args.shapes,
            causal=args.causal,
            dtype=args.dtype,
            impls=impls,
            threads=args.threads,
            repeat=args.repeat,
            memory=not args.no_memory,
            memory_shapes=args.memory_shapes,
            backward=args.backward,
            json_path=args.json,
            plot_path=args.plot,
            command=shlex.join(["refattn", *args.argv]),
        )
    except (UsageError, MissingMatplotlib) as error:
        print(f"refattn bench: {error}", file=sys.stderr)
        return 2
    except BenchError as error:
        print(f"refattn bench: {error}", file=sys.stderr)
        return 1
    return 0


def _spec_masks(args) -> list[str]:
    from refattn.spec.pictures import draw_all

    return draw_all(args.dir)


def _plot(args) -> int:
    from refattn import pictures

    try:
        written = args.draw(args)
    except (pictures.MissingMatplotlib, ValueError, OSError) as error:
        print(f"refattn plot {args.picture}: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def _shape(text: str):
    from refattn.bench.cases import parse_shape

    try:
        return parse_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _window(text: str):
    """'L,R' with each side an int >= 0 or 'none' (unbounded)."""
    try:
        left, right = (None if p.strip().lower() == "none" else int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a window should be LEFT,RIGHT (ints, or none for unbounded), but got {text!r}"
        ) from None
    return (left, right)


def _add_bench(commands) -> None:
    from refattn.bench.cases import CAUSAL_CHOICES, DTYPES
    from refattn.bench.measure import LONG_ROUNDS
    from refattn.bench.run import DEFAULT_IMPLS, DEFAULT_REPEAT

    bench = commands.add_parser(
        "bench",
        help="time the native core against its peers, side by side",
        description="Time attention implementations side by side in one run, interleaved, "
        "with threads set equal for all; report median ms (min–max), GFLOP/s, % of the "
        "measured matmul peak, decode bandwidth, speed-ups and peak memory.",
    )
    bench.add_argument(
        "--shapes",
        nargs="+",
        type=_shape,
        metavar="B,H,Lq,Lk,D",
        help="shapes to time (B,H,N,D for Lq = Lk); default: the standard grid",
    )
    bench.add_argument(
        "--causal", choices=list(CAUSAL_CHOICES), default="both", help="default: both"
    )
    bench.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="default: float32 (bfloat16: ml_dtypes arrays; its and float16's matmul peak is "
        "torch.mm's)",
    )
    bench.add_argument(
        "--impls",
        metavar="A,B,...",
        help="any implementation `refattn conform` takes (native:avx2, torch-math, "
        f"module.path:function, ...); default: those of {','.join(DEFAULT_IMPLS)} installed",
    )
    bench.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads for every implementation (default: all CPUs)",
    )
    bench.add_argument(
        "--repeat",
        type=int,
        default=DEFAULT_REPEAT,
        metavar="N",
        help=f"timed rounds per case (default {DEFAULT_REPEAT}); calls of a second or more "
        f"are timed in at most {LONG_ROUNDS}",
    )
    bench.add_argument(
        "--memory-shapes",
        nargs="+",
        type=_shape,
        metavar="B,H,Lq,Lk,D",
        help="shapes whose peak memory to measure (default: the standard ones with the "
        "standard grid, none with --shapes)",
    )
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    bench.add_argument(
        "--backward",
        action="store_true",
        help="time the gradients (forward and backward, as training runs them) of "
        "implementations that have a backward; default grid: issue 17's shapes",
    )
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--plot", metavar="PATH", help="also draw GFLOP/s vs N as a PNG")
    bench.set_defaults(run=_bench)


def _add_plot(commands) -> None:
    from refattn import pictures

    plot = commands.add_parser("plot", help="draw attention weights, masks, benchmark results")
    kinds = plot.add_subparsers(dest="picture", required=True)

    weights = kinds.add_parser(
        "weights",
        help="a heatmap of attention weights: query tokens down, key tokens across",
        description="Weights from --query/--key .npy files, or of a demo sentence with seeded "
        "word embeddings (q = k = the embeddings).",
    )
    weights.add_argument("--query", metavar="Q.npy", help="(..., Lq, D) queries")
    weights.add_argument("--key", metavar="K.npy", help="(..., Lk, D) keys (default: the queries)")
    weights.add_argument(
        "--index", default="", metavar="I,J", help="leading indices picking one (L, D) slice"
    )
    weights.add_argument("--tokens", metavar="WORDS", help="query labels, space-separated")
    weights.add_argument("--key-tokens", metavar="WORDS", help="key labels (default: --tokens)")
    weights.add_argument("--sentence", default=pictures.DEMO_SENTENCE, help="the demo's sentence")
    weights.add_argument("--dim", type=int, default=16, help="the demo's embedding size")
    weights.add_argument("--seed", type=int, default=0, help="the demo's seed")
    weights.add_argument("--causal", choices=["top_left", "bottom_right"])
    weights.add_argument("--window", type=_window, metavar="LEFT,RIGHT")
    weights.add_argument("--out", "-o", default="weights.png", metavar="PATH")
    weights.set_defaults(run=_plot, draw=pictures.weights_command)

    mask = kinds.add_parser(
        "mask",
        help="which keys each query may see",
        description="One panel per causal alignment asked for (both: top-left and "
        "bottom-right side by side); visibility from refattn.masks.",
    )
    mask.add_argument("--lq", type=int, required=True, metavar="N", help="query length")
    mask.add_argument("--lk", type=int, metavar="N", help="key length (default: Lq)")
    mask.add_argument(
        "--causal", choices=["none", "top_left", "bottom_right", "both"], default="none"
    )
    mask.add_argument("--window", type=_window, metavar="LEFT,RIGHT")
    mask.add_argument("--kv-length", type=int, metavar="N", help="keys from N on are padding")
    mask.add_argument("--out", "-o", default="mask.png", metavar="PATH")
    mask.set_defaults(run=_plot, draw=pictures.mask_command)

    spec_masks = kinds.add_parser(
        "spec-masks", help="write the pictures SPEC.md shows for the mask invariants"
    )
    spec_masks.add_argument("--dir", default="docs/img", help="default: docs/img")
    spec_masks.set_defaults(run=_plot, draw=_spec_masks)

    results = kinds.add_parser("bench", help="GFLOP/s vs N from a `refattn bench --json` file")
    results.add_argument("json", metavar="RESULTS.json")
    results.add_argument("--out", "-o", default="bench.png", metavar="PATH")
    results.set_defaults(run=_plot, draw=pictures.bench_command)


def _ids(text: str) -> list[str]:
    """'ATT-M8,ATT-D1' -> ['ATT-M8', 'ATT-D1'], for --only and --skip."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("refattn")
    except PackageNotFoundError:  # a source tree that is not installed
        from refattn import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    from refattn.spec.runner import DEFAULT_MAX_EXAMPLES, DEFAULT_SEED
    from refattn.spec.supervisor import DEFAULT_TIMEOUT

    parser = argparse.ArgumentParser(
        prog="refattn", description="The executable specification of attention."
    )
    parser.add_argument("--version", action="version", version=f"refattn {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    spec = commands.add_parser("spec", help="print the specification")
    spec.add_argument(
        "ids", nargs="*", metavar="ID", help="print only these invariants, in full (ATT-M8 ...)"
    )
    spec.add_argument("--markdown", action="store_true", help="render SPEC.md")
    spec.set_defaults(run=_spec)

    conform = commands.add_parser(
        "conform", help="check an implementation against every invariant of the spec"
    )
    conform.add_argument(
        "impl",
        nargs="?",
        default=DEFAULT_IMPL,
        help=f"the implementation to check (default: {DEFAULT_IMPL}): native, native:ISA, "
        "reference, torch, torch-math, torch-flash, jax, onnxruntime, onnx-reference, or a "
        "module.path:function following the SDPA protocol",
    )
    conform.add_argument(
        "--only",
        action="extend",
        type=_ids,
        metavar="ID[,ID...]",
        help="run only these invariants (repeat the option or separate IDs by commas)",
    )
    conform.add_argument(
        "--skip",
        action="extend",
        type=_ids,
        metavar="ID[,ID...]",
        help="leave these invariants out (repeat the option or separate IDs by commas)",
    )
    conform.add_argument(
        "--deviations", metavar="FILE", help="known deviations: one ID per line, then '# reason'"
    )
    conform.add_argument(
        "--max-examples",
        type=int,
        default=DEFAULT_MAX_EXAMPLES,
        metavar="N",
        help=f"hypothesis examples per invariant (default {DEFAULT_MAX_EXAMPLES})",
    )
    conform.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"hypothesis seed, for reproducible runs (default {DEFAULT_SEED})",
    )
    conform.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run invariants in N worker processes (default 1); results do not depend on it",
    )
    conform.add_argument(
        "--protocol",
        choices=["sdpa", "refattn"],
        help="your function's protocol (default: read off its signature)",
    )
    conform.add_argument(
        "--with",
        dest="with_",
        action="extend",
        type=_ids,
        default=[],
        metavar="CAP[,CAP...]",
        help="capabilities your function has beyond its signature (float16, bfloat16, ...)",
    )
    conform.add_argument(
        "--without",
        action="extend",
        type=_ids,
        default=[],
        metavar="CAP[,CAP...]",
        help="capabilities to leave out (float64, empty, ...): invariants needing them skip",
    )
    conform.add_argument(
        "--semantics",
        metavar="NAME=VALUE[,...]",
        help="your function's choices where the spec chooses: fully_masked=zero|mean|nan, "
        "mask_fill=NUMBER, causal_flag=top_left|bottom_right, float64=float64|float32 "
        "(see refattn spec and SPEC.md, Semantics)",
    )
    conform.add_argument(
        "--framework",
        choices=["numpy", "torch", "jax"],
        help="the arrays your function takes and returns (default numpy)",
    )
    conform.add_argument(
        "--device", help="where its arrays live: cpu (the default), cuda, cuda:1, mps ..."
    )
    conform.add_argument(
        "--strict",
        action="store_true",
        help="a failing SHOULD fails the run too (default: reported, the run conforms)",
    )
    conform.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"a call that takes longer fails its invariant (default {DEFAULT_TIMEOUT:g} s)",
    )
    conform.add_argument("--json", metavar="PATH", help="also write a JSON report")
    conform.add_argument("--markdown", metavar="PATH", help="also write a Markdown report")
    conform.set_defaults(run=_conform)

    _add_bench(commands)
    _add_plot(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
