"""Parsing of NLVR2 record fields (uid, sentence, label), identifiers and model answers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from utils.errors import DataError

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# ASCII digits only ("\d" takes other scripts' digits: two uids would name one image) and fullmatch ("$" would
# accept a final newline).
_UID_RE = re.compile(r"(?P<split>[A-Za-z0-9_]+)-(?P<set_id>[0-9]+)-(?P<pair_id>[0-9]+)-(?P<sentence_id>[0-9]+)")


def _location(uid: str, where: str | None) -> str:
    """Where a field error points: the caller's full location (file, line, uid) when it has one, else the uid."""
    return where if where is not None else f"uid {uid}"


def parse_label(value, uid: str = "?", *, where: str | None = None) -> bool | None:
    """bool | "True"/"false"/"yes"/"1" | 0/1 -> bool; None stays None (unlabeled). Anything else: DataError at
    `where` (the record's file, line and uid), else at "uid <uid>"."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise DataError(_location(uid, where), f"unparseable label {value!r} (expected True/False, yes/no or 1/0)")


def parse_uid(value, where: str) -> str:
    """A record's uid (a string, or an int written as one). Refused: empty, padded with spaces, or holding control
    characters (a newline breaks one-uid-a-line files). Path separators and ".." are kept: a uid is data, never a
    path; files named after uids go through utils.file_names.safe_stem."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(where, f"uid must be a string, got {type(value).__name__} {value!r}")
    uid = str(value)
    if not uid or uid != uid.strip() or _CONTROL.search(uid):
        raise DataError(where, f"uid {uid!r} is empty, padded with spaces or holds control characters")
    return uid


def parse_sentence(value, uid: str = "?", field: str = "sentence", *, where: str | None = None) -> str:
    """The statement: a non-blank string, kept exactly as written (non-ASCII and HTML included). DataError at
    `where` (the record's file, line and uid), else at "uid <uid>"."""
    if not isinstance(value, str):
        raise DataError(_location(uid, where), f"field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(_location(uid, where), f"field {field!r} is blank")
    return value


@dataclass(frozen=True)
class Identifier:
    """`split-set_id-pair_id-sentence_id`, e.g. dev-850-0-0."""

    split: str
    set_id: int
    pair_id: int
    sentence_id: int

    @property
    def consistency_group(self) -> str:
        """NLVR2's consistency group: the identifier with the pair_id removed."""
        return f"{self.split}-{self.set_id}-{self.sentence_id}"

    def image_stem(self, index: int) -> str:
        """Official image file stem: dev-850-0-0 -> dev-850-0-img0 (the sentence id is dropped)."""
        return f"{self.split}-{self.set_id}-{self.pair_id}-img{index}"


def parse_identifier(uid: str) -> Identifier:
    m = _UID_RE.fullmatch(uid) if isinstance(uid, str) else None
    if not m:
        raise DataError(f"uid {uid!r}", "not an NLVR2 identifier of the form split-set_id-pair_id-sentence_id")
    return Identifier(m["split"], int(m["set_id"]), int(m["pair_id"]), int(m["sentence_id"]))


_ANSWER_RE = re.compile(r"\b(true|false|yes|no)\b", re.IGNORECASE)


def parse_answer(text: str) -> bool | None:
    """A generated answer -> bool, or None when it says neither (or both) True and False."""
    found = {m.group(1).lower() in ("true", "yes") for m in _ANSWER_RE.finditer(text)}
    return found.pop() if len(found) == 1 else None
