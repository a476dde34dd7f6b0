"""`run_grpo`: a student checkpoint + training problems -> the GRPO policy, through TRL's GRPOTrainer.

The engine is TRL's (`trl.GRPOTrainer`: rollouts, group-normalised advantages, the clipped loss
with the k3 KL term, checkpoints); reasonft hands it the recipe as a `GRPOConfig`
(`reasonft.rl.recipe`), the prompts in the run's prompt format, the reward (reasonft's verifier,
`reasonft.rl.reward`) and its callbacks (per-step metrics to the run's loggers, periodic
validation: `reasonft.rl.callbacks`). Checkpoints go to `ckpt_dir` (beside the artifact, keyed
like it): a killed run, started again, resumes from the last one. The policy is saved with
`save_pretrained` into `out_dir/model`, so `evaluate` loads it like any student.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import datasets

from reasonft.data.prompts import PromptFormat
from reasonft.data.records import ANSWER_ALTERNATIVES
from reasonft.io import write_json
from reasonft.rl.callbacks import MetricsHistory, PeriodicValidation
from reasonft.rl.plots import plot_runs
from reasonft.rl.recipe import GRPORecipe
from reasonft.rl.reward import VerifierReward
from reasonft.verify.report import STATUSES

log = logging.getLogger(__name__)

HISTORY = "history.jsonl"
CURVES = "rl_curves.png"


def prompt_dataset(
    problems: datasets.Dataset, tokenizer: Any, prompt_format: PromptFormat, max_prompt_tokens: int,
    limit: int | None = None,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """TRL's training data: `prompt` (the text the student sees, as TRL tokenises it), `answer`,
    `prompt_id` (and `answer_alternatives`); prompts over `max_prompt_tokens` tokens are dropped
    and counted."""
    if limit is not None:
        problems = problems.select(range(min(int(limit), len(problems))))
    texts = [prompt_format.prompt_text(p, tokenizer) for p in problems["prompt"]]
    # Exactly as GRPOTrainer tokenises a plain-text prompt.
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    keep = [i for i, n in enumerate(lengths) if n <= max_prompt_tokens]
    columns: dict[str, list[Any]] = {
        "prompt": [texts[i] for i in keep],
        "answer": [str(problems["answer"][i]) for i in keep],
        "prompt_id": [str(problems["prompt_id"][i]) for i in keep],
    }
    if ANSWER_ALTERNATIVES in problems.column_names:
        columns[ANSWER_ALTERNATIVES] = [list(problems[ANSWER_ALTERNATIVES][i] or []) for i in keep]
    report = {
        "problems": len(problems),
        "prompts": len(keep),
        "dropped_overlong_prompts": len(problems) - len(keep),
        "max_prompt_tokens": int(max_prompt_tokens),
        "longest_prompt_tokens": max(lengths) if lengths else 0,
    }
    if not keep:
        raise ValueError(
            f"rl: every one of the {len(problems)} prompts is longer than rl.max_prompt_tokens="
            f"{max_prompt_tokens} tokens (the longest has {report['longest_prompt_tokens']})"
        )
    return datasets.Dataset.from_dict(columns), report


def last_checkpoint(ckpt_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def run_grpo(
    recipe: GRPORecipe,
    model: Any,
    tokenizer: Any,
    problems: datasets.Dataset,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    *,
    prompt_format: PromptFormat,
    data_source: Any = None,
    loggers: Sequence[Any] = (),
    config_overrides: dict[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    use_cpu: bool | None = None,
    world_size: int = 1,
    title: str = "",
) -> dict[str, Any]:
    """GRPO from `model` on `problems`; writes `out_dir/model`, `rl_report.json`, `history.jsonl`
    and `rl_curves.png`; returns the report. `callbacks` join the stage's own (tests)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer

    from reasonft.generation.inputs import stop_token_ids
    from reasonft.training.train import save_student

    started = time.perf_counter()
    out_dir, ckpt_dir = Path(out_dir), Path(ckpt_dir)
    use_cpu = (not torch.cuda.is_available()) if use_cpu is None else use_cpu
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Rollouts end where every other stage's sampling ends: EOS, the model's EOS ids, <|im_end|>.
    model.generation_config.eos_token_id = stop_token_ids(
        tokenizer, model.generation_config.eos_token_id, ("<|im_end|>",)
    )
    data, data_report = prompt_dataset(
        problems, tokenizer, prompt_format, recipe.max_prompt_tokens, recipe.limit
    )
    args = recipe.grpo_config(str(ckpt_dir), world_size=world_size, use_cpu=use_cpu)
    # The reference model is loaded from the checkpoint by TRL: with the student's config changes.
    args.model_init_kwargs = dict(config_overrides) if config_overrides else None
    state = PartialState()
    is_main = state.is_main_process
    history = MetricsHistory(ckpt_dir / HISTORY, loggers=loggers if is_main else (), is_main=is_main)
    own: list[Any] = [history]
    evaluator = recipe.validation.evaluator
    if evaluator is not None:
        own.append(PeriodicValidation(
            evaluator, recipe.validation.every_n_steps, history, ckpt_dir / "validation", tokenizer,
            prompt_format, data_source, is_main, state.wait_for_everyone,
        ))
    reward = VerifierReward(recipe.reward)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[*own, *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # the metrics go to the loggers, not to stdout
    resume = last_checkpoint(ckpt_dir) if recipe.resume else None
    if resume:
        log.info("rl: resuming from %s", resume)
    with ExitStack() as stack:
        # One warm pool of grader workers for the whole run (not one started per step).
        for grader in (recipe.reward, getattr(evaluator, "verifier", None)):
            if hasattr(grader, "kept_workers"):
                stack.enter_context(grader.kept_workers())
        result = trainer.train(resume_from_checkpoint=resume)
    counts: Counter[str] = Counter()
    for part in gather_object([dict(reward.counts)]):
        counts.update(part)
    if not is_main:
        return {}

    model_dir = out_dir / "model"
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    save_student(unwrapped, tokenizer, model_dir)
    rows = history.rows()
    write_json_lines(rows, out_dir / HISTORY)
    plot_runs({"policy": rows}, out_dir / CURVES, title=title or "GRPO")
    total = sum(counts.values())
    report = {
        "model": "model",
        "engine": "trl.GRPOTrainer",
        "steps": int(trainer.state.global_step),
        "resumed_from": Path(resume).name if resume else None,
        "processes": int(state.num_processes),
        "sequences_per_step": recipe.sequences_per_step,
        "data": data_report,
        "dropped_overlong_prompts": data_report["dropped_overlong_prompts"],
        "reward_status": {s: int(counts[s]) for s in STATUSES},
        "rewards": {
            "rollouts": total,
            "grader": reward.report()["grader"],
            "status": {s: int(counts[s]) for s in STATUSES},
            "mean_reward": counts["correct"] / total if total else None,
        },
        "start": _first(rows, ("entropy", "reward", "response_length")),
        "validation": validation_summary(rows),
        "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(report, out_dir / "rl_report.json")
    return report


def write_json_lines(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _first(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """The first logged value of each key (the first step's rollouts: the starting policy)."""
    out = {}
    for key in keys:
        for row in rows:
            if key in row:
                out[f"{key}@step{row['step']}"] = row[key]
                break
    return out


def validation_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The validation metrics at the first and the last validated step."""
    validated = [r for r in rows if any(k.startswith("val/") for k in r)]
    if not validated:
        return {}

    def pick(row: dict[str, Any]) -> dict[str, Any]:
        return {"step": row["step"], **{k[4:]: v for k, v in row.items() if k.startswith("val/")}}

    return {"first": pick(validated[0]), "last": pick(validated[-1])}
