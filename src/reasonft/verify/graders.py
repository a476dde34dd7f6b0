"""The graders: how the answer is read out of a response (the answer rule) and which function
compares it with the gold answer (`verify_fn`), with the names reports give them."""

from __future__ import annotations

import importlib
from typing import Any

from reasonft.verify.extract import extract_answer
from reasonft.verify.official import official_extract
from reasonft.verify.rl_reward import rl_extract

# Paths as the configs write them (conf/verify/*.yaml): artifact keys hash these strings, so
# math_equal keeps its historical address in reasonft.verify.verifier.
DEFAULT_VERIFY_FN = "reasonft.verify.verifier.math_equal"
OFFICIAL_VERIFY_FN = "reasonft.verify.official.official_equal"
RL_VERIFY_FN = "reasonft.verify.rl_reward.rl_equal"
# How the answer is read out of a response: this project's rule (the last box after the last
# `</think>`, the whole response without one), the official OXA evaluation's (reasonft.verify.official)
# or the official RL reward's (`after_last_think`: `</think>` required, the text after the last one;
# reasonft.verify.rl_reward).
ANSWER_RULES = ("last_think", "official", "after_last_think")
GRADERS = ("math_verify", "official", "rl")


def read_answer(response: str, answer_rule: str) -> tuple[str | None, str]:
    """(answer, status) by `answer_rule`: status "ok", "no_answer" or (official) "no_think"."""
    if answer_rule == "official":
        return official_extract(response)
    if answer_rule == "after_last_think":
        return rl_extract(response)
    answer = extract_answer(response)
    return (None, "no_answer") if answer is None else (answer, "ok")


def grader_name(verify_fn: str, answer_rule: str) -> str:
    """A short name for reports: "math_verify", "official", "rl", or the custom pair."""
    if verify_fn == DEFAULT_VERIFY_FN and answer_rule == "last_think":
        return "math_verify"
    if verify_fn == OFFICIAL_VERIFY_FN and answer_rule == "official":
        return "official"
    if verify_fn == RL_VERIFY_FN and answer_rule == "after_last_think":
        return "rl"
    return f"{verify_fn}[{answer_rule}]"


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


def require_official_dependencies() -> None:
    """The official grader reads LaTeX with pylatexenc: fail at start-up when it is missing."""
    try:
        importlib.import_module("pylatexenc.latex2text")
    except ImportError:
        raise ImportError(
            "verify=official (verify.verify_fn=reasonft.verify.official.official_equal) needs "
            "pylatexenc: `pip install pylatexenc` (a dependency of reasonft), or use verify=default"
        ) from None
