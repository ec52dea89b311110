"""Pieces of a CPU rehearsal of a real config (scripts/rehearse.py): each phase an entry point in a subprocess whose
peak RSS comes from os.wait4, and readers of what the phases write (run_record.json, the TensorBoard events'
per-step times, trainer_state.json, the adapter)."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Phase:
    name: str
    argv: list[str]  # after `python`: a script of the repository and its flags
    expect: list[str] = field(default_factory=list)  # files (glob patterns) the phase must write
    returncode: int | None = None
    started: float | None = None  # time.time() at the start
    seconds: float | None = None  # wall clock of the whole subprocess (loading included)
    peak_rss_gb: float | None = None  # the phase's ru_maxrss, from os.wait4
    missing: list[str] = field(default_factory=list)
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.missing

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


# The phase is started by this small launcher, whose os.wait4 reads the phase's own peak RSS: a child forked from a
# large process (this one, or pytest) keeps the parent's high-water mark in ru_maxrss across exec, the launcher's does
# not reach the phase, forked from the launcher's few megabytes.
LAUNCHER = """import json, os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"ru_maxrss_kb": usage.ru_maxrss}, fh)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_phase(phase: Phase, log: Path, env: dict[str, str]) -> Phase:
    """Run `python <argv>` from the repository root, output to `log`; fill in exit code, seconds, peak RSS (the
    child's ru_maxrss from os.wait4, through LAUNCHER) and the expected files that are missing."""
    log.parent.mkdir(parents=True, exist_ok=True)
    usage = log.with_suffix(".rusage.json")
    usage.unlink(missing_ok=True)
    phase.started, start = time.time(), time.perf_counter()
    with log.open("w") as out:
        argv = [sys.executable, "-c", LAUNCHER, str(usage), sys.executable, *phase.argv]
        phase.returncode = subprocess.run(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    phase.log, phase.seconds = str(log), round(time.perf_counter() - start, 1)
    if usage.exists():
        phase.peak_rss_gb = round(json.loads(usage.read_text())["ru_maxrss_kb"] * 1024 / 1e9, 2)  # Linux: kilobytes
    phase.missing = [p for p in phase.expect if not glob.glob(p)]
    return phase


def tail(path: str | Path, lines: int = 15) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def decisions(run_record: dict) -> dict[str, dict]:
    """Every lab default the run decided for itself: entries of the run record holding setting / enabled / reason
    (vision_feature_cache, shared_prefix, ...)."""
    keys = ("setting", "enabled", "reason")
    return {
        name: {k: value[k] for k in keys}
        for name, value in sorted(run_record.items())
        if isinstance(value, dict) and all(k in value for k in keys)
    }


def global_step(checkpoint: Path) -> int | None:
    state = checkpoint / "trainer_state.json"
    return json.loads(state.read_text())["global_step"] if state.exists() else None


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1]))
    return found[-1] if found else None


def step_times(log_dir: Path, start: float, end: float) -> list[dict]:
    """The optimizer steps logged between `start` and `end` (wall-clock times): step, and seconds since the step
    before it in the same TensorBoard events file, the first one counted from the file's creation (the writer is made
    at train begin). Read from the train/loss scalars (logging_steps 1)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    rows = []
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        previous = None
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("file_version"):
                previous = event.wall_time
            elif any(v.tag == "train/loss" for v in event.summary.value):
                if start <= event.wall_time <= end:
                    seconds = None if previous is None else round(event.wall_time - previous, 2)
                    rows.append({"step": event.step, "seconds": seconds})
                previous = event.wall_time
    return sorted(rows, key=lambda r: r["step"])


def adapter_stats(folder: Path) -> dict:
    """Trainable (LoRA) parameters stored in the adapter and its size on disk."""
    from safetensors import safe_open

    weights = folder / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        params = 0
        for name in f.keys():
            n = 1
            for d in f.get_slice(name).get_shape():
                n *= d
            params += n
    size = sum(p.stat().st_size for p in (weights, folder / "adapter_config.json") if p.exists())
    return {"path": str(folder), "trainable_parameters": params, "adapter_mb": round(size / 1e6, 2)}


def write_report(folder: Path, report: dict, markdown: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / "report.json", folder / "report.md"
    js.write_text(json.dumps(report, indent=2) + "\n")
    md.write_text(markdown)
    return js, md
