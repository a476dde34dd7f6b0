"""Worker processes fed one comparison at a time; one past its deadline is killed and replaced.

math-verify's own time limits use SIGALRM, which works only in a main thread and cannot stop a
computation stuck inside C code (a huge integer power, for one), so the comparisons run in
worker processes and the parent enforces the limit: a worker that overruns its item is killed
and replaced, the item counts with status "timeout", and the stage goes on.

Workers start with the "forkserver" method by default: each worker is forked from a small
server process that has math-verify (and the comparison function's module) imported already,
so starting or replacing a worker costs milliseconds, and — unlike plain "fork" — workers do
not inherit the threads of the parent (progress bars, tokenizers, torch, loggers), whose locks
a forked child could find held forever. "spawn" also works (slower to replace a worker).

Why not a library: pebble's `ProcessPool` (a task per comparison, `timeout=` per task) gives the
same verdicts, counts and replacements, but measured side by side on this project's inputs
(bench/verify_pool.py, 2 cores, three runs) it was slower and in one way less robust: its
parent hands every task and result across three threads, so it costs about twice as much per
item (pebble/own 1.8-2.1x on `operator.eq`; 1.1-2.2x on math-verify's comparisons of MATH-500
answers, the more the busier the cores); it notices an expired item only on its 0.1 s polling
tick (1.1-1.3x on inputs of hangs cut at 1 s); and a worker that dies while no item runs breaks
its pool for good ("Unexpected error within the Pool"), where the RL reward keeps one pool for a
whole run. concurrent.futures' ProcessPoolExecutor cannot stop a running task at all.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from reasonft.verify.graders import import_object

_STARTUP_LIMIT_S = 120.0


def _worker_main(conn: Connection, verify_fn: str) -> None:
    """Loop: receive (index, pred, gold), send (index, status, message); None ends it."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # timeouts are ours, not its
    logging.getLogger("pylatexenc").setLevel(logging.ERROR)  # the official grader's LaTeX reader
    fn = import_object(verify_fn)
    try:  # first call pays one-off costs (regex compilation, lazy imports) before any deadline
        fn("1", "1")
    except Exception:  # noqa: BLE001, S110 - a warm-up failure shows up on real items
        pass
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, pred, gold = message
        try:
            status, note = ("correct" if fn(pred, gold) else "incorrect"), ""
        except Exception as error:  # noqa: BLE001 - reported per item as status "error"
            status, note = "error", f"{type(error).__name__}: {error}"[:500]
        conn.send((index, status, note))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    ready: bool = False
    item: Any = None
    deadline: float = math.inf
    started: float = 0.0


class Pool:
    """Worker processes fed one item at a time; an item past its deadline kills its worker."""

    def __init__(self, size: int, verify_fn: str, start_method: str, timeout: float) -> None:
        self.ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            self.ctx.set_forkserver_preload(
                [verify_fn.rpartition(":" if ":" in verify_fn else ".")[0], "math_verify"]
            )
        self.verify_fn, self.timeout = verify_fn, timeout
        self.workers = [self._start() for _ in range(size)]
        self.replaced = 0

    def _start(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker_main, args=(child, self.verify_fn), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent, started=time.monotonic())

    def _replace(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.join(timeout=10)
        worker.conn.close()
        self.workers[self.workers.index(worker)] = self._start()
        self.replaced += 1

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in self.workers:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=10)
            worker.conn.close()

    def run(self, items: Iterator[tuple[Any, str, str]]) -> Iterator[tuple[Any, str, str]]:
        """Yield (id, status, message) for every (id, pred, gold) item, in completion order."""
        pending = iter(items)
        retry: list[tuple[Any, str, str]] = []  # items whose idle worker had died unseen
        exhausted = False
        while True:
            now = time.monotonic()
            for worker in list(self.workers):
                if worker.ready and worker.item is None and not exhausted:
                    item = retry.pop() if retry else next(pending, None)
                    if item is None:
                        exhausted = True
                        break
                    try:
                        worker.conn.send(item)
                    except (BrokenPipeError, OSError):
                        retry.append(item)
                        self._replace(worker)
                        continue
                    worker.item, worker.deadline = item[0], now + self.timeout
            busy = [w for w in self.workers if w.item is not None]
            if exhausted and not busy:
                return
            next_deadline = min((w.deadline for w in busy), default=math.inf)
            ready_conns = wait(
                [w.conn for w in self.workers], timeout=max(0.0, min(next_deadline - now, 1.0))
            )
            for worker in [w for w in self.workers if w.conn in ready_conns]:
                yield from self._receive(worker)
            now = time.monotonic()
            for worker in [w for w in self.workers if w.item is not None and now > w.deadline]:
                index = worker.item
                self._replace(worker)
                yield (
                    index,
                    "timeout",
                    f"no result within {self.timeout:g}s; worker killed and replaced",
                )
            for worker in [w for w in self.workers if not w.ready]:
                if now - worker.started > _STARTUP_LIMIT_S:
                    raise RuntimeError(
                        f"verify worker did not start within {_STARTUP_LIMIT_S:.0f}s"
                    )

    def _receive(self, worker: _Worker) -> Iterator[tuple[Any, str, str]]:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            code = worker.process.exitcode
            if not worker.ready:
                worker.process.join(timeout=10)
                raise RuntimeError(
                    f"verify worker exited while starting (exit code {worker.process.exitcode}); check "
                    f"that verify_fn={self.verify_fn!r} imports, and that a script calling the "
                    "Verifier does so under `if __name__ == '__main__':` (workers import the main "
                    "module; see the traceback above)"
                ) from None
            index = worker.item
            self._replace(worker)
            if index is not None:
                yield index, "error", f"worker died (exit code {code})"
            return
        if message == "ready":
            worker.ready = True
            return
        worker.item, worker.deadline = None, math.inf
        yield message
