"""The per-machine cache of latency table entries (``prune.latency_cache``): keyed by the runtime, read back by the
next table, never trusted when it comes from another runtime or is damaged, never written outside its folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from distillprune.measure.latency import LatencyConfig
from distillprune.prune.latency_cache import ENV, LatencyCache, cache_folder, parse_key, runtime_key, shape_key
from distillprune.prune.latency_table import LatencyTable, LayerShape

CFG = LatencyConfig(threads=1)
CONV = LayerShape("conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8))
FC = LayerShape("linear", 64, 10, hw=(1, 1))


def table(folder: Path, lines: list[str], key: dict | None = None) -> LatencyTable:
    return LatencyTable(CFG, 1, LatencyCache(folder, key or runtime_key(1, 1), lines.append))


def test_the_folder_is_the_option_else_the_environment_else_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, str(tmp_path / "env"))
    assert cache_folder(False) is None
    assert cache_folder(str(tmp_path / "opt")) == tmp_path / "opt"
    assert cache_folder(True) == tmp_path / "env"
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder(True) == tmp_path / "xdg" / "distillprune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder(True) == tmp_path / "home" / ".cache" / "distillprune"


def test_the_test_suite_never_writes_the_users_cache():
    folder = cache_folder(True)
    assert folder is not None and folder.resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
    assert os.environ[ENV] == str(folder)


def test_a_second_table_reads_the_entries_the_first_timed(tmp_path):
    lines: list[str] = []
    first = table(tmp_path, lines)
    a, b = first.ms(CONV), first.ms(FC)
    assert first.measured == 2 and first.cached == 0
    first.flush()
    second = table(tmp_path, lines)
    assert (second.ms(CONV), second.ms(FC)) == (a, b)
    assert second.measured == 0 and second.cached == 2 and second.overhead == first.overhead
    assert lines == []
    assert [p.name for p in (tmp_path / "latency").iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_an_entry_timed_on_another_runtime_is_never_used(tmp_path):
    lines: list[str] = []
    other = runtime_key(1, 1) | {"cpu": "another machine"}
    planted = table(tmp_path, lines, other)
    planted.cache._dirty = True  # type: ignore[union-attr]
    planted.cache.entries[shape_key(CONV)] = 1234.5  # type: ignore[union-attr]
    planted.flush()
    mine = table(tmp_path, lines)
    assert mine.ms(CONV) != 1234.5 and mine.measured == 1 and mine.cached == 0  # its own file: timed here
    # the other runtime's file copied over this runtime's: its key is read and the file ignored, with one line
    assert mine.cache is not None and planted.cache is not None
    mine.cache.path.parent.mkdir(parents=True, exist_ok=True)
    mine.cache.path.write_bytes(planted.cache.path.read_bytes())
    again = table(tmp_path, lines)
    assert again.ms(CONV) != 1234.5 and again.cached == 0
    assert len(lines) == 1 and "another runtime (cpu differ)" in lines[0]
    again.flush()  # rewritten with this runtime's key
    assert json.loads(mine.cache.path.read_text())["runtime"] == runtime_key(1, 1)


@pytest.mark.parametrize("damage", [b"{not json", b"\x00\xff" * 10, b'{"format": "something else"}', b"[]"])
def test_a_corrupt_cache_file_is_ignored_with_one_line(tmp_path, damage):
    lines: list[str] = []
    t = table(tmp_path, lines)
    t.ms(CONV)
    t.flush()
    assert t.cache is not None
    t.cache.path.write_bytes(damage)
    again = table(tmp_path, lines)
    assert again.ms(CONV) > 0 and again.measured == 1
    assert len(lines) == 1 and "ignored" in lines[0] and "\n" not in lines[0]
    again.flush()
    assert table(tmp_path, lines).ms(CONV) > 0 and len(lines) == 1  # rewritten whole


def test_malformed_entries_are_ignored_with_one_line_and_the_others_used(tmp_path):
    lines: list[str] = []
    t = table(tmp_path, lines)
    t.ms(CONV)
    t.flush()
    assert t.cache is not None
    doc = json.loads(t.cache.path.read_text())
    doc["entries"].update({"conv 1 1": 0.1, shape_key(FC): -3, "linear 8 8 1x1 1x1 0x0 1x1 1 1x1": float("nan")})
    t.cache.path.write_text(json.dumps(doc))
    again = table(tmp_path, lines)
    assert again.ms(CONV) == t.ms(CONV) and again.cached == 1
    assert again.ms(FC) > 0 and again.measured == 1
    assert len(lines) == 1 and "3 malformed entries ignored" in lines[0]


def test_nothing_is_written_through_a_link_in_the_cache_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "cache"
    root.mkdir()
    (root / "latency").symlink_to(outside, target_is_directory=True)
    lines: list[str] = []
    t = table(root, lines)
    t.ms(CONV)
    t.flush()
    assert list(outside.iterdir()) == []
    assert len(lines) == 1 and "cannot be written" in lines[0] and "symbolic link" in lines[0]
    t.ms(FC)
    t.flush()  # said once: the plan goes on without the cache
    assert len(lines) == 1


def test_shape_keys_round_trip():
    for shape in (CONV, FC, LayerShape("conv", 96, 96, (3, 3), (2, 2), (1, 1), (1, 1), 96, (7, 7))):
        assert LayerShape(*parse_key(shape_key(shape))) == shape  # type: ignore[misc]
    assert parse_key("conv 0 4 3x3 1x1 1x1 1x1 1 8x8") is None and parse_key("rm -rf") is None
