"""The exact text a stage fed the model, for a few records: `prompts.md` in its artifact (and so
in the run folder), so that a wrong instruction, a leftover system prompt or a wrong terminator is
seen in the first run rather than inferred from its accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reasonft.data.prompts import PromptFormat

FILE = "prompts.md"


def write_prompt_examples(
    path: str | Path,
    stage: str,
    problems: Sequence[str],
    prompt_format: PromptFormat,
    tokenizer: Any,
    responses: Sequence[str] | None = None,
    n: int = 3,
) -> None:
    """Append to `path` (`prompts.md`) the rendered prompt of the first `n` problems, with their
    response and terminator when the stage reads one (scoring, training)."""
    lines = [f"## {stage}", "", f"prompt format: `{prompt_format.as_dict()}`", ""]
    for i, problem in enumerate(list(problems)[:n]):
        text = prompt_format.prompt_text(problem, tokenizer)
        if responses is not None:
            text += responses[i] + prompt_format.response_terminator(tokenizer)
        lines += [f"### record {i}", "", "````text", text, "````", "", f"as a string: `{text!r}`", ""]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
