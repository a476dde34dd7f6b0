"""`model.build` for a student that is itself the fine-tuned output of another reasonft run.

A real student often needs a preparation of its own before an experiment can start from it: the
SmolLM2 checkpoint as shipped never writes `\\boxed{}`, so it first gets a format warm-up
(`experiment=smollm2_warmup`). `PipelineStudent(overrides=[...])` composes that run from the same
config tree, and its `build` runs it up to `train` through the same artifact store: built once,
reused by content key, its whole config (and the model it starts from) in the key of the
student it hands over.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from reasonft.config import compose_config


class PipelineStudent:
    """The fine-tuned student of the run `overrides` describe (stages up to `train`)."""

    def __init__(self, overrides: Sequence[str], cache_dir: str | None = None) -> None:
        if isinstance(overrides, str) or not overrides:
            raise ValueError(
                f"model.build.overrides={overrides!r}: give the run as a list of overrides, "
                "e.g. [experiment=smollm2_warmup]"
            )
        if any(str(o).split("=", 1)[0].lstrip("+~") == "stages" for o in overrides):
            raise ValueError("model.build.overrides: the run always ends at `train`; drop stages=")
        self.overrides = [str(o) for o in overrides]
        self.cache_dir = cache_dir

    def config(self) -> DictConfig:
        overrides = [*self.overrides, "stages=[train]"]
        if self.cache_dir is not None:
            overrides.append(f"paths.cache_dir={self.cache_dir}")
        cfg = compose_config(overrides)  # inside run.py, in its Hydra
        with open_dict(cfg):  # its logs and checkpoints are not the calling run's
            cfg.paths.output_dir = tempfile.mkdtemp(prefix="reasonft-pipeline-student-")
        return cfg

    @cached_property
    def pipeline(self) -> Any:
        from reasonft.pipeline.runner import Pipeline

        return Pipeline(self.config())

    def folder_name(self) -> str:
        """Names the student by its train artifact's key (its whole run, base model included)."""
        return f"train-{self.pipeline.key('train')}"

    def build(self, cache_dir: str | Path) -> str:
        if self.cache_dir is not None and Path(self.cache_dir) != Path(cache_dir):
            raise ValueError(
                f"model.build.cache_dir={self.cache_dir} is not paths.cache_dir={cache_dir}"
            )
        return self.pipeline.trained_model_path()
