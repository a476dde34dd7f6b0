"""The `rl` config group: a GRPO recipe in the terms of METHODS.md §1f, mapped onto TRL's `GRPOConfig`.

`GRPORecipe` is what `conf/rl/*.yaml` instantiate. It holds the recipe (prompts per step, samples
per prompt, temperature, learning rate, KL coefficient and estimator, loss aggregation, clip range,
lengths, epochs) and the stage's own parts (the reward grader, the validation), checks at start-up
what this machine can run, and writes the `GRPOConfig` the engine receives (`grpo_config`).

The mapping, where the names differ:

| recipe (§1f)                        | GRPOConfig |
|-------------------------------------|------------|
| prompts_per_step x samples_per_prompt sequences per optimiser step | generation_batch_size; per_device_train_batch_size = micro_batch_size; gradient_accumulation_steps = that / (micro_batch_size x processes) |
| samples_per_prompt                  | num_generations |
| updates_per_batch (1: on-policy, verl's mini-batch = batch) | num_iterations; steps_per_generation = the accumulation (one generation batch per optimiser step) |
| kl_coef, kl_estimator               | beta; `k3` = verl's `low_var_kl` (exp(r) - r - 1, r = log ref - log pi) as the loss term alone: use_bias_correction_kl=false; `k3_ratio` = TRL's default, the same term times the importance ratio |
| clip_low, clip_high                 | epsilon, epsilon_high |
| max_response_tokens                 | max_completion_length (TRL truncates no prompt: longer than max_prompt_tokens are dropped before training and counted, as verl's filter_overlong_prompts) |
| grad_clip                           | max_grad_norm |
| engine                              | any other GRPOConfig field, passed as it is (an unknown one stops at start-up) |
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KL_ESTIMATORS = ("k3", "k3_ratio")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")
VLLM_MODES = ("colocate", "server")
# Fields the recipe sets itself: `rl.engine` may not set them a second time.
_MAPPED = (
    "output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "generation_batch_size",
    "steps_per_generation", "num_generations", "num_iterations", "temperature", "top_p",
    "max_completion_length", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "adam_beta1", "adam_beta2", "beta", "use_bias_correction_kl", "entropy_coef", "loss_type",
    "epsilon", "epsilon_high", "scale_rewards", "max_grad_norm", "num_train_epochs", "max_steps",
    "save_strategy", "save_steps", "save_total_limit", "logging_steps", "report_to", "seed",
    "data_seed", "bf16", "fp16", "gradient_checkpointing", "use_vllm", "vllm_mode", "use_cpu",
    "shuffle_dataset", "remove_unused_columns", "disable_tqdm",
)


@dataclass
class Validation:
    """Validation Pass@1 / Pass@k every `every_n_steps` optimiser steps (and before the first and
    after the last), with `evaluator` (a reasonft Evaluator: held-out problems, n samples, ks)."""

    evaluator: Any = None
    every_n_steps: int = 0


@dataclass
class GRPORecipe:
    """One GRPO run's settings (module doc). Sizes are global (all processes together)."""

    reward: Any                          # a Verifier: the grader whose verdict is the 0/1 reward
    prompts_per_step: int = 64
    samples_per_prompt: int = 8
    micro_batch_size: int = 8            # sequences per process per forward/backward
    temperature: float = 0.85
    top_p: float = 1.0
    max_prompt_tokens: int = 1536
    max_response_tokens: int = 16384
    learning_rate: float = 2e-6
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    kl_coef: float = 0.001
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    loss_type: str = "dapo"
    clip_low: float = 0.2
    clip_high: float | None = None
    scale_rewards: str = "group"
    updates_per_batch: int = 1
    grad_clip: float = 1.0
    epochs: float = 1.0
    max_steps: int = -1
    save_every_n_steps: int = 10
    bf16: bool = False
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    split: str = "train"
    limit: int | None = None
    seed: int = 42
    resume: bool = True
    validation: Any = None
    engine: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.validation is None:
            self.validation = Validation()
        elif isinstance(self.validation, Mapping):
            self.validation = Validation(**dict(self.validation))
        self.engine = dict(self.engine or {})
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        positive = {
            "prompts_per_step": self.prompts_per_step, "micro_batch_size": self.micro_batch_size,
            "max_prompt_tokens": self.max_prompt_tokens, "max_response_tokens": self.max_response_tokens,
            "updates_per_batch": self.updates_per_batch, "save_every_n_steps": self.save_every_n_steps,
        }
        for key, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"rl.{key}={value}: must be >= 1")
        if int(self.samples_per_prompt) < 2:
            raise ValueError(
                f"rl.samples_per_prompt={self.samples_per_prompt}: GRPO normalises rewards over a "
                "prompt's samples, so it needs at least 2"
            )
        if not self.temperature > 0:
            raise ValueError(f"rl.temperature={self.temperature}: GRPO samples; give a temperature > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rl.top_p={self.top_p}: must be in (0, 1]")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"rl.kl_estimator={self.kl_estimator!r}: TRL implements {list(KL_ESTIMATORS)} (k3 = "
                "verl's low_var_kl; k3_ratio = k3 times the importance ratio)"
            )
        if self.kl_coef < 0:
            raise ValueError(f"rl.kl_coef={self.kl_coef}: must be >= 0 (0: no reference model)")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"rl.loss_type={self.loss_type!r}: choose one of {list(LOSS_TYPES)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"rl.scale_rewards={self.scale_rewards!r}: choose one of {list(SCALE_REWARDS)}")
        if self.vllm_mode not in VLLM_MODES:
            raise ValueError(f"rl.vllm_mode={self.vllm_mode!r}: choose one of {list(VLLM_MODES)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"rl.warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if not self.clip_low > 0 or (self.clip_high is not None and not self.clip_high > 0):
            raise ValueError(f"rl.clip_low={self.clip_low}, rl.clip_high={self.clip_high}: must be > 0")
        if int(self.validation.every_n_steps) < 0:
            raise ValueError(f"rl.validation.every_n_steps={self.validation.every_n_steps}: must be >= 0")
        self._check_engine_keys()

    def _check_engine_keys(self) -> None:
        from trl import GRPOConfig

        known = {f.name for f in dataclasses.fields(GRPOConfig)}
        for key in self.engine:
            if key not in known:
                raise ValueError(f"rl.engine.{key}: not a field of trl.GRPOConfig")
            if key in _MAPPED:
                raise ValueError(
                    f"rl.engine.{key}: set by the recipe itself (see reasonft.rl.recipe); change the "
                    "rl key that maps to it instead"
                )

    @property
    def sequences_per_step(self) -> int:
        return int(self.prompts_per_step) * int(self.samples_per_prompt)

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per process per optimiser step; raises naming the key when it is not whole."""
        per_pass = int(self.micro_batch_size) * int(world_size)
        if self.sequences_per_step % per_pass:
            raise ValueError(
                f"rl.micro_batch_size={self.micro_batch_size}: rl.prompts_per_step x "
                f"rl.samples_per_prompt = {self.sequences_per_step} sequences per step must be a "
                f"multiple of rl.micro_batch_size x {world_size} process(es) = {per_pass}"
            )
        return self.sequences_per_step // per_pass

    def check_machine(self, world_size: int, cuda: bool, accelerator: str | None = None) -> None:
        """Stop, naming the key, on what this machine cannot run (start-up)."""
        self.accumulation(world_size)
        if self.use_vllm:
            if importlib.util.find_spec("vllm") is None:
                raise ImportError(
                    f"rl.use_vllm=true (vllm_mode={self.vllm_mode}): TRL's vLLM generation needs "
                    "vLLM (`pip install vllm`) and a CUDA GPU; or set rl.use_vllm=false (rollouts with "
                    "transformers' generate)"
                )
            if not cuda:
                raise RuntimeError(
                    f"rl.use_vllm=true (vllm_mode={self.vllm_mode}) needs a CUDA GPU; this machine "
                    "has none: set rl.use_vllm=false"
                )
        if self.bf16 and not cuda:
            raise RuntimeError(
                "rl.bf16=true: bf16 mixed precision is the GPU recipe's; this machine has no CUDA "
                "device: set rl.bf16=false"
            )
        if accelerator in ("gpu", "cuda") and not cuda:
            raise RuntimeError(
                f"trainer.accelerator={accelerator}: the rl stage runs on the trainer's devices and "
                "this machine has no CUDA device: set trainer.accelerator=cpu (or trainer=default)"
            )

    def grpo_config(self, output_dir: str, world_size: int, use_cpu: bool) -> Any:
        """The `trl.GRPOConfig` this recipe means, for `world_size` processes."""
        from trl import GRPOConfig

        steps = self.accumulation(world_size)
        return GRPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=int(self.micro_batch_size),
            gradient_accumulation_steps=steps,
            steps_per_generation=steps,  # one generation batch per optimiser step
            num_generations=int(self.samples_per_prompt),
            num_iterations=int(self.updates_per_batch),
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            max_completion_length=int(self.max_response_tokens),
            learning_rate=float(self.learning_rate),
            lr_scheduler_type=str(self.lr_scheduler),
            warmup_steps=float(self.warmup_ratio),  # a float in [0, 1): a share of the steps
            weight_decay=float(self.weight_decay),
            adam_beta1=self.betas[0],
            adam_beta2=self.betas[1],
            beta=float(self.kl_coef),
            use_bias_correction_kl=self.kl_estimator == "k3_ratio",
            entropy_coef=float(self.entropy_coef),
            loss_type=str(self.loss_type),
            epsilon=float(self.clip_low),
            epsilon_high=None if self.clip_high is None else float(self.clip_high),
            scale_rewards=str(self.scale_rewards),
            max_grad_norm=float(self.grad_clip),
            num_train_epochs=float(self.epochs),
            max_steps=int(self.max_steps),
            save_strategy="steps",
            save_steps=int(self.save_every_n_steps),
            save_total_limit=2,
            logging_steps=1,
            report_to="none",  # metrics go to the run's Lightning loggers (reasonft.rl.callbacks)
            seed=int(self.seed),
            data_seed=int(self.seed),
            bf16=bool(self.bf16),
            fp16=False,
            gradient_checkpointing=bool(self.gradient_checkpointing),
            use_vllm=bool(self.use_vllm),
            vllm_mode=str(self.vllm_mode),
            use_cpu=use_cpu,
            shuffle_dataset=True,
            remove_unused_columns=False,  # the reward reads `answer` (and `answer_alternatives`)
            disable_tqdm=True,
            **self.engine,
        )
