"""Cached mode: round trip, manifest contents, verification (tampering, settings, quick vs full, changed sources),
atomic builds."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

import datasets
import pytest

from utils.artifacts import artifact_dir, artifact_root
from vlm_datasets import cache, loading
from vlm_datasets.cache import (
    CacheError,
    build_cache,
    cache_slug,
    load_cached_split,
    resolve_cache_dir,
    verify_cache,
)
from vlm_datasets.config import DataArguments
from vlm_datasets.loading import dataset_manifest, iter_examples, load_split
from vlm_datasets.synthetic_source import synthetic_split

ARROW = "dev/data-00000-of-00001.arrow"


@pytest.fixture
def args() -> DataArguments:
    return DataArguments(dataset_source="synthetic", synthetic_train_size=6, synthetic_eval_size=3)


@pytest.fixture
def built(tmp_path, args) -> Path:
    return build_cache(args, ["train", "dev"], tmp_path / "cache")


def with_(args: DataArguments, **changes) -> DataArguments:
    return DataArguments(**{**vars(args), **changes})


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite_manifest(cache_dir: Path, edit, reseal: bool = False) -> None:
    """Apply edit to the stored manifest; reseal recomputes its content_sha256 (a deliberate, consistent edit)."""
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    edit(manifest)
    if reseal:
        manifest["content_sha256"] = cache._content_sha256(manifest)
    (cache_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """The paths cache._sha256 is called on, in order."""
    calls, real = [], cache._sha256
    monkeypatch.setattr(cache, "_sha256", lambda path: calls.append(Path(path)) or real(path))
    return calls


def test_round_trip_and_manifest(built, args, same_examples):
    for split in ("train", "dev"):
        cached = list(iter_examples(load_cached_split(args, split, built)))
        same_examples(cached, list(iter_examples(synthetic_split(args, split))))
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["source"] == "synthetic"
    assert manifest["splits"] == {"train": 6, "dev": 3}
    assert manifest["settings"] == {
        "source": "synthetic",
        "min_pixels": None,
        "max_pixels": None,
        "synthetic_seed": 0,
        "synthetic_grid": 2,
        "synthetic_train_size": 6,
        "synthetic_eval_size": 3,
        "dataset_train_split": "train",
    }
    files = sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in files if f != "manifest.json"]
    assert ARROW in manifest["files"]
    for rel, sha in manifest["files"].items():
        assert hashlib.sha256((built / rel).read_bytes()).hexdigest() == sha
        assert manifest["sizes"][rel] == (built / rel).stat().st_size
    assert manifest["sources"] == {}  # synthetic: no source files to check (the hub's revision is a setting)
    assert manifest["content_sha256"] == cache._content_sha256(manifest)
    assert dt.datetime.fromisoformat(manifest["created_utc"]).utcoffset() == dt.timedelta(0)
    assert manifest["datasets_version"] == datasets.__version__
    assert not list(built.parent.glob(".cache.tmp-*"))  # the temporary build folder was renamed into place


def test_quick_loads_hash_nothing_and_full_ones_hash_each_file_once(built, args, hashed):
    load_cached_split(args, "dev", built)
    verify_cache(args, built)
    assert hashed == []
    manifest = json.loads((built / "manifest.json").read_text())
    load_cached_split(with_(args, dataset_cache_verify="full"), "dev", built)
    assert sorted(p.relative_to(built).as_posix() for p in hashed) == sorted(manifest["files"])
    hashed.clear()
    verify_cache(args, built, level="full")  # the full check as a call, whatever the arguments say
    assert len(hashed) == len(manifest["files"])


def test_a_same_size_byte_flip_is_caught_by_full_verification_only(built, args):
    flip_a_byte(built / ARROW)
    verify_cache(args, built)  # quick reads no file's content: the sizes match, so it passes (documented)
    full = with_(args, dataset_cache_verify="full")
    with pytest.raises(CacheError, match=rf"cache {re.escape(str(built))}: file {ARROW}: sha256 mismatch \(expected"):
        load_cached_split(full, "dev", built)
    # load_split refuses it too, and does not rebuild it silently.
    data, manifest = (built / ARROW).read_bytes(), (built / "manifest.json").read_text()
    with pytest.raises(CacheError, match="sha256 mismatch.*rebuild: delete"):
        load_split(with_(full, dataset_cached=True, dataset_cache_dir=str(built)), "dev")
    assert (built / ARROW).read_bytes() == data
    assert (built / "manifest.json").read_text() == manifest


def test_a_size_change_is_caught_by_quick_verification(built, args):
    size = (built / ARROW).stat().st_size
    with open(built / ARROW, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CacheError, match=rf"file {ARROW}: size {size + 1} bytes, {size} at the build; rebuild"):
        load_cached_split(args, "dev", built)


def test_a_deleted_or_extra_file_is_refused_naming_it(built, args):
    (built / "train" / "state.json").unlink()
    with pytest.raises(CacheError, match=r"file train/state\.json: missing"):
        load_cached_split(args, "dev", built)
    shutil.copy(built / "dev" / "state.json", built / "train" / "state.json")  # the wrong one: size differs
    with pytest.raises(CacheError, match=r"file train/state\.json: size \d+ bytes, \d+ at the build"):
        load_cached_split(args, "train", built)


def test_an_edited_manifest_is_refused(built, args):
    def grow(manifest):
        manifest["sizes"][ARROW] += 1

    rewrite_manifest(built, grow)
    with pytest.raises(CacheError, match=r"file manifest\.json: edited or damaged since the build"):
        load_cached_split(args, "dev", built)

    # Resealed by hand (sizes back, one more row claimed): the Arrow file's own row count disagrees.
    def more_rows(manifest):
        manifest["sizes"][ARROW] -= 1
        manifest["splits"]["dev"] += 1

    rewrite_manifest(built, more_rows, reseal=True)
    with pytest.raises(CacheError, match=r"file dev/: 3 rows, 4 at the build"):
        load_cached_split(args, "dev", built)


def test_a_cache_from_before_sizes_were_recorded_is_verified_in_full(built, args, hashed, caplog):
    def old_format(manifest):
        for key in ("sizes", "sources", "content_sha256"):
            del manifest[key]

    rewrite_manifest(built, old_format)
    with caplog.at_level("WARNING", logger="vlm_datasets.cache"):
        assert len(load_cached_split(args, "dev", built)) == 3
    assert len(hashed) == len(json.loads((built / "manifest.json").read_text())["files"])
    assert "built before file sizes were recorded" in caplog.text and "rebuild: delete" in caplog.text
    flip_a_byte(built / ARROW)
    with pytest.raises(CacheError, match=rf"file {ARROW}: sha256 mismatch"):
        load_cached_split(args, "dev", built)


def test_extending_a_cache_keeps_the_hashes_recorded_at_its_build(tmp_path, args):
    cache_dir = build_cache(args, ["dev"], tmp_path / "cache")
    flip_a_byte(cache_dir / ARROW)  # unnoticed by the quick check before the extension...
    build_cache(args, ["train"], cache_dir)
    with pytest.raises(CacheError, match=rf"file {ARROW}: sha256 mismatch"):  # ...but not blessed by it
        verify_cache(args, cache_dir, level="full")


def test_an_unlisted_data_file_is_refused(built, args):
    (built / "dev" / "data-00001-of-00001.arrow").write_bytes(b"more rows")
    with pytest.raises(CacheError, match=r"file dev/data-00001-of-00001\.arrow: not listed in manifest\.json"):
        load_cached_split(args, "dev", built)


def test_other_settings_than_the_manifest_are_refused(built, args):
    for change, name in (({"max_pixels": 1024}, "max_pixels"), ({"synthetic_seed": 1}, "synthetic_seed")):
        other = DataArguments(**{**vars(args), **change})
        with pytest.raises(CacheError, match=rf"file manifest\.json: settings differ .*{name}: cache"):
            load_cached_split(other, "dev", built)


def test_a_setting_left_out_is_reported_by_its_real_value(tmp_path, manifest_layout):
    skip = DataArguments(dataset_source="jsonl", dataset_path=str(manifest_layout), bad_examples="skip")
    cache_dir = build_cache(skip, ["dev"], tmp_path / "cache")
    default = DataArguments(**{**vars(skip), "bad_examples": "fail"})
    with pytest.raises(
        CacheError, match=r"settings differ from the current arguments: bad_examples: cache 'skip', now 'fail'"
    ):
        load_cached_split(default, "dev", cache_dir)
    fail_built = build_cache(default, ["dev"], tmp_path / "fail-cache")  # fail is stored by leaving the key out
    assert "bad_examples" not in json.loads((fail_built / "manifest.json").read_text())["settings"]
    assert len(load_cached_split(default, "dev", fail_built)) == 4


def test_the_cache_folder_gets_the_mode_of_a_plain_mkdir(tmp_path, args):
    umask = os.umask(0o022)  # the usual default, which lets others read: a 0700 cache folder would differ
    try:
        cache_dir = build_cache(args, ["dev"], tmp_path / "cache")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o755
    assert cache_dir.stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_datasets_own_map_caches_next_to_the_files_are_tolerated(built, args):
    ds = load_cached_split(args, "dev", built)
    ds.map(lambda row: {"n": len(row["sentence"])})
    assert list((built / "dev").glob("cache-*.arrow"))  # datasets wrote its map cache beside the split
    assert len(load_cached_split(args, "dev", built)) == 3


def test_missing_split_is_built_on_demand_and_kept_splits_are_untouched(tmp_path, args):
    cache_dir = tmp_path / "cache"
    build_cache(args, ["dev"], cache_dir)
    dev_sha = json.loads((cache_dir / "manifest.json").read_text())["files"][ARROW]
    cached = DataArguments(**{**vars(args), "dataset_cached": True, "dataset_cache_dir": str(cache_dir)})
    assert len(load_split(cached, "train")) == 6
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["splits"] == {"dev": 3, "train": 6}
    assert manifest["files"][ARROW] == dev_sha
    with pytest.raises(CacheError, match=r"split 'test1' not in the cache \(it has \['dev', 'train'\]\)"):
        load_cached_split(args, "test1", cache_dir)


def test_a_partial_build_is_never_picked_up(tmp_path, args, built):
    # A killed build leaves its temporary sibling folder: even a complete-looking one is ignored.
    leftover = tmp_path / ".fresh.tmp-killed"
    shutil.copytree(built, leftover)
    cached = DataArguments(**{**vars(args), "dataset_cached": True, "dataset_cache_dir": str(tmp_path / "fresh")})
    assert len(load_split(cached, "dev")) == 3
    assert (tmp_path / "fresh" / "manifest.json").is_file()
    assert leftover.is_dir()
    # Data without a manifest (written last) is not a cache: refused, not completed or rebuilt.
    (built / "manifest.json").unlink()
    with pytest.raises(CacheError, match=r"file manifest\.json: missing: not a finished cache"):
        load_cached_split(args, "dev", built)


def test_a_failing_build_leaves_no_cache(tmp_path, args, monkeypatch):
    def source_split(a, split):
        if split == "dev":
            raise RuntimeError("killed")
        return synthetic_split(a, split)

    monkeypatch.setattr(loading, "source_split", source_split)
    with pytest.raises(RuntimeError, match="killed"):
        build_cache(args, ["train", "dev"], tmp_path / "cache")
    assert list(tmp_path.iterdir()) == []


# ---- the source files of a local source ---------------------------------------------------------------------


@pytest.fixture
def nlvr2_cache(tmp_path, official_layout) -> tuple[DataArguments, Path]:
    root, _ = official_layout
    args = DataArguments(dataset_source="nlvr2", dataset_path=str(root))
    return args, build_cache(args, ["dev"], tmp_path / "cache")


def test_an_unchanged_local_source_loads_and_its_files_are_recorded(nlvr2_cache):
    args, cache_dir = nlvr2_cache
    dev_json = str(Path(args.dataset_path, "dev.json"))
    record = json.loads((cache_dir / "manifest.json").read_text())["sources"]["dev"]
    assert list(record["annotations"]) == [dev_json]
    assert record["annotations"][dev_json]["sha256"] == hashlib.sha256(Path(dev_json).read_bytes()).hexdigest()
    assert sum(len(names) for names in record["images"].values()) == 8  # 4 examples, 2 images each
    assert len(load_cached_split(args, "dev", cache_dir)) == 4
    cached = with_(args, dataset_cached=True, dataset_cache_dir=str(cache_dir))
    assert len(load_split(cached, "dev")) == 4
    summary = dataset_manifest(cached, "dev")["cache_manifest"]["sources"]  # counted in the run record, not listed
    assert summary == {"dev": {"annotations": [dev_json], "images": 8}}


def test_a_flipped_label_in_the_annotation_file_is_refused_naming_it(nlvr2_cache):
    args, cache_dir = nlvr2_cache
    dev_json = Path(args.dataset_path, "dev.json")
    records = [json.loads(line) for line in dev_json.read_text().splitlines()]
    true, false = (next(r for r in records if r["label"] == value) for value in ("True", "False"))
    true["label"], false["label"] = "False", "True"  # two labels swapped: the file keeps its size
    size = dev_json.stat().st_size
    dev_json.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert dev_json.stat().st_size == size
    pattern = rf"the source of split 'dev' changed since the build: {re.escape(str(dev_json))} \(same size"
    with pytest.raises(CacheError, match=pattern + r".*rebuild: delete"):
        load_cached_split(args, "dev", cache_dir)
    with pytest.raises(CacheError, match=pattern):  # load_split refuses it too: no silent rebuild
        load_split(with_(args, dataset_cached=True, dataset_cache_dir=str(cache_dir)), "dev")


def test_an_emptied_image_is_refused_naming_it(nlvr2_cache):
    args, cache_dir = nlvr2_cache
    image = sorted(Path(args.dataset_path, "images").rglob("*.png"))[0]
    size = image.stat().st_size
    image.write_bytes(b"")
    with pytest.raises(CacheError, match=rf"{re.escape(str(image))} \(size {size} -> 0 bytes\); rebuild: delete"):
        load_cached_split(args, "dev", cache_dir)


def test_changed_images_are_named_first_few_then_counted(tmp_path, manifest_layout):
    args = DataArguments(dataset_source="jsonl", dataset_path=str(manifest_layout / "dev.jsonl"))
    cache_dir = build_cache(args, ["dev"], tmp_path / "cache")
    images = sorted((tmp_path / "nlvr2" / "images").rglob("*.png"))
    for image in images:  # new modification times, same bytes: a copy that did not keep them
        st = image.stat()
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(CacheError) as refused:
        load_cached_split(args, "dev", cache_dir)
    message = str(refused.value)
    assert message.count("(same size, new mtime)") == 5 and f"and {len(images) - 5} more" in message
    assert "only modification times" in message
    with open(manifest_layout / "dev.jsonl", "a") as f:
        f.write("\n")
    with pytest.raises(CacheError, match=rf"{re.escape(str(manifest_layout / 'dev.jsonl'))} \(size \d+ -> \d+ bytes"):
        load_cached_split(args, "dev", cache_dir)


def test_default_cache_dir_and_slugs(monkeypatch, tmp_path, args):
    monkeypatch.setenv("VLM_STUDIES_ROOT", str(tmp_path / "root"))
    assert artifact_root() == tmp_path / "root"
    assert artifact_dir("datasets") == tmp_path / "root" / "datasets"
    with pytest.raises(ValueError, match="unknown artifact kind"):
        artifact_dir("misc")
    assert resolve_cache_dir(args) == tmp_path / "root" / "datasets" / "synthetic-seed0"
    assert cache_slug(DataArguments(dataset_source="hub")) == "hub-pingzhili__nlvr2"
    (tmp_path / "nlvr2_data").mkdir()
    assert cache_slug(DataArguments(dataset_source="nlvr2", dataset_path=str(tmp_path / "nlvr2_data"))) == (
        "nlvr2-nlvr2_data"
    )
    assert cache_slug(DataArguments(dataset_source="jsonl", dataset_path=str(tmp_path / "mine.jsonl"))) == (
        "jsonl-mine"
    )
    cached = DataArguments(**{**vars(args), "dataset_cached": True})
    assert len(load_split(cached, "dev", limit=2)) == 2
    assert (tmp_path / "root" / "datasets" / "synthetic-seed0" / "manifest.json").is_file()
    monkeypatch.delenv("VLM_STUDIES_ROOT")
    monkeypatch.chdir(tmp_path)
    assert artifact_root() == tmp_path / "artifacts"
