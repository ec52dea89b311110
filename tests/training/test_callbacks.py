"""training/callbacks.py: checkpoints mirrored atomically into the artifact root (last N + best kept), a copy killed
half-way never resumed from, resume from the mirror when output_dir has nothing, TensorBoard under <root>/logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import callbacks
from training.callbacks import (
    MARKER,
    OLD,
    PARTIAL,
    CheckpointMirror,
    LabTrainingArguments,
    copy_atomically,
    is_mirrored,
    last_mirrored_checkpoint,
    mirror_dir,
    resume_source,
)
from training.sft import main, make_parser

REPO = Path(__file__).resolve().parents[2]


def sft_args(tiny_model_dir, out_dir, *extra):
    overrides = [
        "--config",
        str(REPO / "training/configs/embedded_lora.yaml"),
        "--model_name_or_path",
        str(tiny_model_dir),
        "--output_dir",
        str(out_dir),
        "--synthetic_train_size",
        "32",
        "--synthetic_eval_size",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "8",
        "--logging_steps",
        "1",
        "--save_steps",
        "1",
        "--save_total_limit",
        "2",
        *extra,
    ]
    return make_parser().parse_args_and_config(overrides)


def fake_checkpoint(folder: Path, step: int, payload: bytes = b"w" * 64) -> Path:
    """A checkpoint-N as the Trainer leaves it: weights, then trainer_state.json last."""
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(payload)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_mirror_keeps_last_n_and_best_of_a_real_run(tiny_model_dir, tmp_path, isolated_artifacts):
    # eval every step; "best" is the *highest* eval loss, so it is an early step, not one of the last two
    run = tmp_path / "local" / "mirrored-run"
    extra = ["--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "1"]
    extra += ["--metric_for_best_model", "eval_loss", "--greater_is_better", "true", "--learning_rate", "0.02"]
    extra += ["--mirror_checkpoints_to", "artifact_root", "--mirror_keep_last", "2", "--report_to", "tensorboard"]
    trainer = main(*sft_args(tiny_model_dir, run, *extra))

    losses = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}
    best = max(losses, key=losses.get)
    assert trainer.state.best_global_step == best
    assert best < 3, losses  # else the "best kept" branch goes untested
    mirror = isolated_artifacts / "checkpoints" / "mirrored-run"
    kept = sorted(int(p.name.split("-")[1]) for p in mirror.glob("checkpoint-*"))
    assert kept == sorted({3, 4, best})
    assert all(is_mirrored(step, mirror / f"checkpoint-{step}") for step in kept)
    assert not [p for p in mirror.iterdir() if p.name.startswith(".")]  # no temporary copies left
    newest = mirror / "checkpoint-4"
    assert (newest / "adapter_model.safetensors").read_bytes() == (
        run / "checkpoint-4/adapter_model.safetensors"
    ).read_bytes()
    assert (newest / "optimizer.pt").exists() and (mirror / "run_record.json").exists()
    # TensorBoard wrote under <artifact root>/logs/<run name>, and the run record says so
    logs = isolated_artifacts / "logs" / "mirrored-run"
    assert list(logs.glob("events.out.tfevents.*"))
    record = json.loads((run / "run_record.json").read_text())
    assert record["config"]["LabTrainingArguments"]["logging_dir"] == str(logs.resolve())


def test_prune_without_a_best_metric_keeps_the_last_n(tmp_path):
    mirror = CheckpointMirror(tmp_path / "mirror", keep_last=2)
    for step in (1, 2, 3, 4):
        copy_atomically(
            fake_checkpoint(tmp_path / "run" / f"checkpoint-{step}", step), mirror.dest / f"checkpoint-{step}", step
        )
        mirror.prune(None)
    assert sorted(p.name for p in mirror.dest.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    with pytest.raises(ValueError, match="at least 1"):
        CheckpointMirror(tmp_path / "x", keep_last=0)


SLOW_COPY = """
import sys, time
from pathlib import Path
import training.callbacks as cb
real = cb._copy_file
def slow(src, dst):
    real(src, dst)
    Path(sys.argv[3]).touch()  # the copy has started
    time.sleep(0.5)
cb._copy_file = slow
cb.copy_atomically(Path(sys.argv[1]), Path(sys.argv[2]), step=2)
"""


@pytest.mark.integration
def test_a_copy_killed_half_way_is_never_resumed_from(tmp_path):
    run, mirror = tmp_path / "run", tmp_path / "mirror"
    copy_atomically(fake_checkpoint(run / "checkpoint-1", 1), mirror / "checkpoint-1", step=1)
    src = fake_checkpoint(run / "checkpoint-2", 2)
    for i in range(6):
        (src / f"shard-{i}.bin").write_bytes(os.urandom(256))
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_COPY, str(src), str(mirror / "checkpoint-2"), str(started)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 60
    while not started.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the copying process never started copying"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = [p for p in mirror.iterdir() if p.name.startswith(".checkpoint-2.partial-")]
    assert partial and not (mirror / "checkpoint-2").exists()  # killed mid-copy: only the hidden sibling
    assert last_mirrored_checkpoint(mirror) == mirror / "checkpoint-1"
    # A folder named checkpoint-N whose files do not match its marker (a half-synced Drive copy) is not used either.
    half = copy_atomically(fake_checkpoint(run / "checkpoint-3", 3), mirror / "checkpoint-3", step=3)
    (half / "adapter_model.safetensors").write_bytes(b"short")
    assert not is_mirrored(3, half) and last_mirrored_checkpoint(mirror) == mirror / "checkpoint-1"
    assert resume_source("true", str(tmp_path / "empty"), mirror) == str(mirror / "checkpoint-1")
    # The next run's mirror clears the leftover copy.
    CheckpointMirror(mirror).on_train_begin(None, type("S", (), {"is_world_process_zero": True})(), None)
    assert not [p for p in mirror.iterdir() if p.name.startswith(".")]


def test_resume_prefers_the_newer_of_output_dir_and_mirror(tmp_path):
    run, mirror = tmp_path / "run", tmp_path / "mirror"
    copy_atomically(fake_checkpoint(tmp_path / "src" / "checkpoint-4", 4), mirror / "checkpoint-4", step=4)
    fake_checkpoint(run / "checkpoint-2", 2)
    assert resume_source("last", str(run), mirror) == str(mirror / "checkpoint-4")
    fake_checkpoint(run / "checkpoint-4", 4)
    assert resume_source(True, str(run), mirror) == str(run / "checkpoint-4")  # a tie: the local one
    assert resume_source("some/path", str(run), mirror) == "some/path"
    with pytest.raises(ValueError, match="nor in"):
        resume_source("true", str(tmp_path / "none"), tmp_path / "no-mirror")


def test_sft_resumes_from_the_mirror_when_output_dir_is_gone(tiny_model_dir, tmp_path, isolated_artifacts):
    run = tmp_path / "local" / "colab-run"
    mirror = ["--mirror_checkpoints_to", str(tmp_path / "drive"), "--report_to", "none"]
    first = main(*sft_args(tiny_model_dir, run, "--max_steps", "2", *mirror))
    drive = tmp_path / "drive" / "checkpoints" / "colab-run"
    assert sorted(p.name for p in drive.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    # The VM is gone (local output_dir lost); a copy of step 3 was killed half-way.
    for path in sorted(run.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (drive / ".checkpoint-3.partial-1-abc").mkdir()
    (drive / ".checkpoint-3.partial-1-abc" / "trainer_state.json").write_text('{"global_step": 3}')
    resumed = main(*sft_args(tiny_model_dir, run, "--max_steps", "4", "--resume_from_checkpoint", "true", *mirror))
    assert resumed.state.global_step == 4
    losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert losses[:2] == [e["loss"] for e in first.state.log_history if "loss" in e]  # restored from the mirror
    assert sorted(p.name for p in drive.iterdir()) == ["checkpoint-3", "checkpoint-4", "run_record.json"]


def test_mirror_onto_output_dir_is_refused(tmp_path, isolated_artifacts):
    args = sft_args("unused", isolated_artifacts / "checkpoints" / "same", "--mirror_checkpoints_to", "artifact_root")
    with pytest.raises(ValueError, match="onto itself"):
        mirror_dir(args[4], args[1])
    with pytest.raises(ValueError, match="at least 1"):
        LabTrainingArguments(mirror_keep_last=0)


def test_marker_is_written_after_every_file_and_before_the_rename(tmp_path, monkeypatch):
    src = fake_checkpoint(tmp_path / "checkpoint-7", 7)
    (src / "sub").mkdir()
    (src / "sub" / "rng_state.pth").write_bytes(b"r" * 8)
    events = []  # (what, name, was the marker in the hidden copy at that moment)
    real_copy, real_rename = callbacks._copy_file, os.rename

    def copy(a, b):
        hidden = next(p for p in Path(b).parents if PARTIAL in p.name)
        events.append(("copy", Path(b).name, (hidden / MARKER).exists()))
        real_copy(a, b)

    def rename(a, b):
        events.append(("rename", Path(b).name, (Path(a) / MARKER).exists()))
        real_rename(a, b)

    monkeypatch.setattr(callbacks, "_copy_file", copy)
    monkeypatch.setattr(callbacks.os, "rename", rename)
    out = copy_atomically(src, tmp_path / "m" / "checkpoint-7", step=7)
    assert events == [
        ("copy", "adapter_model.safetensors", False),
        ("copy", "trainer_state.json", False),
        ("copy", "rng_state.pth", False),
        ("rename", "checkpoint-7", True),  # the marker exists before the copy takes its name, never after a file
    ]
    marker = json.loads((out / MARKER).read_text())
    assert marker["step"] == 7
    sizes = {str(f.relative_to(src)): f.stat().st_size for f in src.rglob("*") if f.is_file()}
    assert marker["files"] == sizes and len(sizes) == 3


def on_save(mirror: CheckpointMirror, run: Path, step: int) -> None:
    args = type("A", (), {"output_dir": str(run), "metric_for_best_model": None})()
    state = type("S", (), {"is_world_process_zero": True, "global_step": step, "best_global_step": None})()
    mirror.on_save(args, state, None)


def test_mirroring_the_same_step_again_replaces_the_copy_whole(tmp_path):
    run, mirror = tmp_path / "run", CheckpointMirror(tmp_path / "mirror", keep_last=2)
    fake_checkpoint(run / "checkpoint-5", 5, payload=b"a" * 64)
    (run / "checkpoint-5" / "stale.bin").write_bytes(b"s")
    on_save(mirror, run, 5)
    shutil.rmtree(run / "checkpoint-5")
    fake_checkpoint(run / "checkpoint-5", 5, payload=b"b" * 80)  # the step saved again (a rerun of the same step)
    on_save(mirror, run, 5)
    copy = mirror.dest / "checkpoint-5"
    assert (copy / "adapter_model.safetensors").read_bytes() == b"b" * 80 and not (copy / "stale.bin").exists()
    assert is_mirrored(5, copy) and json.loads((copy / MARKER).read_text())["files"]["adapter_model.safetensors"] == 80
    assert sorted(p.name for p in mirror.dest.iterdir()) == ["checkpoint-5"]  # no hidden .old- or .partial- left


def test_a_copy_killed_between_moving_the_old_aside_and_renaming_the_new_in_is_restored(tmp_path, monkeypatch):
    run, mirror = tmp_path / "run", CheckpointMirror(tmp_path / "mirror")
    copy_atomically(fake_checkpoint(run / "checkpoint-5", 5, b"a" * 64), mirror.dest / "checkpoint-5", step=5)
    real_rename = os.rename

    def killed_after_the_first_rename(a, b):
        if OLD not in Path(b).name:  # the new copy's rename: "killed" here, the old copy already moved aside
            raise KeyboardInterrupt
        real_rename(a, b)

    monkeypatch.setattr(callbacks.os, "rename", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        copy_atomically(fake_checkpoint(run / "again" / "checkpoint-5", 5, b"b" * 64), mirror.dest / "checkpoint-5", 5)
    monkeypatch.setattr(callbacks.os, "rename", real_rename)
    (old,) = [p.name for p in mirror.dest.iterdir()]
    assert old.startswith(f".checkpoint-5{OLD}") and last_mirrored_checkpoint(mirror.dest) is None
    # A leftover .old- whose checkpoint-N exists again, and an incomplete one, are removed instead.
    copy_atomically(fake_checkpoint(run / "checkpoint-6", 6), mirror.dest / f".checkpoint-6{OLD}abc", step=6)
    copy_atomically(run / "checkpoint-6", mirror.dest / "checkpoint-6", step=6)
    (mirror.dest / f".checkpoint-7{OLD}abc").mkdir()
    (mirror.dest / f".checkpoint-7{OLD}abc" / "trainer_state.json").write_text('{"global_step": 7}')
    mirror.on_train_begin(None, type("S", (), {"is_world_process_zero": True})(), None)
    assert sorted(p.name for p in mirror.dest.iterdir()) == ["checkpoint-5", "checkpoint-6"]
    restored = mirror.dest / "checkpoint-5"
    assert is_mirrored(5, restored) and (restored / "adapter_model.safetensors").read_bytes() == b"a" * 64
    assert last_mirrored_checkpoint(mirror.dest) == mirror.dest / "checkpoint-6"
