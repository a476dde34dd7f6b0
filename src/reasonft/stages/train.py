"""train: fine-tune the base student on the selection (`training/train.py`, through Lightning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from omegaconf import open_dict

from reasonft.data.prompt_examples import write_prompt_examples
from reasonft.pipeline.components import build, check_importable
from reasonft.pipeline.stage import PROMPT, PROMPTS, Facts, KeyParts, Stage
from reasonft.training.precision import training_dtype
from reasonft.training.strategies import check_strategy
from reasonft.training.train import check_train_config
from reasonft.wandb_artifacts import log_model


class Train(Stage):
    name = "train"
    reads: ClassVar[tuple[str, ...]] = ("loss", "train", "trainer", "strategy", *PROMPT)
    # Where it writes, how it logs, where a resumed fit finds its checkpoint; the model's dtype
    # is hashed through the base student's load arguments.
    unhashed: ClassVar[tuple[str, ...]] = (
        "train.ckpt_path", "trainer.default_root_dir", "logger", "callbacks", "model.dtype", "seed"
    )
    loads_model = True

    def needs(self, facts: Facts) -> tuple[str, ...]:
        return ("base", "select")

    def configure(self, run: Any, facts: Facts) -> None:
        c = self.config
        loss = build("loss", c.loss)
        check_strategy(c.get("strategy"))
        # The kinds of record the planned selection yields, each needing a term or a share.
        select = run.stages.get("select")
        kinds = select.selector.loss_types if select is not None and "select" in run.plan.stages else ()
        check_train_config(c, loss, record_kinds=kinds)
        check_importable(c, "logger")
        check_importable(c, "callbacks")

    def identity(self, key: KeyParts, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {"select": key.upstream("select"), **key.base_model()}

    def on_every_rank(self, run: Any) -> bool:
        # Ranks > 0 train alongside rank 0 but never write (or race to rename) the artifact.
        return True

    def produce(self, inputs: Any, out_dir: Path) -> dict[str, Any]:
        from reasonft.training.train import train_student

        run, c = inputs.run, inputs.config
        if c.callbacks.get("checkpoint") is not None:
            # Checkpoints live beside the artifact, keyed like it: re-running the same command
            # with `train.ckpt_path=last` resumes an interrupted fit.
            with open_dict(c):
                c.callbacks.checkpoint.dirpath = str(run.checkpoints(self.name))
        # fp32 master weights whatever model.dtype is (training/precision.py).
        dtype = training_dtype(c.trainer.get("precision"), c.model.dtype)
        model, tok = run.load_model(run.base_path, dtype=dtype)
        records = inputs.records_of("select")
        head = records.select(range(min(3, len(records))))
        write_prompt_examples(
            out_dir / PROMPTS, "train", head["prompt"], run.prompt_format, tok, head["response"]
        )
        path = train_student(c, records, model, tok, out_dir)
        log_model(run.wandb_run, path)
        return {"model": str(Path(path).relative_to(out_dir))}
