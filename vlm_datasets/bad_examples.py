"""The bad-example policy (DataArguments.bad_examples): fail on the first bad example, or skip it and count it.

Each split a source reads gets a SkipLog; `skip_report(args, split)` returns what it holds so the run record
(training, evaluation) and the cache manifest list every skipped example with its uid (or file and line) and reason:
nothing is dropped silently. The logs live in this process, keyed by the data arguments and split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from utils.errors import DataError
from vlm_datasets.config import BAD_EXAMPLE_POLICIES as POLICIES

logger = logging.getLogger(__name__)

REPORT_EXAMPLES = 1000  # entries listed in a report (the count is always exact)


class SkipLog:
    """Bad examples met while reading one split: raises them under "fail", records them under "skip"."""

    def __init__(self, policy: str = "fail", name: str = "split"):
        if policy not in POLICIES:
            raise ValueError(f"bad_examples {policy!r} unknown; choose one of {list(POLICIES)}")
        self.policy = policy
        self.name = name
        self._entries: dict[str, dict[str, Any]] = {}  # by where: a stream read twice records each once

    def bad(self, error: DataError, uid: str | None = None) -> None:
        """Raise `error` (policy fail) or record it (policy skip); `uid` when the record had a readable one."""
        if self.policy == "fail":
            raise error
        if error.where not in self._entries:
            logger.warning("%s: skipping bad example %s: %s", self.name, error.where, error.problem)
            self._entries[error.where] = {"uid": uid, "where": error.where, "reason": error.problem}

    def uids(self) -> set[str]:
        return {e["uid"] for e in self._entries.values() if e["uid"] is not None}

    def __len__(self) -> int:
        return len(self._entries)

    def report(self) -> dict[str, Any]:
        entries = list(self._entries.values())
        return {"policy": self.policy, "count": len(entries), "examples": entries[:REPORT_EXAMPLES]}


_LOGS: dict[tuple[str, str], SkipLog] = {}


def _key(args, split: str) -> tuple[str, str]:
    return json.dumps(dataclasses.asdict(args), sort_keys=True, default=str), split


def new_skip_log(args, split: str) -> SkipLog:
    """A fresh log for (args, split), replacing the one of an earlier read of the same split."""
    log = SkipLog(getattr(args, "bad_examples", "fail"), f"{args.dataset_source} split {split}")
    _LOGS[_key(args, split)] = log
    return log


def skip_log(args, split: str) -> SkipLog:
    """The log of the latest read of (args, split), created empty when the split was not read here."""
    return _LOGS.get(_key(args, split)) or new_skip_log(args, split)


def skip_report(args, split: str) -> dict[str, Any]:
    """{"policy", "count", "examples": [{"uid", "where", "reason"}, ...]} for the latest read of (args, split)."""
    return skip_log(args, split).report()
