"""The native core under Python threads, across OpenMP thread counts, and under Ctrl-C.

- 8 Python threads × 200 calls each, mixed shapes and options, equal bit for bit to the same
  calls made serially.
- Determinism: repeated calls with a fixed thread count give identical bits, and so do 1, 2
  and 3 OpenMP threads (each work item is reduced by one thread in a fixed order, and the work
  split depends on the shapes alone; SPEC.md, ATT-N3).
- KeyboardInterrupt during a long call: the call finishes (the GIL is released, so Python sees
  the signal when it returns), the interrupt is raised, and the next call is right.
- fork() after a multi-threaded call: the child's calls run on one thread and give the same
  bits (libgomp's pool would hang it), through a multiprocessing fork pool and a bare fork.
- More threads than is sensible (num_threads=1024, OMP_NUM_THREADS=3000) under a 4 GiB
  address-space limit: at most two threads per CPU, never libgomp's "Thread creation failed".

The scenarios that can hang or end the process run in a subprocess of their own session, killed
with everything it forked when it overruns its timeout.
"""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

import numpy as np
import pytest

from refattn import native

ISAS = native.available_isas()
THREADS, CALLS = 8, 200
SANITIZED = "-fsanitize" in native.info()["build"]
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _scenario(code: str, *, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """Run code in a fresh Python in a session of its own; past the timeout, kill the session
    (the scenario's forked children too) and fail: a hang is a failure, not a stuck run."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tempfile.gettempdir(),  # import the installed refattn, not a source tree in cwd
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the scenario hung for {timeout} s; stdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _jobs(count: int = 24, seed: int = 0) -> list:
    """Mixed calls: shapes from decode (Lq 1, many keys: split-K) to prefill, with every option."""
    rng = np.random.default_rng(seed)
    jobs = []
    for n in range(count):
        dtype = (np.float32, np.float64, np.float16)[n % 3]
        Hkv = 1 + n % 2
        Hq = Hkv * (1 + n % 3)
        Lq = (1, 5, 33, 70)[n % 4]
        Lk = (1100, 3, 64, 129, 40)[n % 5]
        Dk, Dv = (8, 16, 33)[n % 3], (4, 16)[n % 2]
        q = rng.standard_normal((2, Hq, Lq, Dk)).astype(dtype)
        k = rng.standard_normal((2, Hkv, Lk, Dk)).astype(dtype)
        v = rng.standard_normal((2, Hkv, Lk, Dv)).astype(dtype)
        options = {}
        if n % 4 == 1:
            options["mask"] = rng.random((Lq, Lk)) < 0.7
        if n % 5 == 2:
            options["bias"] = rng.standard_normal((1, Hq, 1, Lk))
        if n % 3 == 0:
            options["causal"] = "bottom_right"
        if n % 7 == 3:
            options["window"] = (5, 2)
        if n % 6 == 4:
            options["kv_lengths"] = np.array([Lk // 2, Lk])
        if n % 8 == 5:
            options["softcap"] = 3.0
        options["isa"] = ISAS[n % len(ISAS)]
        options["return_lse"] = n % 2 == 0
        options["return_weights"] = n % 5 == 0 and Lk < 200
        jobs.append((q, k, v, options))
    return jobs


def _same(a, b) -> bool:
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return len(a) == len(b) and all(
        x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
        for x, y in zip(a, b, strict=True)
    )


def test_eight_python_threads_of_200_calls_match_serial():
    jobs = _jobs()
    serial = [native.attention(q, k, v, num_threads=1, **o) for q, k, v, o in jobs]
    mismatches, errors = [], []
    start = threading.Barrier(THREADS)

    def worker(t):
        try:
            start.wait()
            for c in range(CALLS):
                n = (7 * t + c) % len(jobs)  # each thread its own order through the jobs
                q, k, v, options = jobs[n]
                got = native.attention(q, k, v, num_threads=1 + (t + c) % 2, **options)
                if not _same(got, serial[n]):
                    mismatches.append((t, c, n))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not mismatches, f"{len(mismatches)} of {THREADS * CALLS} calls differ: {mismatches[:5]}"


@pytest.mark.parametrize("n", range(24))
def test_repeats_and_thread_counts_give_identical_bits(n):
    """The same call 3 times with 2 threads, then with 1 and 3 threads: the same bits."""
    q, k, v, options = _jobs()[n]
    first = native.attention(q, k, v, num_threads=2, **options)
    for threads in (2, 2, 1, 3):
        assert _same(native.attention(q, k, v, num_threads=threads, **options), first), threads


def test_keyboard_interrupt_during_a_long_call_leaves_the_core_working():
    """Ctrl-C (SIGINT from a timer thread) while a multi-second native call runs in the main
    thread: KeyboardInterrupt is raised once the call returns, and the next calls are right."""
    code = """
        import _thread, os, signal, threading, time
        import numpy as np
        from refattn import native

        # A shell's background job starts with SIGINT ignored, and Python keeps that.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        rng = np.random.default_rng(0)
        q = rng.standard_normal((1, 4, 3000, 64)).astype(np.float32)
        small = [rng.standard_normal((2, 3, 40, 16)).astype(np.float32) for _ in range(3)]
        want = native.attention(*small, num_threads=2, return_lse=True)
        t0 = time.perf_counter()
        native.attention(q, q, q, num_threads=1)
        one = time.perf_counter() - t0
        reps = max(1, int(2.0 / one))  # a call of about two seconds, in pieces of `one`
        big = np.concatenate([q] * reps, axis=1)
        fired = []
        timer = threading.Timer(
            0.3, lambda: (fired.append(time.perf_counter()), os.kill(os.getpid(), signal.SIGINT))
        )
        timer.start()
        t0 = time.perf_counter()
        try:
            native.attention(big, q, q, num_threads=1)
            print("no interrupt")
        except KeyboardInterrupt:
            returned = time.perf_counter()
            print("interrupted after", round(returned - t0, 2), "s; signal at",
                  round(fired[0] - t0, 2), "s")
            assert fired[0] < returned
        timer.join()
        for threads in (1, 2):
            got = native.attention(*small, num_threads=threads, return_lse=True)
            assert all(np.array_equal(a, b) for a, b in zip(got, want)), threads
        print("next calls ok")
    """
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tempfile.gettempdir(),
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "interrupted after" in run.stdout and "next calls ok" in run.stdout, run.stdout


# A call with work for two threads: (1, 8, 300, 32) has 8 heads × 4 query tiles of 96 rows.
_FORK_CALL = """
    import os, time
    import numpy as np
    from refattn import native

    def call(seed):
        rng = np.random.default_rng(seed)
        q = rng.standard_normal((1, 8, 300, 32)).astype(np.float32)
        return native.attention(q, q, q, num_threads=2, return_lse=True)

    def same(a, b):
        return all(np.array_equal(x, y) for x, y in zip(a, b))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_pool_after_a_multithreaded_call():
    """A multiprocessing pool with the fork start method (what torch's DataLoader workers do)
    after a call on two threads: the workers' calls run on one thread and give the same bits,
    and the parent keeps its threads."""
    code = (
        _FORK_CALL
        + """
    import multiprocessing

    def work(seed):
        return call(seed), native.info()["threads"]

    if __name__ == "__main__":
        threads = native.info()["threads"]
        want = [call(seed) for seed in range(4)]  # two threads: libgomp's pool exists now
        with multiprocessing.get_context("fork").Pool(2) as pool:
            got = pool.map_async(work, range(4)).get(timeout=60)
        assert all(same(g, w) for (g, _), w in zip(got, want)), "the workers' results differ"
        assert [t for _, t in got] == [1] * 4, got
        assert native.info()["threads"] == threads and same(call(0), want[0])
        print("pool ok")
    """
    )
    run = _scenario(code)
    assert run.returncode == 0 and "pool ok" in run.stdout, run.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_bare_fork_after_a_multithreaded_call():
    """os.fork() after a call on two threads: the child (and its own child) compute the same
    bits on one thread; a child forked before any multi-threaded call keeps its threads."""
    code = (
        _FORK_CALL
        + """
    def child(check):
        pid = os.fork()
        if pid == 0:
            try:
                os._exit(0 if check() else 1)
            except BaseException:
                os._exit(2)
        for _ in range(600):  # 60 s, then the child is taken as hung
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        os.kill(pid, 9)
        return "hung"

    threads = native.info()["threads"]
    status = child(lambda: native.info()["threads"] == threads)
    assert status == 0, f"a child forked before any team: {status}"
    want = call(0)  # two threads: libgomp's pool exists now
    status = child(lambda: same(call(0), want) and native.info()["threads"] == 1)
    assert status == 0, f"a child forked after a team: {status}"
    status = child(lambda: child(lambda: same(call(0), want)) == 0)
    assert status == 0, f"a child's child: {status}"
    assert same(call(0), want) and native.info()["threads"] == threads
    print("fork ok")
    """
    )
    run = _scenario(code)
    assert run.returncode == 0 and "fork ok" in run.stdout, run.stderr


# Under AddressSanitizer an address-space limit cannot be used (its shadow memory reserves
# terabytes): the count of threads the call started is checked all the same.
_LIMIT = "" if SANITIZED else "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))"
_MANY_THREADS = f"""
    import os, resource
    import numpy as np
    from refattn import native

    q = np.random.default_rng(0).standard_normal((1, 4096, 10, 8)).astype(np.float32)
    want = native.attention(q, q, q, num_threads=1)  # 4096 work items: room for 4096 threads
    before = len(os.listdir("/proc/self/task"))
    {_LIMIT}
"""


@pytest.mark.skipif(sys.platform != "linux", reason="counts threads in /proc/self/task")
@pytest.mark.parametrize(
    ("call", "env"),
    [("num_threads=1024", {}), ("", {"OMP_NUM_THREADS": "3000"})],
    ids=["num_threads=1024", "OMP_NUM_THREADS=3000"],
)
def test_more_threads_than_sensible_are_capped(call, env):
    """Asked for 1024 threads, or 3000 by OMP_NUM_THREADS, under a 4 GiB address-space limit
    (8 MiB of stack each): libgomp used to print "Thread creation failed" and exit(1). The call
    runs on at most two threads per CPU, gives the same bits, and says so in info()."""
    code = (
        _MANY_THREADS
        + f"""
    got = native.attention(q, q, q, {call})
    started = len(os.listdir("/proc/self/task")) - before
    print(native.info()["threads"], started, np.array_equal(got, want))
    """
    )
    run = _scenario(code, **env)
    assert run.returncode == 0, run.stderr
    threads, started, same = run.stdout.split()
    cap = 2 * CPUS
    assert int(started) <= cap - 1, f"expected at most {cap} threads, {started} were started"
    assert same == "True", "a different result on fewer threads"
    if env:  # the default is capped too
        assert int(threads) == cap, f"info() says {threads} threads, expected {cap}"
