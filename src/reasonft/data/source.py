"""FileSource: the data-source interface (`problems`, `teacher_pool`, `describe`) over files.

Each set is a spec `{path, fields, source?, strip_suffix?, defaults?}` read by
`load_records`; what each load read and left out is kept in `reports` for the run's report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
from hydra.utils import to_absolute_path

from reasonft.data.loaders import LoadReport, OnBadRecord, load_records

SPEC_KEYS = ("path", "fields", "source", "strip_suffix", "defaults")


class FileSource:
    """Problems (train/test) and a teacher-response pool read from JSON, JSONL or Parquet.

    Args:
        problems: spec of the training problems (split "train").
        teacher_pool: spec of the teacher responses; None (or a null path) means no pool.
        test: spec of the held-out problems (split "test"); None means no test split.
        on_bad_record: "error" or "skip", for every file (see `load_records`).

    A pool whose spec maps no `prompt_id` takes the ids of the training problems with the same
    prompt text, so teacher responses, self samples and problems share one id per prompt.
    """

    def __init__(
        self,
        problems: Mapping[str, Any],
        teacher_pool: Mapping[str, Any] | None = None,
        test: Mapping[str, Any] | None = None,
        on_bad_record: OnBadRecord = "error",
    ) -> None:
        self.specs: dict[str, dict[str, Any]] = {"train": _check_spec(problems, "problems")}
        if test is not None and test.get("path") is not None:
            self.specs["test"] = _check_spec(test, "test")
        if teacher_pool is not None and teacher_pool.get("path") is not None:
            self.specs["teacher_pool"] = _check_spec(teacher_pool, "teacher_pool")
        if on_bad_record not in ("error", "skip"):
            raise ValueError(f"on_bad_record={on_bad_record!r}: choose 'error' or 'skip'")
        self.on_bad_record = on_bad_record
        self.reports: dict[str, LoadReport] = {}
        self.alignment: dict[str, int] = {}
        self._loaded: dict[str, datasets.Dataset] = {}

    def problems(self, split: str) -> datasets.Dataset:
        """Records with prompt_id, prompt, answer (and source when the spec gives one)."""
        if split not in ("train", "test"):
            raise ValueError(f"file source: unknown split {split!r}; choose 'train' or 'test'")
        if split not in self.specs:
            raise ValueError("file source: no test set configured; set data.source.test.path")
        return self._load(split)

    def teacher_pool(self, split: str = "train") -> datasets.Dataset:
        """One record per teacher response (prompt_id, prompt, answer, response, source, ...)."""
        if split != "train":
            raise ValueError(
                f"file source: the teacher pool answers the 'train' prompts, not {split!r}"
            )
        if "teacher_pool" not in self.specs:
            raise ValueError(
                "file source: no teacher pool configured; set data.source.teacher_pool.path"
            )
        return self._load("teacher_pool")

    @property
    def has_teacher_pool(self) -> bool:
        return "teacher_pool" in self.specs

    @property
    def content_version(self) -> dict[str, list[int] | None]:
        """Size and modification time of each file, seen by the pipeline's artifact keys: a file
        edited or replaced at the same path is other data (None for a missing file)."""
        version: dict[str, list[int] | None] = {}
        for name, spec in self.specs.items():
            path = Path(spec["path"])
            stat = path.stat() if path.is_file() else None
            version[name] = [stat.st_size, stat.st_mtime_ns] if stat else None
        return version

    def describe(self) -> dict[str, Any]:
        """Files (with size and modification time), mappings, counts and load reports."""
        out: dict[str, Any] = {"type": "files", "on_bad_record": self.on_bad_record, "sets": {}}
        for name, spec in self.specs.items():
            dataset = self._load(name)
            stat = Path(spec["path"]).stat()
            out["sets"][name] = {
                "path": spec["path"],
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "fields": dict(spec["fields"]),
                "records": len(dataset),
                "prompts": len(set(dataset["prompt_id"])),
                "load": self.reports[name].to_dict(),
            }
        if self.alignment:
            out["sets"]["teacher_pool"]["prompt_alignment"] = dict(self.alignment)
        return out

    def _load(self, name: str) -> datasets.Dataset:
        if name not in self._loaded:
            spec = self.specs[name]
            if not Path(spec["path"]).is_file():
                key = "problems" if name == "train" else name
                raise FileNotFoundError(f"data.source.{key}.path: no file at {spec['path']}")
            dataset, report = load_records(
                spec["path"],
                spec["fields"],
                on_bad_record=self.on_bad_record,
                source=spec.get("source"),
                defaults=spec.get("defaults"),
                strip_suffix=spec.get("strip_suffix"),
            )
            self.reports[name] = report
            if name == "teacher_pool" and "prompt_id" not in spec["fields"]:
                dataset, self.alignment = align_prompt_ids(
                    dataset, self._load("train"), Path(spec["path"]).stem
                )
            self._loaded[name] = dataset
        return self._loaded[name]


def align_prompt_ids(
    pool: datasets.Dataset, problems: datasets.Dataset, stem: str
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Give pool records the prompt_id of the problem with the same prompt text.

    Prompts not among the problems share one id per distinct text, "<stem>-p<k>". Returns the
    pool and counts of records matched and unmatched, and of unmatched distinct prompts.
    """
    by_text: dict[str, str] = {}
    for text, prompt_id in zip(problems["prompt"], problems["prompt_id"], strict=True):
        by_text.setdefault(text, prompt_id)
    extra: dict[str, str] = {}
    ids: list[str] = []
    matched = 0
    for text in pool["prompt"]:
        if text in by_text:
            ids.append(by_text[text])
            matched += 1
        else:
            ids.append(extra.setdefault(text, f"{stem}-p{len(extra)}"))
    pool = pool.remove_columns("prompt_id").add_column("prompt_id", ids)
    pool = pool.select_columns(["prompt_id", *[c for c in pool.column_names if c != "prompt_id"]])
    counts = {
        "matched_records": matched,
        "unmatched_records": len(ids) - matched,
        "unmatched_prompts": len(extra),
    }
    return pool, counts


def _check_spec(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"data.source.{name}: expected a mapping with path and fields, got {type(spec).__name__}"
        )
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ValueError(
            f"data.source.{name}: unknown key(s) {unknown}; allowed: {list(SPEC_KEYS)}"
        )
    if not spec.get("path"):
        raise ValueError(f"data.source.{name}.path is not set")
    if not isinstance(spec.get("fields"), Mapping):
        raise TypeError(f"data.source.{name}.fields must map record columns to paths in the file")
    out = {k: spec[k] for k in SPEC_KEYS if spec.get(k) is not None}
    out["path"] = to_absolute_path(str(Path(str(spec["path"])).expanduser()))
    out["fields"] = {str(k): str(v) for k, v in spec["fields"].items() if v is not None}
    if "defaults" in out:
        out["defaults"] = dict(out["defaults"])
    return out
