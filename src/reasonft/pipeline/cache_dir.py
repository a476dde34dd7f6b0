"""The cache location (`paths.cache_dir`, default `$REASONFT_CACHE`) checked at start-up.

Every built student and stage artifact lives under it; a folder that cannot be created or
written would otherwise fail deep inside the first build, in a library's traceback that names
neither the environment variable nor the key.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

ENV = "REASONFT_CACHE"


def check_cache_dir(paths: Any) -> None:
    """Create `paths.cache_dir` (and `paths.artifacts_dir`) and write a probe file in each; on
    failure raise an error whose first line names where the location came from."""
    if paths is None or "cache_dir" not in paths:
        return
    for key in ("cache_dir", "artifacts_dir"):
        if key not in paths:
            continue
        folder = str(paths[key])
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except (OSError, ValueError) as error:
            env = os.environ.get(ENV)
            origin = (
                f"{ENV}={env!r} (paths.cache_dir defaults to it)"
                if env is not None and str(paths.cache_dir) == env
                else f"paths.cache_dir={str(paths.cache_dir)!r}"
            )
            raise OSError(
                f"paths.{key}={folder!r} is not a usable cache location, from {origin}: "
                f"{type(error).__name__}: {error}. Point {ENV} or paths.cache_dir at a folder "
                "this user can create and write."
            ) from None
