"""Student samples with transformers `generate`: batched, left-padded, KV cache, seeded per sample.

Reproducibility does not depend on how samples are batched: every sample `(prompt_id,
sample_idx)` owns a random stream. Its token at step t is drawn with the Gumbel-max trick,
`argmax(logits / T + g)` over the top-p set, where the Gumbel noise `g` is a counter-based hash of
(seed, prompt_id, sample_idx, t, token id) — the same noise whatever else shares the batch
(and, up to float rounding, on CPU and GPU). `generate` then runs in its greedy mode and picks exactly that token.

What it shares with the vLLM backend lives in inputs.py, outputs.py and progress.py.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, TopPLogitsWarper

from reasonft.data.prompts import PromptFormat
from reasonft.generation.inputs import (
    check_problems,
    check_sampling,
    context_limit,
    prompt_token_ids,
    response_budgets,
    sample_seed,
    stop_token_ids,
)
from reasonft.generation.outputs import cut_at_stop, sample_records
from reasonft.generation.progress import rate_text, throughput_progress

log = logging.getLogger(__name__)

_MASK32 = 0xFFFFFFFF


# -- seeded sampling as a logits processor ------------------------------------------------------


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding 0..2^32-1.

    The multipliers are below 2^31, so no product leaves the int64 range.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


@functools.lru_cache(maxsize=8)
def _token_hashes(vocab_size: int, device: torch.device) -> Tensor:
    return _mix32(torch.arange(vocab_size, dtype=torch.int64, device=device) ^ 0x5BD1E995)


def _step_hash(step: int) -> int:
    return int(_mix32(torch.tensor(step + 0x9E3779B9, dtype=torch.int64)))


def gumbel_noise(keys: Tensor, step: int, vocab_size: int) -> Tensor:
    """Standard Gumbel noise [B, V]: a pure function of (key of row b, step, token id)."""
    keys = keys.to(torch.int64)
    row = _mix32((keys + _step_hash(step)) & _MASK32)
    bits = _mix32(row[:, None] ^ _token_hashes(vocab_size, keys.device)[None, :])
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * (2.0**-24)  # in (0, 1)
    return -torch.log(-torch.log(uniform))


class SeededSampler(LogitsProcessor):
    """Temperature and top-p, then Gumbel noise keyed per sample: greedy decoding of the result
    is a sample from softmax(logits / T) restricted to the top-p set."""

    def __init__(self, keys: Tensor, prompt_len: int, temperature: float, top_p: float) -> None:
        if temperature <= 0:
            raise ValueError("SeededSampler needs temperature > 0 (use greedy decoding for 0)")
        self.keys = keys
        self.prompt_len = prompt_len
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        step = input_ids.shape[1] - self.prompt_len
        keys = self.keys.to(scores.device)
        return scores + gumbel_noise(keys, step, scores.shape[-1])


class ResponseBudget(LogitsProcessor):
    """Ends row b with `stop_id` once it has `budgets[b]` response tokens, so that rows with
    different prompt lengths in one batch each stop at their own context limit. The forced
    token lies past the budget and is cut off (the row's finish_reason is then "length")."""

    def __init__(self, budgets: Sequence[int], prompt_len: int, stop_id: int) -> None:
        self.budgets = torch.tensor(list(budgets), dtype=torch.long)
        self.prompt_len = prompt_len
        self.stop_id = stop_id

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        step = input_ids.shape[1] - self.prompt_len
        spent = self.budgets.to(scores.device) <= step
        if bool(spent.any()):
            scores = scores.clone()
            scores[spent] = float("-inf")
            scores[spent, self.stop_id] = 0.0
        return scores


# -- the generator -------------------------------------------------------------------------------


@dataclass
class _Row:
    problem: int
    sample_idx: int
    ids: list[int]
    budget: int


@contextmanager
def _plain_generation(model: torch.nn.Module):
    """Eval mode, and a blank generation config so that a checkpoint's `generation_config.json`
    (e.g. Qwen's repetition_penalty=1.05, top_k=20) cannot add processors behind our back."""
    was_training = model.training
    saved = getattr(model, "generation_config", None)
    model.eval()
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved
        model.train(was_training)


class HFGenerator:
    """Sample `n` responses per problem with `model.generate`.

    Args:
        n: samples per prompt.
        temperature: sampling temperature; 0 = greedy (then n must be 1).
        top_p: nucleus sampling mass (1.0 = off).
        max_new_tokens: response budget in tokens (stop token included); null: until the
            context limit. A response that reaches its budget has finish_reason "length".
        max_total_tokens: context limit, prompt + response (the official evaluation: 32,768);
            null: the model's max_position_embeddings. Applies with max_new_tokens too.
        batch_size: sequences per `generate` call (the n samples of a prompt are n sequences).
        seed: with (prompt_id, sample_idx) it fixes every sample, whatever the batching.
        source: the `source` column of the records (`self` for the student's own samples).
        extra_stop_tokens: tokens that also end a response when in the vocabulary (besides EOS).
        stop_token_ids: token ids that also end a response (the official 151643, 151645).
        progress: show a rich progress bar with samples/s and tokens/s.
    """

    def __init__(
        self,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int | None = 512,
        batch_size: int = 32,
        seed: int = 0,
        source: str = "self",
        extra_stop_tokens: Sequence[str] = ("<|im_end|>",),
        progress: bool = True,
        max_total_tokens: int | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> None:
        check_sampling(n, temperature, top_p, max_new_tokens, max_total_tokens)
        if batch_size < 1:
            raise ValueError(f"generate.batch_size={batch_size}: must be >= 1")
        self.n = int(n)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.max_total_tokens = None if max_total_tokens is None else int(max_total_tokens)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.source = str(source)
        self.extra_stop_tokens = [str(t) for t in extra_stop_tokens]
        self.stop_token_ids = [int(i) for i in stop_token_ids]
        self.progress = bool(progress)
        self.last_stats: dict[str, float] = {}

    def generate(
        self,
        problems: datasets.Dataset | list[dict[str, Any]],
        model: torch.nn.Module,
        tokenizer: Any,
        prompt_format: PromptFormat | None = None,
        *,
        n: int | None = None,
        seed: int | None = None,
        temperature: float | None = None,
    ) -> datasets.Dataset:
        """Records (prompt_id, prompt, answer, response, source, sample_idx, gen_tokens,
        finish_reason), n per problem, in problem order; prompts built by `prompt_format`.
        `n`/`seed`/`temperature` override the config for this call (temperature 0: greedy)."""
        prompt_format = PromptFormat.coerce(prompt_format)
        n = self.n if n is None else int(n)
        seed = self.seed if seed is None else int(seed)
        temperature = self.temperature if temperature is None else float(temperature)
        check_sampling(n, temperature, self.top_p, self.max_new_tokens)
        problems = check_problems(problems)
        order = [(row, s) for row in range(len(problems)) for s in range(n)]
        if not order:
            return sample_records(problems, [], {}, self.source)

        ids = prompt_token_ids(list(problems["prompt"]), tokenizer, prompt_format)
        prompt_ids = list(problems["prompt_id"])
        budgets = response_budgets(
            [len(i) for i in ids], self.max_new_tokens,
            context_limit(model, self.max_total_tokens), prompt_ids,
        )
        rows = [_Row(row, s, ids[row], budgets[row]) for row, s in order]
        # Longest prompts first: similar lengths share a batch (little padding) and a batch
        # that does not fit in memory fails at once.
        rows.sort(key=lambda r: (-len(r.ids), r.problem, r.sample_idx))
        stop_ids = stop_token_ids(
            tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None),
            self.extra_stop_tokens, self.stop_token_ids,
        )
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]

        stop_set = set(stop_ids)
        outputs: dict[tuple[int, int], tuple[str, int, str]] = {}
        n_tokens = 0
        start = time.perf_counter()
        with _plain_generation(model), throughput_progress(self.progress) as bar:
            task = bar.add_task("generate (hf)", total=len(rows), rate="")
            for begin in range(0, len(rows), self.batch_size):
                batch = rows[begin : begin + self.batch_size]
                keys = [sample_seed(seed, prompt_ids[r.problem], r.sample_idx) for r in batch]
                new = self._generate_batch(model, batch, keys, stop_ids, pad_id, temperature)
                for r, gen in zip(batch, new):
                    response_ids, stopped = cut_at_stop(gen[: r.budget], stop_set)
                    text = tokenizer.decode(response_ids, skip_special_tokens=True)
                    outputs[(r.problem, r.sample_idx)] = (
                        text,
                        len(response_ids),
                        "stop" if stopped else "length",
                    )
                    n_tokens += len(response_ids) + int(stopped)
                elapsed = time.perf_counter() - start
                bar.update(task, advance=len(batch), rate=rate_text(len(outputs), n_tokens, elapsed))
        elapsed = time.perf_counter() - start
        self.last_stats = {
            "samples": len(outputs),
            "tokens": n_tokens,
            "seconds": elapsed,
            "samples_per_s": len(outputs) / max(elapsed, 1e-9),
            "tokens_per_s": n_tokens / max(elapsed, 1e-9),
        }
        log.info("generated %d samples (%s)", len(outputs), rate_text(len(outputs), n_tokens, elapsed))
        return sample_records(problems, order, outputs, self.source)

    def _generate_batch(
        self,
        model: torch.nn.Module,
        batch: list[_Row],
        keys: list[int],
        stop_ids: list[int],
        pad_id: int,
        temperature: float,
    ) -> list[list[int]]:
        """The generated token ids of each row (prompt removed, padding after the stop kept)."""
        device = next(model.parameters()).device
        width = max(len(r.ids) for r in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding: every response starts at column `width`
            input_ids[i, width - len(r.ids) :] = torch.tensor(r.ids, dtype=torch.long)
            attention[i, width - len(r.ids) :] = 1
        config = GenerationConfig(
            max_new_tokens=max(r.budget for r in batch),
            do_sample=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
        )
        processors = LogitsProcessorList()
        if temperature > 0:
            key_tensor = torch.tensor(keys, dtype=torch.int64, device=device)
            processors.append(SeededSampler(key_tensor, width, temperature, self.top_p))
        if len({r.budget for r in batch}) > 1:  # last: it overrides whatever came before
            processors.append(ResponseBudget([r.budget for r in batch], width, stop_ids[0]))
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=config,
            logits_processor=processors,
        )
        return out[:, width:].tolist()

    def __repr__(self) -> str:
        return (
            f"HFGenerator(n={self.n}, temperature={self.temperature}, top_p={self.top_p}, "
            f"max_new_tokens={self.max_new_tokens}, max_total_tokens={self.max_total_tokens}, "
            f"batch_size={self.batch_size}, seed={self.seed})"
        )
