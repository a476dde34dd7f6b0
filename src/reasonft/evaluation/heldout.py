"""The fixed held-out set of the teacher-forced entropy (`eval.heldout_entropy`).

{split | path, fields, limit}: the data source's teacher pool of `split`, or a records file
(`path`, read with `fields`); `limit` records of it, chosen by a seeded draw so that every
evaluation measures the same ones.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from reasonft.data.loaders import load_records
from reasonft.data.records import as_dataset, require_columns
from reasonft.evaluation.benchmarks import plain, resolve_path

HELDOUT_KEYS = ("split", "path", "fields", "limit")
HELDOUT_FIELDS = {"prompt": "prompt", "answer": "answer", "response": "response"}


def check_heldout(heldout: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The held-out settings as a plain dict (None: off); unknown keys and a missing or double
    source stop here, naming `eval.heldout_entropy`."""
    if not heldout:
        return None
    out = dict(plain(heldout))
    unknown = sorted(set(out) - set(HELDOUT_KEYS))
    if unknown:
        raise ValueError(f"eval.heldout_entropy: unknown key(s) {unknown}; known: {', '.join(HELDOUT_KEYS)}")
    if (out.get("split") is None) == (out.get("path") is None):
        raise ValueError("eval.heldout_entropy: give exactly one of `split` or `path`")
    return out


def load_heldout(
    heldout: Mapping[str, Any], benchmarks_dir: Path | None, seed: int, data_source: Any = None
) -> datasets.Dataset:
    """The held-out records (prompt, response, ...): a seeded subset of `limit` of them."""
    if heldout.get("path") is not None:
        fields = dict(heldout.get("fields") or HELDOUT_FIELDS)
        ds, _ = load_records(resolve_path(heldout["path"], benchmarks_dir), fields)
    else:
        if data_source is None or not hasattr(data_source, "teacher_pool"):
            raise ValueError(
                f"eval.heldout_entropy.split={heldout['split']!r} needs a data_source with "
                "teacher_pool(split); pass data_source or set heldout_entropy.path"
            )
        ds = as_dataset(data_source.teacher_pool(heldout["split"]))
    require_columns(ds, ("prompt", "response"), "eval.heldout_entropy")
    limit = heldout.get("limit")
    if limit is not None and limit < len(ds):
        chosen = sorted(random.Random(seed).sample(range(len(ds)), int(limit)))
        ds = ds.select(chosen)
    return ds
