"""The `refattn` command: `spec` prints the specification, `conform` checks an implementation."""

from __future__ import annotations

import argparse
import sys

DEFAULT_IMPL = "reference"


def _spec(args) -> int:
    from spec.registry import all_invariants
    from spec.render import markdown, text

    invariants = all_invariants()
    sys.stdout.write(markdown(invariants) if args.markdown else text(invariants))
    return 0


def _conform(args) -> int:
    from spec.adapters import ImplementationNotFound, PeerNotInstalled
    from spec.conform import UsageError, conform

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
        )
    except (ImplementationNotFound, PeerNotInstalled, UsageError) as error:
        print(f"refattn conform: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    from spec.runner import DEFAULT_MAX_EXAMPLES, DEFAULT_SEED

    parser = argparse.ArgumentParser(
        prog="refattn", description="The executable specification of attention."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    spec = commands.add_parser("spec", help="print the specification")
    spec.add_argument("--markdown", action="store_true", help="render SPEC.md")
    spec.set_defaults(run=_spec)

    conform = commands.add_parser(
        "conform", help="check an implementation against every invariant of the spec"
    )
    conform.add_argument(
        "impl",
        nargs="?",
        default=DEFAULT_IMPL,
        help=f"the implementation to check (default: {DEFAULT_IMPL})",
    )
    conform.add_argument("--only", nargs="+", metavar="ID", help="run only these invariants")
    conform.add_argument("--skip", nargs="+", metavar="ID", help="leave these invariants out")
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
    conform.add_argument("--json", metavar="PATH", help="also write a JSON report")
    conform.add_argument("--markdown", metavar="PATH", help="also write a Markdown report")
    conform.set_defaults(run=_conform)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
