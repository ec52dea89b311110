"""Cached mode: any source's splits saved as Arrow (save_to_disk) plus a manifest.json verified on load.

Layout: <cache_dir>/<split>/{data-*.arrow, dataset_info.json, state.json} and <cache_dir>/manifest.json
(written last; it lists the bad examples a bad_examples=skip build left out, by uid and reason). A build happens
in a temporary sibling folder renamed into place when complete, so a killed build never leaves a cache that
verifies. A cache that fails verification is refused, never rebuilt silently.

Every file is hashed once, at the build. A load (DataArguments.dataset_cache_verify) checks, quick: manifest.json's
own content_sha256, the file list, every file's size, the split's row count and, for a local source (nlvr2, jsonl),
that its annotation file's SHA-256 and its images' sizes and mtimes are those of the build; full: also every cache
file's SHA-256. A manifest from before the sizes were recorded is verified full (and its source is not checked).
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
from utils.errors import DataError
from vlm_datasets.bad_examples import SkipLog, new_skip_log, skip_report
from vlm_datasets.config import CACHE_VERIFY_LEVELS, DataArguments
from vlm_datasets.example import CANONICAL_FEATURES

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
LOCAL_SOURCES = ("nlvr2", "jsonl")  # sources whose files a cache can check for changes (hub: the revision setting)
# Files datasets itself adds next to loaded Arrow files (Dataset.map caches) and the checksum record
# training/pipeline.py writes beside its tokenized one (with the temporary file of a killed write,
# utils.atomic_write's .<name>.<hex>.tmp): derived, not cache data.
_DERIVED_FILE = re.compile(r"(^|/)(cache-[^/]*\.arrow(\.sha256\.json)?|tmp[^/]*|\.cache-[^/]*\.tmp)$")
_CHANGES_NAMED = 5  # changed source files a refusal names (then a count)


class CacheError(DataError):
    """A dataset cache that is missing, incomplete, tampered with or built with other settings."""


class NotCachedError(CacheError):
    """The cache folder is absent (or empty), or it verifies but lacks the split: building it is safe."""


class _QuietLog(SkipLog):
    """Skips bad records without a word: for a second pass over a source whose first pass reports them."""

    def bad(self, error: DataError, uid: str | None = None) -> None:
        pass


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


_WARNED: set[tuple[Path, str]] = set()


def _warn_once(cache_dir: Path, problem: str) -> None:
    """Log a problem that does not stop the load, once per cache and process (a run verifies a cache twice)."""
    if (cache_dir, problem) not in _WARNED:
        _WARNED.add((cache_dir, problem))
        logger.warning("cache %s: %s; %s", cache_dir, problem, _rebuild_hint(cache_dir))


def _content_sha256(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's content (its JSON, keys sorted) without the content_sha256 entry itself."""
    body = {k: v for k, v in manifest.items() if k != "content_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _read_manifest(args: DataArguments, cache_dir: Path) -> dict[str, Any]:
    """manifest.json, parsed, unedited since the build (content_sha256), of this format and these settings."""
    if not cache_dir.is_dir() or not any(cache_dir.iterdir()):
        raise _fail(cache_dir, None, "no cache there (absent or empty folder)", NotCachedError)
    if not (cache_dir / MANIFEST).is_file():
        raise _fail(cache_dir, MANIFEST, "missing: not a finished cache (a killed build?)")
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text())
        missing = {"files", "splits", "settings"} - set(manifest)
        if missing:
            raise KeyError(min(missing))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise _fail(cache_dir, MANIFEST, f"unreadable ({type(e).__name__}: {e})") from None
    if "content_sha256" in manifest and manifest["content_sha256"] != _content_sha256(manifest):
        raise _fail(cache_dir, MANIFEST, "edited or damaged since the build (content_sha256 does not match it)")
    if manifest.get("format") != FORMAT_VERSION:
        raise _fail(cache_dir, MANIFEST, f"format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    diff = _settings_diff(manifest["settings"], cache_settings(args))
    if diff:
        raise _fail(cache_dir, MANIFEST, "settings differ from the current arguments: " + "; ".join(diff))
    if not isinstance(manifest["splits"], dict):
        raise _fail(cache_dir, MANIFEST, "'splits' is not a mapping")
    return manifest


def _check_files(cache_dir: Path, manifest: dict[str, Any], level: str) -> None:
    """The cache's files are exactly those listed, of the recorded sizes; their SHA-256s too when level is full
    (always for a manifest without sizes: built before they were recorded)."""
    files, sizes = manifest["files"], manifest.get("sizes")
    present = set(_data_files(cache_dir))
    for rel in sorted(set(files) - present):
        raise _fail(cache_dir, rel, "missing")
    for rel in sorted(present - set(files)):
        raise _fail(cache_dir, rel, "not listed in manifest.json (unexpected file)")
    for rel in sorted(files) if sizes is not None else []:
        got, expected = (cache_dir / rel).stat().st_size, sizes.get(rel)
        if got != expected:
            raise _fail(cache_dir, rel, f"size {got} bytes, {expected} at the build")
    if sizes is None:
        _warn_once(cache_dir, f"built before file sizes were recorded in {MANIFEST}: verifying every file's SHA-256 "
                   "on each load (and its source files are not checked for changes)")  # fmt: skip
    if level == "full" or sizes is None:
        for rel, expected in sorted(files.items()):
            got = _sha256(cache_dir / rel)
            if got != expected:
                raise _fail(cache_dir, rel, f"sha256 mismatch (expected {expected[:12]}..., got {got[:12]}...)")


def _source_files(args: DataArguments, split: str) -> tuple[Path, list[Path]] | None:
    """(annotation file, image files) a local source reads for split; None for hub and synthetic."""
    from vlm_datasets.manifest import _manifest_items, manifest_path  # the readers' own record checks
    from vlm_datasets.nlvr2_official import official_items, split_files

    quiet = _QuietLog("skip", f"{args.dataset_source} split {split}")  # the build's own read reports bad records
    if args.dataset_source == "nlvr2":
        annotation, image_dir = split_files(args, split)
        items = official_items(annotation, image_dir, log=quiet)
    elif args.dataset_source == "jsonl":
        annotation = manifest_path(args, split)
        items = _manifest_items(annotation, args.dataset_column_map, quiet)
    else:
        return None
    return annotation, sorted({p for item in items for p in item.paths})


def source_record(args: DataArguments, split: str) -> dict[str, Any] | None:
    """What the build read for split, to notice changes: the annotation file's size, mtime and SHA-256 and every
    image file's [size, mtime_ns] by folder (absolute paths); None for sources without local files."""
    files = _source_files(args, split)
    if files is None:
        return None
    annotation, images = files
    st = annotation.stat()
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(annotation)}
    by_folder: dict[str, dict[str, list[int]]] = {}
    for path in images:
        st = os.stat(path)
        folder, name = os.path.split(os.path.abspath(path))
        by_folder.setdefault(folder, {})[name] = [st.st_size, st.st_mtime_ns]
    return {"annotations": {os.path.abspath(annotation): record}, "images": by_folder}


def _annotation_change(path: str, recorded: dict[str, Any]) -> str | None:
    try:
        size = os.stat(path).st_size
    except OSError as e:
        return f"{path} ({type(e).__name__}: {e.strerror})"
    if size != recorded["size"]:
        return f"{path} (size {recorded['size']} -> {size} bytes)"
    return f"{path} (same size, other content: sha256 differs)" if _sha256(Path(path)) != recorded["sha256"] else None


def _image_change(path: str, size: int, mtime_ns: int) -> str | None:
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path} ({type(e).__name__}: {e.strerror})"
    if st.st_size != size:
        return f"{path} (size {size} -> {st.st_size} bytes)"
    return f"{path} (same size, new mtime)" if st.st_mtime_ns != mtime_ns else None


def source_changes(record: dict[str, Any]) -> list[str]:
    """The files of a source_record that changed since: "<path> (how)" each; the annotation file is hashed, the
    images only stat'ed."""
    changes = [_annotation_change(path, rec) for path, rec in record["annotations"].items()]
    for folder, names in record["images"].items():
        changes += [_image_change(os.path.join(folder, name), *st) for name, st in names.items()]
    return [c for c in changes if c]


def _describe_changes(changes: list[str]) -> str:
    text = ", ".join(changes[:_CHANGES_NAMED])
    if len(changes) > _CHANGES_NAMED:
        text += f" and {len(changes) - _CHANGES_NAMED} more"
    if all(c.endswith("(same size, new mtime)") for c in changes):
        text += " (only modification times: a copy that did not keep them, e.g. cp without -p, changes them too)"
    return text


def _check_sources(args: DataArguments, cache_dir: Path, manifest: dict[str, Any], splits: Iterable[str]) -> None:
    """A local source whose files changed since the build of one of splits is refused, naming the files."""
    recorded = manifest.get("sources")
    if args.dataset_source not in LOCAL_SOURCES or recorded is None:  # None: an older manifest, warned about
        return
    for split in sorted(set(splits) & set(manifest["splits"])):
        if split not in recorded:
            _warn_once(cache_dir, f"split {split!r} has no record of its source files: changes to them go unnoticed")
            continue
        changes = source_changes(recorded[split])
        if changes:
            problem = f"the source of split {split!r} changed since the build: {_describe_changes(changes)}"
            raise _fail(cache_dir, None, problem)


def verify_cache(
    args: DataArguments, cache_dir: str | Path, level: str | None = None, splits: Iterable[str] | None = None
) -> dict[str, Any]:
    """Check a cache against its manifest and the current args; returns the manifest or raises CacheError.

    level: "quick" or "full" (default args.dataset_cache_verify; see the module docstring). splits: those whose
    source files are checked for changes (default all the cache holds).
    """
    cache_dir, level = Path(cache_dir), level or args.dataset_cache_verify
    if level not in CACHE_VERIFY_LEVELS:
        raise ValueError(f"cache verification level {level!r} unknown; choose one of {list(CACHE_VERIFY_LEVELS)}")
    manifest = _read_manifest(args, cache_dir)
    _check_files(cache_dir, manifest, level)
    _check_sources(args, cache_dir, manifest, manifest["splits"] if splits is None else splits)
    return manifest


def load_cached_split(args: DataArguments, split: str, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """Verify the cache (args.dataset_cache_verify, the split's source files), then load one split from it
    (memory-mapped Arrow) and check its row count against the manifest."""
    cache_dir = resolve_cache_dir(args, cache_dir)
    manifest = verify_cache(args, cache_dir, splits=[_check_split(split)])
    if split not in manifest["splits"]:
        have = sorted(manifest["splits"])
        raise _fail(cache_dir, None, f"split {split!r} not in the cache (it has {have})", NotCachedError)
    ds = datasets.load_from_disk(str(cache_dir / split))
    if ds.features != CANONICAL_FEATURES:
        raise _fail(cache_dir, f"{split}/dataset_info.json", f"features {ds.features} are not canonical")
    if len(ds) != manifest["splits"][split]:
        raise _fail(cache_dir, f"{split}/", f"{len(ds)} rows, {manifest['splits'][split]} at the build")
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


def _build_splits(args: DataArguments, todo: list[str], tmp: Path, cache_dir: Path) -> dict[str, dict[str, Any]]:
    """Write each split of todo under tmp; returns per split its rows, skip report and source record."""
    from vlm_datasets.loading import source_split  # loading imports this module

    built = {}
    for split in todo:
        logger.info("dataset cache %s: building split %r from source %r", cache_dir, split, args.dataset_source)
        source = source_record(args, split)  # before the read: a file changed during the build shows as changed
        scratch = tmp / ".scratch"
        ds = _materialize(source_split(args, split), scratch)
        ds.save_to_disk(str(tmp / split))
        report = skip_report(args, split)  # read in full now: a stream's log is complete once materialized
        built[split] = {"rows": len(ds), "skipped": {"count": report["count"], "examples": report["examples"]}}
        built[split]["source"] = source
        new_skip_log(args, split)  # loads of the built split report these through the manifest, not twice
        del ds
        shutil.rmtree(scratch, ignore_errors=True)
    return built


def _manifest(args: DataArguments, tmp: Path, old: dict[str, Any], built: dict[str, dict[str, Any]]) -> dict:
    """The manifest of the build in tmp: the kept splits' entries from old, the built ones' from built. A kept
    file's SHA-256 is the one recorded at its own build (never re-hashed: a change to it stays detectable)."""
    splits = {**old.get("splits", {}), **{s: b["rows"] for s, b in built.items()}}
    skipped = {**old.get("skipped", {}), **{s: b["skipped"] for s, b in built.items()}}
    sources = {**old.get("sources", {}), **{s: b["source"] for s, b in built.items() if b["source"] is not None}}
    old_files, rels = old.get("files", {}), _data_files(tmp)
    manifest = {
        "format": FORMAT_VERSION,
        "source": args.dataset_source,
        "dataset_name": args.dataset_name if args.dataset_source == "hub" else None,
        "revision": args.dataset_revision if args.dataset_source == "hub" else None,
        "splits": splits,
        "bad_examples": args.bad_examples,
        "skipped": {split: skipped.get(split, {"count": 0, "examples": []}) for split in splits},
        "settings": cache_settings(args),
        "files": {rel: old_files.get(rel) or _sha256(tmp / rel) for rel in rels},
        "sizes": {rel: (tmp / rel).stat().st_size for rel in rels},
        "sources": {split: sources[split] for split in splits if split in sources},
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "datasets_version": datasets.__version__,
    }
    return {**manifest, "content_sha256": _content_sha256(manifest)}


def build_cache(args: DataArguments, split_names: Iterable[str], cache_dir: str | Path | None = None) -> Path:
    """Materialize the source's splits into cache_dir with a manifest; a verified existing cache is extended.

    Returns the cache folder. Splits already cached are kept (hard-linked), not rebuilt.
    """
    cache_dir = resolve_cache_dir(args, cache_dir)
    old: dict[str, Any] = {}
    try:
        old = verify_cache(args, cache_dir)
    except NotCachedError:
        pass
    todo = [_check_split(s) for s in dict.fromkeys(split_names) if s not in old.get("splits", {})]
    if not todo:
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.with_name(f".{cache_dir.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 would become the cache's mode; mkdir respects the umask
    try:
        for split in old.get("splits", {}):
            for rel in _data_files(cache_dir / split):
                _link_or_copy(cache_dir / split / rel, tmp / split / rel)
        manifest = _manifest(args, tmp, old, _build_splits(args, todo, tmp, cache_dir))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")  # last
        _swap_in(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("dataset cache %s: splits %s", cache_dir, manifest["splits"])
    return cache_dir
