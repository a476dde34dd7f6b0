"""What a failed run prints: the cause first, naming the config key, and what to do.

A start-up error reaches `run.py` wrapped two or three times (the component's own error, Hydra's
`InstantiationException` around it with the `full_key` of the node that failed, start-up's
message naming the group), and Hydra would print each traceback before the one-line cause.
`stop` prints one short message instead — the key, the cause, a hint where one is known — and
the traceback only on request, by Hydra's convention: `HYDRA_FULL_ERROR=1` re-raises the error
untouched. In a multirun the job fails with the short message (a `CompactHydraException`, which
Hydra prints without a traceback) and the sweep goes on as Hydra's sweeper decides.

Every hint names an override that fixes that cause on its own (tests/test_errors.py applies
each one and starts the run again).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from hydra.errors import CompactHydraException, InstantiationException

FULL_ERROR = "HYDRA_FULL_ERROR"
TRACEBACK_HINT = f"(the traceback: {FULL_ERROR}=1 python run.py ...)"
# Known causes, matched on the innermost error's text (lower case).
_NO_GPU = ("no supported gpu backend", "can not run on your system since the accelerator is not available")


class RunFailed(CompactHydraException):
    """A sweep job's error in its short form (Hydra prints it without a traceback)."""


def full_error() -> bool:
    """Hydra's convention: the complete traceback when `HYDRA_FULL_ERROR=1`."""
    return os.environ.get(FULL_ERROR) == "1"


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and the errors it was raised from (`raise ... from`), outermost first."""
    chain = [err]
    while chain[-1].__cause__ is not None and chain[-1].__cause__ not in chain:
        chain.append(chain[-1].__cause__)
    return chain


def _full_key(err: InstantiationException) -> str | None:
    match = re.search(r"full_key: (\S+)", str(err))
    return match.group(1) if match else None


def _group_prefix(text: str) -> str | None:
    """`eval` of start-up's `eval: Error in call to target ...`."""
    match = re.match(r"([\w./@-]+): ", text)
    return match.group(1) if match else None


def _hint(key: str, cause: BaseException, overrides: Sequence[str]) -> tuple[str, str] | None:
    """(the first line, the hint) for a cause whose fix is known; None otherwise."""
    text = str(cause)
    lower = text.lower()
    if isinstance(cause, ImportError) and "vllm" in lower:
        if key == "generate":
            return f"{key}: {text}", "To sample with transformers instead: generate=hf"
        if key.endswith("eval.generator") and key.count(".") == 1:
            return f"{key}: {text}", "To evaluate with transformers instead: generate@eval.generator=hf"
        return f"{key}: {text}", ""
    if any(marker in lower for marker in _NO_GPU):
        if any(o.split("=", 1)[0] == "trainer.accelerator" for o in overrides):
            fix = "trainer.accelerator=cpu"
        else:
            fix = "trainer=default"
        first = f"trainer.accelerator: asks for a GPU and this machine has none (Lightning: {text.strip()})"
        return first, f"To train on the CPU instead: {fix}"
    return None


def cause_message(err: BaseException, overrides: Sequence[str] = ()) -> str:
    """The short form of `err`: first line `<key>: <cause>`, then the cause's other lines and a
    hint where one is known. `overrides`: the run's command-line overrides (a hint must work
    with them)."""
    chain = _chain(err)
    wrapped = [e for e in chain if isinstance(e, InstantiationException)]
    if wrapped:
        innermost = wrapped[-1]
        cause = innermost.__cause__ or innermost
        key = _full_key(innermost) or _group_prefix(str(err)) or "config"
    else:
        cause = err
        key = _group_prefix(str(err)) or ""
    known = _hint(key, chain[-1], overrides) or _hint(key, cause, overrides)
    if known is not None:
        first, hint = known
        return first + (f"\n{hint}" if hint else "")
    text = str(cause).strip() or type(cause).__name__
    if not isinstance(cause, (ValueError, TypeError, LookupError, OSError, ImportError, RuntimeError)):
        text = f"{type(cause).__name__}: {text}"
    if key and not text.startswith(key.split(".")[0]):
        text = f"{key}: {text}"
    return text


def stop(err: Exception, overrides: Sequence[str] = (), multirun: bool = False) -> None:
    """End a failed run: re-raise `err` when `HYDRA_FULL_ERROR=1`; in a multirun raise its short
    form (`RunFailed`, so the sweeper records the job as failed); else print the short form to
    stderr and exit with status 1."""
    if full_error():
        raise err
    message = cause_message(err, overrides)
    if multirun:
        raise RunFailed(f"{message}\n{TRACEBACK_HINT}") from None
    print(f"{message}\n{TRACEBACK_HINT}", file=sys.stderr)
    raise SystemExit(1)
