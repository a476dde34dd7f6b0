"""The generation progress bar, with samples/s and tokens/s (both backends, held-out entropy)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def throughput_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def rate_text(samples: int, tokens: int, seconds: float) -> str:
    seconds = max(seconds, 1e-9)
    return f"{samples / seconds:.2f} samples/s · {tokens / seconds:.1f} tok/s"
