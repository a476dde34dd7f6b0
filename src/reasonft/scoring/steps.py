"""Step splitters: cut a response into contiguous steps that concatenate to exactly the response.

Each splitter is a small callable `splitter(response, record) -> list[str]` built by Hydra from
`conf/score/steps/<name>.yaml` (the config group is the registry). Separators stay attached to
the step they end (a paragraph keeps its trailing blank line), so `"".join(steps) == response`
always holds. Pieces that hold only whitespace (e.g. leading blank lines) are merged into the
next step (the last into the one before), so no step is whitespace alone unless the whole
response is. An empty response has no steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

StepSplitter = Callable[[str, Mapping[str, Any]], list[str]]


def split_at(text: str, boundaries: list[int]) -> list[str]:
    """Cut `text` at the given character positions, merging whitespace-only pieces forward."""
    cuts = sorted({b for b in boundaries if 0 < b < len(text)})
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])] if text else []
    steps: list[str] = []
    pending = ""
    for piece in pieces:
        pending += piece
        if pending.strip():
            steps.append(pending)
            pending = ""
    if pending:
        if steps:
            steps[-1] += pending
        else:
            steps.append(pending)
    return steps


class RegexSteps:
    """Split after every match of `pattern` (the match stays with the step it ends).

    A zero-width pattern such as `(?m)^(?=Step \\d)` therefore splits *before* the text the
    lookahead sees. Python `re` syntax; inline flags like `(?m)` are allowed.
    """

    def __init__(self, pattern: str) -> None:
        try:
            self.regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(
                f"score.steps.pattern={pattern!r} is not a valid regex: {err}"
            ) from err
        self.pattern = pattern

    def __call__(self, response: str, record: Mapping[str, Any] | None = None) -> list[str]:
        return split_at(response, [m.end() for m in self.regex.finditer(response)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pattern!r})"


class ParagraphSteps(RegexSteps):
    """Paragraphs: split after every run of line breaks that contains a blank line."""

    def __init__(self) -> None:
        super().__init__(r"\r?\n(?:[ \t\f\v]*\r?\n)+")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NewlineSteps(RegexSteps):
    """Lines: split after every run of line breaks."""

    def __init__(self) -> None:
        super().__init__(r"(?:\r?\n)+")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SentenceSteps(RegexSteps):
    """Sentences: split after `.`, `!`, `?` (with closing quotes/brackets) when whitespace or the
    end follows, keeping that whitespace; and after every run of line breaks. "3.5" stays whole."""

    def __init__(self) -> None:
        super().__init__(
            r"[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*(?:[ \t]+|(?=\r?\n)|\Z)(?:\r?\n)*"
            r"|(?:\r?\n)+"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FieldSteps:
    """Pre-segmented steps from the record's `column` (a list of strings), accepted as they are.

    They must concatenate to exactly the response; otherwise a ValueError says where they differ.
    """

    def __init__(self, column: str = "steps") -> None:
        self.column = column

    def __call__(self, response: str, record: Mapping[str, Any]) -> list[str]:
        where = _record_name(record)
        if self.column not in record or record[self.column] is None:
            raise ValueError(
                f"{where}: step splitter `field` needs a `{self.column}` list in every record; "
                "it is missing. Choose another splitter (score/steps=paragraph) or add the column."
            )
        steps = record[self.column]
        if isinstance(steps, str) or not all(isinstance(s, str) for s in steps):
            raise ValueError(
                f"{where}: `{self.column}` must be a list of strings, got {type(steps).__name__}"
            )
        steps = list(steps)
        joined = "".join(steps)
        if joined != response:
            pos = next(
                (i for i, (a, b) in enumerate(zip(joined, response)) if a != b),
                min(len(joined), len(response)),
            )
            raise ValueError(
                f"{where}: the {len(steps)} `{self.column}` do not concatenate to the response "
                f"(joined length {len(joined)}, response length {len(response)}; first difference at "
                f"character {pos}: steps give {joined[pos : pos + 20]!r}, response has "
                f"{response[pos : pos + 20]!r}). Steps must be contiguous, separators included."
            )
        return steps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.column!r})"


def _record_name(record: Mapping[str, Any]) -> str:
    parts = [
        f"{key}={record[key]!r}" for key in ("prompt_id", "source", "sample_idx") if key in record
    ]
    return "record " + (", ".join(parts) if parts else "(no prompt_id)")


def splitter_from_config(name: str, **overrides: Any) -> StepSplitter:
    """Build the splitter named by `conf/score/steps/<name>.yaml` (keys overridable)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from reasonft.config import CONF_DIR

    folder = CONF_DIR / "score" / "steps"
    path = folder / f"{name}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"steps={name!r}: no {path}; choose one of {options}")
    cfg = OmegaConf.merge(OmegaConf.load(path), overrides)
    return instantiate(cfg)


def as_splitter(steps: str | Mapping[str, Any] | StepSplitter) -> StepSplitter:
    """A splitter from a config name, a `_target_` mapping, or a splitter object."""
    if isinstance(steps, str):
        return splitter_from_config(steps)
    if isinstance(steps, Mapping):
        from hydra.utils import instantiate

        return instantiate(dict(steps))
    if not callable(steps):
        raise TypeError(f"steps={steps!r}: give a config name, a `_target_` mapping or a splitter")
    return steps
