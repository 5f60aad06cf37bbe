"""`refattn bench`: the native core timed side by side with its peers, honestly.

- `cases`    the grid: one place for the shapes, FLOP and byte counts (tests/benchmarks too)
- the implementations are `refattn conform`'s adapters (refattn.adapters), threads set equal
- `measure`  the measuring subprocess: interleaved timing, the machine's limits, peak memory
- `run`      plans the run and starts the subprocesses
- `report`   the JSON document and the table
"""

from refattn.bench.run import BenchError, UsageError, bench

__all__ = ["BenchError", "UsageError", "bench"]
