"""`Scorer`: add n_tokens, ppl, galp, lalp, step_logps and score_conditioning to records.

What is scored: the response text tokens (the ids `encode_example` gives the response, without
the terminator training appends), each predicted from the prompt (`condition_on_prompt=True`,
the prompt being `prompt_format.prompt_text(record["prompt"], tokenizer)`) or
from the response alone (`False`, the official OXA choice). Without a prompt the first token has
no context and is not scored, exactly as a causal LM's `labels=` loss on the response alone.
`n_tokens` is the number of response tokens (scored or not).

Length: prompt + response may hold at most `max_length` tokens (None: the model's
`max_position_embeddings`). A longer record is, as `overlength` says, "truncate"d (its first
`max_length` tokens are scored, the official OXA rule at 32,768; `n_tokens` keeps the full
response length and `n_scored_tokens` the response tokens inside the scored window), "drop"ped
(left out of the scored records) or an "error". Truncated and dropped records are counted in the
report and a warning.

Methods: "ppl" and "galp" run one full-prefix pass (`scoring.galp`) and fill `ppl` and `galp` (same pass);
"lalp" runs the windowed passes and fills `lalp` and `step_logps` (per-step local mean
log-probs); "all" fills everything, reusing the full-prefix pass's prompt cache and its token
log-probs for the steps whose window reaches back to the first step. Columns a method does not
compute hold null.

How LALP is computed (`lalp_pass`): "exact" re-encodes every step's window (`scoring.lalp`);
"banded" runs one masked pass over prompt + response (`scoring.banded`, an approximation at
GALP's cost; `band_positions` picks its position ids). The report records which. The numbers
the engines must give are `scoring.reference`'s.

Calling a Scorer returns (scored records, report); `report(results, ...)` is also what the
multi-process path (`scoring.predict`) reports from every rank's merged results.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import datasets
import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from reasonft.data.prompts import PromptFormat
from reasonft.data.records import SCORE_COLUMNS, as_dataset, require_columns
from reasonft.scoring import averages
from reasonft.scoring.banded import banded_token_logprobs, check_positions
from reasonft.scoring.batching import length_sorted_batches
from reasonft.scoring.columns import (
    CONDITIONING_COLUMN,
    GLOBAL_COLUMNS,
    LOCAL_COLUMNS,
    OUTPUT_FEATURES,
    attach_scores,
    summarize,
)
from reasonft.scoring.galp import global_token_logprobs
from reasonft.scoring.lalp import WindowSpec, check_window, local_token_logprobs, window_size
from reasonft.scoring.steps import StepSplitter, as_splitter
from reasonft.scoring.token_steps import ScoringExample, ensure_scored_token, token_step_ids

log = logging.getLogger(__name__)

METHODS = ("ppl", "galp", "lalp", "all")
# float64: PPL = exp(-GALP), means in float64; official_bf16: the official PPL script's
# rounding of the per-token loss, its sum and its mean to bfloat16 (averages.ppl_official_bf16).
PPL_NUMERICS = ("float64", "official_bf16")
OVERLENGTH = ("truncate", "drop", "error")
LALP_PASSES = ("exact", "banded")
ENCODE_BLOCK = 2048  # records tokenised (and length-sorted) together


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _TokensPerSecond(ProgressColumn):
    def render(self, task: Any) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.fields.get("tokens", 0) / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} tok/s", style="progress.data.speed")


class Scorer:
    """Score records with a frozen causal LM: PPL, GALP, LALP (METHODS.md §1a, §2a).

    Args:
        method: "ppl" | "galp" (full-prefix pass: ppl and galp), "lalp" (lalp, step_logps), "all".
        window: LALP window: integer k previous steps, or a fraction f in (0, 1] of them.
        steps: step splitter (object, `_target_` mapping, or a conf/score/steps/<name>.yaml name).
        condition_on_prompt: score given the prompt (True) or the response text alone (False).
        batch_tokens: most padded tokens per forward pass.
        chunk_tokens: rows projected to the vocabulary at a time.
        prompt_format: how the prompt text is built (`PromptFormat.from_config(cfg.data)`).
        window_rounding: "ceil" or "floor" for fractional windows (see `scoring.lalp`).
        max_length: most prompt + response tokens scored; None = the model's
            `max_position_embeddings`.
        overlength: "truncate" | "drop" | "error" for a longer record (see the module doc).
        progress: show a rich progress bar with tokens/s.
        lalp_pass: "exact" (every window re-encoded) or "banded" (one masked pass, approximate).
        band_positions: the banded pass's position ids, "global" or "local" (`scoring.banded`).
        ppl_numerics: "float64" (PPL = exp(-GALP)) or "official_bf16" (the official script's
            bfloat16 loss, sum and mean: PPLs as it writes them, for record-identical selection).
    """

    def __init__(
        self,
        method: str = "lalp",
        window: WindowSpec = 4,
        steps: StepSplitter | str | dict = "paragraph",
        condition_on_prompt: bool = True,
        batch_tokens: int = 16384,
        chunk_tokens: int = 1024,
        prompt_format: PromptFormat | None = None,
        window_rounding: str = "ceil",
        max_length: int | None = None,
        overlength: str = "truncate",
        progress: bool = True,
        lalp_pass: str = "exact",
        band_positions: str = "global",
        ppl_numerics: str = "float64",
    ) -> None:
        if ppl_numerics not in PPL_NUMERICS:
            raise ValueError(f"score.ppl_numerics={ppl_numerics!r}: choose one of {PPL_NUMERICS}")
        self.ppl_numerics = ppl_numerics
        if method not in METHODS:
            raise ValueError(f"score.method={method!r}: choose one of {METHODS}")
        if overlength not in OVERLENGTH:
            raise ValueError(f"score.overlength={overlength!r}: choose one of {OVERLENGTH}")
        if max_length is not None and (isinstance(max_length, bool) or int(max_length) < 2):
            raise ValueError(
                f"score.max_length={max_length!r}: give a token count >= 2, or null for the "
                "model's max_position_embeddings"
            )
        check_window(window, window_rounding)
        if lalp_pass not in LALP_PASSES:
            raise ValueError(f"score.lalp_pass={lalp_pass!r}: choose one of {LALP_PASSES}")
        check_positions(band_positions)
        if batch_tokens < 1 or chunk_tokens < 1:
            raise ValueError(
                f"score.batch_tokens={batch_tokens}, score.chunk_tokens={chunk_tokens}: must be >= 1"
            )
        self.method = method
        self.window = window
        self.window_rounding = window_rounding
        self.steps = as_splitter(steps)
        self.condition_on_prompt = bool(condition_on_prompt)
        self.batch_tokens = batch_tokens
        self.chunk_tokens = chunk_tokens
        self.max_length = None if max_length is None else int(max_length)
        self.overlength = overlength
        self.prompt_format = PromptFormat.coerce(prompt_format)
        self.progress = progress
        self.lalp_pass = lalp_pass
        self.band_positions = band_positions

    @property
    def needs_global(self) -> bool:
        return self.method in ("ppl", "galp", "all")

    @property
    def needs_local(self) -> bool:
        return self.method in ("lalp", "all")

    @property
    def produces(self) -> frozenset[str]:
        """The columns this scorer fills with values (the others of OUTPUT_FEATURES hold null)."""
        return frozenset(
            {
                "n_tokens",
                "n_scored_tokens",
                CONDITIONING_COLUMN,
                *(GLOBAL_COLUMNS if self.needs_global else ()),
                *(LOCAL_COLUMNS if self.needs_local else ()),
            }
        )

    def with_columns(self, columns: Iterable[str]) -> Scorer:
        """A scorer like this one whose method also fills `columns` (this one if it already does).

        E.g. `Scorer(method="lalp").with_columns({"galp"})` scores with method "all".
        """
        wanted = set(columns)
        unknown = sorted(wanted - set(OUTPUT_FEATURES))
        if unknown:
            raise ValueError(
                f"score: no method produces {unknown}; score columns: {list(OUTPUT_FEATURES)}"
            )
        if wanted <= self.produces:
            return self
        needs_global = self.needs_global or bool(wanted & set(GLOBAL_COLUMNS))
        needs_local = self.needs_local or bool(wanted & set(LOCAL_COLUMNS))
        widened = copy.copy(self)
        widened.method = "all" if needs_global and needs_local else ("lalp" if needs_local else "galp")
        return widened

    def resolve_max_length(self, model: torch.nn.Module) -> int:
        """`max_length`, or the model's `max_position_embeddings` when it is None."""
        if self.max_length is not None:
            return self.max_length
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if not limit:
            raise ValueError(
                "score.max_length is null and the model's config has no max_position_embeddings; "
                "set score.max_length to the longest prompt + response to score"
            )
        return int(limit)

    @property
    def conditioning(self) -> str:
        return "prompt" if self.condition_on_prompt else "none"

    # ---------------------------------------------------------------- encoding
    def check_records(self, ds: datasets.Dataset) -> None:
        require_columns(
            ds, ["prompt", "response"] if self.condition_on_prompt else ["response"], "score"
        )
        present = [c for c in (*SCORE_COLUMNS, CONDITIONING_COLUMN) if c in ds.column_names]
        if present:
            raise ValueError(
                f"score: records already carry {present}; a stage never rewrites earlier columns. "
                "Score the records as they came out of verify (drop these columns first)."
            )

    def encode(
        self, records: Sequence[dict[str, Any]], indices: Sequence[int], tokenizer: Any
    ) -> list[ScoringExample]:
        """Tokenise records (rows `indices` of the dataset) into ScoringExamples."""
        responses = [r["response"] for r in records]
        enc = tokenizer(responses, add_special_tokens=False, return_offsets_mapping=True)
        if self.condition_on_prompt:
            texts = [
                self.prompt_format.prompt_text(r["prompt"], tokenizer) for r in records
            ]
            prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        else:
            prompt_ids = [[] for _ in records]
        examples = []
        for record, index, ids, offsets, p_ids in zip(
            records, indices, enc["input_ids"], enc["offset_mapping"], prompt_ids
        ):
            if self.condition_on_prompt and not p_ids:
                raise ValueError(
                    f"score: row {index} (prompt_id={record.get('prompt_id')!r}) renders to an empty prompt"
                )
            token_step, merged = None, 0
            if self.needs_local and ids:
                try:
                    steps = self.steps(record["response"], record)
                except ValueError as err:
                    raise ValueError(f"score: row {index}: {err}") from err
                token_step, merged = token_step_ids(offsets, steps)
                token_step, more = ensure_scored_token(
                    token_step,
                    lambda i: window_size(i, self.window, self.window_rounding),
                    bool(p_ids),
                )
                merged += more
            examples.append(
                ScoringExample(
                    index=index,
                    prompt_ids=np.asarray(p_ids, dtype=np.int64),
                    response_ids=np.asarray(ids, dtype=np.int64),
                    token_step=token_step,
                    merged_steps=merged,
                )
            )
        return examples

    def batches(
        self, ds: datasets.Dataset, tokenizer: Any, indices: Sequence[int] | None = None
    ) -> Iterator[list[ScoringExample]]:
        """Length-sorted batches (within blocks of records) of the rows `indices` (default all)."""
        indices = list(range(len(ds))) if indices is None else list(indices)
        for start in range(0, len(indices), ENCODE_BLOCK):
            block = indices[start : start + ENCODE_BLOCK]
            examples = self.encode(ds.select(block).to_list(), block, tokenizer)
            lengths = [len(ex.prompt_ids) + len(ex.response_ids) for ex in examples]
            for batch in length_sorted_batches(lengths, self.batch_tokens):
                yield [examples[i] for i in batch]

    # ---------------------------------------------------------------- scoring
    def scorable(self, ex: ScoringExample) -> bool:
        """At least one token with something before it."""
        return len(ex.response_ids) > (0 if len(ex.prompt_ids) else 1)

    def score_batch(
        self, examples: Sequence[ScoringExample], model: torch.nn.Module
    ) -> list[dict[str, Any]]:
        """Score one batch; returns one dict of score columns (plus `index`) per example.

        Over-length examples are truncated, marked dropped or refused here (`overlength`).
        """
        limit = self.resolve_max_length(model)
        n_tokens = {ex.index: len(ex.response_ids) for ex in examples}
        status: dict[int, str] = {}
        fitted: list[ScoringExample] = []
        for ex in examples:
            if len(ex.prompt_ids) + len(ex.response_ids) <= limit:
                fitted.append(ex)
            elif self.overlength == "error":
                raise ValueError(
                    f"score: row {ex.index} holds {len(ex.prompt_ids)} prompt + "
                    f"{len(ex.response_ids)} response tokens, more than score.max_length={limit}; "
                    "set score.overlength=truncate (score the first max_length tokens) or drop, "
                    "or raise score.max_length"
                )
            elif self.overlength == "drop":
                status[ex.index] = "dropped"
            else:
                status[ex.index] = "truncated"
                fitted.append(self.truncate(ex, limit))
        examples = fitted
        todo = [ex for ex in examples if self.scorable(ex)]
        global_logps: dict[int, np.ndarray] = {}
        local_logps: dict[int, np.ndarray] = {}
        if todo:
            with torch.inference_mode(), _eval_mode(model):
                full, context = None, None
                if self.needs_global:
                    full, context = global_token_logprobs(
                        model, todo, self.chunk_tokens, keep_context=self.needs_local
                    )
                    global_logps = {ex.index: lp for ex, lp in zip(todo, full)}
                if self.needs_local and self.lalp_pass == "banded":
                    local = banded_token_logprobs(
                        model,
                        todo,
                        self.window,
                        self.window_rounding,
                        self.band_positions,
                        self.chunk_tokens,
                    )
                    local_logps = {ex.index: lp for ex, lp in zip(todo, local)}
                elif self.needs_local:
                    local = local_token_logprobs(
                        model,
                        todo,
                        self.window,
                        self.window_rounding,
                        self.batch_tokens,
                        self.chunk_tokens,
                        context=context,
                        full_prefix_logps=full,
                    )
                    local_logps = {ex.index: lp for ex, lp in zip(todo, local)}
        results = [
            self._result(
                ex,
                global_logps.get(ex.index),
                local_logps.get(ex.index),
                n_tokens[ex.index],
                status.get(ex.index),
            )
            for ex in examples
        ]
        results.extend(
            self._dropped(index, n_tokens[index]) for index, s in status.items() if s == "dropped"
        )
        return results

    def truncate(self, ex: ScoringExample, limit: int) -> ScoringExample:
        """`ex` with only the response tokens that fit after its prompt in `limit` tokens."""
        keep = max(0, limit - len(ex.prompt_ids))
        token_step, merged = ex.token_step, 0
        if token_step is not None:
            token_step, merged = ensure_scored_token(
                token_step[:keep],
                lambda i: window_size(i, self.window, self.window_rounding),
                len(ex.prompt_ids) > 0,
            )
        return ScoringExample(
            index=ex.index,
            prompt_ids=ex.prompt_ids,
            response_ids=ex.response_ids[:keep],
            token_step=token_step,
            merged_steps=ex.merged_steps + merged,
        )

    def _dropped(self, index: int, n_tokens: int) -> dict[str, Any]:
        return {
            "index": index,
            "n_tokens": n_tokens,
            "n_scored_tokens": 0,
            **dict.fromkeys(("ppl", "galp", "lalp", "step_logps")),
            CONDITIONING_COLUMN: self.conditioning,
            "merged_steps": 0,
            "n_steps": 0,
            "overlength": "dropped",
        }

    def _result(
        self,
        ex: ScoringExample,
        global_lp: np.ndarray | None,
        local_lp: np.ndarray | None,
        n_tokens: int,
        overlength: str | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "index": ex.index,
            "n_tokens": n_tokens,
            "n_scored_tokens": len(ex.response_ids),
            "ppl": None,
            "galp": None,
            "lalp": None,
            "step_logps": None,
            CONDITIONING_COLUMN: self.conditioning,
            "merged_steps": ex.merged_steps,
            "n_steps": ex.n_steps,
            "overlength": overlength,
        }
        if global_lp is not None:
            result["galp"] = averages.galp(global_lp)
            result["ppl"] = (
                averages.ppl_official_bf16(global_lp)
                if self.ppl_numerics == "official_bf16"
                else averages.ppl_from_galp(result["galp"])
            )
        if local_lp is not None:
            result["step_logps"] = averages.step_means(local_lp, ex.token_step, ex.n_steps)
            result["lalp"] = averages.lalp(result["step_logps"])
        return result

    def __call__(
        self, ds: datasets.Dataset | list[dict[str, Any]], model: torch.nn.Module, tokenizer: Any
    ) -> tuple[datasets.Dataset, dict[str, Any]]:
        """Score every record; returns (the records with the score columns added, same order,
        less any record dropped for its length; the run's report)."""
        ds = as_dataset(ds)
        self.resolve_max_length(model)
        self.check_records(ds)
        results: list[dict[str, Any]] = []
        columns = [
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("records"),
            _TokensPerSecond(),
            TimeElapsedColumn(),
        ]
        with Progress(
            TextColumn(f"score {self.method}"), *columns, disable=not self.progress
        ) as bar:
            task = bar.add_task("score", total=len(ds), tokens=0)
            tokens, started = 0, time.perf_counter()
            for batch in self.batches(ds, tokenizer):
                results.extend(self.score_batch(batch, model))
                tokens += sum(len(ex.response_ids) for ex in batch)
                bar.update(task, advance=len(batch), tokens=tokens)
        report = self.report(results, model, time.perf_counter() - started)
        return attach_scores(ds, results), report

    def report(
        self, results: Sequence[dict[str, Any]], model: torch.nn.Module, seconds: float
    ) -> dict[str, Any]:
        """The stage report of a run's results (from one process or merged from every rank);
        records longer than `max_length` are also said in a warning."""
        limit = self.resolve_max_length(model)
        report = {
            "method": self.method,
            **(
                {"lalp_pass": self.lalp_pass, "window": self.window}
                if self.needs_local
                else {}
            ),
            "ppl_numerics": self.ppl_numerics,
            "max_length": limit,
            "overlength": self.overlength,
            **summarize(results),
            "seconds": round(seconds, 3),
        }
        if report["truncated"] or report["dropped"]:
            log.warning(
                "score: records longer than score.max_length=%d prompt + response tokens: %d "
                "truncated, %d dropped (score.overlength=%s; the longest response has %d tokens)",
                limit,
                report["truncated"],
                report["dropped"],
                self.overlength,
                report["longest_response_tokens"],
            )
        return report
