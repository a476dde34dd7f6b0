"""The verifier's worker pool (reasonft.verify.pool) against the same pool built on
`pebble.ProcessPool` (a task per comparison, `timeout=` per task), side by side.

Same inputs for both, runs alternating own, pebble, own, ... (each run starts its pool, grades
everything and closes it), the fastest of `--repeats` runs per pool:
- `math_verify`: every gold answer of a benchmark file against itself and against the next
  one (math-verify, the default grader): grading throughput on real answers;
- `overhead`: `operator.eq` on short strings, so the time is the pool's own cost per item;
- `c_hang`: `re.fullmatch` with patterns that backtrack for hours inside C code among quick
  ones: each hang must be cut off at `--hang-timeout` seconds, its worker killed and replaced;
- `idle_death`: a worker killed while the pool waits between two calls (the RL reward keeps
  one pool for a whole run): does the next call still grade?
Prints seconds, the ratio pebble / own, and whether both gave identical results.

    .venv/bin/python bench/verify_pool.py
    .venv/bin/python bench/verify_pool.py --golds ../shared/benchmarks/math500.json --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, TimeoutError, wait
from pathlib import Path
from typing import Any

from reasonft.verify.graders import DEFAULT_VERIFY_FN, import_object
from reasonft.verify.pool import Pool

GOLDS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "math500.json"
Item = tuple[Any, str, str]

_fn: Any = None


def _start_pebble_worker(verify_fn: str) -> None:
    global _fn
    # pebble's workers end on SIGTERM through a Python handler, which cannot run while the
    # worker is stuck in C code (pebble then waits 3 s before SIGKILL); the default ends it at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _fn = import_object(verify_fn)
    try:  # the same warm-up as the own pool's workers
        _fn("1", "1")
    except Exception:  # noqa: BLE001, S110
        pass


def _pebble_compare(pred: str, gold: str) -> tuple[str, str]:
    try:
        return ("correct" if _fn(pred, gold) else "incorrect"), ""
    except Exception as error:  # noqa: BLE001 - reported per item, as by the own pool
        return "error", f"{type(error).__name__}: {error}"[:500]


class PebblePool:
    """reasonft.verify.pool.Pool's interface on pebble.ProcessPool."""

    def __init__(self, size: int, verify_fn: str, start_method: str, timeout: float) -> None:
        from pebble import ProcessPool

        ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            ctx.set_forkserver_preload([verify_fn.rpartition(".")[0], "math_verify"])
        self.size, self.timeout, self.replaced = size, timeout, 0
        self.pool = ProcessPool(
            max_workers=size, initializer=_start_pebble_worker, initargs=(verify_fn,), context=ctx
        )

    def worker_pids(self) -> list[int]:
        return list(self.pool._pool_manager.worker_manager.workers)

    def run(self, items: Iterator[Item]) -> Iterator[tuple[Any, str, str]]:
        from pebble import ProcessExpired

        pending: dict[Any, Any] = {}

        def refill() -> None:  # a bounded window, as the own pool takes items one at a time
            while len(pending) < 2 * self.size and (item := next(items, None)) is not None:
                args = (item[1], item[2])
                pending[self.pool.schedule(_pebble_compare, args, timeout=self.timeout)] = item[0]

        refill()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                try:
                    status, note = future.result()
                except TimeoutError:
                    self.replaced += 1
                    status, note = "timeout", f"no result within {self.timeout:g}s; worker killed and replaced"
                except ProcessExpired as error:
                    self.replaced += 1
                    status, note = "error", f"worker died (exit code {error.exitcode})"
                yield index, status, note
            refill()

    def close(self) -> None:
        self.pool.stop()
        self.pool.join()


def own_pids(pool: Pool) -> list[int]:
    return [w.process.pid for w in pool.workers]


POOLS = {"own": (Pool, own_pids), "pebble": (PebblePool, PebblePool.worker_pids)}


def math_items(golds: Path, limit: int) -> list[Item]:
    answers = [str(r["answer"]) for r in json.loads(golds.read_text())][:limit]
    return [
        ((i, k), pred, gold)
        for i, gold in enumerate(answers)
        for k, pred in enumerate((gold, answers[(i + 1) % len(answers)]))
    ]


def hang_items(hangs: int) -> list[Item]:
    stuck = ("(a+)+", "a" * 40 + "b")
    pairs = [("a", "a"), stuck, ("b", "c"), ("(", "x"), ("c+", "ccc"), ("d", "d")]
    out = [pair for _ in range(hangs) for pair in pairs]
    return [(i, p, g) for i, (p, g) in enumerate(out)]


def timed_run(name: str, items: list[Item], verify_fn: str, timeout: float, workers: int) -> tuple[float, list, int]:
    cls, _ = POOLS[name]
    start = time.perf_counter()
    pool = cls(workers, verify_fn, "forkserver", timeout)
    try:
        results = sorted(pool.run(iter(items)))
    finally:
        pool.close()
    return time.perf_counter() - start, results, pool.replaced


def idle_death(name: str, workers: int) -> str:
    """Grade, kill one idle worker, grade again with the same pool."""
    cls, pids = POOLS[name]
    items = [(0, "1", "1"), (1, "1", "2")]
    pool = cls(workers, "operator.eq", "forkserver", 5.0)
    try:
        first = sorted(pool.run(iter(items)))
        os.kill(pids(pool)[0], signal.SIGKILL)
        time.sleep(0.5)
        try:
            again = sorted(pool.run(iter(items)))
        except Exception as error:  # noqa: BLE001 - the outcome is what this scenario reports
            return f"fails: {type(error).__name__}: {error}"
        return "grades on" if again == first else f"different results: {again}"
    finally:
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--golds", type=Path, default=GOLDS, help="a JSON list of records with `answer`")
    parser.add_argument("--limit", type=int, default=500, help="gold answers read (2 comparisons each)")
    parser.add_argument("--overhead-items", type=int, default=5000)
    parser.add_argument("--hangs", type=int, default=3, help="C-level hangs among 5 quick items each")
    parser.add_argument("--hang-timeout", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    scenarios = [
        ("math_verify", math_items(args.golds, args.limit), DEFAULT_VERIFY_FN, 5.0),
        ("overhead", [(i, str(i % 7), str(i % 5)) for i in range(args.overhead_items)], "operator.eq", 5.0),
        ("c_hang", hang_items(args.hangs), "re.fullmatch", args.hang_timeout),
    ]
    for name in POOLS:  # the forkserver starts once per process: not inside a timed run
        timed_run(name, [(0, "1", "1")], DEFAULT_VERIFY_FN, 5.0, args.workers)
    for scenario, items, verify_fn, timeout in scenarios:
        seconds: dict[str, list[float]] = {name: [] for name in POOLS}
        outcome: dict[str, tuple[list, int]] = {}
        for _ in range(args.repeats):
            for name in POOLS:
                took, results, replaced = timed_run(name, items, verify_fn, timeout, args.workers)
                seconds[name].append(took)
                outcome[name] = (results, replaced)
        best = {name: min(times) for name, times in seconds.items()}
        statuses = {name: sum(r[1] == "timeout" for r in res) for name, (res, _) in outcome.items()}
        print(
            f"{scenario}: {len(items)} items; best of {args.repeats} s: "
            + ", ".join(f"{name} {best[name]:.2f}" for name in POOLS)
            + f"; pebble/own {best['pebble'] / best['own']:.3f}; identical results: "
            + str(outcome["own"] == outcome["pebble"])
            + f"; timeouts {statuses}; workers replaced { {n: o[1] for n, o in outcome.items()} }",
            flush=True,
        )
    print("idle_death: " + ", ".join(f"{name} {idle_death(name, args.workers)}" for name in POOLS))


if __name__ == "__main__":
    main()
