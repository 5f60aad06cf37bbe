"""Invariants run in supervised worker processes: a crash or a hang is a FAIL, never a lost run.

`refattn conform` runs every invariant in a worker process that loads the implementation by name
and announces each call before making it. The parent watches:

- a worker that dies (a segfault, an abort, heap corruption in the implementation) fails the
  invariant it was running, naming the call it died in;
- a call that does not return within `timeout` seconds fails its invariant the same way, and
  the worker is killed;
- either way the invariant is then run once more, carefully, in a fresh worker that saves the
  inputs of each call before making it, so that the failure comes with its reproduction: the
  inputs and the call in the implementation's own protocol. (The examples hypothesis draws
  depend on the seed alone, so the careful run meets the same call.)
- Ctrl-C stops the workers; the invariants not run are reported as NOT RUN, and the report is
  still written.

The other invariants go on in a new worker. `jobs` workers run at once; results do not depend on
how many.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from refattn.spec.registry import Invariant
from refattn.spec.runner import FAIL, NOT_RUN, Outcome

DEFAULT_TIMEOUT = 60.0  # seconds a single call may take
POLL = 0.2  # seconds between looks at the workers
# Started before the others: the invariants that call the implementation many times an example
# (ATT-C2 decodes token by token, a new shape a step), the longest to run by far where compiling
# a shape is what costs (jax). Started last, one would keep a worker busy alone at the end.
START_FIRST = ("ATT-C2",)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a supervised run; `outcomes` holds what finished (and NOT RUN for the rest)."""

    def __init__(self, outcomes: list[Outcome]):
        super().__init__("interrupted")
        self.outcomes = outcomes


@dataclass(frozen=True)
class Settings:
    """How each invariant runs in a worker (picklable: it crosses into the worker process)."""

    impl: str  # a name refattn.adapters.load takes
    max_examples: int
    seed: int
    deviations: Mapping[str, str]
    repro_dir: str | None
    sys_path: tuple[str, ...] = ()  # the parent's as it loaded the implementation
    declared: tuple[tuple[str, object], ...] = ()  # load()'s protocol, with_, without


@dataclass
class _Worker:
    process: multiprocessing.Process
    conn: object
    invariant: Invariant | None = None
    careful: bool = False
    call: str | None = None  # the call under way, as described before it was made
    since: float = 0.0
    inputs: str | None = None  # careful runs: the reproduction of the call under way
    started: float = field(default_factory=time.monotonic)


def run_supervised(
    settings: Settings,
    invariants: list[Invariant],
    *,
    jobs: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Callable[[Invariant, Outcome | None], None] | None = None,
) -> list[Outcome]:
    """Run the invariants in `jobs` supervised workers; outcomes in the order given."""
    context = multiprocessing.get_context("spawn")  # not fork: peers keep threads mid-work
    pending = sorted(invariants, key=lambda inv: inv.id not in START_FIRST)  # stable otherwise
    retries: list[tuple[Invariant, Outcome]] = []  # crashed or hung: run again, carefully
    outcomes: dict[str, Outcome] = {}
    workers: list[_Worker] = []

    def start() -> _Worker:
        parent, child = context.Pipe()
        process = context.Process(target=_work, args=(child, settings), daemon=True)
        process.start()
        child.close()
        worker = _Worker(process, parent)
        workers.append(worker)
        return worker

    def assign(worker: _Worker) -> bool:
        """Give the worker its next invariant (a careful rerun first); False when none is left."""
        careful = bool(retries)
        if careful:
            inv, _ = retries[0]
        elif pending:
            inv = pending.pop(0)
            if progress:
                progress(inv, None)
        else:
            return False
        worker.invariant, worker.careful, worker.call, worker.inputs = inv, careful, None, None
        worker.conn.send(("run", inv.id, careful))
        return True

    def finish(inv: Invariant, outcome: Outcome) -> None:
        outcomes[inv.id] = outcome
        if progress:
            progress(inv, outcome)

    def lost(worker: _Worker, why: str) -> None:
        """The worker died or hung while running an invariant: fail it, or rerun it carefully."""
        inv = worker.invariant
        call = worker.call or "before its first call"
        seconds = time.monotonic() - worker.started
        detail = f"{settings.impl} {why} during {call}"
        if worker.careful:
            first = retries.pop(0)[1]
            if worker.inputs:
                detail = first.detail + "\n  reproduce (the call it died in):\n" + worker.inputs
            else:
                detail = first.detail + "\n  (a careful rerun did not meet the same call again)"
            finish(inv, Outcome(inv.id, inv.title, inv.level, FAIL, 0, seconds, detail))
        else:
            retries.append((inv, Outcome(inv.id, inv.title, inv.level, FAIL, 0, seconds, detail)))
        _stop(worker)
        workers.remove(worker)

    try:
        for _ in range(min(jobs, len(pending))):
            assign(start())
        while workers:
            ready = wait([w.conn for w in workers], timeout=POLL)
            for worker in [w for w in workers if w.conn in ready]:
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):  # the worker died mid-message
                    lost(worker, _death(worker.process))
                    continue
                kind = message[0]
                if kind == "inputs":
                    worker.inputs = message[1]
                elif kind == "call":
                    worker.call, worker.since = message[1], time.monotonic()
                elif kind == "returned":
                    worker.call = None
                elif kind == "outcome":
                    outcome = message[1]
                    if worker.careful:  # the careful rerun did not fail this time: report the first
                        outcome = retries.pop(0)[1]
                        outcome = Outcome(
                            outcome.id,
                            outcome.title,
                            outcome.level,
                            FAIL,
                            outcome.examples,
                            outcome.seconds,
                            outcome.detail + "\n  (it did not happen again in a careful rerun)",
                        )
                    finish(worker.invariant, outcome)
                    if not assign(worker):
                        _stop(worker)
                        workers.remove(worker)
            for worker in list(workers):
                if not worker.process.is_alive() and not worker.conn.poll():
                    lost(worker, _death(worker.process))
                elif worker.call is not None and time.monotonic() - worker.since > timeout:
                    lost(worker, f"did not return within {timeout:g} s (killed)")
            while (retries or pending) and len(workers) < jobs:
                assign(start())
    except KeyboardInterrupt:
        for worker in workers:
            _stop(worker)
        done = [outcomes.get(inv.id) or _not_run(inv) for inv in invariants]
        raise Interrupted(done) from None
    return [outcomes[inv.id] for inv in invariants]


def _not_run(inv: Invariant) -> Outcome:
    return Outcome(inv.id, inv.title, inv.level, NOT_RUN, 0, 0.0, "not run: interrupted")


def _death(process) -> str:
    process.join(timeout=5)
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"crashed the process ({name})"
    return f"ended the process (exit status {code})"


def _stop(worker: _Worker) -> None:
    if worker.process.is_alive():
        with contextlib.suppress(BrokenPipeError, OSError):  # it may be dying already
            worker.conn.send(("stop",))
        worker.process.join(timeout=1)
    if worker.process.is_alive():
        worker.process.kill()
        worker.process.join(timeout=5)
    worker.conn.close()


# ------------------------------------------------------------------------------------ worker


def _work(conn, settings: Settings) -> None:
    """A worker: load the implementation, then run the invariants it is sent, announcing each
    call before making it (and in a careful run, sending its reproduction first)."""
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # refattn is imported by now (this function is in it), so the user's folder first on the
    # path cannot shadow it (refattn.spec.conform.importable_from_here).
    for entry in reversed(settings.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from refattn.spec.registry import INVARIANTS, all_invariants
    from refattn.spec.runner import run_invariant

    from refattn.adapters import load

    all_invariants()
    impl = load(settings.impl, **dict(settings.declared))
    careful = False

    def on_call(call, example):
        if call is None:
            conn.send(("returned",))
            return
        if careful:  # the inputs first: the call may not come back
            conn.send(("inputs", _inputs(impl, call, settings)))
        conn.send(("call", call.describe("impl")))

    while True:
        message = conn.recv()
        if message[0] == "stop":
            break
        _, inv_id, careful = message
        outcome = run_invariant(
            INVARIANTS[inv_id],
            impl,
            max_examples=settings.max_examples,
            seed=settings.seed,
            deviations=settings.deviations,
            repro_dir=settings.repro_dir,
            on_call=on_call,
        )
        conn.send(("outcome", outcome))


def _inputs(impl, call, settings: Settings) -> str:
    """The reproduction of one call, its inputs saved before it is made (careful runs)."""
    from refattn.spec.repro import Reproduction

    snippet = impl.snippet(call, "")
    repro = Reproduction(list(snippet.setup), [f"out = {snippet.code}"], [], dict(snippet.arrays))
    name = f"{settings.impl}-call"
    return "\n".join("    " + line for line in repro.text(settings.repro_dir, name).splitlines())
