"""UID cache: add merges, remove, next/prev in insertion order, atomic replace, corrupt files refused, the CLI."""

from __future__ import annotations

import json
import os
import threading

import pytest
from typer.testing import CliRunner

from scripts import uid_cache
from utils.errors import DataError
from utils.uid_bookmarks import UidCache, default_cache_path


@pytest.fixture
def cache(tmp_path):
    return UidCache(tmp_path / "analysis" / "uid_cache.json")


def test_default_path_is_under_the_artifact_root(isolated_artifacts):
    assert default_cache_path() == isolated_artifacts.resolve() / "analysis" / "uid_cache.json"
    assert UidCache().path == default_cache_path()


def test_add_merges_tags_and_notes_and_keeps_insertion_order(cache):
    cache.add("dev-1-0-0", ["odd"], "left image empty")
    cache.add("dev-2-0-0", ["flip"])
    entry = cache.add("dev-1-0-0", ["odd", "hard"], "second look")
    assert entry.tags == ["odd", "hard"] and entry.note == "left image empty\nsecond look" and entry.updated
    cache.add("dev-1-0-0", [], "second look")  # the same note again is not repeated
    assert [e.uid for e in cache.entries()] == ["dev-1-0-0", "dev-2-0-0"]
    assert cache.get("dev-1-0-0").note == "left image empty\nsecond look"
    assert [e.uid for e in cache.entries("flip")] == ["dev-2-0-0"]
    data = json.loads(cache.path.read_text())
    assert data["version"] == 1 and [e["uid"] for e in data["entries"]] == ["dev-1-0-0", "dev-2-0-0"]


def test_remove(cache):
    cache.add("a")
    cache.add("b")
    assert cache.remove("a") is True
    assert cache.remove("a") is False
    assert [e.uid for e in cache.entries()] == ["b"]


def test_next_and_previous_walk_insertion_order(cache):
    for uid, tag in [("a", "x"), ("b", "y"), ("c", "x"), ("d", "x")]:
        cache.add(uid, [tag])
    assert cache.next(None).uid == "a" and cache.previous(None).uid == "d"
    assert cache.next("a").uid == "b" and cache.previous("c").uid == "b"
    assert cache.next("d") is None and cache.previous("a") is None
    assert cache.next("a", tag="x").uid == "c"  # b lacks the tag
    with pytest.raises(KeyError, match="'b' is not in the UID cache"):
        cache.next("b", tag="x")
    with pytest.raises(KeyError, match="zzz"):
        cache.previous("zzz")


def test_uids_with_path_characters_are_data_only(cache):
    odd = ["../../etc/passwd", "a/b", "..", "x\\y"]
    for uid in odd:
        cache.add(uid, ["odd"])
    assert [e.uid for e in cache.entries()] == odd
    assert sorted(p.name for p in cache.path.parent.iterdir()) == [".uid_cache.json.lock", "uid_cache.json"]


def test_writes_are_atomic_and_a_failed_write_leaves_the_old_file(cache, monkeypatch):
    cache.add("a", ["x"])
    before = cache.path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.add("b")
    monkeypatch.undo()
    assert cache.path.read_bytes() == before  # still the complete old file
    assert [p.name for p in cache.path.parent.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left
    assert [e.uid for e in UidCache(cache.path).entries()] == ["a"]


def test_concurrent_adds_lose_nothing(cache):
    def add_many(worker):
        for i in range(10):
            cache.add(f"w{worker}-{i}", [f"w{worker}"])

    threads = [threading.Thread(target=add_many, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache.entries()) == 40
    json.loads(cache.path.read_text())  # valid JSON


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "not a UID cache"),
        ('{"entries": [{"tags": []}]}', "without a uid"),
        ('{"entries": [{"uid": "a", "tags": "x"}]}', "tags must be a list"),
        ('{"entries": [{"uid": "a"}, {"uid": "a"}]}', "appears twice"),
    ],
)
def test_corrupt_file_is_refused_and_never_overwritten(cache, content, problem):
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text(content)
    for op in (lambda: cache.entries(), lambda: cache.add("new"), lambda: cache.remove("a")):
        with pytest.raises(DataError, match=problem) as err:
            op()
        assert str(cache.path) in str(err.value)
    assert cache.path.read_text() == content


def test_cli_add_list_next_prev_remove(tmp_path):
    path = str(tmp_path / "c.json")
    run = CliRunner().invoke
    added = run(uid_cache.app, ["add", "u1", "u2", "--tag", "odd", "--note", "look", "--cache", path, "--force"])
    assert added.exit_code == 0
    assert run(uid_cache.app, ["add", "u3", "--cache", path, "--force"]).exit_code == 0
    listed = run(uid_cache.app, ["list", "--tag", "odd", "--json", "--cache", path])
    assert [e["uid"] for e in json.loads(listed.stdout)] == ["u1", "u2"]
    assert "u3" in run(uid_cache.app, ["list", "--cache", path]).stdout
    assert run(uid_cache.app, ["next", "u1", "--cache", path]).stdout.strip() == "u2"
    assert run(uid_cache.app, ["next", "--cache", path]).stdout.strip() == "u1"
    assert run(uid_cache.app, ["prev", "u3", "--tag", "odd", "--cache", path]).exit_code == 1  # u3 lacks the tag
    end = run(uid_cache.app, ["next", "u3", "--cache", path])
    assert end.exit_code == 1 and "no bookmark after u3" in end.stderr
    assert run(uid_cache.app, ["remove", "u2", "--cache", path]).exit_code == 0
    missing = run(uid_cache.app, ["remove", "u2", "--cache", path])
    assert missing.exit_code == 1 and "u2" in missing.stderr
    (tmp_path / "c.json").write_text("garbage")
    bad = run(uid_cache.app, ["add", "u9", "--cache", path, "--force"])
    assert bad.exit_code == 2 and path in bad.stderr and (tmp_path / "c.json").read_text() == "garbage"


def test_cli_add_checks_uids_against_the_configured_split(tmp_path, isolated_artifacts):
    from vlm_datasets.example_lookup import data_arguments, split_index

    config = tmp_path / "data.yaml"
    config.write_text("dataset_source: synthetic\nsynthetic_eval_size: 6\ndataset_eval_split: test\n")
    real = list(split_index(data_arguments(config), "test"))[2]
    path = str(tmp_path / "c.json")
    run = CliRunner().invoke
    unknown = run(uid_cache.app, ["add", real, "syn_test-99-0-0", "--config", str(config), "--cache", path])
    assert unknown.exit_code == 2 and not (tmp_path / "c.json").exists()  # nothing bookmarked, not even the real one
    assert "uid 'syn_test-99-0-0' not found" in unknown.stderr and "--force bookmarks it anyway" in unknown.stderr
    wrong_split = run(uid_cache.app, ["add", real, "--config", str(config), "--split", "dev", "--cache", path])
    assert wrong_split.exit_code == 2 and "split 'dev'" in wrong_split.stderr
    unchecked = run(uid_cache.app, ["add", real, "--cache", path])
    assert unchecked.exit_code == 2 and "give --config" in unchecked.stderr and "--force" in unchecked.stderr
    assert run(uid_cache.app, ["add", real, "--config", str(config), "--cache", path]).exit_code == 0
    assert run(uid_cache.app, ["add", "syn_test-99-0-0", "--force", "--cache", path]).exit_code == 0
    assert [e.uid for e in UidCache(path).entries()] == [real, "syn_test-99-0-0"]
