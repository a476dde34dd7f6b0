"""Content-addressed stage artifacts, checked whenever they are reused.

A stage's artifact lives in `<artifacts_dir>/<stage>/<key>/`, where the key hashes the stage's
fully resolved config and its inputs (upstream artifacts by stage and key, so a key is known
before anything is built; other inputs by their identity, e.g. `path_identity` of a model). The
folder is built under a temporary name (`.tmp-<key>-<8 hex>`) and renamed when complete; its
`artifact.json`, written last, holds a manifest of every file (see `manifest`) and the digest
of each upstream artifact it was built from.

Reusing an artifact first verifies it: its files against the manifest, and each upstream's
digest against the one it was built from. A mismatch is logged as a warning naming the folder
and the reason, and the artifact is removed and built again — so a damaged or tampered
artifact is rebuilt, and with it everything downstream, as each is requested.

Processes that need the same artifact at once (the tasks of a multi-task Slurm job, parallel
sweep jobs sharing a base student) take a lock file beside it: the first builds, the others
wait and then reuse its result, instead of building it again and replacing it under a reader.
The lock holder removes temporary folders that killed builds of the same key left behind;
`clean_stale` removes those of every key nobody is building.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from reasonft.io import atomic_path, remove_path, temp_name, temp_siblings, temp_target
from reasonft.pipeline.identity import resolved_plain
from reasonft.pipeline.manifest import (
    VERIFY_LEVELS,
    Verify,
    build_manifest,
    manifest_digest,
    problems,
    unlisted_files,
)

log = logging.getLogger(__name__)

META_FILE = "artifact.json"


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path  # always the final folder, never the temporary one it was built in
    reused: bool
    seconds: float
    digest: str  # hash of the manifest: changes when the artifact's content does

    @property
    def ref(self) -> str:
        return f"{self.stage}/{self.key}"

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / META_FILE).read_text())


def _input_identity(name: str, value: Any) -> Any:
    """What a key hashes for one input: an upstream artifact by stage and key (its digest is
    checked separately on reuse); anything else as resolved plain data."""
    if isinstance(value, Artifact):
        return value.ref
    return resolved_plain(value, f"inputs.{name}")


def content_key(config: Any, inputs: Mapping[str, Any]) -> str:
    """A short, stable hash of a stage's resolved config and its inputs' identities.

    `inputs` maps a name to an upstream `Artifact` or to plain identity data (a string, a dict
    such as `path_identity(...)`). Raises TypeError/ValueError naming the path of any value that
    is not plain data once resolved.
    """
    payload = {
        "config": resolved_plain(config, "config"),
        "inputs": {name: _input_identity(name, value) for name, value in inputs.items()},
    }
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, allow_nan=False).encode()
    ).hexdigest()[:16]


class ArtifactStore:
    def __init__(self, root: str | Path, verify: Verify = "size") -> None:
        """`verify`: how a reused artifact's files are checked against its manifest — "size"
        (sizes, parquet row counts, re-hash of files whose mtime changed) or "checksum"
        (re-hash everything)."""
        if verify not in VERIFY_LEVELS:
            raise ValueError(f"paths.artifacts_verify={verify!r}: choose one of {list(VERIFY_LEVELS)}")
        self.root = Path(root)
        self.verify = verify

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def build(
        self,
        stage: str,
        config: Any,
        inputs: Mapping[str, Any],
        produce: Callable[[Path], dict[str, Any] | None],
    ) -> Artifact:
        """Return the artifact for (stage, config, inputs), running `produce(tmp_dir)` if it is
        missing or fails verification.

        `produce` writes its files into the folder it is given and may return a summary that is
        stored in the artifact's metadata (paths inside the temporary folder are rewritten to
        the final one).
        """
        key = content_key(config, inputs)
        final = self.path(stage, key)
        artifact, _ = self._check(stage, key, final, inputs)
        if artifact is not None:
            return artifact
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = self._lock(final)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("%s/%s is being built by another process; waiting for it", stage, key)
            lock.acquire()
        try:
            self._remove_stale_temps(final)
            artifact, reason = self._check(stage, key, final, inputs)  # built while this waited?
            if artifact is not None:
                return artifact
            if reason is not None:
                log.warning("artifact %s: %s; removing it and building it again", final, reason)
                self._discard(final)
            return self._produce(stage, key, final, config, inputs, produce)
        finally:
            lock.release()

    def find(self, stage: str, config: Any, inputs: Mapping[str, Any]) -> Artifact | None:
        """The verified artifact for (stage, config, inputs) if it is complete now, else None;
        takes no lock and never removes or builds anything."""
        key = content_key(config, inputs)
        return self._check(stage, key, self.path(stage, key), inputs)[0]

    def wait_for(self, stage: str, config: Any, inputs: Mapping[str, Any]) -> Artifact:
        """The artifact another process is building (or has built): waits for its lock, then
        returns it; raises when that process left none (it failed). For the ranks > 0 of a
        multi-process stage, which take part in rank 0's build but must never build themselves."""
        key = content_key(config, inputs)
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(final):
            artifact, reason = self._check(stage, key, final, inputs)
        if artifact is None:
            raise RuntimeError(
                f"{final}: the process building it (rank 0) left no usable artifact "
                f"({reason or 'nothing there'}); see its log for the error"
            )
        return artifact

    def clean_stale(self) -> list[Path]:
        """Remove the temporary folders of killed builds (those whose key's lock is free);
        return what was removed. Meant to be called once at start-up."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for tmp in sorted(stage_dir.iterdir()):
                final = temp_target(tmp)
                if final is None:
                    continue
                lock = self._lock(final)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue  # its build is running
                try:
                    if tmp.exists():
                        remove_path(tmp)
                        removed.append(tmp)
                finally:
                    lock.release()
        if removed:
            log.info(
                "removed %d temporary folder(s) of killed builds under %s", len(removed), self.root
            )
        return removed

    # -- internals -------------------------------------------------------------------------------
    def _lock(self, final: Path) -> FileLock:
        return FileLock(str(final.parent / f".{final.name}.lock"))

    def _remove_stale_temps(self, final: Path) -> None:
        """Called with the key's lock held: no live build of this key owns these."""
        for tmp in temp_siblings(final):
            log.info("removing %s, left by a killed build of %s", tmp, final)
            remove_path(tmp)

    def _discard(self, final: Path) -> None:
        # Renamed first, so a process killed while deleting leaves a temporary folder (cleaned
        # later), never a half-deleted artifact.
        doomed = temp_name(final)
        final.rename(doomed)
        remove_path(doomed)

    def _check(
        self, stage: str, key: str, final: Path, inputs: Mapping[str, Any]
    ) -> tuple[Artifact | None, str | None]:
        """(the verified artifact, None), (None, why it cannot be reused), or (None, None) when
        there is nothing at `final`."""
        meta_path = final / META_FILE
        if not meta_path.exists():
            return None, (f"no {META_FILE}" if final.exists() else None)
        try:
            meta = json.loads(meta_path.read_text())
            manifest = meta["manifest"]
            recorded_inputs = meta["inputs"]
            found = problems(final, manifest, self.verify)
        except (OSError, ValueError, KeyError, TypeError) as err:
            return (
                None,
                f"{META_FILE} is unreadable or has no manifest ({type(err).__name__}: {err})",
            )
        for name, value in inputs.items():
            if not isinstance(value, Artifact):
                continue  # plain identities are in the key itself
            recorded = recorded_inputs.get(name)
            built_from = recorded.get("digest") if isinstance(recorded, dict) else None
            if built_from != value.digest:
                found.append(
                    f"input {name!r} ({value.ref}) has digest {value.digest[:12]} now, "
                    f"this was built from {str(built_from)[:12]}"
                )
        if found:
            return None, "; ".join(found)
        extra = unlisted_files(final, manifest, META_FILE)
        if extra:
            log.warning("artifact %s: files not in its manifest (ignored): %s", final, extra)
        return Artifact(
            stage, key, final, reused=True, seconds=0.0, digest=manifest_digest(manifest)
        ), None

    def _produce(
        self,
        stage: str,
        key: str,
        final: Path,
        config: Any,
        inputs: Mapping[str, Any],
        produce: Callable[[Path], dict[str, Any] | None],
    ) -> Artifact:
        start = time.perf_counter()
        with atomic_path(final) as tmp:
            tmp.mkdir(parents=True)
            summary = produce(tmp) or {}
            manifest = build_manifest(tmp, exclude=META_FILE)
            digest = manifest_digest(manifest)
            meta = {
                "stage": stage,
                "key": key,
                "inputs": {name: _recorded_input(name, value) for name, value in inputs.items()},
                "config": resolved_plain(config, "config"),
                "summary": resolved_plain(_final_paths(summary, tmp, final), "summary"),
                "manifest": manifest,
                "digest": digest,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            # The metadata file is written last: a folder without it never counts as complete.
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
        return Artifact(
            stage, key, final, reused=False, seconds=time.perf_counter() - start, digest=digest
        )


def _recorded_input(name: str, value: Any) -> Any:
    if isinstance(value, Artifact):
        return {"artifact": value.ref, "digest": value.digest}
    return resolved_plain(value, f"inputs.{name}")


def _final_paths(value: Any, tmp: Path, final: Path) -> Any:
    """A summary with paths into the temporary folder pointing at the final one, paths as
    strings and numpy values as Python ones."""
    if isinstance(value, dict):
        return {k: _final_paths(v, tmp, final) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_final_paths(v, tmp, final) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return value.replace(str(tmp), str(final))
    if isinstance(value, (np.generic, np.ndarray)):
        return _final_paths(value.tolist(), tmp, final)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value
