"""CPU rehearsal of a real training config, unchanged except the model path, the data and the step count: NLVR2's
real annotations (the first N lines of a dev.json) with stand-in images at NLVR2's photo sizes in the official layout;
training/sft.py for a few steps with a save, then resumed from that checkpoint; the real evaluation configs (zero-shot
and fine-tuned on the adapter just trained, likelihood and generation scoring); the playground, the inspector and the
gallery. Each phase runs as its own subprocess (exit code, expected files, peak RSS from os.wait4). Writes
report.json and report.md in --work_dir: peak RSS per phase, seconds per step, tokens per example, trainable
parameters, adapter size, the defaults the run switched on or off, and T4 / A100 / H100 projections.

# Q-LoRA on the real-shape folder (scripts/build_real_shape_model.py: Qwen2-VL-2B's architecture, random weights)
python scripts/rehearse.py --config training/configs/qwen2vl_2b_qlora.yaml \
    --model_name_or_path artifacts/models/qwen2vl-2b-shape --annotations path/to/nlvr2/data/dev.json

# LoRA, 4 examples, 2 steps + 1 resumed, training only
python scripts/rehearse.py --config training/configs/qwen2vl_2b_lora.yaml \
    --model_name_or_path artifacts/models/qwen2vl-2b-shape --annotations path/to/nlvr2/data/dev.json \
    --num_examples 4 --skip_eval true

# Quick, on a 1-layer real-width folder and a small pixel budget (what tests/scripts/test_rehearse.py runs)
python scripts/build_real_shape_model.py --output_dir /tmp/qwen2vl-shape-1layer --num_hidden_layers 1 --vision_depth 1
python scripts/rehearse.py --config training/configs/qwen2vl_2b_lora.yaml \
    --model_name_or_path /tmp/qwen2vl-shape-1layer --annotations tests/data/nlvr2/dev.json \
    --num_examples 2 --max_steps 1 --max_pixels 50176 --work_dir /tmp/rehearsal
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from training.rehearsal import Phase, global_step, latest_checkpoint, run_phase, tail, write_report
from vlm_datasets.stand_in_images import write_official_layout

SPLIT = "dev"  # the annotations' split name: trained and evaluated on (a rehearsal, not an experiment)


@dataclass
class RehearseArguments:
    config: str = field(metadata={"help": "The training config to rehearse (training/configs/*.yaml), unchanged."})
    model_name_or_path: str = field(metadata={"help": "Model folder, e.g. scripts/build_real_shape_model.py's."})
    annotations: str = field(metadata={"help": "An NLVR2 JSON-lines annotation file (dev.json); its first lines."})
    work_dir: str | None = field(
        default=None, metadata={"help": "Data, runs and the report (default artifacts/rehearsal/<config name>)."}
    )
    num_examples: int = field(default=8, metadata={"help": "Annotation lines used (stand-in images per pair)."})
    max_steps: int = field(default=2, metadata={"help": "Training steps before the save."})
    resume_steps: int = field(default=1, metadata={"help": "Steps more after resuming from the saved checkpoint."})
    max_pixels: int | None = field(
        default=None, metadata={"help": "Override the configs' max_pixels (default: theirs; set it only for speed)."}
    )
    gradient_accumulation_steps: int | None = field(
        default=None,
        metadata={
            "help": "Override the config's (default: its own); 1 makes a step one micro-batch: the peak memory "
            "is the same, each step takes that many times less."
        },
    )
    zero_shot_config: str = field(
        default="evals/configs/qwen2vl_2b_zero_shot.yaml", metadata={"help": "Zero-shot evaluation config."}
    )
    finetuned_config: str = field(
        default="evals/configs/qwen2vl_2b_finetuned.yaml", metadata={"help": "Fine-tuned evaluation config."}
    )
    scorings: str = field(default="likelihood,generate", metadata={"help": "Evaluation scorings, comma-separated."})
    skip_eval: bool = field(default=False, metadata={"help": "Training only: no evaluation, playground or gallery."})
    seed: int = field(default=0, metadata={"help": "Seed of the stand-in images."})


def data_flags(data: Path, args: RehearseArguments) -> list[str]:
    flags = ["--dataset_source", "nlvr2", "--dataset_path", str(data), "--dataset_eval_split", SPLIT]
    return flags + (["--max_pixels", str(args.max_pixels)] if args.max_pixels else [])


def training_phases(args: RehearseArguments, work: Path, data: Path) -> list[Phase]:
    out, steps = work / "train", args.max_steps
    common = ["--config", args.config, "--model_name_or_path", args.model_name_or_path, *data_flags(data, args)]
    common += ["--dataset_train_split", SPLIT, "--use_cpu", "true"]  # bf16 stays as the config sets it
    if args.gradient_accumulation_steps:
        common += ["--gradient_accumulation_steps", str(args.gradient_accumulation_steps)]
    train = ["training/sft.py", *common, "--output_dir", str(out), "--logging_steps", "1"]
    done = [str(out / "adapter_model.safetensors"), str(out / "run_record.json")]
    return [
        Phase("preflight", ["scripts/preflight.py", *common, "--report_json", str(work / "preflight.json")],
              [str(work / "preflight.json")]),
        Phase("train", [*train, "--max_steps", str(steps), "--save_steps", str(steps)],
              [*done, str(out / f"checkpoint-{steps}" / "trainer_state.json")]),
        Phase("resume", [*train, "--max_steps", str(steps + args.resume_steps), "--save_steps", str(steps),
                         "--resume_from_checkpoint", "true"],
              [*done, str(out / f"checkpoint-{steps + args.resume_steps}" / "trainer_state.json")]),
    ]  # fmt: skip


def eval_phases(args: RehearseArguments, work: Path, data: Path, uid: str) -> list[Phase]:
    phases, adapter, model = [], str(work / "train"), args.model_name_or_path
    for name, config, script in (("zero_shot", args.zero_shot_config, "evals/zero_shot.py"),
                                 ("finetuned", args.finetuned_config, "evals/finetuned.py")):  # fmt: skip
        for scoring in args.scorings.split(","):
            out = work / "eval" / f"{name}-{scoring}"
            argv = [script, "--config", config, "--model_name_or_path", model, *data_flags(data, args)]
            argv += ["--output_dir", str(out), "--scoring", scoring, "--overwrite", "true"]
            argv += ["--adapter_path", adapter] if name == "finetuned" else []
            phases.append(Phase(f"{name}-{scoring}", argv, [str(out / "predictions.jsonl"), str(out / "metrics.json")]))
    tools, run = work / "tools", str(work / "eval" / f"finetuned-{args.scorings.split(',')[0]}")
    dash = ["--dataset-source", "nlvr2", "--dataset-path", str(data), "--split", SPLIT]
    pixels = ["--max-pixels", str(args.max_pixels)] if args.max_pixels else []  # the gallery counts no tokens
    prompt = ["--uid", uid, "--prompt", "{sentence} True or False?", "--max-new-tokens", "8"]
    phases += [
        Phase("playground", ["scripts/model_playground.py", "--config", args.finetuned_config, "--model", model,
                             "--adapter", adapter, *dash, *pixels, *prompt, "--log", str(tools / "playground.jsonl")],
              [str(tools / "playground.jsonl")]),
        Phase("inspector", ["scripts/inspect_sample.py", uid, "--config", args.finetuned_config, "--model", model,
                            *dash, *pixels, "--run", run, "--json", "--export", str(tools / "inspect")],
              [str(tools / "inspect" / "*-img0.*"), str(tools / "inspect" / "*-img1.*")]),
        Phase("gallery", ["scripts/sample_gallery.py", "--config", args.finetuned_config, *dash, "--run", run,
                          "--random", str(args.num_examples), "--out", str(tools / "gallery")],
              [str(tools / "gallery" / "index.html"), str(tools / "gallery" / "uids.txt")]),
    ]  # fmt: skip
    return phases


def child_env(work: Path) -> dict[str, str]:
    """The phases' artifact root and datasets cache inside the work folder; nothing from the network."""
    env = dict(os.environ, VLM_STUDIES_ROOT=str(work / "artifacts"), HF_DATASETS_CACHE=str(work / "hf_datasets"))
    return env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def main(args: RehearseArguments) -> dict:
    from training.rehearsal_report import build_report, render_markdown  # torch, for the projection: not for --help

    work = Path(args.work_dir or Path("artifacts/rehearsal") / Path(args.config).stem).resolve()
    data = work / "data"
    stand_ins = write_official_layout(Path(args.annotations), data, SPLIT, args.num_examples, args.seed)
    uids = [json.loads(line)["identifier"] for line in (data / f"{SPLIT}.json").read_text().splitlines()]
    print(f"[rehearse] {len(uids)} annotations, {len(stand_ins)} stand-in images in {data}", flush=True)
    phases = training_phases(args, work, data)
    phases += [] if args.skip_eval else eval_phases(args, work, data, uids[0])
    env, ran = child_env(work), []
    for phase in phases:
        print(f"[rehearse] {phase.name}: python {' '.join(phase.argv)}", flush=True)
        ran.append(run_phase(phase, work / "logs" / f"{phase.name}.log", env))
        record = work / "train" / "run_record.json"
        if phase.name in ("train", "resume") and record.exists():  # the resume rewrites it: keep each phase's
            shutil.copyfile(record, work / "logs" / f"{phase.name}.run_record.json")
        print(f"[rehearse] {phase.name}: exit {phase.returncode}, {phase.seconds} s, peak RSS {phase.peak_rss_gb} GB"
              + (f", missing {phase.missing}" if phase.missing else ""), flush=True)  # fmt: skip
        if not phase.ok:
            print(tail(phase.log), file=sys.stderr)
            break
    checkpoint = latest_checkpoint(work / "train")
    print(f"[rehearse] newest checkpoint {checkpoint} at global step {checkpoint and global_step(checkpoint)}")
    report = build_report(args, work, uids, stand_ins, ran, [p.name for p in phases])
    js, md = write_report(work, report, render_markdown(report))
    print(f"[rehearse] report: {md} and {js}")
    return report


if __name__ == "__main__":
    from utils.cli import entry_point, parse_args

    with entry_point():
        (rehearse_args,) = parse_args(HfArgumentParser(RehearseArguments))
        result = main(rehearse_args)
    sys.exit(0 if result["ok"] else 1)
