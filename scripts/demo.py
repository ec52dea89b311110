"""The lab's main job on the embedded default, offline on a CPU: put the small base where the configs look (a copy
of the shipped training/embedded_base, every file checked against its recorded SHA-256; no pretraining), evaluate it
zero-shot, LoRA-fine-tune it with training/sft.py, evaluate the adapter, print the table and write summary.json.

Each step runs what the entry point a user runs by hand runs (its library function), with the same YAML config:
  scripts/build_embedded_model.py (only with --build_vision_steps / --build_steps: a base built here instead),
  evals/zero_shot.py (evals/configs/embedded_zero_shot.yaml),
  training/sft.py (training/configs/embedded_lora.yaml, 900 steps of 96 at learning rate 1.5e-3, bf16 autocast
  on a CPU with native bf16; on a CPU with 2 or more cores launched as 2 data-parallel processes of 48 by
  accelerate launch --config_file training/configs/accelerate/cpu_2proc.yaml, its output shown as it runs),
  evals/finetuned.py (evals/configs/embedded_finetuned.yaml).

# What `make demo` runs
python scripts/demo.py

# Elsewhere, or with a shorter fine-tuning
python scripts/demo.py --output_dir /tmp/demo --sft_max_steps 100

# On a base built here from scratch (minutes of pretraining) instead of the shipped one
python scripts/demo.py --model_dir /tmp/base --build_vision_steps 100 --build_steps 700

It ends with the analysis commands to run next on its own outputs (report, gallery of wrong answers, zero-shot vs
LoRA comparison, playground on the adapter, TensorBoard), paths filled in, then the path of summary.json.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from evals.arguments import make_parser
from evals.modes import finetuned, zero_shot
from evals.prediction_files import read_prediction_records
from training.embedded import EMBEDDED_MODEL_DIR
from training.embedded_build import (
    SHIPPED_MODEL_DIR,
    BuildArguments,
    build_embedded_model,
    provide_shipped_model,
    read_build_info,
)
from training.models import cpu_has_native_bf16
from utils.atomic_write import write_json_atomic
from utils.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
CPU_PROCESSES = "training/configs/accelerate/cpu_2proc.yaml"  # several data-parallel processes on the CPU


@dataclass
class DemoArguments:
    output_dir: str = field(default="artifacts/demo", metadata={"help": "Run folder: evals, adapter, summary.json."})
    model_dir: str = field(default=str(EMBEDDED_MODEL_DIR), metadata={"help": "Embedded base model folder."})
    shipped_model_dir: str = field(
        default=str(SHIPPED_MODEL_DIR),
        metadata={"help": "The committed base, copied to model_dir (SHA-256 checked) unless a checked copy is there."},
    )
    sft_config: str = field(default="training/configs/embedded_lora.yaml", metadata={"help": "SFT config."})
    zero_shot_config: str = field(default="evals/configs/embedded_zero_shot.yaml", metadata={"help": "Eval config."})
    finetuned_config: str = field(default="evals/configs/embedded_finetuned.yaml", metadata={"help": "Eval config."})
    sft_max_steps: int | None = field(
        default=900, metadata={"help": "Override the SFT config's max_steps (None: the config's 1000)."}
    )
    sft_batch_size: int | None = field(
        default=96,
        metadata={
            "help": "Override the SFT config's per_device_train_batch_size (None: the config's 32), over all SFT "
            "processes. The demo trains 900 steps of 96 (docs/training.md: accuracy over SFT seeds)."
        },
    )
    sft_learning_rate: float | None = field(
        default=1.5e-3, metadata={"help": "Override the SFT config's learning_rate (None: the config's 2e-3)."}
    )
    sft_bf16: str = field(
        default="auto",
        metadata={
            "help": "bf16 autocast for the SFT: auto (on a CPU with native bf16 instructions, AVX512-BF16 or AMX; "
            "otherwise the config's float32), true or false.",
            "choices": ["auto", "true", "false"],
        },
    )
    sft_processes: str = field(
        default="auto",
        metadata={
            "help": "Data-parallel processes for the SFT (accelerate launch, training/configs/accelerate/"
            "cpu_2proc.yaml), the batch split between them: auto (2 on a CPU with 2 or more cores, where it was "
            "measured faster: docs/training_speed.md; otherwise 1, in this process), or a number."
        },
    )
    max_eval_examples: int | None = field(default=None, metadata={"help": "Evaluate on the first N examples only."})
    build_vision_steps: int | None = field(
        default=None, metadata={"help": "Build the base in model_dir with this stage 1 (instead of the shipped one)."}
    )
    build_steps: int | None = field(
        default=None, metadata={"help": "Build the base in model_dir with this stage 2 (instead of the shipped one)."}
    )


def _eval_args(config: str, *overrides: str):
    parser = make_parser()
    return parser.parse_args_and_config(["--config", str(REPO / config), *overrides])


def _precision_overrides(mode: str) -> list[str]:
    """SFT flags for `sft_bf16`: on a CPU, bf16 autocast needs `use_cpu` set (the Trainer refuses bf16 otherwise)."""
    import torch

    on_cpu = not torch.cuda.is_available()
    if mode == "false" or (mode == "auto" and not (on_cpu and cpu_has_native_bf16())):
        return []
    return ["--bf16", "true", *(["--use_cpu", "true"] if on_cpu else [])]


def _shown(path: str | Path) -> str:
    """A path as a printed command gives it: relative to the working directory when inside it, else absolute."""
    # abspath, not resolve(): a venv's python is a symlink to an interpreter that lacks the venv's packages
    path = Path(os.path.abspath(path))
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def next_commands(args: DemoArguments, out: Path, logging_dir: str | None) -> list[tuple[str, list[str]]]:
    """(what it does, argv) of the analysis commands on this demo's outputs, each runnable as printed."""
    zs, ft, lora = (_shown(out / name) for name in ("zero_shot", "finetuned", "lora"))
    report, gallery, compare, playground = (
        [_shown(sys.executable), _shown(REPO / name)]  # this interpreter: make demo's .venv, active or not
        for name in ("evals/report.py", "scripts/sample_gallery.py", "evals/compare.py", "scripts/model_playground.py")
    )
    config = _shown(REPO / args.finetuned_config)  # the data the fine-tuned evaluation read
    records = read_prediction_records(out / "finetuned" / "predictions.jsonl")
    wrong = [r["uid"] for r in records if r["prediction"] != r["label"]]
    uid = (wrong or [records[0]["uid"]])[0]
    commands = [
        ("report of the fine-tuned evaluation (report.md + plots in its folder)", [*report, ft]),
        ("gallery of its wrong answers", [*gallery, "--config", config, "--run", ft, "--wrong"]),
        ("zero-shot vs LoRA, paired: delta, McNemar's test, the flips as uid lists", [*compare, zs, ft]),
        (
            f"the adapter on {uid}" + (", answered wrong" if wrong else ""),
            [*playground, "--config", config, "--model", _shown(args.model_dir), "--adapter", lora, "--uid", uid]
            + ["--prompt", "{sentence} True or False?"],
        ),
    ]
    if logging_dir:  # report_to includes tensorboard
        board = Path(sys.executable).parent / "tensorboard"  # the venv's entry point beside its python
        board = _shown(board) if board.exists() else "tensorboard"
        commands.append(("training curves", [board, "--logdir", _shown(logging_dir)]))
    return commands


def base_model(args: DemoArguments) -> tuple[str, str]:
    """The base in model_dir: ("shipped", what was done) for a checked copy of the shipped base, or ("built", ...)
    when a build setting is given."""
    if args.build_vision_steps is None and args.build_steps is None:
        return "shipped", provide_shipped_model(args.model_dir, args.shipped_model_dir)
    build = BuildArguments(output_dir=args.model_dir)
    if args.build_vision_steps is not None:
        build.vision_steps = args.build_vision_steps
    if args.build_steps is not None:
        build.steps = args.build_steps
    build_embedded_model(build, command=shlex.join(["python", *sys.argv]))
    return "built", f"{args.model_dir}: built here (vision_steps {build.vision_steps}, steps {build.steps})"


def sft_processes(setting: str) -> int:
    """The SFT's data-parallel processes: `setting` as a number, or for auto 2 on a CPU with 2 or more cores, else 1."""
    if setting != "auto":
        if not setting.isdigit() or int(setting) < 1:
            raise UsageError(f"sft_processes: {setting!r} is neither auto nor a number of processes (1, 2, ...)")
        return int(setting)
    import torch

    return 2 if len(os.sched_getaffinity(0)) >= 2 and not torch.cuda.is_available() else 1


def sft_overrides(args: DemoArguments, common: list[str], out: Path, processes: int) -> list[str]:
    """training/sft.py's command-line flags for the demo's run, `sft_batch_size` split between `processes`."""
    flags = ["--config", str(REPO / args.sft_config), *common, "--output_dir", str(out / "lora")]
    if args.sft_max_steps is not None:
        flags += ["--max_steps", str(args.sft_max_steps)]
    if args.sft_batch_size is not None:
        if args.sft_batch_size % processes:
            raise UsageError(f"sft_batch_size {args.sft_batch_size} does not split into {processes} processes")
        flags += ["--per_device_train_batch_size", str(args.sft_batch_size // processes)]
    if args.sft_learning_rate is not None:
        flags += ["--learning_rate", str(args.sft_learning_rate)]
    precision = _precision_overrides(args.sft_bf16)
    if processes > 1 and "--use_cpu" not in precision:  # cpu_2proc.yaml's processes join over gloo only so
        precision += ["--use_cpu", "true"]
    return flags + precision


def fine_tune(args: DemoArguments, flags: list[str], out: Path, processes: int) -> dict:
    """training/sft.py's run with `flags` (sft_overrides), in this process or launched as several data-parallel ones;
    what it recorded (sft_outcome)."""
    if processes == 1:
        # The training and scoring stack (TrainingArguments imports peft) loads for a run, not for --help.
        from evals.held_out import held_out_accuracy
        from training.fine_tuning import make_parser as sft_parser
        from training.fine_tuning import run_sft

        run_sft(*sft_parser().parse_args_and_config(flags), held_out=held_out_accuracy)
    else:
        launch_sft(flags, processes)
    return sft_outcome(out / "lora", processes)


def launch_sft(flags: list[str], processes: int) -> None:
    """`accelerate launch` of training/sft.py in `processes` CPU processes, the cores shared out as torch threads."""
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / CPU_PROCESSES)]
    command += ["--num_processes", str(processes), str(REPO / "training/sft.py"), *flags]
    done = subprocess.run(command, env=os.environ | {"OMP_NUM_THREADS": str(threads)}, check=False)
    if done.returncode:
        raise RuntimeError(
            f"training/sft.py in {processes} processes exited with {done.returncode} (its output is "
            f"above): {shlex.join(command)}"
        )


def sft_outcome(run_dir: Path, processes: int) -> dict:
    """The SFT's figures from its run folder: run_record.json's settings, its last checkpoint's trainer state."""
    from transformers.trainer_utils import get_last_checkpoint

    config = json.loads((run_dir / "run_record.json").read_text())["config"]
    last = get_last_checkpoint(str(run_dir))
    if last is None:
        raise FileNotFoundError(
            f"{run_dir}: no checkpoint-N folder (the demo reads the SFT's trainer_state.json there)"
        )
    state = json.loads((Path(last) / "trainer_state.json").read_text())
    sft = config["SFTConfig"]
    return {
        "train_loss": [e["loss"] for e in state["log_history"] if "loss" in e],
        "steps": state["global_step"],
        "batch_size": sft["per_device_train_batch_size"] * processes,
        "processes": processes,
        "learning_rate": sft["learning_rate"],
        "bf16": sft["bf16"],
        "logging_dir": config["LabTrainingArguments"]["logging_dir"],
    }


def main(args: DemoArguments) -> Path:
    start = time.time()
    phases = {}
    out = Path(args.output_dir)
    common = ["--model_name_or_path", args.model_dir]
    if args.max_eval_examples is not None:
        common += ["--max_eval_examples", str(args.max_eval_examples)]

    processes = sft_processes(args.sft_processes)  # setting mistakes end here, before any model loads
    sft_flags = sft_overrides(args, common, out, processes)
    source, what = base_model(args)
    base_info = read_build_info(args.model_dir)
    print(f"[1/4] embedded base model: {what}")
    phases["base"] = time.time() - start

    print("[2/4] zero-shot evaluation")
    zs = zero_shot(*_eval_args(args.zero_shot_config, *common, "--output_dir", str(out / "zero_shot")))
    phases["zero_shot"] = time.time() - start - sum(phases.values())

    print("[3/4] LoRA fine-tuning (training/sft.py)")
    sft = fine_tune(args, sft_flags, out, processes)
    train_loss = sft["train_loss"]
    phases["sft"] = time.time() - start - sum(phases.values())

    print("[4/4] fine-tuned evaluation")
    ft = finetuned(
        *_eval_args(
            args.finetuned_config,
            *common,
            "--adapter_path",
            str(out / "lora"),
            "--output_dir",
            str(out / "finetuned"),
        )
    )

    wall = time.time() - start
    phases["finetuned"] = wall - sum(phases.values())
    print()
    print(f"Embedded default (small local Qwen2-VL, synthetic NLVR-style split '{zs['split']}', n={zs['n']})")
    print(f"{'':28}{'zero-shot':>12}{'LoRA':>12}")
    print(f"{'accuracy':28}{zs['accuracy']:>12.3f}{ft['accuracy']:>12.3f}")
    for category in ft["accuracy_by_category"]:
        a, b = zs["accuracy_by_category"].get(category), ft["accuracy_by_category"][category]
        print(f"  {category:26}{a:>12.3f}{b:>12.3f}")
    summary = {
        "zero_shot_accuracy": zs["accuracy"],
        "finetuned_accuracy": ft["accuracy"],
        "n_eval": ft["n"],
        "wall_seconds": round(wall, 1),
        "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "eval_split": ft["split"],
        "accuracy_by_category": {
            "zero_shot": zs["accuracy_by_category"],
            "finetuned": ft["accuracy_by_category"],
        },
        "train_loss_first_last": [train_loss[0], train_loss[-1]] if train_loss else None,
        "sft_steps": sft["steps"],
        "sft_batch_size": sft["batch_size"],
        "sft_processes": sft["processes"],
        "sft_learning_rate": sft["learning_rate"],
        "sft_bf16": sft["bf16"],
        "model": args.model_dir,
        "base": {"source": source, **{k: base_info[k] for k in ("built", "command", "weights") if k in base_info}},
        "data": "synthetic NLVR-style (vlm_datasets/synthetic.py), embedded default",
        "outputs": {k: str(out / k) for k in ("zero_shot", "lora", "finetuned")},
    }
    path = write_json_atomic(out / "summary.json", summary)
    print(f"wall time: {wall:.0f} s")
    print("\nNext, on these outputs:")
    for what, argv in next_commands(args, out, sft["logging_dir"]):  # TensorBoard's folder, as sft recorded it
        print(f"# {what}\n{shlex.join(argv)}")
    print(path)
    return path


if __name__ == "__main__":
    from utils.cli import entry_point, parse_args

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        (demo_args,) = parse_args(TrlParser((DemoArguments,)))
        main(demo_args)
