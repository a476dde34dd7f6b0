"""Which dtype the student's parameters (and so AdamW's moments) have while it trains.

`model.dtype` is how a checkpoint is loaded to score, sample and evaluate: bf16 halves the memory
of inference. Training is another matter: Lightning's `bf16-mixed` (and `16-mixed`) autocast the
compute but leave parameters and optimiser states in whatever dtype the module has. A module
loaded in bf16 would train in pure bf16, without an fp32 master copy, and at the paper's learning
rates most updates would round away (a bf16 weight near 1 moves in steps of 2^-8 ≈ 0.004; an
update of lr 5e-5 is far below that). The official recipe keeps fp32 master weights (DeepSpeed
ZeRO-2 with bf16). So the train stage loads the student in float32 whatever `model.dtype` is;
pure low-precision training happens only when asked for by its Lightning name
(`trainer.precision=bf16-true` / `16-true`), and start-up says so.

FSDP (`strategy=fsdp`) shards the fp32 module and casts to bf16 for compute and reduction
(Lightning's `FSDPPrecision` mixed-precision policy); DeepSpeed's bf16 mode keeps fp32 master
partitions in its optimiser. Both start from the fp32 module loaded here.
"""

from __future__ import annotations

PURE_LOW_PRECISION = ("bf16-true", "16-true", "bf16", "16", "half")


def is_pure_low_precision(precision: object) -> bool:
    """Lightning's names for training every parameter in a 16-bit dtype."""
    return str(precision) in PURE_LOW_PRECISION


def training_dtype(precision: object, model_dtype: str | None) -> str | None:
    """The dtype the train stage loads the student in: float32 (master weights) unless the
    trainer's precision asks for pure low-precision training (then `model.dtype`, which
    Lightning converts to the 16-bit dtype anyway)."""
    if is_pure_low_precision(precision):
        return model_dtype
    return "float32"


def precision_note(precision: object, model_dtype: str | None) -> str | None:
    """What start-up says about the training dtypes, or None when there is nothing to say."""
    if is_pure_low_precision(precision):
        return (
            f"trainer.precision={precision}: pure low-precision training, as asked: parameters "
            "and AdamW moments in 16 bits, no fp32 master copy (small updates round away; "
            "bf16-mixed keeps fp32 master weights)"
        )
    if model_dtype not in (None, "auto", "float32"):
        return (
            f"model.dtype={model_dtype} loads the student for scoring, sampling and evaluation; "
            f"training loads it in float32 (master weights and AdamW moments; "
            f"trainer.precision={precision} sets the compute)"
        )
    return None
