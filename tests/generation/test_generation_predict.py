"""Self-sampling through `trainer.predict`: the records of one plain `generate` call, however the
problems are sharded over ranks; stale shards refused; where the stages predict."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from reasonft.data.prompts import PromptFormat
from reasonft.data.records import as_dataset
from reasonft.generation.hf import HFGenerator
from reasonft.generation.predict import Sampling, generate_with_trainer, in_problem_order
from reasonft.io import write_json
from reasonft.pipeline.predict_ranks import predict_ranks
from reasonft.ranks import merge_shards, rank_rows, shard_path

PROBLEMS = [
    {"prompt_id": f"q{i}", "prompt": f"Compute {i} + {2 * i}.", "answer": str(3 * i)}
    for i in range(7)
]
FORMAT = PromptFormat(suffix="\n", chat_template=False)


def _generator() -> HFGenerator:
    return HFGenerator(n=2, temperature=1.0, max_new_tokens=12, batch_size=3, seed=5, progress=False)


def test_predict_one_process_matches_generate(tiny_model, tiny_tokenizer, tmp_path):
    expected = _generator().generate(PROBLEMS, tiny_model, tiny_tokenizer, prompt_format=FORMAT)
    got, report = generate_with_trainer(
        PROBLEMS, tiny_model, tiny_tokenizer, _generator(),
        {"accelerator": "cpu", "devices": 1}, tmp_path, prompt_format=FORMAT,
    )
    assert got.to_list() == expected.to_list()
    assert report == {"samples": len(expected), "problems": len(PROBLEMS), "processes": 1}


@pytest.mark.parametrize("world", [2, 3, 9])
def test_shards_of_any_world_merge_to_one_process_records(tiny_model, tiny_tokenizer, tmp_path, world):
    """Each rank's shard written as `RankModule` writes it (its rows sampled alone); the merge
    must give the one-process records, in problem then sample order. With 9 ranks for 7
    problems two ranks hold no problem."""
    problems = as_dataset(PROBLEMS)
    expected = _generator().generate(problems, tiny_model, tiny_tokenizer, prompt_format=FORMAT)
    work = Sampling(problems, _generator(), tiny_tokenizer, FORMAT)
    for rank in range(world):
        rows = list(range(rank, len(PROBLEMS), world))  # plain reference of the sharding
        assert rank_rows(len(PROBLEMS), rank, world) == rows
        records = [r for batch in work.batches(rows) for r in work.run(batch, tiny_model)]
        shard = {"signature": work.signature(), "rank": rank, "world_size": world,
                 "rows": rows, "results": records}
        write_json(shard, shard_path(tmp_path, "samples", rank, world))
    merged = in_problem_order(problems, merge_shards(work, tmp_path, world))
    assert merged.to_list() == expected.to_list()
    # Shards of another generator setting (here: seed) are refused, not merged.
    other = HFGenerator(n=2, temperature=1.0, max_new_tokens=12, batch_size=3, seed=6, progress=False)
    with pytest.raises(ValueError, match="other problems or generator settings"):
        merge_shards(Sampling(problems, other, tiny_tokenizer, FORMAT), tmp_path, world)
    with pytest.raises(FileNotFoundError, match="rank 0 wrote no samples"):
        merge_shards(work, tmp_path / "absent", world)


def _cfg(**trainer):
    base = {"accelerator": "cpu", "devices": 1, "num_nodes": 1}
    return lambda strategy: OmegaConf.create({"trainer": {**base, **trainer}, "strategy": strategy})


def test_predict_ranks_follow_world_size_and_strategy(caplog):
    assert predict_ranks(_cfg()({"name": "auto"})) is None
    ddp = {"_target_": "pytorch_lightning.strategies.DDPStrategy", "process_group_backend": "gloo"}
    ranks = predict_ranks(_cfg(devices=2)(ddp))
    assert ranks is not None and ranks.world_size == 2
    kwargs = ranks.trainer_kwargs()
    assert kwargs["devices"] == 2 and kwargs["accelerator"] == "cpu"
    assert kwargs["strategy"].process_group_backend == "gloo"
    assert ranks.trainer_kwargs()["strategy"] is not kwargs["strategy"]  # one per Trainer
    # ddp_spawn starts fresh processes that never walk the pipeline: one process, said so.
    with caplog.at_level(logging.WARNING):
        assert predict_ranks(_cfg(devices=2)({"name": "ddp_spawn"})) is None
    assert "strategy=ddp" in caplog.text
    # Lightning decides the device count: no multi-process stage is assumed.
    assert predict_ranks(_cfg(devices="auto")({"name": "ddp"})) is None
