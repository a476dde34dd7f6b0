"""What artifact keys see: resolved plain config values and the identity of files on disk."""

import builtins
import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from reasonft.config import compose_config
from reasonft.pipeline.artifacts import content_key
from reasonft.pipeline.identity import path_identity, resolved_plain


def _composed(*overrides: str):
    return compose_config(overrides=list(overrides))


def _reference_key(config, inputs) -> str:
    """The key as the module documents it: sha256 of the sorted JSON of plain data, 16 hex."""
    payload = json.dumps({"config": config, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def test_seed_override_through_an_interpolation_gives_a_new_key():
    """`generate.seed: ${seed}` nested in a plain dict: `seed=1` must not reuse seed-42 samples."""
    keys = {}
    for seed in (42, 1):
        cfg = _composed(f"seed={seed}")
        config = {"generate": cfg.generate, "model": "base-key"}
        keys[seed] = content_key(config, {"verify": "abc"})
        resolved = OmegaConf.to_container(cfg.generate, resolve=True)
        assert resolved["seed"] == seed
        assert keys[seed] == _reference_key(
            {"generate": resolved, "model": "base-key"}, {"verify": "abc"}
        )
    assert keys[42] != keys[1]


def test_nodes_anywhere_resolve_against_their_root():
    root = OmegaConf.create(
        {
            "seed": 7,
            "lr": 0.5,
            "a": {"b": {"seed": "${seed}", "lrs": ["${lr}", 1]}},
            "names": ["x", "${a.b.seed}"],
        }
    )
    value = {"outer": [root.a, (root.names, {"deep": root.a.b.lrs})], "plain": (1, None, True, "s")}
    expected = {
        "outer": [{"b": {"seed": 7, "lrs": [0.5, 1]}}, [["x", 7], {"deep": [0.5, 1]}]],
        "plain": [1, None, True, "s"],
    }
    assert resolved_plain(value) == expected
    assert content_key(value, {}) == _reference_key(expected, {})


@pytest.mark.parametrize(
    ("config", "error", "where"),
    [
        ({"a": {"b": [1, object()]}}, TypeError, "config.a.b[1]"),
        ({"a": OmegaConf.create({"lr": "???"})}, ValueError, "config.a.lr"),
        ({"a": [OmegaConf.create({"x": "${nowhere}"})]}, ValueError, "config.a[0].x"),
        (
            {"a": OmegaConf.create({"x": "${oc.env:REASONFT_SURELY_UNSET_VARIABLE}"})},
            ValueError,
            "config.a.x",
        ),
        ({"a": {"n": float("nan")}}, ValueError, "config.a.n"),
        ({"a": {3: "x"}}, TypeError, "config.a"),
        ({"path": Path("/x")}, TypeError, "config.path"),
    ],
)
def test_values_that_are_not_plain_data_raise_naming_their_path(config, error, where):
    with pytest.raises(error, match=re.escape(where)):
        content_key(config, {})


def test_non_plain_input_raises_naming_the_input():
    with pytest.raises(TypeError, match=r"inputs\.model"):
        content_key({}, {"model": object()})


def _reference_identity(folder):
    """Every file under `folder`, by a different walk than the module's."""
    files = []
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            files.append([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns])
    return {"name": str(folder.resolve()), "local": True, "files": sorted(files)}


def _checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "sub" / "deeper").mkdir(parents=True)
    (ckpt / "config.json").write_text('{"hidden_size": 8}')
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 1000)
    (ckpt / ".hidden").write_text("h")
    (ckpt / "sub" / "deeper" / "tokenizer.json").write_text("{}")
    return ckpt


def test_path_identity_lists_every_file_with_size_and_mtime(tmp_path):
    ckpt = _checkpoint(tmp_path)
    assert path_identity(ckpt) == _reference_identity(ckpt)
    assert path_identity(str(ckpt) + "/") == path_identity(ckpt)
    single = path_identity(ckpt / "config.json")
    stat = (ckpt / "config.json").stat()
    assert single == {
        "name": str((ckpt / "config.json").resolve()),
        "local": True,
        "files": [["config.json", stat.st_size, stat.st_mtime_ns]],
    }


def test_checkpoint_overwritten_in_place_changes_the_identity_and_the_key(tmp_path):
    ckpt = _checkpoint(tmp_path)
    before = path_identity(ckpt)
    key_before = content_key({"eval": {"n": 1}}, {"model": path_identity(ckpt)})
    weights = ckpt / "model.safetensors"
    old = weights.stat().st_mtime_ns
    weights.write_bytes(b"\x01" * 1000)  # same size, other weights
    os.utime(
        weights, ns=(old + 10**9, old + 10**9)
    )  # a later save, whatever the clock's resolution
    assert path_identity(ckpt) != before
    assert content_key({"eval": {"n": 1}}, {"model": path_identity(ckpt)}) != key_before
    (ckpt / "sub" / "extra.bin").write_bytes(b"x")  # a file added deep inside
    assert [f[0] for f in path_identity(ckpt)["files"]].count("sub/extra.bin") == 1


def test_hub_id_is_identified_by_name_and_a_missing_local_path_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert path_identity("Qwen/Qwen2.5-Math-1.5B") == {
        "name": "Qwen/Qwen2.5-Math-1.5B",
        "local": False,
    }
    assert path_identity("gpt2") == {"name": "gpt2", "local": False}
    for missing in (tmp_path / "no-such-ckpt", "./ckpt", "~/surely/missing/ckpt"):
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            path_identity(missing)
    (tmp_path / "gpt2").mkdir()  # a local folder wins over the Hub, as in transformers
    (tmp_path / "gpt2" / "config.json").write_text("{}")
    assert path_identity("gpt2")["local"] is True


def test_broken_symlink_is_not_skipped(tmp_path):
    ckpt = _checkpoint(tmp_path)
    (ckpt / "dangling.bin").symlink_to(tmp_path / "gone.bin")
    with pytest.raises(FileNotFoundError, match="dangling.bin"):
        path_identity(ckpt)


def test_path_identity_is_cheap_on_a_15_gb_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "big"
    ckpt.mkdir()
    for i in range(4):
        with (ckpt / f"model-{i:05d}-of-00004.safetensors").open("wb") as f:
            f.truncate(15 * 2**30 // 4)  # sparse: the size of a 15 GB checkpoint, no disk used
    for i in range(200):
        (ckpt / f"extra-{i}.json").write_text("{}")
    def no_read(*args, **kwargs):
        raise AssertionError(f"path_identity opened a file: {args[:1]}")

    # Cheap by construction: it only stats, so it never opens (let alone hashes) a file.
    for module, name in ((builtins, "open"), (io, "open"), (os, "open")):
        monkeypatch.setattr(module, name, no_read)
    identity = path_identity(ckpt)
    monkeypatch.undo()
    assert sum(size for _, size, _ in identity["files"]) == 15 * 2**30 + 400


def test_pipeline_base_key_of_a_local_checkpoint_follows_its_files(tmp_path):
    """`model.path` overwritten at the same path (or loaded another way) must not reuse the old
    evaluation: the base student's evaluation key follows its files and load arguments."""
    from reasonft.pipeline.runner import Pipeline

    ckpt = _checkpoint(tmp_path)

    def base_key(*extra: str) -> str:
        cfg = _composed(
            "model=hf",
            "data=toy_real",  # a pretrained model refuses data=toy's prompt format
            "stages=[evaluate]",
            f"model.path={ckpt}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.output_dir={tmp_path / 'run'}",
            *extra,
        )
        pipeline = Pipeline(cfg)
        assert pipeline.base_path == str(ckpt)
        return pipeline.key("evaluate:base")

    before = base_key()
    assert base_key() == before
    assert base_key("model.dtype=float32") != before
    weights = ckpt / "model.safetensors"
    old = weights.stat().st_mtime_ns
    weights.write_bytes(b"\x02" * 1000)
    os.utime(weights, ns=(old + 10**9, old + 10**9))
    assert base_key() != before
