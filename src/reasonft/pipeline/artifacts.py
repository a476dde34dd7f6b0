"""Content-addressed stage artifacts.

A stage's artifact lives in `<artifacts_dir>/<stage>/<key>/`, where the key hashes the stage's
config and its inputs' keys. The folder is built under a temporary name and renamed when
complete, so an existing folder is always a finished artifact and is reused as is.

Processes that need the same artifact at once (the tasks of a multi-task Slurm job, parallel
sweep jobs sharing a base student) take a lock file beside it: the first builds, the others
wait and then reuse its result, instead of building it again and replacing it under a reader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import DictConfig, ListConfig, OmegaConf

from reasonft.io import atomic_path

log = logging.getLogger(__name__)

META_FILE = "artifact.json"


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def content_key(config: Any, inputs: dict[str, str]) -> str:
    """A short, stable hash of a stage's config and the keys of the artifacts it reads."""
    payload = json.dumps({"config": _plain(config), "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path
    reused: bool
    seconds: float

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / META_FILE).read_text())


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def build(
        self,
        stage: str,
        config: Any,
        inputs: dict[str, str],
        produce: Callable[[Path], dict[str, Any] | None],
    ) -> Artifact:
        """Return the artifact for (stage, config, inputs), running `produce(tmp_dir)` if missing.

        `produce` writes its files into the folder it is given and may return a summary that is
        stored in the artifact's metadata.
        """
        key = content_key(config, inputs)
        final = self.path(stage, key)
        if (final / META_FILE).exists():
            return Artifact(stage, key, final, reused=True, seconds=0.0)
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(final.parent / f".{key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("%s/%s is being built by another process; waiting for it", stage, key)
            lock.acquire()
        try:
            if (final / META_FILE).exists():  # built while this process waited
                return Artifact(stage, key, final, reused=True, seconds=0.0)
            return self._produce(stage, key, final, config, inputs, produce)
        finally:
            lock.release()

    def _produce(
        self,
        stage: str,
        key: str,
        final: Path,
        config: Any,
        inputs: dict[str, str],
        produce: Callable[[Path], dict[str, Any] | None],
    ) -> Artifact:
        start = time.perf_counter()
        with atomic_path(final) as tmp:
            tmp.mkdir(parents=True)
            summary = produce(tmp) or {}
            meta = {
                "stage": stage,
                "key": key,
                "inputs": inputs,
                "config": _plain(config),
                "summary": summary,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            # The metadata file is written last: a folder without it never counts as complete.
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return Artifact(stage, key, final, reused=False, seconds=time.perf_counter() - start)
