"""UID cache written by two processes at once: the file lock loses no uid and the file stays valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.uid_bookmarks import UidCache

pytestmark = pytest.mark.integration  # two processes

REPO = Path(__file__).resolve().parents[2]
WRITER = """
import sys, time
from pathlib import Path
from utils.uid_bookmarks import UidCache
cache, name, go = UidCache(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
Path(f"{go}.{name}.ready").touch()
while not go.exists():  # both start adding at the same moment
    time.sleep(0.01)
for i in range(50):
    cache.add(f"{name}-{i}", [name])
"""


def test_two_processes_adding_50_uids_each(tmp_path):
    path, go = tmp_path / "analysis" / "uid_cache.json", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(go)], cwd=REPO, env=env)
        for name in ("a", "b")
    ]
    deadline = time.time() + 60
    while not all(Path(f"{go}.{n}.ready").exists() for n in "ab") and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    data = json.loads(path.read_text())  # valid JSON, the cache's shape
    uids = [e["uid"] for e in data["entries"]]
    assert sorted(uids) == sorted([f"a-{i}" for i in range(50)] + [f"b-{i}" for i in range(50)])
    assert [u for u in uids if u.startswith("a-")] == [f"a-{i}" for i in range(50)]  # each writer's order kept
    assert len(UidCache(path).entries("b")) == 50
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind
