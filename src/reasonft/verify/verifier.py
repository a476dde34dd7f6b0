"""Mark responses correct or not against the gold answer (METHODS.md §3), with time limits.

Equivalence is math-verify's `parse` + `verify`. math-verify's own time limits use SIGALRM,
which works only in a main thread and cannot stop a computation stuck inside C code (a huge
integer power, for one), so the Verifier runs the comparisons in worker processes and enforces
the limit from the parent: a worker that overruns its item is killed and replaced, the item
counts as incorrect with status "timeout", and the stage goes on.

Workers start with the "forkserver" method by default: each worker is forked from a small
server process that has math-verify (and the comparison function's module) imported already,
so starting or replacing a worker costs milliseconds, and — unlike plain "fork" — workers do
not inherit the threads of the parent (progress bars, tokenizers, torch, loggers), whose locks
a forked child could find held forever. "spawn" also works (slower to replace a worker).
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import multiprocessing as mp
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import datasets
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from reasonft.data.records import (
    ANSWER_ALTERNATIVES,
    VERIFY_COLUMNS,
    as_dataset,
    like_input,
    require_columns,
)
from reasonft.verify.extract import extract_answer
from reasonft.verify.official import official_extract
from reasonft.verify.rl_reward import rl_extract

# "no_think": the official rule (answer_rule=official) found no `</think>` in the response.
STATUSES = ("correct", "incorrect", "no_answer", "no_think", "timeout", "error")
DEFAULT_VERIFY_FN = "reasonft.verify.verifier.math_equal"
OFFICIAL_VERIFY_FN = "reasonft.verify.official.official_equal"
RL_VERIFY_FN = "reasonft.verify.rl_reward.rl_equal"
# How the answer is read out of a response: this project's rule (the last box after the last
# `</think>`, the whole response without one), the official OXA evaluation's (reasonft.verify.official)
# or the official RL reward's (`after_last_think`: `</think>` required, the text after the last one;
# reasonft.verify.rl_reward).
ANSWER_RULES = ("last_think", "official", "after_last_think")
GRADERS = ("math_verify", "official", "rl")
_STARTUP_LIMIT_S = 120.0
_KEPT_EXAMPLES = 10


class GoldAnswerError(ValueError):
    """math-verify found nothing to compare in a gold answer."""


def _strip_math_delimiters(text: str) -> str:
    """`$x$`, `$$x$$`, `\\(x\\)`, `\\[x\\]` -> `x` (answers are wrapped once, below)."""
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            inner = text[len(left) : -len(right)]
            if "$" not in inner and left not in inner:
                return inner.strip()
    return text


class _NothingParsed(Exception):
    """Raised inside the cache so that failed parses are not remembered."""


@functools.lru_cache(maxsize=8192)
def _parse_answer(text: str, timeout_s: int | None) -> tuple[Any, ...]:
    """math-verify's reading of one answer string; cached, since many samples share a gold
    answer (and often a predicted one)."""
    from math_verify import parse

    parsed = parse(f"${_strip_math_delimiters(text)}$", parsing_timeout=timeout_s)
    if not parsed:
        raise _NothingParsed
    return tuple(parsed)


def read_answer(response: str, answer_rule: str) -> tuple[str | None, str]:
    """(answer, status) by `answer_rule`: status "ok", "no_answer" or (official) "no_think"."""
    if answer_rule == "official":
        return official_extract(response)
    if answer_rule == "after_last_think":
        return rl_extract(response)
    answer = extract_answer(response)
    return (None, "no_answer") if answer is None else (answer, "ok")


def math_equal(pred: str, gold: str, timeout_s: int | None = None) -> bool:
    """Whether the answer `pred` equals `gold` for math-verify (both answer strings, not responses).

    Both are read as inline LaTeX (`$...$`), which also accepts plain forms like `1/2`.
    `timeout_s` is math-verify's own per-call limit (SIGALRM, main thread only); None leaves the
    limit to the caller (the Verifier's parent process).
    """
    from math_verify import verify

    try:
        gold_parsed = _parse_answer(gold, timeout_s)
    except _NothingParsed:
        raise GoldAnswerError(f"math-verify cannot read the gold answer {gold!r}") from None
    try:
        pred_parsed = _parse_answer(pred, timeout_s)
    except _NothingParsed:
        return False
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout_s))


def is_correct(response: str, gold: str, timeout: float = 5.0, grader: str = "math_verify") -> bool:
    """One response, in this process, as the verify stage would mark it.

    grader="math_verify" (the default): the last boxed answer after the last `</think>` (the
    whole response without one) equals `gold` for math-verify. grader="official": the official
    OXA evaluation's rule (`reasonft.verify.official`): no `</think>` is wrong, the answer is the
    last `\\boxed{}` between the first `</think>` and the next, compared by MATH normalisation
    then sympy. grader="rl": the official RL reward's rule (`reasonft.verify.rl_reward`): no
    `</think>` is wrong, the text after the last one against the boxed gold with math-verify.

    The time limit works in the main thread only (SIGALRM), so from another thread the check
    runs without one — use the Verifier for many responses or untrusted inputs.
    """
    if grader not in GRADERS:
        raise ValueError(f"is_correct(grader={grader!r}): choose one of {list(GRADERS)}")
    in_main = threading.current_thread() is threading.main_thread()
    if grader == "rl":
        from reasonft.verify.rl_reward import rl_verdict

        try:
            with _alarm(timeout if in_main else None):
                return rl_verdict(response, gold)
        except _Expired:
            return False
    if grader == "official":
        from reasonft.verify.official import official_verdict

        try:
            with _alarm(timeout if in_main else None):
                return official_verdict(response, gold)
        except _Expired:
            return False
    pred = extract_answer(response)
    if pred is None or not gold.strip():
        return False
    try:
        return math_equal(pred, gold, timeout_s=max(1, math.ceil(timeout)) if in_main else None)
    except GoldAnswerError:
        return False


class _Expired(BaseException):
    """The time limit of `is_correct`; a BaseException, so that the grader's own `except
    Exception` (sympy failures count as unequal) cannot swallow it and run on unlimited."""


@contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise _Expired in the main thread after `seconds` (None: no limit)."""
    if seconds is None:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _Expired(f"no verdict within {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def import_object(path: str) -> Any:
    """`package.module.name` (or `package.module:name`) -> the object."""
    module, sep, name = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not sep or not module:
        raise ValueError(
            f"verify_fn={path!r}: expected a dotted path like 'package.module.function'"
        )
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"verify_fn={path!r}: cannot import it ({error})") from None


# -- worker processes ------------------------------------------------------------------------------


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


class _Pool:
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


# -- the stage ------------------------------------------------------------------------------------


class Verifier:
    """Adds `correct`, `pred_answer` and `verify_status` to records with `response` and `answer`.

    Args:
        timeout: seconds one comparison may take (wall clock, enforced by killing the worker).
        workers: worker processes.
        verify_fn: dotted path of `fn(pred, gold) -> bool` comparing two answer strings
            (default: math-verify; `reasonft.verify.official.official_equal` for the official
            grader); raising counts as status "error".
        answer_rule: how the answer is read: "last_think" (the last box after the last
            `</think>`, the whole response without one) or "official" (no `</think>` ->
            status "no_think", incorrect; the last `\\boxed{}` between the first `</think>` and
            the next).
        start_method: "forkserver" (default, see the module doc), "spawn" or "fork".
        show_progress: draw a rich progress bar.
    """

    def __init__(
        self,
        timeout: float = 5.0,
        workers: int = 2,
        verify_fn: str = DEFAULT_VERIFY_FN,
        start_method: str = "forkserver",
        show_progress: bool = True,
        answer_rule: str = "last_think",
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"verify.timeout={timeout}: must be > 0 seconds")
        if int(workers) < 1:
            raise ValueError(f"verify.workers={workers}: must be >= 1")
        if start_method not in mp.get_all_start_methods():
            raise ValueError(
                f"verify.start_method={start_method!r}: choose from {mp.get_all_start_methods()}"
            )
        if answer_rule not in ANSWER_RULES:
            raise ValueError(
                f"verify.answer_rule={answer_rule!r}: choose one of {list(ANSWER_RULES)} "
                "(verify=official selects the official rule and comparison together)"
            )
        import_object(verify_fn)  # fail now, not in a worker
        if verify_fn == OFFICIAL_VERIFY_FN:
            _require_official_dependencies()
        self.answer_rule = answer_rule
        self.timeout = float(timeout)
        self.workers = int(workers)
        self.verify_fn = verify_fn
        self.start_method = start_method
        self.show_progress = show_progress
        self._kept: _Pool | None = None

    @contextmanager
    def kept_workers(self) -> Iterator[Verifier]:
        """Calls inside the block share one pool of workers, started and warmed up once, instead
        of a pool per call: for many small calls (an RL reward every step), where starting
        workers would cost more than verifying."""
        if self._kept is not None:
            yield self
            return
        self._kept = _Pool(self.workers, self.verify_fn, self.start_method, self.timeout)
        try:
            yield self
        finally:
            self._kept.close()
            self._kept = None

    @property
    def grader(self) -> str:
        """A short name for reports: "math_verify", "official", or the custom verify_fn."""
        if self.verify_fn == DEFAULT_VERIFY_FN and self.answer_rule == "last_think":
            return "math_verify"
        if self.verify_fn == OFFICIAL_VERIFY_FN and self.answer_rule == "official":
            return "official"
        if self.verify_fn == RL_VERIFY_FN and self.answer_rule == "after_last_think":
            return "rl"
        return f"{self.verify_fn}[{self.answer_rule}]"

    def __call__(
        self, records: datasets.Dataset | list[dict[str, Any]]
    ) -> tuple[Any, dict[str, Any]]:
        ds = as_dataset(records)
        require_columns(ds, ["response", "answer"], "verify")
        present = [c for c in VERIFY_COLUMNS if c in ds.column_names]
        if present:
            raise ValueError(
                f"verify: records already have {present}; remove those columns to verify again"
            )
        started = time.monotonic()
        n = len(ds)
        preds, golds, statuses = [""] * n, [""] * n, [""] * n
        notes: dict[int, str] = {}
        to_compare: list[int] = []
        for index, (response, gold) in enumerate(_pairs(ds)):
            pred, found = (
                read_answer(response, self.answer_rule) if isinstance(response, str)
                else (None, "no_answer")
            )
            preds[index] = pred or ""
            gold = "" if gold is None else str(gold).strip()
            golds[index] = gold
            if pred is None:
                statuses[index] = found
            elif not gold:
                statuses[index], notes[index] = "error", "empty gold answer"
            else:
                to_compare.append(index)

        # One comparison per accepted form of the gold answer (records may carry
        # `answer_alternatives`); a record is correct when any form matches, else it keeps the
        # status of its first form.
        alternatives = ds[ANSWER_ALTERNATIVES] if ANSWER_ALTERNATIVES in ds.column_names else None
        comparisons = [
            ((i, k), preds[i], form)
            for i in to_compare
            for k, form in enumerate(_forms(golds[i], alternatives[i] if alternatives else None))
        ]
        results: dict[int, dict[int, tuple[str, str]]] = defaultdict(dict)
        replaced = 0
        with _progress(self.show_progress) as bar:
            task = bar.add_task("verify", total=n - len(to_compare) + len(comparisons))
            bar.advance(task, n - len(to_compare))
            if comparisons:
                pool = self._kept or _Pool(
                    min(self.workers, len(comparisons)),
                    self.verify_fn,
                    self.start_method,
                    self.timeout,
                )
                replaced_before = pool.replaced
                try:
                    for (index, k), status, note in pool.run(iter(comparisons)):
                        results[index][k] = (status, note)
                        bar.advance(task)
                finally:
                    if pool is not self._kept:
                        pool.close()
                replaced = pool.replaced - replaced_before
        by_alternative = 0
        for index, forms in results.items():
            status, note = forms[0]
            if status != "correct" and any(s == "correct" for s, _ in forms.values()):
                status, note = "correct", ""
                by_alternative += 1
            statuses[index] = status
            if note:
                notes[index] = note

        correct = [s == "correct" for s in statuses]
        out = ds.add_column("correct", correct, feature=datasets.Value("bool"))
        out = out.add_column("pred_answer", preds, feature=datasets.Value("string"))
        out = out.add_column("verify_status", statuses, feature=datasets.Value("string"))
        report = self._report(ds, statuses, notes, replaced, time.monotonic() - started)
        report["correct_by_alternative_answer"] = by_alternative
        return like_input(out, records), report

    def _report(
        self,
        ds: datasets.Dataset,
        statuses: list[str],
        notes: dict[int, str],
        replaced: int,
        seconds: float,
    ) -> dict[str, Any]:
        counts = Counter(statuses)
        by_source: dict[str, Counter] = defaultdict(Counter)
        if "source" in ds.column_names:
            for source, status in zip(ds["source"], statuses, strict=True):
                by_source[str(source)][status] += 1
        ids = ds["prompt_id"] if "prompt_id" in ds.column_names else None
        examples = [
            {"row": i, "prompt_id": ids[i] if ids else None, "status": statuses[i], "message": note}
            for i, note in sorted(notes.items())[:_KEPT_EXAMPLES]
        ]
        n = len(statuses)
        return {
            "records": n,
            "accuracy": counts["correct"] / n if n else 0.0,
            "status": {s: counts[s] for s in STATUSES},
            "by_source": {
                src: {"records": sum(c.values()), **{s: c[s] for s in STATUSES}}
                for src, c in sorted(by_source.items())
            },
            "examples": examples,
            "workers_replaced": replaced,
            "timeout_s": self.timeout,
            "workers": self.workers,
            "verify_fn": self.verify_fn,
            "answer_rule": self.answer_rule,
            "grader": self.grader,
            "seconds": round(seconds, 3),
        }


def _require_official_dependencies() -> None:
    """The official grader reads LaTeX with pylatexenc: fail at start-up when it is missing."""
    try:
        importlib.import_module("pylatexenc.latex2text")
    except ImportError:
        raise ImportError(
            "verify=official (verify.verify_fn=reasonft.verify.official.official_equal) needs "
            "pylatexenc: `pip install pylatexenc` (a dependency of reasonft), or use verify=default"
        ) from None


def _forms(gold: str, alternatives: list[str] | None) -> list[str]:
    """The gold answer, then its other accepted forms (stripped, non-empty, distinct)."""
    forms = [gold]
    for form in alternatives or []:
        form = str(form).strip() if form is not None else ""
        if form and form not in forms:
            forms.append(form)
    return forms


def _pairs(ds: datasets.Dataset) -> Iterator[tuple[Any, Any]]:
    """(response, answer) per record, read in batches so large pools are not copied at once."""
    for batch in ds.select_columns(["response", "answer"]).iter(batch_size=1000):
        yield from zip(batch["response"], batch["answer"], strict=True)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
