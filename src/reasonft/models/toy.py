"""Build the toy student: a tokenizer trained on the toy corpus and a tiny Qwen2 base model.

The base student is the real Qwen2 architecture, pre-trained (plain torch loop — this is
world-building, not the product's training path) on teacher responses drawn with a style mix
biased toward some teachers, on problems that multiply only by 2. So it finds some teachers more
natural than others (lower PPL), and it is wrong on every problem that needs the rest of the times
table — a share fixed by the test split, not by how its training went on this machine — leaving
fine-tuning a skill to teach. The result is an ordinary checkpoint folder (config + weights + tokenizer),
cached under a hash of every setting it depends on (the floating-point path included) and
loaded back through `AutoModelForCausalLM` / `AutoTokenizer` like any real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import AutoConfig, PreTrainedModel

from reasonft.data.prompts import IGNORE_INDEX, PromptFormat
from reasonft.data.toy.problems import OPERATORS, Problem
from reasonft.data.toy.teachers import TEACHER_STYLES
from reasonft.data.toy.world import GENERATOR_VERSION, ToyWorld
from reasonft.io import atomic_path, write_json
from reasonft.models.loading import load_tokenizer, random_student
from reasonft.models.tokenizer import save_tokenizer, train_tokenizer
from reasonft.scoring.logprobs import token_logprobs

# Bump when the build procedure changes, so that old cached students are not reused.
# 3: responses end with the prompt format's terminator; 4: pre-trained without
# multiplication, 2,200 steps annealed to 2% lr, the FP path in the cache key; 5: pre-trained
# with multiplication by 2 only, 3,000 steps.
BUILD_VERSION = 5
BUILD_REPORT = "toy_build.json"
DEFAULT_STYLE_MIX = {"terse": 0.6, "numbered": 0.3, "verbose": 0.1}
# The base student knows every operator but multiplies only by 2: the rest of the times table
# is the skill the teachers' traces bring.
DEFAULT_PRETRAIN_OPERATORS = OPERATORS
DEFAULT_PRETRAIN_MAX_MULTIPLIER = 2
# Built students that ship with the project (`make toy-student` writes them): one folder each,
# its files listed with their SHA-256 in SHIPPED_FILE beside the settings it was built with.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_FILE = "SHIPPED.json"
# What decides the weights besides the settings: not part of a shipped student's identity,
# which is the same bytes on every machine.
MACHINE_KEYS = ("cpu_capability", "torch")


class ShippedStudentMismatch(ValueError):
    """A shipped student's files are not the ones its SHIPPED.json lists."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_students() -> list[tuple[Path, dict[str, Any]]]:
    """(folder, its SHIPPED.json) of every student that ships with the project."""
    if not SHIPPED_DIR.is_dir():
        return []
    return [(p.parent, json.loads(p.read_text())) for p in sorted(SHIPPED_DIR.glob(f"*/{SHIPPED_FILE}"))]


def check_shipped(folder: Path, record: Mapping[str, Any]) -> None:
    """Refuse a shipped student whose files are not the ones its record lists."""
    listed = record.get("files") or {}
    present = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != SHIPPED_FILE)
    problems = [f"{name} is not listed" for name in present if name not in listed]
    for name, entry in listed.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != entry["size"] or file_sha256(path) != entry["sha256"]:
            problems.append(f"{name} has other content than its SHA-256 in {SHIPPED_FILE}")
    if problems:
        raise ShippedStudentMismatch(
            f"model.build: the shipped toy student {folder} does not match {SHIPPED_FILE} "
            f"({'; '.join(problems)}). Restore it (git checkout -- {folder}), rebuild it with "
            "`make toy-student`, or build one on this machine with model.build.shipped=false"
        )


def ship(built: str | Path, out_dir: str | Path = SHIPPED_DIR) -> Path:
    """Copy a built student folder into `out_dir/<its shipped name>` with its SHIPPED.json (the
    settings it was built with, the machine's, and every file's size and SHA-256)."""
    built = Path(built)
    report = json.loads((built / BUILD_REPORT).read_text())
    settings = report["settings"]
    portable = {k: v for k, v in settings.items() if k not in MACHINE_KEYS}
    files = {
        path.name: {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(p for p in built.iterdir() if p.is_file() and p.name != SHIPPED_FILE)
    }
    folder = Path(out_dir) / shipped_name(portable, files)
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        for name in files:
            shutil.copyfile(built / name, tmp / name)
        record = {
            "build_version": settings["build_version"],
            "settings": portable,
            "built_on": {k: settings.get(k) for k in MACHINE_KEYS},
            "files": files,
        }
        write_json(record, tmp / SHIPPED_FILE)
    return folder


def shipped_name(portable: Mapping[str, Any], files: Mapping[str, Any]) -> str:
    """`toy-student-v<build version>-<settings hash>-<files hash>`: other settings or other
    bytes (a student re-shipped from another machine) are another name, hence another key."""
    settings = hashlib.sha256(json.dumps(portable, sort_keys=True).encode()).hexdigest()
    content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return f"toy-student-v{portable['build_version']}-{settings[:8]}-{content[:8]}"


def floating_point_path() -> dict[str, str]:
    """What decides the float results of the same computation on this machine besides the
    thread count: torch's CPU kernel family (AVX-512, AVX2, ...; `ATEN_CPU_CAPABILITY` can
    lower it) and the torch release."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` torch intra-op threads (None: leave the setting alone), then restore."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def as_world(world: ToyWorld | Mapping[str, Any]) -> ToyWorld:
    """A ToyWorld from an object or its config mapping (a `_target_` key is ignored)."""
    if isinstance(world, ToyWorld):
        return world
    if isinstance(world, Mapping):
        kwargs = {k: v for k, v in dict(world).items() if k != "_target_"}
        return ToyWorld(**kwargs)
    raise TypeError(
        f"model.build.world: the toy student needs the toy world (a ToyWorld or its config, "
        f"e.g. data=toy with world: ${{data.source}}), got {type(world).__name__}"
    )


def _pad_batch(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    target = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n] = torch.tensor(example["input_ids"])
        mask[row, :n] = 1
        target[row, :n] = torch.tensor([label != IGNORE_INDEX for label in example["labels"]])
    return {"input_ids": ids, "attention_mask": mask, "target_mask": target}


def _epoch_batches(
    examples: Sequence[dict[str, list[int]]], batch_size: int, rng: random.Random, pool: int = 64
) -> list[list[int]]:
    """One epoch of batches: shuffled, then sorted by length inside pools of `pool` batches
    (little padding), then the batch order shuffled again."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(
            order[start : start + batch_size * pool], key=lambda i: len(examples[i]["input_ids"])
        )
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def warmup_cosine(steps: int, warmup_ratio: float, final_lr_ratio: float) -> Callable[[int], float]:
    """The learning-rate factor of step 0..steps-1: linear warmup over `warmup_ratio` of the
    steps to 1, then a cosine down to `final_lr_ratio`, reached at the last step."""
    if not 0.0 <= final_lr_ratio <= 1.0:
        raise ValueError(f"final_lr_ratio={final_lr_ratio} must lie in [0, 1]")
    warmup = max(1, int(warmup_ratio * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - 1 - warmup)
        return final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train_plain(
    model: torch.nn.Module,
    examples: Sequence[dict[str, list[int]]],
    steps: int,
    lr: float,
    batch_size: int,
    pad_id: int,
    seed: int,
    warmup_ratio: float = 0.05,
    weight_decay: float = 0.01,
    final_lr_ratio: float = 0.1,
    description: str = "toy training",
) -> list[float]:
    """Mean token cross-entropy on the labelled tokens; AdamW, `warmup_cosine` schedule.

    Batches follow a seeded shuffle of `examples`, grouped by length, reshuffled every epoch.
    Returns the loss of every step.
    """
    if not examples:
        raise ValueError("train_plain: no examples to train on")
    torch.manual_seed(seed)
    order_rng = random.Random(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay
    )
    schedule = warmup_cosine(steps, warmup_ratio, final_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches: list[list[int]] = []
    losses: list[float] = []
    model.train()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task(description, total=steps, loss=float("nan"))
        for _ in range(steps):
            if not batches:
                batches = _epoch_batches(examples, batch_size, order_rng)
            batch = _pad_batch([examples[i] for i in batches.pop()], pad_id)
            logp, _ = token_logprobs(
                model, batch["input_ids"], batch["attention_mask"], batch["target_mask"]
            )
            loss = -(logp * batch["target_mask"]).sum() / batch["target_mask"].sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            progress.update(task, advance=1, loss=losses[-1])
    model.eval()
    return losses


class ToyStudentBuilder:
    """Builds (or reuses) the toy base student folder: Qwen2 weights + config + tokenizer.

    `build(folder)` needs nothing else in `folder` (`builds_anywhere`): the base stage builds
    straight into its artifact.

    Args:
        world: the ToyWorld (or its config) whose corpus and teachers the student learns from.
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: Qwen2 shape.
        vocab_size: target size of the BPE vocabulary trained on `world.corpus()`.
        steps, lr, batch_size: the brief pre-training (plain AdamW loop).
        final_lr_ratio: the learning rate at the last step, as a share of `lr` (cosine decay).
        n_pretrain: problems the pre-training cycles over (never a test problem).
        pretrain_operators: the operators of the pre-training problems (+ and - among them).
        pretrain_max_multiplier: the largest operand of * in pre-training (None: the world's
            max_operand). 2 gives the student a skill it lacks by construction — the times
            table beyond doubling: it cannot get a problem needing 3 x 4 right, however its
            training went — which the teachers' traces of the train split teach. (Leaving *
            out altogether does too, but then fine-tuning must bring in a new operator, and
            a student this small trained on the traces that use it starts multiplying
            everywhere.)
        style_mix: teacher name -> share of pre-training responses in that teacher's style.
        prompt_format: how prompts are built and responses end (`PromptFormat` or a mapping of
            its fields; conf/model/toy.yaml takes them from the data config).
        max_length: the model's max_position_embeddings.
        seed: weights init and data order.
        shipped: use the built student that ships with the project when its settings are these
            (the same weights on every machine, nothing to build); False builds one here, on
            this machine's floating-point path.
        num_threads: torch threads while training (restored afterwards; None keeps the
            current setting). Part of the cache key: the thread count changes the weights.
            1 by default: the same weights on any machine, little to gain from a second
            thread for a model this small, and no risk of two threads waiting on each other
            on a shared CPU (with OpenMP's default busy-waiting that can be 10x slower).
    """

    builds_anywhere = True

    def __init__(
        self,
        world: ToyWorld | Mapping[str, Any],
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 8,
        num_kv_heads: int = 4,
        intermediate_size: int | None = None,
        vocab_size: int = 600,
        steps: int = 3000,
        lr: float = 3e-3,
        batch_size: int = 32,
        final_lr_ratio: float = 0.02,
        n_pretrain: int = 10000,
        pretrain_operators: Sequence[str] = DEFAULT_PRETRAIN_OPERATORS,
        pretrain_max_multiplier: int | None = DEFAULT_PRETRAIN_MAX_MULTIPLIER,
        style_mix: Mapping[str, float] | None = None,
        prompt_format: PromptFormat | Mapping[str, Any] | None = None,
        max_length: int = 512,
        seed: int = 0,
        num_threads: int | None = 1,
        shipped: bool = True,
    ) -> None:
        self.world = as_world(world)
        mix = dict(style_mix) if style_mix is not None else dict(DEFAULT_STYLE_MIX)
        unknown = sorted(set(mix) - set(TEACHER_STYLES))
        if unknown or not mix or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(
                f"model.build.style_mix={mix}: use teacher names from {list(TEACHER_STYLES)} "
                "with non-negative shares that sum to more than 0"
            )
        operators = [str(op) for op in pretrain_operators]
        if (
            any(op not in OPERATORS for op in operators)
            or len(set(operators)) < len(operators)
            or not {"+", "-"} <= set(operators)
        ):
            raise ValueError(
                f"model.build.pretrain_operators={operators}: use distinct operators from "
                f"{list(OPERATORS)}, + and - among them"
            )
        if pretrain_max_multiplier is not None and (
            "*" not in operators or not 2 <= int(pretrain_max_multiplier) <= self.world.shape.max_operand
        ):
            raise ValueError(
                f"model.build.pretrain_max_multiplier={pretrain_max_multiplier}: needs * among "
                f"pretrain_operators and a value in 2..max_operand ({self.world.shape.max_operand}); "
                "null for no cap"
            )
        if not 0.0 <= final_lr_ratio <= 1.0:
            raise ValueError(f"model.build.final_lr_ratio={final_lr_ratio} must lie in [0, 1]")
        if hidden_size % num_heads or num_heads % num_kv_heads:
            raise ValueError(
                f"model.build: hidden_size={hidden_size} must divide by num_heads={num_heads}, "
                f"and num_heads by num_kv_heads={num_kv_heads}"
            )
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.num_kv_heads = int(num_kv_heads)
        self.intermediate_size = int(intermediate_size or 2 * hidden_size)
        self.vocab_size = int(vocab_size)
        self.steps = int(steps)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.final_lr_ratio = float(final_lr_ratio)
        self.n_pretrain = int(n_pretrain)
        self.pretrain_operators = tuple(op for op in OPERATORS if op in operators)
        self.pretrain_max_multiplier = (
            None if pretrain_max_multiplier is None else int(pretrain_max_multiplier)
        )
        total = sum(mix.values())
        self.style_mix = {name: round(float(mix[name]) / total, 12) for name in sorted(mix)}
        self.prompt_format = PromptFormat.coerce(prompt_format)
        self.max_length = int(max_length)
        self.seed = int(seed)
        self.num_threads = None if num_threads is None else int(num_threads)
        self.shipped = bool(shipped)
        self.last_losses: list[float] = []

    def settings(self) -> dict[str, Any]:
        """Everything the built folder depends on (the world's settings included)."""
        return {
            "build_version": BUILD_VERSION,
            "world_generator": GENERATOR_VERSION,
            "world": self.world.settings(),
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "steps": self.steps,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "final_lr_ratio": self.final_lr_ratio,
            "n_pretrain": self.n_pretrain,
            "pretrain_operators": list(self.pretrain_operators),
            "pretrain_max_multiplier": self.pretrain_max_multiplier,
            "style_mix": self.style_mix,
            "prompt_format": self.prompt_format.as_dict(),
            "max_length": self.max_length,
            "seed": self.seed,
            # the thread count, the CPU's kernel family and the torch release change the
            # floating-point results, hence the weights
            "num_threads": self.num_threads or torch.get_num_threads(),
            **floating_point_path(),
        }

    def portable_settings(self) -> dict[str, Any]:
        """`settings()` without the machine's floating-point path: what a shipped student is
        matched by."""
        return {k: v for k, v in self.settings().items() if k not in MACHINE_KEYS}

    def shipped_folder(self) -> Path | None:
        """The shipped student built with these settings (None: none, or `shipped=False`)."""
        if not self.shipped:
            return None
        portable = self.portable_settings()
        for folder, record in shipped_students():
            if record.get("settings") == portable:
                return folder
        return None

    def folder_name(self) -> str:
        """The student's folder name: the shipped one's (its settings and version), or a hash of
        every setting and this machine's floating-point path."""
        shipped = self.shipped_folder()
        if shipped is not None:
            return shipped.name
        digest = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()
        return f"toy-student-{digest[:16]}"

    def model_config(self, tokenizer: Any) -> dict[str, Any]:
        return {
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "max_position_embeddings": self.max_length,
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
            "bos_token_id": tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }

    def pretraining_pairs(self) -> list[tuple[Problem, str]]:
        """(problem, teacher) for every pre-training example; teachers drawn by `style_mix`."""
        rng = random.Random(f"reasonft-toy-student/{self.seed}")
        names = list(self.style_mix)
        weights = [self.style_mix[n] for n in names]
        problems = self.world.pretrain_problems(
            self.n_pretrain, self.pretrain_operators, self.pretrain_max_multiplier
        )
        return [(problem, rng.choices(names, weights)[0]) for problem in problems]

    def pretraining_examples(self, tokenizer: Any) -> list[dict[str, list[int]]]:
        """The pairs tokenised as every stage tokenises (prompt masked, the response terminator
        appended)."""
        examples = []
        for problem, teacher in self.pretraining_pairs():
            response = self.world.solve(problem, teacher).response
            example = self.prompt_format.encode(problem.text, response, tokenizer)
            if len(example["input_ids"]) > self.max_length:
                raise ValueError(
                    f"toy pre-training example {problem.prompt_id} has {len(example['input_ids'])} "
                    f"tokens > max_length={self.max_length}; raise model.build.max_length"
                )
            examples.append(example)
        return examples

    def train_student(self, tokenizer: Any) -> PreTrainedModel:
        """A fresh Qwen2 from the seed, pre-trained on `pretraining_examples(tokenizer)`."""
        examples = self.pretraining_examples(tokenizer)
        model = random_student(self.model_config(tokenizer), dtype="float32", seed=self.seed)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        # The student ends a response with the terminator it was trained on (`<|im_end|>` under
        # the chat template): that ends generation, as EOS does.
        ends = {tokenizer.eos_token_id, self.prompt_format.terminator_ids(tokenizer)[0]}
        model.generation_config.eos_token_id = sorted(ends) if len(ends) > 1 else tokenizer.eos_token_id
        with torch_threads(self.num_threads):
            self.last_losses = train_plain(
                model,
                examples,
                steps=self.steps,
                lr=self.lr,
                batch_size=self.batch_size,
                pad_id=tokenizer.pad_token_id,
                seed=self.seed,
                final_lr_ratio=self.final_lr_ratio,
                description="building toy student",
            )
        return model

    def prepare_tokenizer(self, folder: str | Path) -> Any:
        """Train the tokenizer, save it beside the Qwen2 config in `folder`, and load it back.

        The student is trained with the tokenizer *as loaded* by `AutoTokenizer` from a folder
        holding a Qwen2 config — the way every later stage loads it. (`train_tokenizer` already
        uses Qwen2's pre-tokenisation, so the ids are the same as in memory; loading it back
        keeps the student honest should that ever change.)
        """
        folder = Path(folder)
        trained = train_tokenizer(self.world.corpus(), self.vocab_size)
        config = AutoConfig.for_model(**self.model_config(trained))
        config.save_pretrained(folder)
        save_tokenizer(trained, folder)
        return load_tokenizer(str(folder))

    def build(self, cache_dir: str | Path) -> str:
        """The student folder under `cache_dir`: the shipped student copied there (its checksums
        checked first), or one trained here; nothing is done when it exists already."""
        folder = Path(cache_dir) / self.folder_name()
        if (folder / BUILD_REPORT).exists():
            return str(folder)
        shipped = self.shipped_folder()
        if shipped is not None:
            record = json.loads((shipped / SHIPPED_FILE).read_text())
            check_shipped(shipped, record)
            with atomic_path(folder) as tmp:
                shutil.copytree(shipped, tmp)
            return str(folder)
        started = time.perf_counter()
        cpu_started = time.process_time()
        with atomic_path(folder) as tmp:
            tokenizer = self.prepare_tokenizer(tmp)
            model = self.train_student(tokenizer)
            model.save_pretrained(tmp)
            losses = self.last_losses
            report = {
                "settings": self.settings(),
                "wall_seconds": round(time.perf_counter() - started, 2),
                "cpu_seconds": round(time.process_time() - cpu_started, 2),
                "n_parameters": sum(p.numel() for p in model.parameters()),
                "first_loss": losses[0],
                "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            }
            write_json(report, tmp / BUILD_REPORT)
        return str(folder)


def toy_student(cache_dir: str | Path | None = None) -> tuple[ToyWorld, PreTrainedModel, Any]:
    """The default run's toy world and base student (conf/config.yaml's `data=toy`, `model=toy`)
    for a notebook: (world, model, tokenizer). The student is the shipped one, copied into
    `cache_dir` (default: `paths.cache_dir`) in seconds; built there when the default settings
    have changed since it was shipped."""
    from hydra.utils import instantiate

    from reasonft.config import compose_config
    from reasonft.models.loading import load_student

    cfg = compose_config(["paths.output_dir=."])
    world = instantiate(cfg.data.source)
    builder = instantiate(cfg.model.build, world=world)
    folder = builder.build(cache_dir if cache_dir is not None else cfg.paths.cache_dir)
    model = load_student(folder, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation)
    return world, model.eval(), load_tokenizer(folder)
