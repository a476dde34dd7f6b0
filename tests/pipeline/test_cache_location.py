"""An unusable cache location stops start-up with one error naming REASONFT_CACHE or
paths.cache_dir on its first line, before anything is built."""

from __future__ import annotations

import pytest

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import compose_config
from reasonft.pipeline.runner import Pipeline


def _cfg(tmp_path, *overrides):
    return compose_config(overrides=[f"paths.output_dir={tmp_path / 'run'}", *overrides])


def test_a_cache_under_a_file_names_the_environment_variable(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("REASONFT_CACHE", str(blocker / "cache"))
    with pytest.raises(OSError) as raised:
        Pipeline(_cfg(tmp_path))
    first = str(raised.value).splitlines()[0]
    assert first.startswith(f"paths.cache_dir={str(blocker / 'cache')!r} is not a usable cache location")
    assert f"REASONFT_CACHE={str(blocker / 'cache')!r}" in first and "NotADirectoryError" in first
    assert raised.value.__suppress_context__  # one error, no chained library traceback


def test_a_path_that_cannot_exist_names_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("REASONFT_CACHE", raising=False)
    with pytest.raises(OSError) as raised:
        Pipeline(_cfg(tmp_path, "paths.cache_dir='/nonexistent\x00cache'"))
    first = str(raised.value).splitlines()[0]
    assert first.startswith("paths.cache_dir='/nonexistent\\x00cache' is not a usable cache location")
    assert "from paths.cache_dir=" in first
