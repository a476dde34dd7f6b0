"""What both generation backends make of the generated tokens: the response cut at its stop token,
and the sample records."""

from __future__ import annotations

from collections.abc import Sequence

import datasets

from reasonft.data.records import ANSWER_ALTERNATIVES
from reasonft.generation.inputs import PROBLEM_COLUMNS

# Problem columns that go along into the sample records when present.
CARRIED_COLUMNS = (ANSWER_ALTERNATIVES,)


def cut_at_stop(ids: Sequence[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """The response tokens before the first stop token, and whether a stop token was reached."""
    for i, token in enumerate(ids):
        if token in stop_ids:
            return list(ids[:i]), True
    return list(ids), False


def sample_records(
    problems: datasets.Dataset,
    order: Sequence[tuple[int, int]],
    outputs: dict[tuple[int, int], tuple[str, int, str]],
    source: str,
) -> datasets.Dataset:
    """Records in problem order then sample order; `outputs[(row, s)] = (text, tokens, reason)`.
    The problems' other accepted answer forms (`answer_alternatives`) go along when present."""
    carried = [*PROBLEM_COLUMNS, *[c for c in CARRIED_COLUMNS if c in problems.column_names]]
    columns = {c: list(problems[c]) for c in carried}
    rows = []
    for row, s in order:
        text, n_tokens, reason = outputs[(row, s)]
        rows.append(
            {
                **{c: columns[c][row] for c in carried},
                "response": text,
                "source": source,
                "sample_idx": s,
                "gen_tokens": n_tokens,
                "finish_reason": reason,
            }
        )
    return datasets.Dataset.from_list(rows)
