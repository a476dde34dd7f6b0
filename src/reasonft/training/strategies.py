"""Sharded-training strategies for `conf/strategy/`: FSDP wrapped per decoder layer, DeepSpeed ZeRO.

Both take their mixed precision from `trainer.precision` (Lightning builds the FSDP/DeepSpeed
precision plugin from it), so a preset changes precision in one place.

- `fsdp_strategy(layer_classes, ...)`: FSDP with one shard unit per decoder layer (the classes
  are import paths, e.g. `transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer`, so a
  model family is one override away) and optional activation checkpointing of the same layers.
- `deepspeed_strategy(stage, ...)`: DeepSpeed ZeRO stage 2 or 3; needs the `deepspeed` extra.
- `check_strategy(node)`: validates a `strategy` config node without building it (imports the
  layer classes, checks the extra), for a clear error at start-up instead of at the train stage.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import nn

DEEPSPEED_HINT = "pip install -e .[deepspeed]"
ZERO_STAGES = (1, 2, 3)


def import_module_class(path: str) -> type[nn.Module]:
    """The `torch.nn.Module` subclass at the import path `package.module.ClassName`."""
    module_name, _, class_name = str(path).rpartition(".")
    if not module_name:
        raise ValueError(
            f"strategy.layer_classes: {path!r} is not an import path; write it in full, e.g. "
            "transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"strategy.layer_classes: cannot import {module_name!r} for {path!r}: {err}"
        ) from err
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(
            f"strategy.layer_classes: {path!r} is not a torch.nn.Module class "
            f"(module {module_name!r} has no such class)"
        )
    return cls


def module_classes(paths: Sequence[str]) -> set[type[nn.Module]]:
    """The set of layer classes named by `paths` (at least one)."""
    if isinstance(paths, str):
        raise TypeError(
            f"strategy.layer_classes={paths!r}: give a list of import paths, not one string"
        )
    if not paths:
        raise ValueError(
            f"strategy.layer_classes={paths!r}: give a non-empty list of import paths, e.g. "
            "[transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer]"
        )
    return {import_module_class(p) for p in paths}


class LayerWrappedFSDPStrategy(FSDPStrategy):
    """FSDPStrategy that checks, before wrapping, that the model contains the configured layers.

    Without the check a wrong `layer_classes` silently wraps the whole model as one unit, which
    gathers every parameter on every rank (no memory saving) and still trains.
    """

    def __init__(self, layer_classes: set[type[nn.Module]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layer_classes = frozenset(layer_classes)

    def setup(self, trainer: pl.Trainer) -> None:
        if self.model is not None:
            require_layers(self.model, self.layer_classes)
        super().setup(trainer)


def require_layers(
    model: nn.Module, layer_classes: frozenset[type[nn.Module]] | set[type[nn.Module]]
) -> int:
    """Number of modules of `layer_classes` in `model`; a clear error when there is none."""
    count = sum(isinstance(m, tuple(layer_classes)) for m in model.modules())
    if count == 0:
        no_split = sorted(
            {
                name
                for m in model.modules()
                for name in (getattr(m, "_no_split_modules", None) or [])
            }
        )
        names = sorted(f"{c.__module__}.{c.__qualname__}" for c in layer_classes)
        raise ValueError(
            f"strategy.layer_classes={names}: the model has no such module, so FSDP would not "
            f"shard it layer by layer. The model's own decoder layers are {no_split or 'unknown'}; "
            "set strategy.layer_classes to their import paths."
        )
    return count


def fsdp_strategy(
    layer_classes: Sequence[str],
    activation_checkpointing: bool = False,
    sharding_strategy: str = "FULL_SHARD",
    state_dict_type: str = "full",
    cpu_offload: bool = False,
    **kwargs: Any,
) -> LayerWrappedFSDPStrategy:
    """FSDP with each `layer_classes` module as a shard unit (and checkpointed if asked).

    `state_dict_type="full"` writes a single-file checkpoint (gathered on rank 0) that
    `train.ckpt_path` can resume from under any world size; `"sharded"` is faster to write for
    large models but needs the same world size to resume. Other keyword arguments go to
    `pytorch_lightning.strategies.FSDPStrategy`.
    """
    classes = module_classes(layer_classes)
    return LayerWrappedFSDPStrategy(
        layer_classes=classes,
        auto_wrap_policy=classes,
        activation_checkpointing_policy=classes if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        **kwargs,
    )


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def require_deepspeed() -> None:
    """Raise a clear error naming the extra when `deepspeed` is not installed."""
    if not deepspeed_available():
        raise ImportError(
            "strategy=deepspeed_z2/deepspeed_z3 needs the `deepspeed` package, which is not "
            f"installed; install the extra with `{DEEPSPEED_HINT}` (or pick strategy=fsdp)"
        )


def deepspeed_strategy(
    stage: int,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    **kwargs: Any,
) -> DeepSpeedStrategy:
    """DeepSpeed ZeRO `stage` (2: optimizer state and gradients sharded; 3: parameters too).

    Other keyword arguments go to `pytorch_lightning.strategies.DeepSpeedStrategy`.
    """
    if stage not in ZERO_STAGES:
        raise ValueError(
            f"strategy.stage={stage!r}: DeepSpeed ZeRO stage must be one of {ZERO_STAGES}"
        )
    if offload_parameters and stage != 3:
        raise ValueError("strategy.offload_parameters needs ZeRO stage 3 (strategy=deepspeed_z3)")
    require_deepspeed()
    return DeepSpeedStrategy(
        stage=stage,
        offload_optimizer=offload_optimizer,
        offload_parameters=offload_parameters,
        **kwargs,
    )


def check_strategy(node: DictConfig | dict[str, Any] | None) -> None:
    """Validate a `strategy` config node without building it: call at start-up.

    Checks that the DeepSpeed extra is installed for `deepspeed_strategy` and that the FSDP
    `layer_classes` import; raises with the key to fix. Nodes of other shapes are left to
    `train.build_strategy`.
    """
    if not node:
        return
    target = node.get("_target_")
    if (
        target == f"{__name__}.deepspeed_strategy"
        or target == "pytorch_lightning.strategies.DeepSpeedStrategy"
    ):
        require_deepspeed()
    if str(node.get("name", "")).startswith("deepspeed"):
        require_deepspeed()
    if node.get("layer_classes") is not None:
        module_classes(list(node["layer_classes"]))


def full_state_dict(trainer: pl.Trainer, model: nn.Module, attribute: str = "model") -> dict[str, Any] | None:
    """The student's whole, unsharded state dict for saving, or None to save `model` as it is.

    With sharded parameters (FSDP, DeepSpeed ZeRO-3) each rank holds a slice, so
    `model.save_pretrained` on rank 0 would write flattened or empty tensors. This gathers the
    full tensors onto rank 0 (on CPU). It is a collective call: every rank must make it. Returns
    the state dict on rank 0 and None elsewhere; None on every rank when nothing is sharded.
    `attribute` is the student's attribute name in the LightningModule.
    """
    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy):
        # Lightning's FSDP default (state_dict_type="full") gathers to rank 0, offloaded to CPU.
        state = strategy.lightning_module_state_dict()
        if not trainer.is_global_zero:
            return None
        prefix = f"{attribute}."
        return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if trainer.is_global_zero:
                return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
        return None
    return None
