"""The rl stage on TRL's GRPOTrainer: the configuration the engine receives, and one step on a
tiny model whose group-normalised advantages are checked against a plain reference."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM

from reasonft.config import compose_config
from reasonft.data.prompts import PromptFormat
from reasonft.rl.recipe import GRPORecipe
from reasonft.rl.stage import run_grpo


class ParityVerifier:
    """A stand-in grader: a completion is correct when its text has an even number of characters.
    Records every verdict, in call order."""

    grader = "parity"

    def __init__(self) -> None:
        self.calls: list[list[float]] = []

    def __call__(self, records):
        out = [
            {**r, "correct": len(r["response"]) % 2 == 0,
             "verify_status": "correct" if len(r["response"]) % 2 == 0 else "incorrect"}
            for r in records
        ]
        self.calls.append([1.0 if r["correct"] else 0.0 for r in out])
        return out, {}


def _composed_recipe(*overrides: str) -> GRPORecipe:
    cfg = compose_config(overrides=["paths.output_dir=/tmp/x", *overrides])
    node = cfg.rl.copy()
    node.validation.evaluator = None
    return instantiate(node)


def test_toy_and_paper_recipes_map_onto_grpo_config():
    toy = _composed_recipe()
    args = toy.grpo_config("/tmp/rl-args", world_size=1, use_cpu=True)
    assert (args.num_generations, args.per_device_train_batch_size) == (8, 32)
    assert args.generation_batch_size == 8 * 8  # prompts per step x samples per prompt
    assert args.gradient_accumulation_steps == args.steps_per_generation == 2  # 64 / 32
    assert args.num_iterations == 1  # on-policy
    assert (args.beta, args.use_bias_correction_kl) == (0.001, False)  # k3 = verl's low_var_kl
    assert (args.temperature, args.top_p) == (0.85, 1.0)
    assert (args.loss_type, args.epsilon, args.epsilon_high) == ("dapo", 0.2, None)
    assert (args.entropy_coef, args.max_grad_norm, args.scale_rewards) == (0.0, 1.0, "group")
    assert args.report_to == [] or args.report_to == "none" or args.report_to == ["none"]

    paper = _composed_recipe("rl=oxa_paper", "rl.bf16=false", "rl.use_vllm=false")
    args = paper.grpo_config("/tmp/rl-args", world_size=8, use_cpu=True)
    assert paper.sequences_per_step == 64 * 8
    # on 8 processes: 8 per process x 8 processes x 8 accumulation steps = one generation batch
    assert args.gradient_accumulation_steps == args.steps_per_generation == 512 // (8 * 8)
    assert args.per_device_train_batch_size * 8 * args.steps_per_generation == 512
    assert (args.learning_rate, args.beta, args.temperature) == (2e-6, 0.001, 0.85)
    assert args.max_completion_length == 18432
    assert args.num_train_epochs == 20
    assert paper.max_prompt_tokens == 1536
    # the other estimator: TRL's importance-weighted k3
    assert _composed_recipe("rl.kl_estimator=k3_ratio").grpo_config(
        "/tmp/rl-args", 1, True).use_bias_correction_kl is True


def test_unknown_engine_key_and_a_mapped_one_stop_naming_them():
    with pytest.raises(ValueError, match=r"rl.engine.no_such_field"):
        GRPORecipe(reward=None, engine={"no_such_field": 1})
    with pytest.raises(ValueError, match=r"rl.engine.beta: set by the recipe"):
        GRPORecipe(reward=None, engine={"beta": 0.1})
    GRPORecipe(reward=None, engine={"mask_truncated_completions": True})


@pytest.fixture()
def tiny_checkpoint(tiny_model, tiny_tokenizer, tmp_path):
    path = tmp_path / "start"
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _problems(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "prompt_id": [str(i) for i in range(n)],
        "prompt": [f"Compute {i} + {i}." for i in range(n)],
        "answer": [str(2 * i) for i in range(n)],
    })


def test_one_step_group_normalised_advantages_and_engine_config(
    tiny_checkpoint, tiny_tokenizer, tmp_path, monkeypatch
):
    from trl import GRPOTrainer

    captured = []
    original = GRPOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        captured.append({"prompts": [x["prompt"] for x in inputs], "out": out, "trainer": self})
        return out

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", spy)
    verifier = ParityVerifier()
    recipe = GRPORecipe(
        reward=verifier, prompts_per_step=3, samples_per_prompt=4, micro_batch_size=6,
        temperature=1.3, max_response_tokens=10, learning_rate=1e-2, kl_coef=0.05,
        kl_estimator="k3", loss_type="grpo", clip_low=0.15, clip_high=0.3, max_steps=1,
        save_every_n_steps=1, seed=3, max_prompt_tokens=64,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = run_grpo(
        recipe, model, tiny_tokenizer, _problems(6), tmp_path / "out", tmp_path / "ckpt",
        prompt_format=PromptFormat(chat_template=False), use_cpu=True,
    )
    trainer = captured[0]["trainer"]
    # The configuration the engine receives.
    args = trainer.args
    assert (trainer.num_generations, args.generation_batch_size) == (4, 12)
    assert (trainer.beta, args.use_bias_correction_kl) == (0.05, False)
    assert trainer.ref_model is not None
    assert (trainer.temperature, trainer.loss_type) == (1.3, "grpo")
    assert (trainer.epsilon_low, trainer.epsilon_high) == (0.15, 0.3)
    assert (args.gradient_accumulation_steps, args.steps_per_generation, trainer.num_iterations) == (2, 2, 1)
    assert trainer.max_completion_length == 10

    # One generation batch: 3 prompts x 4 samples, each prompt's samples side by side.
    assert len(captured) == 1
    prompts = captured[0]["prompts"]
    rewards = verifier.calls[0]
    assert len(prompts) == len(rewards) == 12
    advantages = captured[0]["out"]["advantages"].tolist()
    for g in range(3):
        group = rewards[4 * g : 4 * g + 4]
        assert len(set(prompts[4 * g : 4 * g + 4])) == 1
        mean = sum(group) / 4
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / 3)  # unbiased, as torch.std
        for i, r in enumerate(group):
            expected = (r - mean) / (std + 1e-4)  # TRL's epsilon
            assert advantages[4 * g + i] == pytest.approx(expected, abs=1e-5)
    assert any(abs(a) > 0.1 for a in advantages), (rewards, "no group had mixed rewards")

    # The step happened and the policy was saved for `evaluate`.
    assert report["steps"] == 1
    assert report["rewards"]["rollouts"] == 12
    assert report["rewards"]["status"]["correct"] == int(sum(rewards))
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    moved = [k for k, v in saved.state_dict().items() if not torch.equal(v, before[k])]
    assert moved
    assert (tmp_path / "out" / "rl_curves.png").exists()
    rows = [r for r in (tmp_path / "out" / "history.jsonl").read_text().splitlines() if r]
    assert rows and '"reward"' in rows[-1] and '"kl"' in rows[-1] and '"entropy"' in rows[-1]
