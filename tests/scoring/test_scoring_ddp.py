"""Scoring through `trainer.predict`: one process, and DDP over two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from reasonft.data.records import as_dataset
from reasonft.io import read_records, write_records
from reasonft.ranks import merge_shards, shard_path
from reasonft.scoring.predict import Scoring, score_with_trainer
from reasonft.scoring.scorer import Scorer

RESPONSES = [
    "<think>\n3 + 4 = 7\n\nThen 7 * 2 = 14\n\nSo the answer is 14.\n</think>\n\\boxed{14}",
    "First, we subtract five from twelve, which gives seven.\n\nNext, multiply by three: 21.",
    "Step 1: 8 / 2 = 4\n\nStep 2: 4 + 9 = 13\n\n\\boxed{13}",
    "",
]
RECORDS = [
    {
        "prompt_id": f"p{i}",
        "prompt": f"Compute {i} + 4.",
        "response": RESPONSES[i % 4] * (1 + i % 3),
    }
    for i in range(11)
]
SCORER = {"method": "all", "window": 2, "batch_tokens": 256, "progress": False}
TRAINER = {"accelerator": "cpu", "enable_progress_bar": False}

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from reasonft.io import read_records, write_json, write_records
    from reasonft.models.loading import load_student, load_tokenizer
    from reasonft.scoring.predict import score_with_trainer
    from reasonft.scoring.scorer import Scorer

    tok_dir, model_dir, records, out, shards, scorer_kwargs = sys.argv[1:7]
    tokenizer, model = load_tokenizer(tok_dir), load_student(model_dir).eval()
    scorer = Scorer(**json.loads(scorer_kwargs))
    trainer = dict(accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False)
    scored, report = score_with_trainer(
        read_records(records), model, tokenizer, scorer, trainer, out_dir=shards
    )
    if scored.num_rows and __import__("os").environ.get("LOCAL_RANK", "0") == "0":
        write_records(scored, out)
        write_json(report, out + ".report.json")
    """
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _assert_same_scores(got, expected):
    assert [r["prompt_id"] for r in got] == [r["prompt_id"] for r in expected]
    for a, b in zip(got, expected):
        assert a["n_tokens"] == b["n_tokens"] and a["score_conditioning"] == b["score_conditioning"]
        for key in ("ppl", "galp", "lalp"):
            assert (a[key] is None) == (b[key] is None)
            if a[key] is not None:
                assert a[key] == pytest.approx(b[key], abs=1e-5)
        if b["step_logps"] is not None:
            np.testing.assert_allclose(a["step_logps"], b["step_logps"], atol=1e-5, rtol=0)


def test_predict_one_process_matches_scorer(tiny_model, tiny_tokenizer, tmp_path):
    expected, expected_report = Scorer(**SCORER)(RECORDS, tiny_model, tiny_tokenizer)
    scorer = Scorer(**SCORER)
    got, report = score_with_trainer(
        RECORDS, tiny_model, tiny_tokenizer, scorer, dict(TRAINER, devices=1), tmp_path
    )
    _assert_same_scores(got.to_list(), expected.to_list())
    assert report["records"] == len(RECORDS) and report["unscorable"] == 2  # rows 3, 7 are empty
    # The report one process gives, with the number of processes; the scorer carries none.
    assert {k: v for k, v in report.items() if k not in ("seconds", "processes")} == {
        k: v for k, v in expected_report.items() if k != "seconds"
    }
    assert report["processes"] == 1 and "report" not in vars(scorer)
    # A shard written for other settings is refused, not merged.
    other = Scoring(as_dataset(RECORDS), Scorer(**dict(SCORER, window=3)), tiny_tokenizer)
    with pytest.raises(ValueError, match="other records or scorer settings"):
        merge_shards(other, tmp_path, 1)
    # ... and so is a shard of another sharding (rows of rank 0 of 2 under the name of 1 of 1).
    shard = json.loads(shard_path(tmp_path, "scores", 0, 1).read_text())
    shard["rows"] = shard["rows"][::2]
    shard_path(tmp_path, "scores", 0, 1).write_text(json.dumps(shard))
    same = Scoring(as_dataset(RECORDS), Scorer(**SCORER), tiny_tokenizer)
    with pytest.raises(ValueError, match="another sharding"):
        merge_shards(same, tmp_path, 1)
    with pytest.raises(FileNotFoundError, match="rank 0 wrote no scores"):
        merge_shards(same, tmp_path / "absent", 1)


@pytest.mark.distributed
def test_ddp_two_cpu_processes_match_one_process(tiny_model, tiny_tokenizer, tmp_path):
    from reasonft.models.tokenizer import save_tokenizer

    save_tokenizer(tiny_tokenizer, tmp_path / "tok")
    tiny_model.save_pretrained(tmp_path / "model")
    records = write_records(as_dataset(RECORDS), tmp_path / "records.jsonl")
    script = tmp_path / "score_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "scored.jsonl"
    env = dict(
        os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore"
    )
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "tok"),
            str(tmp_path / "model"),
            str(records),
            str(out),
            str(tmp_path / "shards"),
            json.dumps(SCORER),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    shards = [json.loads(shard_path(tmp_path / "shards", "scores", r, 2).read_text()) for r in range(2)]
    rows = [sorted(r["index"] for r in s["results"]) for s in shards]
    assert rows == [list(range(0, 11, 2)), list(range(1, 11, 2))]  # each rank scored its own half
    expected = Scorer(**SCORER)(RECORDS, tiny_model, tiny_tokenizer)[0].to_list()
    _assert_same_scores(read_records(out).to_list(), expected)
    report = json.loads((tmp_path / "scored.jsonl.report.json").read_text())
    assert report["records"] == len(RECORDS) and report["processes"] == 2
