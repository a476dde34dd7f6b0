"""base: the student before fine-tuning, built from `model.build` (the toy world), or a GGUF file
converted once (`model.path`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

from reasonft.models.gguf import is_gguf
from reasonft.pipeline.components import build
from reasonft.pipeline.stage import Facts, KeyParts, Stage

GGUF_STUDENT = "reasonft.models.gguf.GGUFStudent"
# 2: the base student is built inside its artifact (listed in its manifest, a relative path);
# 1 recorded an absolute path to a folder outside it.
BASE_LAYOUT = 2


def builds_base(model: Any) -> bool:
    """Whether the model config builds its base student (a builder, or a GGUF file to convert)."""
    return model.get("build") is not None or is_gguf(model.get("path"))


class BaseStudent(Stage):
    name = "base"
    reads: ClassVar[tuple[str, ...]] = ("model.build",)
    unhashed: ClassVar[tuple[str, ...]] = ("model.path", "paths.cache_dir")

    def configure(self, run: Any, facts: Facts) -> None:
        model = self.config.model
        if model.get("build") is None:  # converted once, then a local checkpoint like any other
            self.builder = build("model.path", {"_target_": GGUF_STUDENT, "file": model.path})
        else:
            self.builder = build("model.build", model.build)

    def identity(self, key: KeyParts, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        # The builder's folder name hashes what the config cannot show (its code version, a
        # shipped student's files); the layout: the student lives inside the artifact.
        folder = {"folder": self.builder.folder_name()} if hasattr(self.builder, "folder_name") else {}
        return {}, {**folder, "layout": BASE_LAYOUT}

    def produce(self, inputs: Any, out_dir: Path) -> dict[str, Any]:
        # The student is built inside the artifact, so its manifest lists (and its reuse checks)
        # every file of it, and the summary holds a path relative to the artifact: a moved or
        # copied cache loads its own student; a damaged one is rebuilt like any artifact.
        if getattr(self.builder, "builds_anywhere", False):
            built = Path(self.builder.build(out_dir))
        else:
            # A builder tied to its own cache (a fetched package, another run's artifact): its
            # folder is copied in, never linked, so damage here cannot reach the source.
            source = Path(self.builder.build(inputs.config.paths.cache_dir))
            built = out_dir / source.name
            shutil.copytree(source, built)
        return {"model": str(built.relative_to(out_dir))}
