"""A checkpoint with random weights from any HF config: real compute cost, no download."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from reasonft.io import atomic_path
from reasonft.models.loading import load_tokenizer, random_student


class RandomStudentBuilder:
    """Builds (once) and caches `save_pretrained` of a randomly initialised model + a tokenizer."""

    def __init__(
        self,
        config: str,
        tokenizer: str | None,
        seed: int = 0,
        dtype: str = "float32",
        config_overrides: dict[str, Any] | None = None,
    ) -> None:
        if not tokenizer:
            raise ValueError(
                "model=random needs model.build.tokenizer: a tokenizer folder whose vocabulary fits "
                "the config's vocab_size (e.g. a real checkpoint's folder, or the toy student's)"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.seed = seed
        self.dtype = dtype
        self.config_overrides = dict(config_overrides or {})

    builds_anywhere = True  # build(folder) needs nothing else there: the base stage builds into its artifact

    def build(self, cache_dir: str) -> str:
        cfg = json.loads(Path(self.config).read_text())
        cfg.update(self.config_overrides)
        key = hashlib.sha256(
            json.dumps([cfg, self.tokenizer, self.seed, self.dtype], sort_keys=True).encode()
        ).hexdigest()[:16]
        final = Path(cache_dir) / "random_students" / key
        if (final / "config.json").exists():
            return str(final)
        tokenizer = load_tokenizer(self.tokenizer)
        if len(tokenizer) > cfg.get("vocab_size", 0):
            raise ValueError(
                f"tokenizer {self.tokenizer} has {len(tokenizer)} tokens, more than the model "
                f"config's vocab_size={cfg.get('vocab_size')}"
            )
        model = random_student(cfg, dtype=self.dtype, seed=self.seed)
        with atomic_path(final) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        return str(final)
