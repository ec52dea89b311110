"""Trainer callbacks and their settings: every saved checkpoint mirrored atomically into the artifact root (e.g. a
Drive folder on Colab), and TensorBoard's event folder under <artifact root>/logs/<run name>.

A mirrored checkpoint is <root>/checkpoints/<run name>/checkpoint-N. It is copied into a hidden sibling
(.checkpoint-N.partial-<pid>-<hex>), every file fsynced, a marker (mirror_complete.json: step, file sizes) written
last, then renamed into place. So a copy killed half-way is never named checkpoint-N, and a folder named so is used
for resuming only when its marker's file list matches what is on disk (a half-synced Drive folder seen from another
machine fails that check) and its trainer_state.json is for step N (utils.checkpoints).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from utils.artifacts import artifact_root
from utils.atomic_write import write_bytes_atomic
from utils.checkpoints import checkpoints, is_complete, last_complete_checkpoint

logger = logging.getLogger(__name__)

MARKER = "mirror_complete.json"  # written last into a copy, before the rename
PARTIAL = ".partial-"  # .checkpoint-N.partial-<pid>-<hex>: a copy in progress (or killed)
OLD = ".old-"  # .checkpoint-N.old-<hex>: a copy being replaced by a newer copy of the same step
ROOT_KEYWORD = "artifact_root"  # mirror_checkpoints_to: artifact_root -> $VLM_STUDIES_ROOT or ./artifacts


@dataclass
class LabTrainingArguments:
    mirror_checkpoints_to: str | None = field(
        default=None,
        metadata={
            "help": "Artifact root to mirror each saved checkpoint into, as <it>/checkpoints/<run name>/checkpoint-N "
            "(e.g. /content/drive/MyDrive/VLM_Studies_Files on Colab; 'artifact_root': $VLM_STUDIES_ROOT or "
            "./artifacts). Copies are atomic; --resume_from_checkpoint true also looks there."
        },
    )
    mirror_keep_last: int = field(
        default=2, metadata={"help": "Mirrored checkpoints kept: the newest N (at least 1), plus the best."}
    )
    mirror_keep_best: bool = field(
        default=True, metadata={"help": "Also keep the best mirrored checkpoint (needs metric_for_best_model)."}
    )
    eval_accuracy_examples: int = field(
        default=64,
        metadata={
            "help": "At each evaluation (eval_strategy, eval_steps), NLVR2 accuracy by answer likelihood on the eval "
            "split's first N labelled examples, logged as eval/accuracy and eval/p_label beside eval/loss (0: off)."
        },
    )
    logging_dir: str | None = field(
        default=None,
        metadata={
            "help": "TensorBoard event folder (transformers 5 dropped TrainingArguments.logging_dir). Default: "
            "$TENSORBOARD_LOGGING_DIR if set, else <root>/logs/<run name>, root being mirror_checkpoints_to when "
            "set, else the artifact root."
        },
    )

    def __post_init__(self):
        if self.mirror_keep_last < 1:
            raise ValueError(
                f"mirror_keep_last must be at least 1 (the newest checkpoint), got {self.mirror_keep_last}"
            )


def run_name(training_args) -> str:
    """The run's name: run_name when set, else the output_dir's folder name."""
    return training_args.run_name or Path(training_args.output_dir).resolve().name


def lab_root(lab_args: LabTrainingArguments) -> Path:
    """mirror_checkpoints_to as a path ('artifact_root' or unset: the artifact root)."""
    target = lab_args.mirror_checkpoints_to
    if not target or target == ROOT_KEYWORD:
        return artifact_root()
    return Path(target).expanduser().resolve()


def tensorboard_dir(lab_args: LabTrainingArguments, training_args) -> Path | None:
    """Where TensorBoard writes; None leaves it to transformers ($TENSORBOARD_LOGGING_DIR)."""
    if lab_args.logging_dir:
        return Path(lab_args.logging_dir).expanduser().resolve()
    if os.environ.get("TENSORBOARD_LOGGING_DIR"):
        return None
    return lab_root(lab_args) / "logs" / run_name(training_args)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and directories on some of them) refuse fsync: best effort
        pass
    finally:
        os.close(fd)


def _copy_file(src: Path, dst: Path) -> None:
    """One file, contents flushed to disk (a module function so a test can slow it down)."""
    shutil.copyfile(src, dst)
    _fsync(dst)


def copy_atomically(src: Path, dest: Path, step: int | None = None) -> Path:
    """Copy folder src to dest via a hidden sibling, fsync, marker, rename; an existing dest is replaced whole."""
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}{PARTIAL}{os.getpid()}-{secrets.token_hex(3)}")
    files: dict[str, int] = {}
    try:
        for folder, _, names in os.walk(src):
            rel_dir = Path(folder).relative_to(src)
            (tmp / rel_dir).mkdir(parents=True, exist_ok=True)
            for name in sorted(names):
                _copy_file(Path(folder) / name, tmp / rel_dir / name)
                files[str(rel_dir / name)] = (tmp / rel_dir / name).stat().st_size
        marker = {"step": step, "source": str(src), "files": files, "time": datetime.now(UTC).isoformat()}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _fsync(tmp / MARKER)
        _fsync(tmp)
        old = None
        if dest.exists():  # a directory rename cannot replace a non-empty one: move it aside, then drop it
            old = dest.with_name(f".{dest.name}{OLD}{secrets.token_hex(3)}")
            os.rename(dest, old)
        os.rename(tmp, dest)
        _fsync(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def is_mirrored(step: int, folder: Path) -> bool:
    """A complete copy: the marker parses, every file it lists is there with its size, trainer_state.json is for N."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        files = marker["files"]
        if not all((folder / rel).stat().st_size == size for rel, size in files.items()):
            return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return is_complete(step, folder)


def mirrored_checkpoints(mirror: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of the complete copies in a mirror folder, oldest first."""
    return [(step, folder) for step, folder in checkpoints(mirror) if is_mirrored(step, folder)]


def last_mirrored_checkpoint(mirror: str | Path) -> Path | None:
    """The newest complete copy in a mirror folder, or None."""
    found = mirrored_checkpoints(mirror)
    return found[-1][1] if found else None


class CheckpointMirror(TrainerCallback):
    """On each save, copy output_dir/checkpoint-N atomically into dest; keep the newest keep_last copies plus the
    best one (state.best_global_step, when metric_for_best_model is set and keep_best). A failed copy is logged and
    training goes on (the local checkpoint is still there)."""

    def __init__(self, dest: str | Path, keep_last: int = 2, keep_best: bool = True):
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1 (the newest checkpoint), got {keep_last}")
        self.dest = Path(dest)
        self.keep_last = keep_last
        self.keep_best = keep_best

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.dest.is_dir():
            return
        for leftover in sorted(self.dest.iterdir()):  # copies killed half-way (never resumed from: not checkpoint-N)
            name = leftover.name
            if not name.startswith(".checkpoint-") or not (PARTIAL in name or OLD in name):
                continue
            original = self.dest / name[1:].split(".", 1)[0]  # .checkpoint-N.old-xx -> checkpoint-N
            if OLD in name and not original.exists() and is_mirrored(_step(original), leftover):
                os.rename(leftover, original)  # killed between moving the old copy aside and renaming the new one in
                continue
            logger.warning("%s: removing an unfinished mirror copy", leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not src.is_dir():
            logger.warning("%s: no such checkpoint to mirror", src)
            return
        try:
            copy_atomically(src, self.dest / src.name, step=state.global_step)
            record = Path(args.output_dir) / "run_record.json"
            if record.exists():  # the run's config beside its checkpoints, so the mirror alone can be reproduced
                write_bytes_atomic(self.dest / record.name, record.read_bytes())
            best = state.best_global_step if (self.keep_best and args.metric_for_best_model) else None
            self.prune(best)
        except OSError:
            logger.exception("mirroring %s to %s failed; training goes on with the local checkpoint", src, self.dest)

    def prune(self, best_step: int | None = None) -> list[int]:
        """Delete complete copies other than the newest keep_last and best_step; returns the steps kept."""
        found = mirrored_checkpoints(self.dest)
        keep = {step for step, _ in found[-self.keep_last :]}
        if best_step is not None:
            keep.add(best_step)
        for step, folder in found:
            if step not in keep:
                shutil.rmtree(folder)
        return sorted(step for step, _ in found if step in keep)


def mirror_dir(lab_args: LabTrainingArguments, training_args) -> Path | None:
    """<root>/checkpoints/<run name>, or None when mirroring is off; refuses a mirror that is output_dir itself."""
    if not lab_args.mirror_checkpoints_to:
        return None
    dest = lab_root(lab_args) / "checkpoints" / run_name(training_args)
    if dest == Path(training_args.output_dir).resolve():
        raise ValueError(
            f"mirror_checkpoints_to would mirror {dest} onto itself: output_dir is already the artifact root's run "
            "folder. Put output_dir on local disk (e.g. /content/runs/<name> on Colab) or drop the mirror."
        )
    return dest


class HparamsToTensorBoard(TrainerCallback):
    """At the end of training, the run's settings and its last eval/* figures in TensorBoard's HPARAMS tab (a
    `hparams` run beside the run's scalars, so no point is added to its curves)."""

    def __init__(self, logging_dir: str, hparams: dict):
        self.logging_dir, self.hparams = logging_dir, hparams

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from torch.utils.tensorboard import SummaryWriter

        last = {}
        for entry in state.log_history:
            last |= {f"final/{k}": v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, int | float)}
        with SummaryWriter(self.logging_dir) as writer:
            writer.add_hparams(self.hparams, last or {"final/global_step": state.global_step}, run_name="hparams")


def add_lab_callbacks(
    trainer, lab_args: LabTrainingArguments, training_args, hparams: dict | None = None
) -> CheckpointMirror | None:
    """Point TensorBoard at its folder (recorded back into lab_args.logging_dir), record `hparams` there at the end,
    and add the mirror when asked."""
    # transformers 5.x: TensorBoardCallback takes its folder from $TENSORBOARD_LOGGING_DIR only, else
    # <output_dir>/runs/<date>_<host>; its logging_dir attribute is read at on_train_begin.
    boards = [c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)]
    if boards:  # report_to includes tensorboard
        logs = tensorboard_dir(lab_args, training_args)
        for callback in boards:
            callback.logging_dir = str(logs) if logs is not None else callback.logging_dir
        lab_args.logging_dir = boards[0].logging_dir  # recorded in run_record.json (scripts/plot_run.py reads it)
        if hparams and lab_args.logging_dir:
            trainer.add_callback(HparamsToTensorBoard(lab_args.logging_dir, hparams))
    dest = mirror_dir(lab_args, training_args)
    if dest is None:
        return None
    mirror = CheckpointMirror(dest, lab_args.mirror_keep_last, lab_args.mirror_keep_best)
    trainer.add_callback(mirror)
    return mirror


def _step(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[1])


def resume_source(resume, output_dir: str, mirror: Path | None, main_process: bool = True):
    """--resume_from_checkpoint true/last with a mirror: the newer of output_dir's newest complete checkpoint and the
    mirror's newest complete copy (output_dir on a tie). Anything else is returned as given (resume_checkpoint
    handles it)."""
    wants_last = resume is True or (isinstance(resume, str) and resume.lower() in ("true", "last"))
    if mirror is None or not wants_last:
        return resume
    mirrored = last_mirrored_checkpoint(mirror)
    started = bool(checkpoints(output_dir))
    local = last_complete_checkpoint(output_dir, set_aside=main_process)
    if local is None and mirrored is None:
        return _from_step_zero(output_dir, f" nor in {mirror}", started)
    if mirrored is None or (local is not None and _step(local) >= _step(mirrored)):
        return str(local)
    logger.info("resuming from the mirrored copy %s (newer than anything in %s)", mirrored, output_dir)
    return str(mirrored)


def resume_checkpoint(resume: str | bool | None, output_dir: str, main_process: bool = True) -> str | bool | None:
    """Resume "true"/"last" -> the newest complete checkpoint-N of output_dir (utils.checkpoints); a path stays."""
    if resume is True or (isinstance(resume, str) and resume.lower() in ("true", "last")):
        started = bool(checkpoints(output_dir))
        found = last_complete_checkpoint(output_dir, set_aside=main_process)
        return str(found) if found is not None else _from_step_zero(output_dir, "", started)
    return resume


def _from_step_zero(output_dir: str, elsewhere: str, started: bool) -> None:
    """No complete checkpoint: a run killed during its first save (only incomplete ones, now set aside) starts
    again from step 0; a folder that never held a checkpoint is more likely a wrong path, and is refused."""
    if not started:
        raise ValueError(f"--resume_from_checkpoint true: no complete checkpoint-N in {output_dir}{elsewhere}")
    logger.warning("%s: every checkpoint-N is incomplete (set aside); training starts again from step 0", output_dir)
    return None
