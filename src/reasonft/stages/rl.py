"""rl: GRPO from the fine-tuned student (or the base one), METHODS §1f, through TRL."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from reasonft.pipeline.components import build, check_importable
from reasonft.pipeline.stage import Facts, KeyParts, Stage
from reasonft.sweep import is_rank_zero_process
from reasonft.wandb_artifacts import log_model


class ReinforcementLearning(Stage):
    name = "rl"
    reads: ClassVar[tuple[str, ...]] = (
        "rl", "data", "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "strategy"
    )
    unhashed: ClassVar[tuple[str, ...]] = ("rl.resume", "logger", "model.config_overrides")
    loads_model = True

    def needs(self, facts: Facts) -> tuple[str, ...]:
        # GRPO from the fine-tuned student when train is asked for, else from the base student.
        return ("base", "train") if facts.asked("train") else ("base",)

    def configure(self, run: Any, facts: Facts) -> None:
        import torch

        from reasonft.rl.launch import check_rl_launch

        self.recipe = build("rl", self.config.rl)
        self.world_size = check_rl_launch(self.config)
        self.recipe.check_machine(
            self.world_size, torch.cuda.is_available(), self.config.trainer.get("accelerator")
        )
        check_importable(self.config, "logger")

    def identity(self, key: KeyParts, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        config: dict[str, Any] = {"data_version": key.data_version()}
        # The policy is loaded in float32 whatever model.dtype is; a policy trained from a 16-bit
        # load (before that rule) has another key.
        if key.load_args()["dtype"] not in (None, "float32"):
            config["policy_dtype"] = "float32"
        if "train" in key.stages:
            return config, {"train": key.upstream("train"), "load": key.load_args()}
        return config, key.base_model()

    def on_every_rank(self, run: Any) -> bool:
        return True

    def produce(self, inputs: Any, out_dir: Path) -> dict[str, Any]:
        from hydra.utils import instantiate

        from reasonft.rl.stage import run_grpo

        run = inputs.run
        start = inputs.model_path("train") if "train" in inputs.upstream else run.base_path
        # The policy trains with fp32 master weights whatever model.dtype is, as the train stage
        # does (training/precision.py); rl.bf16 is TRL's autocast over them.
        model, tok = run.load_model(start, dtype="float32")
        model.train()
        loggers = []
        if is_rank_zero_process():
            loggers = [instantiate(n) for n in (inputs.config.get("logger") or {}).values() if n]
        report = run_grpo(
            self.recipe, model, tok, run.source.problems(self.recipe.split), out_dir,
            run.checkpoints(self.name),
            prompt_format=run.prompt_format, data_source=run.source, loggers=loggers,
            config_overrides=inputs.config.model.get("config_overrides") or None,
            world_size=self.world_size, title=f"GRPO from {Path(start).name}",
        )
        if report:
            log_model(run.wandb_run, str(out_dir / report["model"]))
        return {"start": start, **report}
