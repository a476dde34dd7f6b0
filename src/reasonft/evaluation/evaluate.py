"""Evaluation by sampling and verifying (METHODS §1e, §3): Pass@1, Pass@k, entropy, lengths.

For each benchmark: n samples per problem from the generator, verification, Pass@1 (mean
correctness over all samples), the unbiased Pass@k for every configured k <= n, the empirical
"any of the n correct" rate (the OXA paper's Pass@k with k = n), response-length statistics and
the policy entropy on the model's own samples; then the teacher-forced entropy on a fixed
held-out set, and the average over benchmarks. Results go to `out_dir` (JSON, Markdown table,
pass@k plot, the samples as Parquet) and to the given Lightning loggers.
"""

from __future__ import annotations

import logging
import math
import random
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from reasonft.data.prompts import PromptFormat
from reasonft.data.records import ANSWER_ALTERNATIVES, as_dataset, require_columns
from reasonft.evaluation.entropy import policy_entropy
from reasonft.evaluation.passk import counts_by_prompt, pass_at_k_table
from reasonft.io import write_json, write_records, write_text

log = logging.getLogger(__name__)

DEFAULT_FIELDS = {"prompt": "problem", "answer": "answer"}
# What a benchmark's problems keep: other accepted answer forms too, for the verifier.
PROBLEM_COLUMNS = ("prompt_id", "prompt", "answer", ANSWER_ALTERNATIVES)
RESULTS_JSON = "eval_results.json"
RESULTS_MD = "eval_results.md"
PASSK_PNG = "pass_at_k.png"
SAMPLES_DIR = "samples"
# Per-benchmark numbers that are averaged over benchmarks (pass@k keys are added).
AVERAGED = (
    "pass@1", "any_correct", "mean_tokens", "median_tokens", "no_answer_share", "no_think_share",
    "truncated_share", "entropy", "grader_disagreement_share",
)
BY_GRADER = "_pass@1"  # `<grader>_pass@1`: each grader's pass@1 when eval.compare_graders is on


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (Hydra passes them to constructors)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass(frozen=True)
class Benchmark:
    """One evaluation set: a file (`path`, read with `fields`) or a data-source split."""

    name: str
    path: str | None = None
    split: str | None = None
    fields: Mapping[str, str] | None = None
    n_samples: int = 1
    limit: int | None = None
    on_bad_record: str = "error"
    # Sampling temperature for this benchmark (null: the generator's); 0 = greedy decoding,
    # with n_samples 1, so that pass@1 is the greedy accuracy.
    temperature: float | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], position: int) -> Benchmark:
        cfg = dict(_plain(cfg))
        where = f"eval.benchmarks.{cfg['name']}" if cfg.get("name") else f"eval.benchmarks[{position}]"
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known - {'name'})}")
        if not cfg.get("name"):
            raise ValueError(f"{where}: `name` is required")
        bench = cls(**cfg)
        if (bench.path is None) == (bench.split is None):
            raise ValueError(f"{where}: give exactly one of `path` (a file) or `split` (of the data source)")
        if bench.n_samples < 1:
            raise ValueError(f"{where}: n_samples={bench.n_samples} must be >= 1")
        if bench.limit is not None and bench.limit < 1:
            raise ValueError(f"{where}: limit={bench.limit} must be >= 1 or null")
        if bench.temperature is not None:
            if bench.temperature < 0:
                raise ValueError(f"{where}: temperature={bench.temperature} must be >= 0 (0 = greedy) or null")
            if bench.temperature == 0 and bench.n_samples != 1:
                raise ValueError(
                    f"{where}: temperature=0 (greedy) with n_samples={bench.n_samples}: every sample "
                    "would be identical; set n_samples=1"
                )
        return bench

    @property
    def file_stem(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)


def named_benchmarks(benchmarks: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Benchmark configs as a list. The config form is a mapping name -> settings, so that one
    benchmark is changed or dropped by name (`eval.benchmarks.toy_test.n_samples=16`,
    `eval.benchmarks.toy_test=null`); a list of settings with `name` keys is accepted too."""
    if benchmarks is None:
        return []
    if not isinstance(benchmarks, Mapping):
        return [dict(b) for b in benchmarks]
    out = []
    for name, settings in benchmarks.items():
        if settings is None:
            continue
        settings = dict(settings)
        if settings.get("name", name) != name:
            raise ValueError(f"eval.benchmarks.{name}: its `name` key says {settings['name']!r}; drop it (the key is the name)")
        out.append({**settings, "name": name})
    return out


# -- metrics -------------------------------------------------------------------------------------


def benchmark_metrics(records: datasets.Dataset, n: int, ks: Sequence[int]) -> dict[str, Any]:
    """Pass@1, unbiased Pass@k (k <= n), any-correct, lengths and answer shares of verified samples.

    Every problem must have exactly `n` samples (the generator gives that).
    """
    counts = counts_by_prompt(records)
    uneven = {pid: nc[0] for pid, nc in counts.items() if nc[0] != n}
    if uneven:
        raise ValueError(f"evaluate: expected {n} samples per problem; got {dict(list(uneven.items())[:5])}")
    if not counts:
        raise ValueError("evaluate: no samples to measure")
    usable_ks = sorted({int(k) for k in ks if int(k) <= n})
    table = pass_at_k_table(usable_ks, counts=list(counts.values()))
    out: dict[str, Any] = {
        "problems": len(counts),
        "samples_per_problem": n,
        "samples": len(records),
        # Mean correctness over all samples (= the mean of per-problem c/n, all n being equal).
        "pass@1": sum(c for _, c in counts.values()) / len(records),
    }
    out.update({k: v for k, v in table.items() if k.startswith("pass@") and k != "pass@1"})
    out["skipped_ks"] = sorted({int(k) for k in ks if int(k) > n})
    out["any_correct"] = table["any_correct"]

    lengths = list(records["gen_tokens"]) if "gen_tokens" in records.column_names else None
    out["mean_tokens"] = statistics.fmean(lengths) if lengths else float("nan")
    out["median_tokens"] = float(statistics.median(lengths)) if lengths else float("nan")
    if "verify_status" in records.column_names:
        no_answer = sum(1 for s in records["verify_status"] if s == "no_answer")
        out["no_answer_share"] = no_answer / len(records) if len(records) else float("nan")
        no_think = sum(1 for s in records["verify_status"] if s == "no_think")
        out["no_think_share"] = no_think / len(records) if len(records) else float("nan")
    if "finish_reason" in records.column_names:
        truncated = sum(1 for r in records["finish_reason"] if r == "length")
        out["truncated_share"] = truncated / len(records) if len(records) else float("nan")
    return out


def grader_comparison(
    first: datasets.Dataset, second: datasets.Dataset, first_name: str, second_name: str
) -> dict[str, Any]:
    """Both graders' pass@1 on the same samples and the samples on which they disagree."""
    a, b = list(first["correct"]), list(second["correct"])
    if len(a) != len(b) or not a:
        raise ValueError(f"grader comparison: {len(a)} and {len(b)} verdicts for the same samples")
    only_first = sum(1 for x, y in zip(a, b) if x and not y)
    only_second = sum(1 for x, y in zip(a, b) if y and not x)
    return {
        f"{first_name}{BY_GRADER}": sum(a) / len(a),
        f"{second_name}{BY_GRADER}": sum(b) / len(b),
        "grader_disagreements": only_first + only_second,
        "grader_disagreement_share": (only_first + only_second) / len(a),
        f"only_{first_name}_correct": only_first,
        f"only_{second_name}_correct": only_second,
    }


def average_over_benchmarks(per_benchmark: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, float], list[str]]:
    """Mean of each number every benchmark has; notes on the ones some benchmarks lack."""
    if not per_benchmark:
        return {}, []
    keys: list[str] = []
    for metrics in per_benchmark.values():
        for key in metrics:
            averaged = key in AVERAGED or key.startswith("pass@") or key.endswith(BY_GRADER)
            if averaged and key not in keys:
                keys.append(key)
    average: dict[str, float] = {}
    notes: list[str] = []
    for key in keys:
        have = [name for name, m in per_benchmark.items() if key in m]
        if len(have) < len(per_benchmark):
            lacking = sorted(set(per_benchmark) - set(have))
            notes.append(f"{key} not averaged: {lacking} lack it (k above their n_samples)")
            continue
        values = [float(per_benchmark[name][key]) for name in have]
        average[key] = math.nan if any(math.isnan(v) for v in values) else statistics.fmean(values)
    return average, notes


def _json_safe(value: Any) -> Any:
    """NaN -> None (strict JSON), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# -- reports: Markdown, plot, loggers ------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(results: Mapping[str, Any]) -> str:
    """One row per benchmark and the average: pass@k columns, any-correct, lengths, entropy."""
    per = results["benchmarks"]
    pass_keys = sorted(
        {k for m in per.values() for k in m if k.startswith("pass@")}, key=lambda k: int(k[5:])
    )
    by_grader = sorted({k for m in per.values() for k in m if k.endswith(BY_GRADER)})
    optional = [k for k in ("no_think_share", "grader_disagreements") if any(k in m for m in per.values())]
    columns = ["problems", "n", *pass_keys, *by_grader, "any_correct", "mean_tokens",
               "median_tokens", "no_answer_share", *optional, "truncated_share", "entropy"]
    lines = [
        f"# Evaluation{' — ' + results['tag'] if results.get('tag') else ''}",
        "",
        "| benchmark | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, m in per.items():
        values = [m.get("problems"), m.get("samples_per_problem"), *[m.get(k) for k in columns[2:]]]
        lines.append(f"| {name} | " + " | ".join(_fmt(v, 1 if "tokens" in c else 4) for c, v in zip(columns, values)) + " |")
    avg = results["average"]
    values = ["", "", *[avg.get(k) for k in columns[2:]]]
    lines.append("| **average** | " + " | ".join(_fmt(v, 1 if "tokens" in c else 4) for c, v in zip(columns, values)) + " |")
    heldout = results.get("heldout_entropy")
    lines.append("")
    if heldout:
        lines.append(
            f"Held-out entropy (teacher-forced): {_fmt(heldout.get('entropy'))} nats over "
            f"{heldout.get('tokens')} tokens of {heldout.get('responses')} responses."
        )
    lines.append(
        "Pass@1 = mean correctness over all samples; pass@k = unbiased estimator (Chen et al. 2021); "
        "any_correct = share of problems with a correct sample among all n; entropy in nats "
        "(policy at temperature 1 on its own samples)."
    )
    if by_grader:
        lines.append(
            f"Graders compared on the same samples: {', '.join(by_grader)}; pass@1 and pass@k use "
            f"the primary grader ({results.get('settings', {}).get('grader')}); grader_disagreements "
            "= samples one grader marks correct and the other not."
        )
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def plot_pass_at_k(results: Mapping[str, Any], path: Path) -> Path:
    """pass@k against k (log2 axis), one line per benchmark; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reasonft.io import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ticks: set[int] = set()
    for name, m in results["benchmarks"].items():
        points = sorted((int(k[5:]), v) for k, v in m.items() if k.startswith("pass@") and v is not None)
        if points:
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=name)
            ticks.update(k for k, _ in points)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(k) for k in sorted(ticks)])
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"pass@k{' — ' + results['tag'] if results.get('tag') else ''}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def flat_metrics(results: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Scalar metrics for loggers: `{prefix}{benchmark}/{metric}`, `{prefix}average/...`."""
    out: dict[str, float] = {}
    for name, m in results["benchmarks"].items():
        for key, value in m.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                out[f"{prefix}{name}/{key}"] = float(value)
    for key, value in results["average"].items():
        if value is not None:
            out[f"{prefix}average/{key}"] = float(value)
    heldout = results.get("heldout_entropy")
    if heldout and heldout.get("entropy") is not None:
        out[f"{prefix}heldout/entropy"] = float(heldout["entropy"])
    return {k: v for k, v in out.items() if not math.isnan(v)}


SAMPLE_TABLE_COLUMNS = ["benchmark", "prompt_id", "sample_idx", "answer", "pred_answer", "correct", "gen_tokens", "response"]


def log_to_loggers(
    loggers: Sequence[Any],
    results: Mapping[str, Any],
    table: list[list[Any]],
    plot: Path | None,
    prefix: str,
    step: int | None,
) -> None:
    """Metrics to every logger; for W&B also the sample table, the Markdown table and the plot."""
    metrics = flat_metrics(results, prefix)
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if hasattr(logger, "log_table"):
            logger.log_table(key=f"{prefix}samples", columns=SAMPLE_TABLE_COLUMNS, data=table, step=step)
        if hasattr(logger, "log_text"):
            logger.log_text(key=f"{prefix}table", columns=["markdown"], data=[[markdown_table(results)]], step=step)
        if plot is not None and hasattr(logger, "log_image"):
            logger.log_image(key=f"{prefix}pass_at_k", images=[str(plot)], step=step)
        if hasattr(logger, "save"):
            logger.save()


# -- the evaluator -------------------------------------------------------------------------------


def _grader_name(verifier: Any) -> str:
    return str(getattr(verifier, "grader", None) or type(verifier).__name__)


class Evaluator:
    """Sample, verify and measure a model on configured benchmarks.

    Args:
        benchmarks: name -> {path | split, fields, n_samples, limit, on_bad_record,
            temperature} (a null entry is skipped), or a list of those with `name`; a relative
            `path` is read from `benchmarks_dir`; `fields` default to {"prompt": "problem",
            "answer": "answer"}; `limit` keeps the first problems; `temperature` replaces the
            generator's for that benchmark (0 with n_samples 1: greedy accuracy).
        generator: a generation backend (`HFGenerator`, `VLLMGenerator`); its `n` is replaced
            by each benchmark's `n_samples`, its seed by `seed`.
        ks: the k of the unbiased Pass@k (k above a benchmark's n_samples is skipped and noted).
        verifier: called on the samples, returns (records + correct/pred_answer/verify_status, report).
        heldout_entropy: {split | path, fields, limit} — teacher-forced entropy on a fixed subset
            (seeded) of the data source's teacher pool split or of a records file; null: off.
        seed: sampling seed and the held-out subset's seed.
        benchmarks_dir: folder of the benchmark files.
        entropy_batch_tokens: token budget of an entropy forward batch.
        entropy_samples_per_problem: own-sample entropy on the first this many samples of each
            problem (null: all) — with n=128 long samples, a few per problem suffice.
        table_rows: samples per benchmark in the logged sample table.
        compare_graders: also grade every sample with `second_verifier` and report both
            graders' pass@1 (`<grader>_pass@1`) and the samples they disagree on.
        second_verifier: the other grader (e.g. math-verify beside the official one).
    """

    def __init__(
        self,
        benchmarks: Sequence[Mapping[str, Any]],
        generator: Any,
        ks: Sequence[int],
        verifier: Any,
        heldout_entropy: Mapping[str, Any] | None = None,
        seed: int = 0,
        benchmarks_dir: str | None = None,
        entropy_batch_tokens: int = 16384,
        entropy_samples_per_problem: int | None = None,
        table_rows: int = 8,
        progress: bool = True,
        compare_graders: bool = False,
        second_verifier: Any = None,
    ) -> None:
        if compare_graders and second_verifier is None:
            raise ValueError(
                "eval.compare_graders=true needs eval.second_verifier (a verify config, e.g. "
                "/verify@second_verifier: default); or set eval.compare_graders=false"
            )
        if compare_graders and _grader_name(verifier) == _grader_name(second_verifier):
            raise ValueError(
                f"eval.compare_graders=true: eval.verifier and eval.second_verifier are the same "
                f"grader ({_grader_name(verifier)}); set eval.second_verifier to the other one "
                "(/verify@eval.second_verifier=default or official)"
            )
        self.compare_graders = bool(compare_graders)
        self.second_verifier = second_verifier if compare_graders else None
        benchmarks = named_benchmarks(_plain(benchmarks))
        if not benchmarks:
            raise ValueError("eval.benchmarks is empty: configure at least one benchmark")
        self.benchmarks = [Benchmark.from_config(b, i) for i, b in enumerate(benchmarks)]
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"eval.benchmarks: names must be unique, got {names}")
        self.ks = sorted({int(k) for k in _plain(ks)})
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"eval.ks={list(_plain(ks))}: give positive integers")
        self.generator = generator
        self.verifier = verifier
        self.heldout = dict(_plain(heldout_entropy)) if heldout_entropy else None
        if self.heldout is not None:
            unknown = sorted(set(self.heldout) - {"split", "path", "fields", "limit"})
            if unknown:
                raise ValueError(f"eval.heldout_entropy: unknown key(s) {unknown}; known: split, path, fields, limit")
            if (self.heldout.get("split") is None) == (self.heldout.get("path") is None):
                raise ValueError("eval.heldout_entropy: give exactly one of `split` or `path`")
        self.seed = int(seed)
        self.benchmarks_dir = Path(benchmarks_dir) if benchmarks_dir else None
        self.entropy_batch_tokens = int(entropy_batch_tokens)
        if entropy_samples_per_problem is not None and entropy_samples_per_problem < 1:
            raise ValueError(
                f"eval.entropy_samples_per_problem={entropy_samples_per_problem}: must be >= 1 or null"
            )
        self.entropy_samples_per_problem = entropy_samples_per_problem
        self.table_rows = int(table_rows)
        self.progress = bool(progress)

    def with_budget(self, n_samples: int | None = None, limit: int | None = None) -> Evaluator:
        """A copy with at most `n_samples` per problem and `limit` problems per benchmark
        (and held-out records): the small evaluation run during training."""
        clone = object.__new__(Evaluator)
        clone.__dict__.update(self.__dict__)

        def smaller(current: int | None, cap: int | None) -> int | None:
            if cap is None:
                return current
            return cap if current is None else min(current, cap)

        clone.benchmarks = [
            replace(b, n_samples=smaller(b.n_samples, n_samples), limit=smaller(b.limit, limit))
            for b in self.benchmarks
        ]
        if self.heldout is not None:
            clone.heldout = {**self.heldout, "limit": smaller(self.heldout.get("limit"), limit)}
        return clone

    # -- data ----------------------------------------------------------------------------------

    def _resolve(self, path: str) -> Path:
        p = Path(path)
        if not p.is_absolute() and self.benchmarks_dir is not None:
            p = self.benchmarks_dir / p
        return p

    def problems(self, bench: Benchmark, data_source: Any = None) -> tuple[datasets.Dataset, dict[str, Any]]:
        """The benchmark's problems (prompt_id, prompt, answer), first `limit`, and a load report."""
        if bench.path is not None:
            from reasonft.data.loaders import load_records

            ds, report = load_records(
                self._resolve(bench.path), dict(bench.fields or DEFAULT_FIELDS),
                on_bad_record=bench.on_bad_record, source=bench.name,
            )
            load_report = report.to_dict()
        else:
            if data_source is None:
                raise ValueError(
                    f"eval benchmark {bench.name!r} reads split {bench.split!r} of the data source, "
                    "but evaluate() got no data_source"
                )
            ds = as_dataset(data_source.problems(bench.split))
            load_report = {"split": bench.split, "loaded": len(ds)}
        ds = ds.select_columns([c for c in PROBLEM_COLUMNS if c in ds.column_names])
        if bench.limit is not None and bench.limit < len(ds):
            ds = ds.select(range(bench.limit))
        load_report["evaluated"] = len(ds)
        return ds, load_report

    def heldout_records(self, data_source: Any = None) -> datasets.Dataset | None:
        """The fixed held-out set: a seeded subset of `limit` records with a response."""
        if self.heldout is None:
            return None
        if self.heldout.get("path") is not None:
            from reasonft.data.loaders import load_records

            fields = dict(self.heldout.get("fields") or {"prompt": "prompt", "answer": "answer", "response": "response"})
            ds, _ = load_records(self._resolve(self.heldout["path"]), fields)
        else:
            if data_source is None or not hasattr(data_source, "teacher_pool"):
                raise ValueError(
                    f"eval.heldout_entropy.split={self.heldout['split']!r} needs a data_source with "
                    "teacher_pool(split); pass data_source or set heldout_entropy.path"
                )
            ds = as_dataset(data_source.teacher_pool(self.heldout["split"]))
        require_columns(ds, ("prompt", "response"), "eval.heldout_entropy")
        limit = self.heldout.get("limit")
        if limit is not None and limit < len(ds):
            chosen = sorted(random.Random(self.seed).sample(range(len(ds)), int(limit)))
            ds = ds.select(chosen)
        return ds

    # -- the run -------------------------------------------------------------------------------

    def evaluate(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        out_dir: str | Path,
        data_source: Any = None,
        prompt_format: PromptFormat | None = None,
        loggers: Sequence[Any] = (),
        tag: str = "",
        step: int | None = None,
    ) -> dict[str, Any]:
        """Evaluate `model` on every benchmark; write the results to `out_dir`; return them.
        Prompts are built by `prompt_format` (`PromptFormat.from_config(cfg.data)`)."""
        prompt_format = PromptFormat.coerce(prompt_format)
        out_dir = Path(out_dir)
        was_training = model.training
        model.eval()
        try:
            results, table = self._evaluate(
                model, tokenizer, out_dir, data_source, prompt_format, tag
            )
        finally:
            model.train(was_training)
        safe = _json_safe(results)
        write_json(safe, out_dir / RESULTS_JSON)
        write_text(markdown_table(safe), out_dir / RESULTS_MD)
        plot = plot_pass_at_k(safe, out_dir / PASSK_PNG)
        prefix = f"eval/{tag}/" if tag else "eval/"
        log_to_loggers(loggers, safe, table, plot, prefix, step)
        return safe

    def _evaluate(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        out_dir: Path,
        data_source: Any,
        prompt_format: PromptFormat,
        tag: str,
    ) -> tuple[dict[str, Any], list[list[Any]]]:
        per_benchmark: dict[str, dict[str, Any]] = {}
        reports: dict[str, dict[str, Any]] = {}
        table: list[list[Any]] = []
        notes: list[str] = []
        prompting = {"prompt_format": prompt_format}
        for bench in self.benchmarks:
            start = time.perf_counter()
            problems, load_report = self.problems(bench, data_source)
            log.info("evaluate %s: %d problems x %d samples", bench.name, len(problems), bench.n_samples)
            sampling = {} if bench.temperature is None else {"temperature": bench.temperature}
            samples = self.generator.generate(
                problems, model, tokenizer, **prompting, n=bench.n_samples, seed=self.seed, **sampling
            )
            generated = time.perf_counter()
            verified, verify_report = self.verifier(samples)
            metrics = benchmark_metrics(verified, bench.n_samples, self.ks)
            second_report = None
            if self.second_verifier is not None:
                second, second_report = self.second_verifier(samples)
                metrics.update(grader_comparison(
                    verified, second, _grader_name(self.verifier), _grader_name(self.second_verifier)
                ))
                verified = verified.add_column("second_grader_correct", list(second["correct"]))
            if metrics["skipped_ks"]:
                notes.append(f"{bench.name}: pass@k skipped for k={metrics['skipped_ks']} > n_samples={bench.n_samples}")
            entropy = policy_entropy(
                model, tokenizer, self._entropy_subset(verified), **prompting, batch_tokens=self.entropy_batch_tokens,
                progress=self.progress, description=f"entropy {bench.name}",
            )
            metrics["entropy"] = entropy["entropy"]
            metrics["entropy_tokens"] = entropy["tokens"]
            metrics["generate_seconds"] = generated - start
            metrics["seconds"] = time.perf_counter() - start
            per_benchmark[bench.name] = metrics
            reports[bench.name] = {"load": load_report, "verify": _plain(verify_report), "entropy": entropy}
            if second_report is not None:
                reports[bench.name]["second_verify"] = _plain(second_report)
            write_records(verified, out_dir / SAMPLES_DIR / f"{bench.file_stem}.parquet")
            table.extend(self._table_rows(bench.name, verified))
            log.info("evaluate %s: pass@1=%.4f any_correct=%.4f", bench.name, metrics["pass@1"], metrics["any_correct"])

        average, average_notes = average_over_benchmarks(per_benchmark)
        heldout = None
        held = self.heldout_records(data_source)
        if held is not None:
            heldout = policy_entropy(
                model, tokenizer, held, **prompting, batch_tokens=self.entropy_batch_tokens,
                progress=self.progress, description="held-out entropy",
            )
            heldout["source"] = {k: v for k, v in self.heldout.items() if k != "fields"}
        results = {
            "tag": tag,
            "benchmarks": per_benchmark,
            "average": average,
            "heldout_entropy": heldout,
            "notes": notes + average_notes,
            "reports": reports,
            "settings": {
                "generator": repr(self.generator),
                "temperature": getattr(self.generator, "temperature", None),
                "top_p": getattr(self.generator, "top_p", None),
                "max_new_tokens": getattr(self.generator, "max_new_tokens", None),
                "ks": self.ks,
                "seed": self.seed,
                "max_total_tokens": getattr(self.generator, "max_total_tokens", None),
                "prompt_format": prompt_format.as_dict(),
                "grader": _grader_name(self.verifier),
                "second_grader": (
                    _grader_name(self.second_verifier) if self.second_verifier is not None else None
                ),
                "benchmarks": [asdict(b) for b in self.benchmarks],
            },
        }
        return results, table

    def _entropy_subset(self, verified: datasets.Dataset) -> datasets.Dataset:
        cap = self.entropy_samples_per_problem
        if cap is None:
            return verified
        return verified.select([i for i, s in enumerate(verified["sample_idx"]) if s < cap])

    def _table_rows(self, name: str, verified: datasets.Dataset) -> list[list[Any]]:
        """The first sample of the first `table_rows` problems, for a logged table."""
        rows = []
        for record in verified:
            if len(rows) >= self.table_rows:
                break
            if record.get("sample_idx", 0) != 0:
                continue
            rows.append([
                name, str(record["prompt_id"]), record.get("sample_idx", 0), str(record["answer"]),
                str(record.get("pred_answer")), bool(record["correct"]), record.get("gen_tokens"),
                record["response"],
            ])
        return rows
