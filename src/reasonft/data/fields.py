"""Field mapping: turn one raw source record (any shape) into the values of the record schema.

A mapping names, for each record column, where its value sits in the source record: a dotted
path with list indices written either way — `reward_model.ground_truth`, `prompt.0.content`,
`prompt[0].content`, `messages[-1].content`. Values are then normalised per column: a chat
message list becomes the user's text, list and numeric answers become one answer string.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Columns a mapping may fill, and the type each one ends up with.
STRING_COLUMNS = ("prompt_id", "prompt", "answer", "response", "source")
MAPPABLE_COLUMNS = (*STRING_COLUMNS, "steps", "sample_idx")
REQUIRED_COLUMNS = ("prompt", "answer")

_INDEX = re.compile(r"\[(-?\d+)\]")
_SEGMENT = re.compile(r"^([^\[\]]*)((?:\[-?\d+\])*)$")


class FieldError(ValueError):
    """A record's field is missing or has a value that cannot become its column."""


@dataclass(frozen=True)
class FieldPath:
    """A parsed dotted path: keys (str) and list indices (int) applied in order."""

    text: str
    parts: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> FieldPath:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"field path {text!r}: expected a non-empty string like 'a.b[0].c'")
        parts: list[str | int] = []
        for segment in text.strip().split("."):
            match = _SEGMENT.match(segment)
            if match is None or (not match.group(1) and not match.group(2)):
                raise ValueError(f"field path {text!r}: cannot read segment {segment!r}")
            key, indices = match.groups()
            if key:
                parts.append(int(key) if _is_int(key) else key)
            parts.extend(int(i) for i in _INDEX.findall(indices))
        return cls(text=text.strip(), parts=tuple(parts))

    def resolve(self, record: Any) -> Any:
        """The value at this path; FieldError says which step failed and what was there."""
        value = record
        walked = ""
        for part in self.parts:
            value = _step(value, part, walked or "the record")
            walked = (
                f"{walked}[{part}]"
                if isinstance(part, int)
                else (f"{walked}.{part}" if walked else part)
            )
        if value is None:
            raise FieldError(f"'{self.text}' is null")
        return value


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"-?\d+", text))


def _step(value: Any, part: str | int, where: str) -> Any:
    if isinstance(value, Mapping):
        key = str(part)
        if key not in value:
            shown = ", ".join(map(str, list(value)[:12]))
            raise FieldError(f"key '{key}' not found in {where} (keys: {shown})")
        return value[key]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if not isinstance(part, int):
            raise FieldError(f"{where} is a list; expected an index, got key '{part}'")
        if not -len(value) <= part < len(value):
            raise FieldError(f"index {part} out of range for {where} (a list of {len(value)})")
        return value[part]
    if value is None:
        raise FieldError(f"{where} is null; cannot take '{part}'")
    raise FieldError(f"{where} is a {type(value).__name__}; cannot take '{part}'")


# -- normalisation per column ----------------------------------------------------------------


def message_content(value: Any, role: str) -> str:
    """Text of a chat-style value: a string, one message {role, content}, or a message list.

    From a list, the content of the last message with `role` (the user turn for prompts, the
    assistant turn for responses) is taken.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        content = value.get("content")
        if not isinstance(content, str):
            raise FieldError(
                f"message has no string 'content' (keys: {', '.join(map(str, value))})"
            )
        return content
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        if not all(isinstance(m, Mapping) for m in value):
            raise FieldError(
                f"expected a string or a list of {{role, content}} messages, got {_short(value)}"
            )
        matching = [m for m in value if m.get("role") == role]
        if not matching:
            roles = sorted({str(m.get("role")) for m in value})
            raise FieldError(f"message list has no '{role}' message (roles: {', '.join(roles)})")
        return message_content(matching[-1], role)
    raise FieldError(f"expected text or chat messages, got a {type(value).__name__}")


@dataclass(frozen=True)
class Answer:
    """A normalised gold answer: `text`, and every distinct accepted form (`text` first)."""

    text: str
    forms: tuple[str, ...] = ()

    @property
    def alternatives(self) -> tuple[str, ...]:
        """The accepted forms other than `text`."""
        return tuple(f for f in self.forms if f != self.text)


def normalize_answer(value: Any) -> Answer:
    """One answer string from a string, a number or a list of accepted forms.

    Strings are stripped; integral numbers lose their `.0` (142.0 -> "142"); other floats keep
    their shortest exact form (0.5 -> "0.5"). A list of accepted forms (Minerva: ["0.01\\n",
    "0.02\\n"]) gives its first non-empty element as `text` and the other distinct ones as
    `alternatives` (a prediction matching any of them is correct).
    """
    if isinstance(value, bool):
        raise FieldError(f"answer is a boolean ({value}); expected text or a number")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise FieldError("answer is empty")
        return Answer(text, (text,))
    if isinstance(value, int):
        return Answer(str(value), (str(value),))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FieldError(f"answer is {value}; expected a finite number")
        text = str(int(value)) if value.is_integer() else repr(value)
        return Answer(text, (text,))
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        forms: list[str] = []
        for item in value:
            if isinstance(item, (list, tuple, dict)):
                raise FieldError(
                    f"answer list holds a {type(item).__name__}; expected strings or numbers"
                )
            text = normalize_answer(item).text if item is not None and str(item).strip() else ""
            if text and text not in forms:
                forms.append(text)
        if not forms:
            raise FieldError(f"answer list {_short(value)} has no non-empty element")
        return Answer(forms[0], tuple(forms))
    raise FieldError(f"answer is a {type(value).__name__}; expected text, a number or a list")


def normalize_text(value: Any, column: str) -> str:
    """A non-empty string column (response, source)."""
    text = message_content(value, "assistant") if column == "response" else value
    if not isinstance(text, str):
        raise FieldError(f"{column} is a {type(text).__name__}; expected text")
    if column == "source":
        text = text.strip()
    if not text.strip():
        raise FieldError(f"{column} is empty")
    return text


PROMPT_TEXT_NORMALISATION = "Unicode NFC, every whitespace run (str.isspace) -> one space, stripped"


def normalize_prompt_text(text: str) -> str:
    """The form in which two prompt texts are compared (PROMPT_TEXT_NORMALISATION).

    Joins and prompt-id checks compare this form, so a trailing space, a doubled space, CRLF
    line ends or a composed vs decomposed accent never split one problem into two.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def normalize_prompt_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FieldError(f"prompt_id is a {type(value).__name__}; expected text or an integer")
    text = str(value).strip()
    if not text:
        raise FieldError("prompt_id is empty")
    return text


def normalize_steps(value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise FieldError(f"steps is a {type(value).__name__}; expected a list of strings")
    bad = [i for i, s in enumerate(value) if not isinstance(s, str)]
    if bad:
        raise FieldError(f"steps[{bad[0]}] is a {type(value[bad[0]]).__name__}; expected a string")
    if not value:
        raise FieldError("steps is an empty list")
    return list(value)


def normalize_sample_idx(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"sample_idx is a {type(value).__name__}; expected an integer")
    return value


def normalize_value(column: str, value: Any) -> Any:
    """The value of `column` from a raw field value (answers: use `normalize_answer`)."""
    if column == "prompt":
        text = message_content(value, "user")
        if not text.strip():
            raise FieldError("prompt is empty")
        return text
    if column == "answer":
        return normalize_answer(value).text
    if column == "prompt_id":
        return normalize_prompt_id(value)
    if column == "steps":
        return normalize_steps(value)
    if column == "sample_idx":
        return normalize_sample_idx(value)
    return normalize_text(value, column)


def parse_mapping(fields: Mapping[str, str]) -> dict[str, FieldPath]:
    """Check a column -> path mapping and parse its paths; errors name the key to fix."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"fields must map record columns to paths, got {type(fields).__name__}")
    unknown = [c for c in fields if c not in MAPPABLE_COLUMNS]
    if unknown:
        raise ValueError(
            f"fields: unknown column(s) {unknown}; a mapping may set {list(MAPPABLE_COLUMNS)}"
        )
    return {column: FieldPath.parse(path) for column, path in fields.items() if path is not None}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
