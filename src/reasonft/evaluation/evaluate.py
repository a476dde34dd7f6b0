"""Evaluation by sampling and verifying (METHODS §1e, §3): the Evaluator runs it.

For each benchmark (benchmarks.py): n samples per problem from the generator, verification, the
per-benchmark numbers (metrics.py: Pass@1, Pass@k, any-correct, lengths) and the policy entropy
on the model's own samples; then the teacher-forced entropy on a fixed held-out set
(heldout.py), and the average over benchmarks. Results go to `out_dir` (tables.py: JSON,
Markdown table, pass@k plot; the samples as Parquet) and to the given Lightning loggers
(loggers.py). Records a benchmark's load skipped as unreadable are counted in the results'
`data` and `notes`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import datasets
import torch

from reasonft.data.prompts import PromptFormat
from reasonft.evaluation.benchmarks import (
    Benchmark,
    load_problems,
    named_benchmarks,
    plain,
    resolve_path,
    skipped_records,
)
from reasonft.evaluation.entropy import policy_entropy
from reasonft.evaluation.heldout import check_heldout, load_heldout
from reasonft.evaluation.loggers import log_to_loggers, sample_table_rows
from reasonft.evaluation.metrics import (
    average_over_benchmarks,
    benchmark_metrics,
    grader_comparison,
)
from reasonft.evaluation.tables import SAMPLES_DIR, json_safe, write_results
from reasonft.io import write_records

log = logging.getLogger(__name__)


def _grader_name(verifier: Any) -> str:
    return str(getattr(verifier, "grader", None) or type(verifier).__name__)


class Evaluator:
    """Sample, verify and measure a model on configured benchmarks.

    Args:
        benchmarks: name -> {path | split, fields, n_samples, limit, on_bad_record,
            max_bad_records, temperature} (a null entry is skipped), or a list of those with
            `name`; a relative `path` is read from `benchmarks_dir`; `fields` default to
            {"prompt": "problem", "answer": "answer"}; `limit` keeps the first problems;
            `on_bad_record: skip` leaves a file's unreadable records out (at most
            `max_bad_records`: a count or a share), counted in the results' `data` and `notes`;
            `temperature` replaces the generator's for that benchmark (0 with n_samples 1:
            greedy accuracy).
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
        benchmarks = named_benchmarks(plain(benchmarks))
        if not benchmarks:
            raise ValueError("eval.benchmarks is empty: configure at least one benchmark")
        self.benchmarks = [Benchmark.from_config(b, i) for i, b in enumerate(benchmarks)]
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"eval.benchmarks: names must be unique, got {names}")
        self.ks = sorted({int(k) for k in plain(ks)})
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"eval.ks={list(plain(ks))}: give positive integers")
        self.generator = generator
        self.verifier = verifier
        self.heldout = check_heldout(heldout_entropy)
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
        return resolve_path(path, self.benchmarks_dir)

    def problems(self, bench: Benchmark, data_source: Any = None) -> tuple[datasets.Dataset, dict[str, Any]]:
        """The benchmark's problems (prompt_id, prompt, answer), first `limit`, and a load report."""
        return load_problems(bench, self.benchmarks_dir, data_source)

    def heldout_records(self, data_source: Any = None) -> datasets.Dataset | None:
        """The fixed held-out set: a seeded subset of `limit` records with a response."""
        if self.heldout is None:
            return None
        return load_heldout(self.heldout, self.benchmarks_dir, self.seed, data_source)

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
        safe = json_safe(results)
        plot = write_results(safe, out_dir)
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
            if load_report.get("repeated", {}).get("count"):
                repeated = load_report["repeated"]
                notes.append(
                    f"{bench.name}: {repeated['count']} repeated problem(s) evaluated once "
                    f"({', '.join(repeated['examples'])})"
                )
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
            reports[bench.name] = {"load": load_report, "verify": plain(verify_report), "entropy": entropy}
            if second_report is not None:
                reports[bench.name]["second_verify"] = plain(second_report)
            write_records(verified, out_dir / SAMPLES_DIR / f"{bench.file_stem}.parquet")
            table.extend(sample_table_rows(bench.name, verified, self.table_rows))
            log.info("evaluate %s: pass@1=%.4f any_correct=%.4f", bench.name, metrics["pass@1"], metrics["any_correct"])

        average, average_notes = average_over_benchmarks(per_benchmark)
        skipped, skip_notes = skipped_records({name: r["load"] for name, r in reports.items()})
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
            "notes": notes + skip_notes + average_notes,
            "data": skipped,
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
