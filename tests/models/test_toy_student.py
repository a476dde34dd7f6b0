"""The toy student: tokenizer round trip, cached deterministic build, reload, style bias."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasonft.config import CONF_DIR as CONF
from reasonft.data.prompts import IGNORE_INDEX, PromptFormat, build_prompt
from reasonft.data.toy import ToyWorld
from reasonft.models import toy
from reasonft.models.loading import load_student, load_tokenizer
from reasonft.models.toy import ToyStudentBuilder

BOXED = re.compile(r"\\boxed\{(-?\d+)\}")
PROBE = "Step 1:  12 - 5 = 7\n\n\nThen   add 3.\n  \n\\boxed{10}\n</think>\n \t end"

TINY = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "vocab_size": 400,
    "steps": 20,
    "batch_size": 8,
    "n_pretrain": 160,
    "lr": 3e-3,
    "seed": 5,
}


def tiny_world() -> ToyWorld:
    return ToyWorld(seed=2, n_train=60, n_test=20)


def tiny_builder(**kwargs) -> ToyStudentBuilder:
    return ToyStudentBuilder(tiny_world(), **{**TINY, **kwargs})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> str:
    return tiny_builder().build(tmp_path_factory.mktemp("cache"))


def test_folder_is_an_ordinary_qwen2_checkpoint(built):
    folder = Path(built)
    assert folder.name.startswith("toy-student-")
    for name in ("config.json", "model.safetensors", "tokenizer.json", toy.BUILD_REPORT):
        assert (folder / name).is_file(), name
    assert not list(folder.parent.glob(".tmp-*"))
    model = AutoModelForCausalLM.from_pretrained(built)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2


def test_tokenizer_beside_the_qwen2_config_round_trips(built, tmp_path):
    """The trap: AutoTokenizer may rebuild the tokenizer from the Qwen2 config beside it.

    The ids the student was trained with (the builder's tokenizer) must be what every later
    stage gets through AutoTokenizer, for text with runs of spaces, blank lines and newlines.
    """
    trained_with = tiny_builder().prepare_tokenizer(tmp_path)
    loaded = AutoTokenizer.from_pretrained(built)
    ids = loaded(PROBE, add_special_tokens=False)["input_ids"]
    assert ids == trained_with(PROBE, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == PROBE
    chat = build_prompt("Compute 2 + 3.", loaded)
    assert chat == build_prompt("Compute 2 + 3.", trained_with)
    assert "<|im_start|>assistant\n" in chat
    assert loaded(chat, add_special_tokens=False)["input_ids"].count(loaded.eos_token_id) == 0
    # the pre-training examples are encoded exactly as a stage encodes them after loading
    builder = tiny_builder()
    problem, teacher = builder.pretraining_pairs()[0]
    again = PromptFormat().encode(problem.text, builder.world.solve(problem, teacher).response, loaded)
    assert again["input_ids"][-2:] == loaded("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert builder.pretraining_examples(trained_with)[0] == again


def test_reload_gives_identical_logits_and_build_is_deterministic(built, tmp_path):
    builder = tiny_builder()
    tokenizer = builder.prepare_tokenizer(tmp_path / "tok")
    in_memory = builder.train_student(tokenizer)
    reloaded = load_student(built, dtype="float32", attn_implementation="sdpa")
    ids = torch.tensor([tokenizer(PROBE, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(in_memory(ids).logits, reloaded(ids).logits)
    second = tiny_builder().build(tmp_path / "other_cache")
    assert Path(second).name == Path(built).name
    first_weights = load_file(str(Path(built) / "model.safetensors"))
    second_weights = load_file(str(Path(second) / "model.safetensors"))
    assert first_weights.keys() == second_weights.keys()
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)
    other_seed = ToyStudentBuilder(tiny_world(), **{**TINY, "seed": 6})
    assert other_seed.folder_name() != builder.folder_name()


def test_second_build_reuses_the_cache(built, monkeypatch):
    report = Path(built) / toy.BUILD_REPORT
    before = report.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached student was retrained")

    monkeypatch.setattr(toy, "train_plain", no_training)
    assert tiny_builder().build(Path(built).parent) == built
    assert report.stat().st_mtime_ns == before


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(toy, "train_plain", crash)
    with pytest.raises(RuntimeError, match="killed mid-training"):
        tiny_builder().build(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_settings_change_the_cache_folder():
    base = tiny_builder()
    assert tiny_builder().folder_name() == base.folder_name()
    assert tiny_builder(style_mix={"terse": 1.0}).folder_name() != base.folder_name()
    assert tiny_builder(num_threads=2).folder_name() != base.folder_name()
    assert tiny_builder(final_lr_ratio=0.0).folder_name() != base.folder_name()
    no_times = tiny_builder(pretrain_operators=["+", "-", "/"], pretrain_max_multiplier=None)
    assert no_times.folder_name() != base.folder_name()
    assert tiny_builder(pretrain_max_multiplier=3).folder_name() != base.folder_name()
    # the operators are a set: their order does not matter
    assert tiny_builder(pretrain_operators=["/", "*", "+", "-"]).folder_name() == base.folder_name()
    moved_world = ToyStudentBuilder(ToyWorld(seed=3, n_train=60, n_test=20), **TINY)
    assert moved_world.folder_name() != base.folder_name()


def test_the_floating_point_path_is_in_the_cache_key(monkeypatch):
    """Another CPU kernel family or torch release computes other weights: another folder."""
    here = tiny_builder().folder_name()
    assert tiny_builder().settings()["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "NO-SUCH-KERNELS")
    elsewhere = tiny_builder()
    assert elsewhere.settings()["cpu_capability"] == "NO-SUCH-KERNELS"
    assert elsewhere.folder_name() != here
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert tiny_builder().folder_name() != here


def test_pretraining_multiplies_only_by_two_by_default():
    builder = tiny_builder(n_pretrain=400)
    assert builder.pretrain_operators == ("+", "-", "*", "/")
    assert builder.pretrain_max_multiplier == 2
    pairs = builder.pretraining_pairs()
    assert len(pairs) == 400
    times = [o for p, _ in pairs for o in p.operations if o.op == "*"]
    assert times and {o.operand for o in times} == {2}
    for problem, teacher in pairs:
        response = builder.world.solve(problem, teacher).response
        for c in problem.calculations():
            if c.op == "*":
                assert f"{c.left} * 2 = {c.result}" in response or "multiply" in response
    # without *, the student never sees it, in a problem or a response
    none = tiny_builder(n_pretrain=400, pretrain_operators=["+", "-", "/"], pretrain_max_multiplier=None)
    for problem, teacher in none.pretraining_pairs():
        response = none.world.solve(problem, teacher).response
        assert "*" not in problem.text and "times" not in problem.text, problem.text
        assert "*" not in response and "multiply" not in response, response
    # the default world's test split multiplies by more than 2 in 25 of its 200 problems: the
    # skill the base student lacks
    needs = [p for p in ToyWorld().problem_list("test") if any(o.op == "*" and o.operand > 2 for o in p.operations)]
    assert len(needs) == 25


def reference_lr_factor(step: int, steps: int, warmup: int, final: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if step == steps - 1:
        return final
    angle = math.pi * (step - warmup) / (steps - 1 - warmup)
    return final + (1 - final) * (1 + math.cos(angle)) / 2


def test_the_learning_rate_warms_up_then_decays_to_its_final_share(monkeypatch):
    """The learning rates train_plain's optimiser really stepped with, against the formula."""
    seen: list[float] = []

    def linear_logprobs(model, ids, mask, target):
        return model(ids.float()[..., None]).squeeze(-1), None

    monkeypatch.setattr(toy, "token_logprobs", linear_logprobs)
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"])
    )
    try:
        toy.train_plain(
            torch.nn.Linear(1, 1),
            [{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]}],
            steps=40,
            lr=0.5,
            batch_size=1,
            pad_id=0,
            seed=0,
            warmup_ratio=0.1,
            final_lr_ratio=0.02,
        )
    finally:
        hook.remove()
    expected = [0.5 * reference_lr_factor(k, 40, 4, 0.02) for k in range(40)]
    assert seen == pytest.approx(expected, rel=1e-9)
    assert seen[3] == pytest.approx(0.5) and seen[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in itertools.pairwise(seen[3:]))


@torch.no_grad()
def mean_response_ppl(model, tokenizer, world: ToyWorld, teacher: str, n: int) -> float:
    """Slow reference: full-vocabulary softmax, one sequence at a time, prompt-conditioned."""
    ppls = []
    for problem in world.problem_list("train")[:n]:
        example = PromptFormat().encode(problem.text, world.solve(problem, teacher).response, tokenizer)
        ids = torch.tensor([example["input_ids"]])
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
        start = example["prompt_len"]
        targets = ids[0, start:]
        picked = logp[start - 1 :, :].gather(-1, targets[:, None]).squeeze(-1)
        ppls.append(math.exp(-picked.mean().item()))
    return sum(ppls) / len(ppls)


def test_style_mix_biases_the_student(tmp_path):
    """A student pre-trained only on terse traces finds terse far more natural than verbose."""
    path = tiny_builder(style_mix={"terse": 1.0}, steps=30).build(tmp_path)
    model, tokenizer = load_student(path), load_tokenizer(path)
    world = tiny_world()
    terse = mean_response_ppl(model, tokenizer, world, "terse", 10)
    verbose = mean_response_ppl(model, tokenizer, world, "verbose", 10)
    assert terse < 0.5 * verbose


def test_bad_builder_settings_raise():
    with pytest.raises(ValueError, match="style_mix"):
        tiny_builder(style_mix={"oracle": 1.0})
    with pytest.raises(ValueError, match="hidden_size=30 must divide by num_heads=4"):
        tiny_builder(hidden_size=30)
    with pytest.raises(TypeError, match="needs the toy world"):
        ToyStudentBuilder(world=42)
    with pytest.raises(ValueError, match=r"model.build.pretrain_operators=\['\+', '\*'\]"):
        tiny_builder(pretrain_operators=["+", "*"])
    with pytest.raises(ValueError, match="model.build.pretrain_operators"):
        tiny_builder(pretrain_operators=["+", "-", "^"])
    with pytest.raises(ValueError, match="model.build.pretrain_max_multiplier=2: needs \\*"):
        tiny_builder(pretrain_operators=["+", "-"])
    with pytest.raises(ValueError, match="model.build.pretrain_max_multiplier=1"):
        tiny_builder(pretrain_max_multiplier=1)
    with pytest.raises(ValueError, match="model.build.final_lr_ratio=1.5"):
        tiny_builder(final_lr_ratio=1.5)


def test_model_config_takes_the_world_from_the_data_config():
    data, model = (
        OmegaConf.load(CONF / "data" / "toy.yaml"),
        OmegaConf.load(CONF / "model" / "toy.yaml"),
    )
    cfg = OmegaConf.create({"data": data, "model": model})
    cfg.data.source.n_train = 40
    cfg.data.prompt_suffix = " Be brief."
    assert cfg.model.name == "toy" and cfg.model.path is None and cfg.model.dtype == "float32"
    builder = instantiate(cfg.model.build)
    assert isinstance(builder, ToyStudentBuilder)
    source = instantiate(cfg.data.source)
    assert builder.world.settings() == source.settings()
    assert builder.world.settings()["n_train"] == 40
    assert builder.prompt_format == PromptFormat(suffix=" Be brief.", response_end="eos")
    assert builder.max_length == cfg.data.max_length
    # without recursive instantiation the world arrives as its config; that works too
    lazy = instantiate(cfg.model.build, _recursive_=False)
    assert lazy.world.settings() == source.settings()


def final_answer(text: str) -> str | None:
    """The last \\boxed{N} after </think> (None when there is no </think> or no box)."""
    if "</think>" not in text:
        return None
    found = BOXED.findall(text.rsplit("</think>", 1)[1])
    return found[-1] if found else None


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int = 80) -> list[str]:
    """Greedy decoding of a left-padded batch (the check used to report base accuracy)."""
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **batch,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def test_answer_extraction_reads_every_teacher():
    world = tiny_world()
    problems = {p.prompt_id: p for p in world.problem_list("train")}
    for record in world.teacher_pool():
        solution = world.solve(problems[record["prompt_id"]], record["source"])
        assert final_answer(record["response"]) == str(solution.final_answer)
        if record["source"] != "sloppy":
            assert final_answer(record["response"]) == record["answer"]
    assert final_answer("\\boxed{3} <think>x</think> so \\boxed{4} or \\boxed{5}") == "5"
    assert final_answer("<think>\\boxed{3}") is None


def test_greedy_check_is_batch_independent(built):
    """Left-padded batched greedy decoding gives what one-by-one decoding gives."""
    model, tokenizer = load_student(built), load_tokenizer(built)
    problems = tiny_world().problem_list("test")[:4]
    prompts = [build_prompt(p.text, tokenizer) for p in problems]
    batched = greedy_completions(model, tokenizer, prompts, max_new_tokens=24)
    single = [greedy_completions(model, tokenizer, [p], max_new_tokens=24)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(text, str) and text for text in batched)
