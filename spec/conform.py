"""`refattn conform`: choose invariants, read deviations, run, report."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from refattn.spec.registry import all_invariants
from refattn.spec.report import as_json, markdown, table
from refattn.spec.runner import DEFAULT_MAX_EXAMPLES, DEFAULT_SEED, FAIL
from refattn.spec.supervisor import DEFAULT_TIMEOUT, Interrupted, Settings, run_supervised

from refattn.adapters import load


class UsageError(ValueError):
    """A conform argument that cannot be used; the CLI exits 2 with this message."""


def read_deviations(path, *, option: str = "--deviations") -> dict[str, str]:
    """A deviations file: one invariant ID per line, then `# reason`; blank lines and lines
    starting with # are ignored. An ID that names no invariant is an error (UsageError naming
    `option`, the line and the IDs there are), and so is a lower-case one."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise UsageError(f"{option}: cannot read {path}: {error.strerror}") from None
    known = {inv.id for inv in all_invariants()}
    deviations = {}
    for number, line in enumerate(text.splitlines(), 1):
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        inv_id, _, reason = body.partition("#")
        inv_id = inv_id.strip()
        where = f"{option}: {path}:{number}"
        if not inv_id or " " in inv_id:
            raise UsageError(f"{where}: expected 'ID  # reason', but got {line!r}")
        if inv_id not in known:
            if inv_id.upper() in known:
                raise UsageError(
                    f"{where}: {inv_id!r} should be {inv_id.upper()!r}: IDs are upper case"
                )
            raise UsageError(
                f"{where}: {inv_id!r} is not an invariant ID; see `refattn spec` for the IDs"
            )
        deviations[inv_id] = reason.strip() or f"declared in {path}"
    return deviations


def select(only: list[str] | None, skip: list[str] | None):
    """The invariants to run, in SPEC.md order; unknown IDs are usage errors."""
    invariants = all_invariants()
    known = {inv.id for inv in invariants}
    for flag, ids in (("--only", only), ("--skip", skip)):
        unknown = sorted(set(ids or ()) - known)
        if unknown:
            raise UsageError(f"{flag}: unknown invariant IDs {unknown}; see `refattn spec`")
    return [
        inv for inv in invariants if (not only or inv.id in only) and inv.id not in (skip or ())
    ]


def _progress(total: int, stream):
    done = 0

    def report(inv, outcome):
        nonlocal done
        if outcome is None:
            print(f"[{done + 1:2}/{total}] {inv.id:7} {inv.title} ...", file=stream, flush=True)
            return
        done += 1
        print(
            f"[{done:2}/{total}] {inv.id:7} {outcome.status} ({outcome.examples} examples, "
            f"{outcome.seconds:.1f}s)",
            file=stream,
            flush=True,
        )

    return report


def conform(
    impl_name,
    *,
    only=None,
    skip=None,
    deviations_file=None,
    max_examples=DEFAULT_MAX_EXAMPLES,
    seed=DEFAULT_SEED,
    json_path=None,
    markdown_path=None,
    jobs=1,
    strict=False,
    timeout=DEFAULT_TIMEOUT,
    repro_dir=None,
    protocol=None,
    with_=(),
    without=(),
    semantics=None,
    framework=None,
    device=None,
    stdout=None,
    stderr=None,
) -> int:
    """Run the spec against one implementation; return the exit status: 0 when it conforms
    (every MUST holds; a SHOULD that fails is reported, not required), 1 when not; with
    strict=True a failing SHOULD counts too.

    Every invariant runs in a supervised worker process (refattn.spec.supervisor): a crash, or
    a call that takes longer than `timeout` seconds, fails that invariant with its reproduction
    and the run goes on; Ctrl-C stops it, and the reports are written all the same (exit 130).
    Inputs too large to print in a reproduction go to .npz files in `repro_dir` (default: a
    folder beside the Markdown or JSON report, else a temporary one).
    The table goes to stdout, progress lines and warnings to stderr (default: sys's)."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if max_examples < 1:
        raise UsageError(f"--max-examples should be at least 1, but got {max_examples}")
    if jobs < 1:
        raise UsageError(f"--jobs should be at least 1, but got {jobs}")
    if not timeout > 0:
        raise UsageError(f"--timeout should be a number of seconds above 0, but got {timeout}")
    for path in (json_path, markdown_path):  # fail now, not after the whole run
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    hypothesis_storage_out_of_the_way()
    declared = {
        "protocol": protocol,
        "with_": tuple(with_ or ()),
        "without": tuple(without or ()),
        "semantics": semantics,
        "framework": framework,
        "device": device,
    }
    with importable_from_here(":" in impl_name):
        try:
            impl = load(impl_name, **declared)
        except (TypeError, ValueError) as error:  # a declaration that does not hold together
            raise UsageError(str(error)) from None
        sys_path = tuple(sys.path)
    invariants = select(only, skip)
    deviations = dict(impl.deviations)
    if deviations_file:
        deviations.update(read_deviations(deviations_file))
    if repro_dir is None and (markdown_path or json_path):
        report = Path(markdown_path or json_path)
        repro_dir = report.parent / f"{report.stem}-repro"
    supervised = Settings(
        impl_name,
        max_examples,
        seed,
        deviations,
        None if repro_dir is None else str(repro_dir),
        sys_path,
        tuple(declared.items()),
    )
    start = time.perf_counter()
    interrupted = False
    try:
        outcomes = run_supervised(
            supervised,
            invariants,
            jobs=jobs,
            timeout=timeout,
            progress=_progress(len(invariants), stderr),
        )
    except Interrupted as stop:
        outcomes, interrupted = stop.outcomes, True
        print("interrupted: the invariants not run are NOT RUN in the report", file=stderr)
    wall = time.perf_counter() - start
    print(table(outcomes, impl.name), file=stdout)
    print(f"wall time {wall:.0f}s with {jobs} job{'s' if jobs > 1 else ''}", file=stderr)
    settings = {
        "max_examples": max_examples,
        "seed": seed,
        "jobs": jobs,
        "only": only or [],
        "skip": skip or [],
        "deviations_file": deviations_file,
        "strict": strict,
        "timeout_s": timeout,
        "declared": {name: value for name, value in declared.items() if value},
    }
    if json_path:
        report = as_json(outcomes, impl, settings, deviations, wall)
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    if markdown_path:
        text = markdown(
            outcomes, impl, settings, deviations, wall, spec_md=spec_beside(markdown_path)
        )
        Path(markdown_path).write_text(text)
    if interrupted:
        return 130
    return 1 if any(o.blocking or (strict and o.status == FAIL) for o in outcomes) else 0


def spec_beside(report) -> str | None:
    """SPEC.md relative to a report written inside a refattn checkout (docs/conformance), for
    links; None elsewhere, where such a link would lead nowhere."""
    folder = Path(report).resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / "SPEC.md").is_file() and (candidate / "spec" / "registry.py").is_file():
            return os.path.relpath(candidate / "SPEC.md", folder)
    return None


def hypothesis_storage_out_of_the_way() -> None:
    """hypothesis keeps a cache in `.hypothesis/` of the current directory; a conformance run
    should leave the user's project as it found it, so the cache goes to refattn's own cache
    folder (unless HYPOTHESIS_STORAGE_DIRECTORY says where)."""
    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    # The workers (refattn.spec.supervisor) read it from the environment they inherit.
    os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = str(cache / "refattn" / "hypothesis")


@contextlib.contextmanager
def importable_from_here(wanted: bool):
    """Put the current directory first on sys.path, as `python -m` does, so that a user's
    package in the project folder imports (`refattn conform mypkg.attention:sdpa`); only while
    the implementation loads. The workers are started with the path as it was and put the
    folder first themselves once refattn is imported (refattn.spec.supervisor): started with
    it, a checkout of refattn would have them import the unbuilt source tree in place of the
    installed package that the parent runs."""
    here = os.getcwd()
    added = wanted and here not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        yield
    finally:
        if added:
            sys.path.remove(here)
