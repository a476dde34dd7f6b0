"""A stage is one object: its name, the config paths it reads, what it needs, and `produce`.

The runner (`pipeline/runner.py`) knows no stage by name. It asks each stage object:
- `needs(facts)`: the stages whose artifacts it reads, given what the run asked for and what the
  configured consumers demand (`Facts`);
- `demands()`: what it asks of its upstream (self-samples in the pool, score columns);
- `configure(run, facts)`: build its components from its own config slice (`self.config`, bound
  by the runner before planning), raising with the key's name, before any stage runs;
- `tags(facts)`: the artifacts it builds (one, untagged, for most; `evaluate` builds one per
  student it evaluates);
- `identity(key, tag)`: what its key hashes besides its config slice (`reads`): upstream
  artifacts, the model it loads, the data's version, flags that change what it produces;
- `produce(inputs, out_dir) -> report`: build the artifact into `out_dir` from its config slice
  and its input artifacts, never the whole config.

A new stage is one class plus its entry in the `pipeline` config group
(`pipeline.<name>._target_`); `tests/pipeline/test_custom_parts.py` adds one from a test file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig

from reasonft.pipeline.artifacts import Artifact

RECORDS = "records.parquet"
PROMPTS = "prompts.md"
# The prompt format: how a problem becomes the text the student sees, and how a response ends.
PROMPT = ("data.prompt_suffix", "data.chat_template", "data.system_prompt", "data.response_end")


@dataclass(frozen=True)
class Demands:
    """What a configured stage asks of the stages upstream of it."""

    self_samples: bool = False          # the student's own samples join the verify pool
    score_columns: tuple[str, ...] = ()  # score columns the scored pool must hold


@dataclass(frozen=True)
class Facts:
    """What decides the plan's edges: what was asked for, and what the consumers demand."""

    requested: tuple[str, ...]
    has_build: bool                      # the model config builds its base student
    self_samples: bool = False
    score_columns: tuple[str, ...] = ()

    def asked(self, stage: str) -> bool:
        return stage in self.requested


@dataclass
class StageInputs:
    """What `produce` receives: its config slice, its tag, its upstream artifacts, and the run's
    services (model loading, the data source, where the run writes)."""

    config: DictConfig
    tag: str
    upstream: dict[str, Artifact]
    run: Any  # pipeline.runner.RunContext

    def records_of(self, stage: str) -> Any:
        from reasonft.io import read_records

        return read_records(self.upstream[stage].path / RECORDS)

    def model_path(self, stage: str) -> str:
        """The checkpoint folder an upstream artifact holds (its summary's `model`)."""
        art = self.upstream[stage]
        return str(art.path / art.meta()["summary"]["model"])


@dataclass
class KeyParts:
    """Helpers a stage uses in `identity` to name what its key hashes."""

    upstream: Callable[[str], Any]       # an upstream artifact: its reference, or the built one
    base_model: Callable[[], dict[str, Any]]  # the base student: weights, load args, base artifact
    load_args: Callable[[], dict[str, Any]]   # how any student is loaded (dtype, attention, ...)
    data_version: Callable[[], Any]      # what the data config cannot show (file sizes, toy version)
    facts: Facts
    stages: tuple[str, ...] = field(default=())  # the plan's stages


class Stage(ABC):
    """Base class of every stage; subclasses set `name` and `reads` and write `produce`."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()     # config paths the key hashes (resolved values)
    unhashed: ClassVar[tuple[str, ...]] = ()  # config paths produce reads that change nothing it makes
    loads_model: ClassVar[bool] = False       # runs a student (settings must fit the model)
    rank_zero_only: ClassVar[bool] = False    # ranks > 0 of a multi-process job skip it

    config: DictConfig  # its slice of the resolved config (`reads` + `unhashed`), bound by the runner

    def bind(self, config: DictConfig) -> None:
        self.config = config

    def needs(self, facts: Facts) -> tuple[str, ...]:
        return ()

    def demands(self) -> Demands:
        return Demands()

    def configure(self, run: Any, facts: Facts) -> None:
        """Build this stage's components from `self.config`; raise naming the key."""

    def tags(self, facts: Facts) -> tuple[str, ...]:
        return ("",)

    def identity(self, key: KeyParts, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(extra config entries, inputs) its key hashes besides its config slice."""
        return {}, {name: key.upstream(name) for name in self.needs(key.facts)}

    def on_every_rank(self, run: Any) -> bool:
        """Whether every rank of a multi-process job runs `produce` together (a collective)."""
        return False

    def describe(self, facts: Facts) -> str | None:
        """A note for the plan's one-line description."""
        return None

    def result(self, tag: str, artifact: Artifact) -> dict[str, Any] | None:
        """What the final report shows of this artifact (evaluation metrics), if anything."""
        return None

    @abstractmethod
    def produce(self, inputs: StageInputs, out_dir: Path) -> dict[str, Any]:
        """Build the artifact into `out_dir`; return its report."""

    def label(self, tag: str) -> str:
        """The artifact's folder in the run folder (and its name in the plan's keys)."""
        return f"{self.name}:{tag}" if tag else self.name
