"""Cached mode: any source's splits saved as Arrow (save_to_disk) plus a manifest.json verified on load.

Layout: <cache_dir>/<split>/{data-*.arrow, dataset_info.json, state.json} and <cache_dir>/manifest.json
(written last; it lists the bad examples a bad_examples=skip build left out, by uid and reason). A build happens
in a temporary sibling folder renamed into place when complete, so a killed build never leaves a cache that
verifies. A cache that fails verification is refused, never rebuilt silently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets

from utils.artifacts import artifact_dir
from vlm_datasets.bad_examples import new_skip_log, skip_report
from vlm_datasets.config import DataArguments
from vlm_datasets.errors import DataError
from vlm_datasets.example import CANONICAL_FEATURES

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Files datasets itself adds next to loaded Arrow files (Dataset.map caches): derived, not cache data.
_DERIVED_FILE = re.compile(r"(^|/)(cache-[^/]*\.arrow|tmp[^/]*)$")


class CacheError(DataError):
    """A dataset cache that is missing, incomplete, tampered with or built with other settings."""


class NotCachedError(CacheError):
    """The cache folder is absent (or empty), or it verifies but lacks the split: building it is safe."""


def cache_settings(args: DataArguments) -> dict[str, Any]:
    """What the cached rows depend on: the source's identity and the prompt-independent preprocessing."""
    settings: dict[str, Any] = {
        "source": args.dataset_source,
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
    }
    if args.dataset_source == "hub":
        settings |= {
            "dataset_name": args.dataset_name,
            "dataset_config": args.dataset_config,
            "dataset_revision": args.dataset_revision,
            "column_map": args.dataset_column_map,
        }
    elif args.dataset_source in ("nlvr2", "jsonl"):
        settings["dataset_path"] = str(Path(args.dataset_path).resolve()) if args.dataset_path else None
        if args.dataset_source == "nlvr2":
            image_dir = args.dataset_image_dir or (Path(args.dataset_path or ".") / "images")
            settings["dataset_image_dir"] = str(Path(image_dir).resolve())
        else:
            settings["column_map"] = args.dataset_column_map
    else:
        settings |= {
            "synthetic_seed": args.synthetic_seed,
            "synthetic_grid": args.synthetic_grid,
            "synthetic_train_size": args.synthetic_train_size,
            "synthetic_eval_size": args.synthetic_eval_size,
            "dataset_train_split": args.dataset_train_split,  # the split that gets synthetic_train_size
        }
        # The ablation knobs shape the generated training split; named only when set, so caches built without them
        # keep their settings.
        if args.train_image_pairs is not None:
            settings["train_image_pairs"] = args.train_image_pairs
        if args.train_instructions != "single":
            settings |= {"train_instructions": args.train_instructions, "prompt_template": args.prompt_template}
    if args.dataset_source != "synthetic" and args.bad_examples != "fail":
        settings["bad_examples"] = args.bad_examples  # a cache that left bad examples out is no fail-fast cache
    return json.loads(json.dumps(settings))  # as the manifest stores it (tuples -> lists, ...)


def cache_slug(args: DataArguments) -> str:
    """Default cache folder name: synthetic-seed0, hub-pingzhili__nlvr2, nlvr2-<folder>, jsonl-<stem>."""
    if args.dataset_source == "synthetic":
        slug = f"synthetic-seed{args.synthetic_seed}"
    elif args.dataset_source == "hub":
        slug = "hub-" + args.dataset_name.replace("/", "__")
        slug += f"-{args.dataset_config}" if args.dataset_config else ""
        slug += f"-rev-{args.dataset_revision}" if args.dataset_revision else ""
    else:
        path = Path(args.dataset_path or "unnamed").resolve()
        slug = f"{args.dataset_source}-{path.name if path.is_dir() else path.stem}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", slug)


def resolve_cache_dir(args: DataArguments, cache_dir: str | Path | None = None) -> Path:
    """cache_dir, else args.dataset_cache_dir, else <artifact root>/datasets/<slug>."""
    return Path(cache_dir or args.dataset_cache_dir or artifact_dir("datasets") / cache_slug(args)).absolute()


_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a split is a folder of the cache: no "/", no ".."


def _check_split(split: str) -> str:
    if not _SPLIT_NAME.fullmatch(split) or ".." in split:
        raise ValueError(f"split name {split!r}: use letters, digits, '_', '-' and '.' (it names a cache folder)")
    return split


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _data_files(folder: Path) -> list[str]:
    """Relative posix paths of the files under folder, except manifest.json and datasets' derived files."""
    files = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(f for f in files if f != MANIFEST and not _DERIVED_FILE.search(f))


def _rebuild_hint(cache_dir: Path) -> str:
    return (
        f"rebuild: delete {cache_dir} (or set dataset_cache_dir to a new folder) and load with "
        "dataset_cached=true, or call vlm_datasets.cache.build_cache"
    )


def _fail(cache_dir: Path, file: str | None, problem: str, kind: type[CacheError] = CacheError) -> CacheError:
    where = f"cache {cache_dir}" + (f": file {file}" if file else "")
    return kind(where, f"{problem}; {_rebuild_hint(cache_dir)}")


# The value a setting has when cache_settings leaves its key out (so older caches keep verifying).
_IMPLIED_SETTINGS = {"bad_examples": "fail", "train_instructions": "single"}


def _setting(settings: dict[str, Any], key: str) -> Any:
    return settings.get(key, _IMPLIED_SETTINGS.get(key))


def _settings_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """ "key: cache X, now Y" per differing setting; a key left out reads as its implied value, not None."""
    keys = sorted(set(stored) | set(current))
    return [
        f"{k}: cache {_setting(stored, k)!r}, now {_setting(current, k)!r}"
        for k in keys
        if _setting(stored, k) != _setting(current, k)
    ]


def verify_cache(args: DataArguments, cache_dir: str | Path) -> dict[str, Any]:
    """Check a cache against its manifest and the current args; returns the manifest or raises CacheError."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir() or not any(cache_dir.iterdir()):
        raise _fail(cache_dir, None, "no cache there (absent or empty folder)", NotCachedError)
    if not (cache_dir / MANIFEST).is_file():
        raise _fail(cache_dir, MANIFEST, "missing: not a finished cache (a killed build?)")
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text())
        files, splits, stored = manifest["files"], manifest["splits"], manifest["settings"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise _fail(cache_dir, MANIFEST, f"unreadable ({type(e).__name__}: {e})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise _fail(cache_dir, MANIFEST, f"format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    diff = _settings_diff(stored, cache_settings(args))
    if diff:
        raise _fail(cache_dir, MANIFEST, "settings differ from the current arguments: " + "; ".join(diff))
    present = set(_data_files(cache_dir))
    for rel in sorted(set(files) - present):
        raise _fail(cache_dir, rel, "missing")
    for rel in sorted(present - set(files)):
        raise _fail(cache_dir, rel, "not listed in manifest.json (unexpected file)")
    for rel, expected in sorted(files.items()):
        got = _sha256(cache_dir / rel)
        if got != expected:
            raise _fail(cache_dir, rel, f"sha256 mismatch (expected {expected[:12]}..., got {got[:12]}...)")
    if not isinstance(splits, dict):
        raise _fail(cache_dir, MANIFEST, "'splits' is not a mapping")
    return manifest


def load_cached_split(args: DataArguments, split: str, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """Verify the cache (files, sha256, settings), then load one split from it (memory-mapped Arrow)."""
    cache_dir = resolve_cache_dir(args, cache_dir)
    manifest = verify_cache(args, cache_dir)
    if _check_split(split) not in manifest["splits"]:
        have = sorted(manifest["splits"])
        raise _fail(cache_dir, None, f"split {split!r} not in the cache (it has {have})", NotCachedError)
    ds = datasets.load_from_disk(str(cache_dir / split))
    if ds.features != CANONICAL_FEATURES:
        raise _fail(cache_dir, f"{split}/dataset_info.json", f"features {ds.features} are not canonical")
    return ds


def _materialize(ds: datasets.Dataset | datasets.IterableDataset, scratch: Path) -> datasets.Dataset:
    """A streaming split written to Arrow under scratch (a fresh folder: no stale from_generator cache)."""
    if isinstance(ds, datasets.Dataset):
        return ds

    def rows():
        yield from ds.decode(False)  # image cells stay encoded bytes: no decode / re-encode round trip

    return datasets.Dataset.from_generator(
        rows, features=CANONICAL_FEATURES, cache_dir=str(scratch), fingerprint=uuid.uuid4().hex
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same filesystem (a sibling folder): no copy of big Arrow files
    except OSError:
        shutil.copy2(src, dst)


def _swap_in(tmp: Path, cache_dir: Path) -> None:
    """Rename the finished build into place (atomic when cache_dir is absent or empty)."""
    if cache_dir.is_dir() and not any(cache_dir.iterdir()):
        cache_dir.rmdir()
    if not cache_dir.exists():
        os.rename(tmp, cache_dir)
        return
    old = cache_dir.with_name(f".{cache_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(cache_dir, old)  # killed between these renames: no cache at all, never a wrong one
    os.rename(tmp, cache_dir)
    shutil.rmtree(old, ignore_errors=True)


def build_cache(args: DataArguments, split_names: Iterable[str], cache_dir: str | Path | None = None) -> Path:
    """Materialize the source's splits into cache_dir with a manifest; a verified existing cache is extended.

    Returns the cache folder. Splits already cached are kept (hard-linked), not rebuilt.
    """
    from vlm_datasets.loading import source_split  # loading imports this module

    cache_dir = resolve_cache_dir(args, cache_dir)
    kept: dict[str, int] = {}
    skipped: dict[str, dict[str, Any]] = {}
    try:
        old = verify_cache(args, cache_dir)
        kept, skipped = old["splits"], old.get("skipped", {})
    except NotCachedError:
        pass
    todo = [_check_split(s) for s in dict.fromkeys(split_names) if s not in kept]
    if not todo:
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.with_name(f".{cache_dir.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 would become the cache's mode; mkdir respects the umask
    try:
        for split in kept:
            for rel in _data_files(cache_dir / split):
                _link_or_copy(cache_dir / split / rel, tmp / split / rel)
        sizes = dict(kept)
        for split in todo:
            logger.info("dataset cache %s: building split %r from source %r", cache_dir, split, args.dataset_source)
            scratch = tmp / ".scratch"
            ds = _materialize(source_split(args, split), scratch)
            ds.save_to_disk(str(tmp / split))
            sizes[split] = len(ds)
            report = skip_report(args, split)  # read in full now: a stream's log is complete once materialized
            skipped[split] = {"count": report["count"], "examples": report["examples"]}
            new_skip_log(args, split)  # loads of the built split report these through the manifest, not twice
            del ds
            shutil.rmtree(scratch, ignore_errors=True)
        manifest = {
            "format": FORMAT_VERSION,
            "source": args.dataset_source,
            "dataset_name": args.dataset_name if args.dataset_source == "hub" else None,
            "revision": args.dataset_revision if args.dataset_source == "hub" else None,
            "splits": sizes,
            "bad_examples": args.bad_examples,
            "skipped": {split: skipped.get(split, {"count": 0, "examples": []}) for split in sizes},
            "settings": cache_settings(args),
            "files": {rel: _sha256(tmp / rel) for rel in _data_files(tmp)},
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "datasets_version": datasets.__version__,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")  # last
        _swap_in(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("dataset cache %s: splits %s", cache_dir, sizes)
    return cache_dir
