"""`Scorer`: add n_tokens, ppl, galp, lalp, step_logps and score_conditioning to records.

What is scored: the response text tokens (the ids `encode_example` gives the response, without
the terminator training appends), each predicted from the prompt (`condition_on_prompt=True`,
the prompt being `prompt_format.prompt_text(record["prompt"], tokenizer)`) or
from the response alone (`False`, the official OXA choice). Without a prompt the first token has
no context and is not scored, exactly as a causal LM's `labels=` loss on the response alone.
`n_tokens` is the number of response tokens (scored or not).

Methods: "ppl" and "galp" run one full-prefix pass and fill `ppl` and `galp` (same pass);
"lalp" runs the windowed passes and fills `lalp` and `step_logps` (per-step local mean
log-probs); "all" fills everything, reusing the full-prefix pass's prompt cache and its token
log-probs for the steps whose window reaches back to the first step. Columns a method does not
compute hold null.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
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
from transformers import DynamicCache

from reasonft.data.prompts import PromptFormat
from reasonft.data.records import SCORE_COLUMNS, as_dataset, require_columns
from reasonft.scoring import scores
from reasonft.scoring.batching import length_sorted_batches, pad_right
from reasonft.scoring.lalp import (
    PromptContext,
    WindowSpec,
    check_window,
    context_from_cache,
    local_token_logprobs,
    window_size,
)
from reasonft.scoring.logprobs import logprobs_from_hidden
from reasonft.scoring.steps import StepSplitter, as_splitter
from reasonft.scoring.token_steps import ScoringExample, ensure_scored_token, token_step_ids

METHODS = ("ppl", "galp", "lalp", "all")
CONDITIONING_COLUMN = "score_conditioning"
OUTPUT_FEATURES = {
    "n_tokens": datasets.Value("int64"),
    "ppl": datasets.Value("float64"),
    "galp": datasets.Value("float64"),
    "lalp": datasets.Value("float64"),
    "step_logps": datasets.List(datasets.Value("float64")),
    CONDITIONING_COLUMN: datasets.Value("string"),
}
ENCODE_BLOCK = 2048  # records tokenised (and length-sorted) together


def global_token_logprobs(
    model: torch.nn.Module,
    examples: Sequence[ScoringExample],
    chunk_tokens: int = 1024,
    keep_context: bool = False,
) -> tuple[list[np.ndarray], PromptContext | None]:
    """log p(y_t | x, y_<t) for every response token (NaN where nothing precedes it).

    One right-padded pass over prompt + response; only response positions are projected to the
    vocabulary. With `keep_context` the pass's cache over the prompts is returned too, for LALP.
    """
    device = next(model.parameters()).device
    ids, att = pad_right([np.concatenate([ex.prompt_ids, ex.response_ids]) for ex in examples])
    out = model.base_model(
        input_ids=ids.to(device),
        attention_mask=att.to(device),
        past_key_values=DynamicCache(config=model.config) if keep_context else None,
        use_cache=keep_context,
    )
    hidden = out.last_hidden_state
    width = ids.shape[1]
    source, targets, sizes, first_scored = [], [], [], []
    for b, ex in enumerate(examples):
        p, t = len(ex.prompt_ids), len(ex.response_ids)
        first = 0 if p > 0 else 1
        at = np.arange(p + first, p + t)
        source.append(b * width + at - 1)
        targets.append(ids[b, at].numpy())
        sizes.append(len(at))
        first_scored.append(first)
    src = torch.as_tensor(np.concatenate(source), device=device)
    logp, _ = logprobs_from_hidden(
        hidden.reshape(-1, hidden.shape[-1])[src],
        model.get_output_embeddings(),
        torch.as_tensor(np.concatenate(targets), device=device),
        chunk_tokens,
        with_entropy=False,
    )
    logp = logp.float().cpu().numpy()
    result, offset = [], 0
    for ex, n, first in zip(examples, sizes, first_scored):
        token_logps = np.full(len(ex.response_ids), np.nan, dtype=np.float32)
        token_logps[first:] = logp[offset : offset + n]
        result.append(token_logps)
        offset += n
    context = None
    if keep_context:
        lengths = torch.tensor([len(ex.prompt_ids) for ex in examples], dtype=torch.long)
        context = context_from_cache(out.past_key_values, hidden, lengths)
    return result, context


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
        progress: show a rich progress bar with tokens/s.
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
        progress: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"score.method={method!r}: choose one of {METHODS}")
        check_window(window, window_rounding)
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
        self.prompt_format = PromptFormat.coerce(prompt_format)
        self.progress = progress
        self.report: dict[str, int] = {}

    @property
    def needs_global(self) -> bool:
        return self.method in ("ppl", "galp", "all")

    @property
    def needs_local(self) -> bool:
        return self.method in ("lalp", "all")

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
        """Score one batch; returns one dict of score columns (plus `index`) per example."""
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
                if self.needs_local:
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
        return [
            self._result(ex, global_logps.get(ex.index), local_logps.get(ex.index))
            for ex in examples
        ]

    def _result(
        self, ex: ScoringExample, global_lp: np.ndarray | None, local_lp: np.ndarray | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "index": ex.index,
            "n_tokens": len(ex.response_ids),
            "ppl": None,
            "galp": None,
            "lalp": None,
            "step_logps": None,
            CONDITIONING_COLUMN: self.conditioning,
            "merged_steps": ex.merged_steps,
            "n_steps": ex.n_steps,
        }
        if global_lp is not None:
            result["galp"] = scores.galp(global_lp)
            result["ppl"] = scores.ppl_from_galp(result["galp"])
        if local_lp is not None:
            result["step_logps"] = scores.step_means(local_lp, ex.token_step, ex.n_steps)
            result["lalp"] = scores.lalp(result["step_logps"])
        return result

    def score(
        self, ds: datasets.Dataset | list[dict[str, Any]], model: torch.nn.Module, tokenizer: Any
    ) -> datasets.Dataset:
        """Score every record; returns the records with the score columns added (same order)."""
        ds = as_dataset(ds)
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
        self.report = summarize(results)
        self.report["seconds"] = round(time.perf_counter() - started, 3)
        return attach_scores(ds, results)


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Counts for the stage report: nothing skipped goes unmentioned."""
    return {
        "records": len(results),
        "scored": sum(r["galp"] is not None or r["lalp"] is not None for r in results),
        "unscorable": sum(r["galp"] is None and r["lalp"] is None for r in results),
        "response_tokens": sum(r["n_tokens"] for r in results),
        "steps": sum(r["n_steps"] for r in results),
        "merged_steps": sum(r["merged_steps"] for r in results),
    }


def attach_scores(ds: datasets.Dataset, results: Sequence[dict[str, Any]]) -> datasets.Dataset:
    """Add the score columns to `ds` in its own row order (results may come in any order)."""
    by_index = {r["index"]: r for r in results}
    if sorted(by_index) != list(range(len(ds))) or len(results) != len(ds):
        missing = sorted(set(range(len(ds))) - set(by_index))[:10]
        raise ValueError(
            f"score: {len(results)} results for {len(ds)} records (missing rows {missing}...)"
        )
    for name, feature in OUTPUT_FEATURES.items():
        ds = ds.add_column(name, [by_index[i][name] for i in range(len(ds))], feature=feature)
    return ds
