"""The UID cache: bookmarked examples (uid, tags, note, time) kept in one JSON file, in the order they were added.

The file is <artifact root>/analysis/uid_cache.json unless --cache names another. Every write replaces the file
atomically (temporary file + os.replace) under a lock, so a crash or a second process never leaves half a file; a
file that is not a valid cache is refused with its path and never overwritten. The gallery and the playground read it;
the command line is scripts/uid_cache.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from utils.artifacts import artifact_dir
from utils.atomic_write import write_json_atomic
from utils.errors import DataError

CACHE_VERSION = 1


def default_cache_path() -> Path:
    """<artifact root>/analysis/uid_cache.json."""
    return artifact_dir("analysis") / "uid_cache.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Bookmark:
    uid: str
    tags: list[str] = field(default_factory=list)
    note: str = ""
    time: str = ""  # when first added (the cache's order)
    updated: str = ""  # last merge of tags or note


def _check_entry(entry, where: str) -> Bookmark:
    if not isinstance(entry, dict) or not isinstance(entry.get("uid"), str) or not entry["uid"]:
        raise DataError(where, "an entry without a uid (a non-empty string)")
    tags, note = entry.get("tags", []), entry.get("note", "")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags) or not isinstance(note, str):
        raise DataError(where, f"uid {entry['uid']!r}: tags must be a list of strings and note a string")
    return Bookmark(entry["uid"], list(tags), note, str(entry.get("time", "")), str(entry.get("updated", "")))


def _merge_note(old: str, new: str) -> str:
    if not new or new in old.split("\n"):
        return old
    return f"{old}\n{new}" if old else new


class UidCache:
    """Bookmarks in one JSON file ({"version": 1, "entries": [...]}, insertion order)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_cache_path()

    # ---- reading and writing the file ----
    def entries(self, tag: str | None = None) -> list[Bookmark]:
        """All bookmarks in insertion order (only those carrying `tag` when given); none when there is no file."""
        entries = self._read()
        return [e for e in entries if tag in e.tags] if tag is not None else entries

    def _read(self) -> list[Bookmark]:
        refuse = "; the file is left as it is: fix it or move it away"
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(str(self.path), f"UID cache unreadable ({e}){refuse}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(str(self.path), f"UID cache is not valid JSON ({e}){refuse}") from None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise DataError(str(self.path), f'not a UID cache (expected {{"entries": [...]}}){refuse}')
        entries, seen = [], set()
        for i, raw in enumerate(data["entries"]):
            entry = _check_entry(raw, f"{self.path}: entry {i}")
            if entry.uid in seen:
                raise DataError(f"{self.path}: entry {i}", f"uid {entry.uid!r} appears twice{refuse}")
            seen.add(entry.uid)
            entries.append(entry)
        return entries

    def _write(self, entries: list[Bookmark]) -> None:
        """Replace the file whole (utils.atomic_write): readers see the old file or the new one."""
        payload = {"version": CACHE_VERSION, "entries": [asdict(e) for e in entries]}
        write_json_atomic(self.path, payload, sort_keys=False, ensure_ascii=False)

    def _locked(self) -> FileLock:
        """The lock held around a read-modify-write, across processes: .<file name>.lock beside the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(self.path.with_name(f".{self.path.name}.lock"))

    # ---- operations ----
    def get(self, uid: str) -> Bookmark | None:
        return next((e for e in self._read() if e.uid == uid), None)

    def add(self, uid: str, tags: list[str] | tuple[str, ...] = (), note: str = "") -> Bookmark:
        """Bookmark `uid`, or merge tags (union, first-seen order) and note (appended as a new line) into its entry."""
        if not isinstance(uid, str) or not uid.strip():
            raise ValueError("a bookmark needs a non-empty uid")
        tags = [t.strip() for t in tags if t.strip()]
        with self._locked():
            entries = self._read()
            entry = next((e for e in entries if e.uid == uid), None)
            if entry is None:
                entry = Bookmark(uid, list(dict.fromkeys(tags)), note, _now(), "")
                entries.append(entry)
            else:
                entry.tags = list(dict.fromkeys([*entry.tags, *tags]))
                entry.note = _merge_note(entry.note, note)
                entry.updated = _now()
            self._write(entries)
        return entry

    def remove(self, uid: str) -> bool:
        """Drop `uid`'s bookmark; False when it had none (the file is then left untouched)."""
        with self._locked():
            entries = self._read()
            kept = [e for e in entries if e.uid != uid]
            if len(kept) == len(entries):
                return False
            self._write(kept)
        return True

    def step(self, uid: str | None, offset: int, tag: str | None = None) -> Bookmark | None:
        """The bookmark `offset` places after (negative: before) `uid` among those with `tag`, in insertion order.

        uid None starts outside the list (+1 gives the first, -1 the last). None past either end; a uid that is not
        bookmarked (with that tag) raises KeyError.
        """
        entries = self.entries(tag)
        uids = [e.uid for e in entries]
        if uid is None:
            i = -1 if offset > 0 else len(uids)
        elif uid in uids:
            i = uids.index(uid)
        else:
            raise KeyError(f"uid {uid!r} is not in the UID cache {self.path}" + (f" with tag {tag!r}" if tag else ""))
        j = i + offset
        return entries[j] if 0 <= j < len(entries) else None

    def next(self, uid: str | None, tag: str | None = None) -> Bookmark | None:
        return self.step(uid, 1, tag)

    def previous(self, uid: str | None, tag: str | None = None) -> Bookmark | None:
        return self.step(uid, -1, tag)
