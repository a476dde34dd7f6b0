"""FileSource: the data-source interface (`problems`, `teacher_pool`, `describe`) over files.

Each set is a spec `{path, fields, source?, strip_suffix?, defaults?}` read by
`load_records`; what each load read and left out is kept in `reports`, and `load_report()`
gives all of it as one plain dict for the stage reports.

Teacher records are joined to the training problems (METHODS.md: one id per problem, shared by
teacher responses and self samples): by `prompt_id` when the pool maps one, else by prompt text,
prompt texts always compared after `fields.normalize_prompt_text` (PROMPT_TEXT_NORMALISATION).
A joined record takes the problem's id and exact prompt text. A record whose problem is not
among the training problems is kept, dropped or an error, as `unmatched_teacher` says.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import datasets
from hydra.utils import to_absolute_path

from reasonft.data.fields import PROMPT_TEXT_NORMALISATION, normalize_prompt_text
from reasonft.data.load_report import LoadReport
from reasonft.data.loaders import OnBadRecord, load_records
from reasonft.data.record_checks import MaxBadRecords, PromptIdConflict, check_max_bad_records

log = logging.getLogger(__name__)

SPEC_KEYS = ("path", "fields", "source", "strip_suffix", "defaults")
UnmatchedTeacher = Literal["keep", "drop", "error"]
UNMATCHED_TEACHER = ("keep", "drop", "error")
_EXAMPLES = 5


class UnmatchedTeacherRecords(ValueError):
    """Teacher records whose problem is not among the training problems (policy "error")."""


class FileSource:
    """Problems (train/test) and a teacher-response pool read from JSON, JSONL or Parquet.

    Args:
        problems: spec of the training problems (split "train").
        teacher_pool: spec of the teacher responses; None (or a null path) means no pool.
        test: spec of the held-out problems (split "test"); None means no test split.
        on_bad_record: "error" or "skip", for every file (see `load_records`).
        max_bad_records: with "skip", the most records each file may lose: a count, or a share
            of the records read (float in [0, 1)); None = no cap.
        unmatched_teacher: a teacher record whose problem is not a training problem is "keep"
            (it keeps its own id, or one id per distinct prompt text, "<pool stem>-p<k>"),
            "drop" (left out, counted) or "error".
    """

    def __init__(
        self,
        problems: Mapping[str, Any],
        teacher_pool: Mapping[str, Any] | None = None,
        test: Mapping[str, Any] | None = None,
        on_bad_record: OnBadRecord = "error",
        max_bad_records: MaxBadRecords = None,
        unmatched_teacher: UnmatchedTeacher = "keep",
    ) -> None:
        self.specs: dict[str, dict[str, Any]] = {"train": _check_spec(problems, "problems")}
        if test is not None and test.get("path") is not None:
            self.specs["test"] = _check_spec(test, "test")
        if teacher_pool is not None and teacher_pool.get("path") is not None:
            self.specs["teacher_pool"] = _check_spec(teacher_pool, "teacher_pool")
        if on_bad_record not in ("error", "skip"):
            raise ValueError(
                f"data.on_bad_record={on_bad_record!r}: choose 'error' or 'skip'"
            )
        if unmatched_teacher not in UNMATCHED_TEACHER:
            raise ValueError(
                f"data.unmatched_teacher={unmatched_teacher!r}: choose one of {UNMATCHED_TEACHER}"
            )
        self.on_bad_record = on_bad_record
        self.max_bad_records = check_max_bad_records(max_bad_records)
        self.unmatched_teacher = unmatched_teacher
        self.reports: dict[str, LoadReport] = {}
        self.teacher_join: dict[str, Any] = {}
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

    def load_report(self) -> dict[str, Any]:
        """Every load this source did so far, as a plain dict (JSON-ready, easy to print).

        {"on_bad_record", "max_bad_records", "records_read", "loaded", "skipped" (totals),
         "skipped_by_file": {file: {reason: {"count", "examples"}}} (files with skips only),
         "sets": {set: that file's LoadReport dict}, "teacher_join": {...} (after a pool load)}
        """
        sets = {name: report.to_dict() for name, report in self.reports.items()}
        out: dict[str, Any] = {
            "on_bad_record": self.on_bad_record,
            "max_bad_records": self.max_bad_records,
            "records_read": sum(r.records_read for r in self.reports.values()),
            "loaded": sum(r.loaded for r in self.reports.values()),
            "skipped": sum(r.skipped for r in self.reports.values()),
            "skipped_by_file": {
                r.path: r.to_dict()["skipped_by_reason"]
                for r in self.reports.values()
                if r.skipped
            },
            "sets": sets,
        }
        if self.teacher_join:
            out["teacher_join"] = dict(self.teacher_join)
        return out

    def describe(self) -> dict[str, Any]:
        """Files (with size and modification time), mappings, counts and load reports."""
        out: dict[str, Any] = {
            "type": "files",
            "on_bad_record": self.on_bad_record,
            "max_bad_records": self.max_bad_records,
            "unmatched_teacher": self.unmatched_teacher,
            "sets": {},
        }
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
        if self.teacher_join:
            out["sets"]["teacher_pool"]["prompt_alignment"] = dict(self.teacher_join)
        return out

    def _load(self, name: str) -> datasets.Dataset:
        if name not in self._loaded:
            spec = self.specs[name]
            key = "problems" if name == "train" else name
            if not Path(spec["path"]).is_file():
                raise FileNotFoundError(f"data.source.{key}.path: no file at {spec['path']}")
            dataset, report = load_records(
                spec["path"],
                spec["fields"],
                on_bad_record=self.on_bad_record,
                source=spec.get("source"),
                defaults=spec.get("defaults"),
                strip_suffix=spec.get("strip_suffix"),
                max_bad_records=self.max_bad_records,
            )
            self.reports[name] = report
            if name == "teacher_pool":
                self._load("train")
                by_id = "prompt_id" in spec["fields"] or "prompt_id" in spec.get("defaults", {})
                dataset, self.teacher_join = join_teacher_pool(
                    dataset,
                    report,
                    self._loaded["train"],
                    self.reports["train"],
                    by_id=by_id,
                    unmatched=self.unmatched_teacher,
                )
            self._loaded[name] = dataset
        return self._loaded[name]


def join_teacher_pool(
    pool: datasets.Dataset,
    pool_report: LoadReport,
    problems: datasets.Dataset,
    problems_report: LoadReport,
    by_id: bool,
    unmatched: UnmatchedTeacher = "keep",
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Join teacher records to the training problems; returns the pool and the join report.

    `by_id`: join on the pool's own `prompt_id`; a joined record whose prompt text differs from
    its problem's (after normalize_prompt_text) raises PromptIdConflict naming both positions.
    Otherwise join on the normalised prompt text. A joined record takes the problem's id and
    exact prompt text. Unmatched records: `unmatched` = "keep" (own id when joined by id, else
    "<pool stem>-p<k>", one per distinct normalised text), "drop" or "error".
    """
    if unmatched not in UNMATCHED_TEACHER:
        raise ValueError(f"data.unmatched_teacher={unmatched!r}: choose one of {UNMATCHED_TEACHER}")
    problem_by_id: dict[str, tuple[str, int]] = {}
    problem_by_text: dict[str, int] = {}
    shared_text = 0
    for row, (prompt_id, text) in enumerate(zip(problems["prompt_id"], problems["prompt"], strict=True)):
        normalised = normalize_prompt_text(text)
        problem_by_id.setdefault(prompt_id, (normalised, row))
        if problem_by_text.setdefault(normalised, row) != row:
            shared_text += 1
    problem_ids, problem_texts = problems["prompt_id"], problems["prompt"]

    stem = Path(pool_report.path).stem
    extra_ids: dict[str, str] = {}
    ids: list[str] = []
    texts: list[str] = []
    keep_rows: list[int] = []
    matched = realigned = unmatched_records = text_would_match = 0
    unmatched_prompts: set[str] = set()
    examples: list[str] = []
    for row, (own_id, text) in enumerate(zip(pool["prompt_id"], pool["prompt"], strict=True)):
        normalised = normalize_prompt_text(text)
        problem_row: int | None = None
        if by_id:
            known = problem_by_id.get(own_id)
            if known is not None:
                if known[0] != normalised:
                    raise PromptIdConflict(
                        f"prompt_id {own_id!r}: the teacher record at {pool_report.location(row)} "
                        f"has another prompt than the training problem at "
                        f"{problems_report.location(known[1])} ({_short(text)} vs "
                        f"{_short(problem_texts[known[1]])}, compared after "
                        "normalize_prompt_text). Fix the ids of one file, or unmap "
                        "data.source.teacher_pool.fields.prompt_id to join by prompt text."
                    )
                problem_row = known[1]
        else:
            problem_row = problem_by_text.get(normalised)
        if problem_row is not None:
            matched += 1
            realigned += text != problem_texts[problem_row]
            ids.append(problem_ids[problem_row])
            texts.append(problem_texts[problem_row])
            keep_rows.append(row)
            continue
        unmatched_records += 1
        unmatched_prompts.add(normalised)
        if by_id and normalised in problem_by_text:
            text_would_match += 1
        if len(examples) < _EXAMPLES:
            shown = f"prompt_id {own_id!r}: {_short(text)}" if by_id else _short(text)
            examples.append(f"{pool_report.location(row)} ({shown})")
        if unmatched == "keep":
            ids.append(own_id if by_id else extra_ids.setdefault(normalised, f"{stem}-p{len(extra_ids)}"))
            texts.append(text)
            keep_rows.append(row)

    report = {
        "joined_by": "prompt_id" if by_id else "prompt_text",
        "normalisation": PROMPT_TEXT_NORMALISATION,
        "records": len(pool),
        "matched_records": matched,
        "matched_with_other_whitespace": realigned,
        "unmatched_records": unmatched_records,
        "unmatched_prompts": len(unmatched_prompts),
        "unmatched_policy": unmatched,
        "dropped_records": unmatched_records if unmatched == "drop" else 0,
        "unmatched_examples": examples,
        "problem_texts_with_several_ids": shared_text,
    }
    if by_id:
        report["unmatched_id_but_known_text"] = text_would_match
    if unmatched_records:
        hint = (
            f"; {text_would_match} of them have the prompt text of a training problem under "
            "another id: unmap data.source.teacher_pool.fields.prompt_id to join by text"
            if text_would_match
            else ""
        )
        message = (
            f"data: {unmatched_records} of {len(pool)} teacher records ({len(unmatched_prompts)} "
            f"prompts) match no training problem by {report['joined_by']} (e.g. "
            f"{'; '.join(examples[:3])}){hint}. They are {_POLICY_WORDS[unmatched]} "
            "(data.unmatched_teacher: keep | drop | error)."
        )
        if unmatched == "error":
            raise UnmatchedTeacherRecords(message)
        log.warning(message)
    if not keep_rows:
        raise UnmatchedTeacherRecords(
            f"data: no teacher record of {pool_report.path} matches a training problem, and "
            "data.unmatched_teacher=drop leaves the pool empty; check that the pool answers "
            "data.source.problems, or set data.unmatched_teacher=keep"
        )
    if len(keep_rows) < len(pool):
        pool = pool.select(keep_rows).flatten_indices()
        pool_report.positions = array("q", [pool_report.positions[r] for r in keep_rows])
    pool = pool.remove_columns(["prompt_id", "prompt"])
    pool = pool.add_column("prompt", texts).add_column("prompt_id", ids)
    order = ["prompt_id", "prompt", *[c for c in pool.column_names if c not in ("prompt_id", "prompt")]]
    return pool.select_columns(order), report


_POLICY_WORDS = {"keep": "kept", "drop": "dropped", "error": "an error"}


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


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
