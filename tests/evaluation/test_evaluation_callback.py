"""The in-training evaluation (EvaluationCallback): when it fires, what it leaves as it was, and
the config option `+callbacks/eval=in_training` in a tiny train_student run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from test_evaluation import ExactVerifier, FakeSource, ScriptedGenerator

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import compose_config
from reasonft.data.prompts import PromptFormat
from reasonft.evaluation.callback import EvaluationCallback
from reasonft.evaluation.evaluate import Evaluator
from reasonft.training.train import train_student


class TinyModule(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.frozen = torch.nn.Dropout(0.5).eval()  # kept in eval mode on purpose
        self.modes: list[tuple[bool, bool]] = []

    def training_step(self, batch, batch_idx):
        self.modes.append((self.model.training, self.frozen.training))
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        ids = torch.randint(3, 100, (12, 8), generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(ids, batch_size=2)


def test_callback_fires_every_n_steps_and_restores_train_mode(tiny_model, tiny_tokenizer, tmp_path):
    evaluator = Evaluator(
        benchmarks=[{"name": "toy", "split": "test", "n_samples": 8}], generator=ScriptedGenerator(tiny_tokenizer),
        ks=[1, 2, 4], verifier=ExactVerifier(), progress=False,
    )
    callback = EvaluationCallback(
        evaluator, every_n_steps=2, at_train_end=True, n_samples=3, limit=2, out_dir=str(tmp_path / "evals"),
        data_source=FakeSource(), tokenizer=tiny_tokenizer,
    )
    module = TinyModule(copy.deepcopy(tiny_model).train())
    logger = CSVLogger(tmp_path / "logs", name="fit")
    trainer = pl.Trainer(
        max_steps=5, accelerator="cpu", devices=1, logger=logger, callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module)
    assert callback.evaluated_steps == [2, 4, 5]
    assert module.modes == [(True, False)] * 5
    assert sorted(p.name for p in (tmp_path / "evals").iterdir()) == ["step_0000002", "step_0000004", "step_0000005"]
    results = json.loads((tmp_path / "evals" / "step_0000004" / "eval_results.json").read_text())
    assert results["benchmarks"]["toy"]["samples_per_problem"] == 3 and results["benchmarks"]["toy"]["problems"] == 2
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert "eval/train/toy/pass@1" in header and "eval/train/average/pass@2" in header


class RandomStateRecorder(pl.Callback):
    """A draw from the global RNG at every batch: what dropout or sampling in training would see."""

    def __init__(self):
        self.draws: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.draws.append(torch.rand(1).item())


class RandomDrawingGenerator(ScriptedGenerator):
    """Samples as a backend drawing from the global RNG would (HF `generate` with do_sample)."""

    def generate(self, problems, model, tokenizer, prompt_format=None, *, n=None, seed=None):
        torch.rand(1000)
        return super().generate(problems, model, tokenizer, prompt_format, n=n, seed=seed)


def test_training_random_state_is_as_without_the_callback(tiny_model, tiny_tokenizer, tmp_path):
    """Dropout or sampling in training after an evaluation draws what it would have drawn."""
    evaluator = Evaluator(
        benchmarks=[{"name": "toy", "split": "test", "n_samples": 2}],
        generator=RandomDrawingGenerator(tiny_tokenizer), ks=[1], verifier=ExactVerifier(), progress=False,
    )
    draws = []
    for callbacks in ([EvaluationCallback(evaluator, every_n_steps=1, data_source=FakeSource(),
                                          tokenizer=tiny_tokenizer, out_dir=str(tmp_path / "evals"))], []):
        recorder = RandomStateRecorder()
        pl.seed_everything(0)
        trainer = pl.Trainer(
            max_steps=3, accelerator="cpu", devices=1, logger=False, callbacks=[*callbacks, recorder],
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )
        trainer.fit(TinyModule(copy.deepcopy(tiny_model).train()))
        draws.append(recorder.draws)
    assert callbacks == [] and len(draws[0]) == 3
    assert draws[0] == draws[1]


def test_split_benchmarks_without_a_data_source_fail_at_construction(tiny_tokenizer):
    evaluator = Evaluator(
        benchmarks={"toy": {"split": "test"}}, generator=ScriptedGenerator(tiny_tokenizer), ks=[1],
        verifier=ExactVerifier(), heldout_entropy={"split": "test"}, progress=False,
    )
    with pytest.raises(ValueError, match=r"\['eval.benchmarks.toy', 'eval.heldout_entropy'\].*callbacks.eval.data_source"):
        EvaluationCallback(evaluator, every_n_steps=1)


# -- the config option in train_student -------------------------------------------------------------

TINY_RUN = [
    "data.source.n_train=8",
    "data.source.n_test=6",
    "data.source.max_ops=1",
    "eval.generator.max_new_tokens=6",
    "trainer.accelerator=cpu",
    "trainer.max_steps=3",
    "train.micro_batch_size=2",
    "train.per_step.ce=2",
    "train.per_step.ul=0",
    "train.max_length=128",
    "callbacks.progress_bar=null",
    "callbacks.checkpoint=null",
    "callbacks.nan_guard=null",
]


def _cfg(tmp_path: Path, *extra: str):
    return compose_config(overrides=[
        f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'run'}", *TINY_RUN, *extra,
    ])


def _records(n: int = 8) -> list[dict]:
    return [{"prompt_id": f"p{i}", "prompt": f"Compute {i} + 3.", "loss_type": "ce",
             "response": f"<think>\n{i} + 3 = {i + 3}\n</think>\n\\boxed{{{i + 3}}}"} for i in range(n)]


def test_in_training_option_runs_inside_train_student(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    """`+callbacks/eval=in_training`: built from the config with the eval config and the data
    source, it takes train_student's tokenizer and prompt format, evaluates at the configured steps,
    and leaves the trained weights as without it."""
    from reasonft.training import train as train_module

    built: list[pl.Trainer] = []
    original = train_module.build_trainer

    def recording_build_trainer(cfg, per_step=None):
        trainer, skipped = original(cfg, per_step)
        built.append(trainer)
        return trainer, skipped

    monkeypatch.setattr(train_module, "build_trainer", recording_build_trainer)
    weights = {}
    for name, extra in (("with", ["+callbacks/eval=in_training", "callbacks.eval.every_n_steps=2",
                                  "callbacks.eval.limit=2", "callbacks.eval.n_samples=2"]),
                        ("without", [])):
        cfg = _cfg(tmp_path / name, *extra)
        model = copy.deepcopy(tiny_model)
        train_student(cfg, _records(), model, tiny_tokenizer, tmp_path / name / "out")
        weights[name] = model.state_dict()

    trainer = built[0]
    callback = next(c for c in trainer.callbacks if isinstance(c, EvaluationCallback))
    assert callback.evaluated_steps == [2, 3] and trainer.global_step == 3
    assert callback.tokenizer is tiny_tokenizer
    assert callback.prompt_format == PromptFormat.from_config(cfg.data)
    step_dir = Path(trainer.log_dir) / "evaluation" / "step_0000002"
    results = json.loads((step_dir / "eval_results.json").read_text())
    assert results["settings"]["prompt_format"] == PromptFormat.from_config(cfg.data).as_dict()
    assert {b: (m["problems"], m["samples_per_problem"]) for b, m in results["benchmarks"].items()} == {
        "toy_test_greedy": (2, 1), "toy_test": (2, 2)
    }
    assert results["heldout_entropy"]["responses"] == 2
    header = (Path(trainer.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert "eval/train/toy_test/pass@1" in header
    assert not any(isinstance(c, EvaluationCallback) for c in built[1].callbacks)
    for key, value in weights["without"].items():
        assert torch.equal(weights["with"][key], value), key
