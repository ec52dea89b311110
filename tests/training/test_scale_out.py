"""Scale-out: the accelerate configs are valid; training/sft.py under `accelerate launch` with two CPU processes
trains each rank on its own share of the data and saves an adapter that evaluates; training/train_vlm.py so launched
evaluates on the main process only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "training" / "configs" / "accelerate").glob("*.yaml"))

# Run by `accelerate launch` in each process: training/sft.py, with the collator writing the uids of every batch it
# builds to <UID_LOG_DIR>/rank-<RANK>.txt.
LOGGED_SFT = """
import os
import training.pipeline as pipeline
from training import sft

collate = pipeline.TokenizedCollator.__call__

def logged(self, rows):
    with open(os.path.join(os.environ["UID_LOG_DIR"], f"rank-{os.environ['RANK']}.txt"), "a") as f:
        f.write("".join(f"{r['uid']}\\n" for r in rows))
    return collate(self, rows)

pipeline.TokenizedCollator.__call__ = logged
sft.main(*sft.make_parser().parse_args_and_config())
"""

# Run by `accelerate launch` in each process: training/train_vlm.py, each evaluation of the VLM logged to
# <EVAL_LOG_DIR>/rank-<RANK>.txt.
LOGGED_TRAIN_VLM = """
import os
from training import train_vlm

evaluate = train_vlm.evaluate

def logged(*args, **kwargs):
    with open(os.path.join(os.environ["EVAL_LOG_DIR"], f"rank-{os.environ['RANK']}.txt"), "a") as f:
        f.write("evaluate\\n")
    return evaluate(*args, **kwargs)

train_vlm.evaluate = logged
train_vlm.main(*train_vlm.make_parser().parse_args_and_config())
"""


def test_there_are_scale_out_configs():
    assert {p.name for p in CONFIGS} >= {
        "ddp.yaml",
        "fsdp.yaml",
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
        "cpu_2proc.yaml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_is_valid(path):
    config = ClusterConfig.from_yaml_file(str(path))  # refuses unknown keys
    assert config.num_processes >= 2 and config.num_machines == 1
    text = path.read_text()
    assert text.startswith("#") and f"--config_file training/configs/accelerate/{path.name}" in text
    if path.name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_cpu_processes(script: str, args: list[str], tmp_path: Path, artifacts: Path, **env: str):
    """`accelerate launch` of the script text on two CPU processes (gloo), offline; the finished process."""
    path = tmp_path / "launched.py"
    path.write_text(script)
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        VLM_STUDIES_ROOT=str(artifacts),
        HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        **env,
    )
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launch += [str(REPO / "training/configs/accelerate/cpu_2proc.yaml"), "--main_process_port", str(free_port())]
    return subprocess.run([*launch, str(path), *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_two_cpu_processes_train_on_distinct_data_and_the_adapter_evaluates(
    tiny_model_dir, tmp_path, isolated_artifacts
):
    uids, run = tmp_path / "uids", tmp_path / "run"
    uids.mkdir()
    sft_args = ["--config", str(REPO / "training/configs/embedded_lora.yaml"), "--use_cpu", "true"]
    sft_args += ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(run), "--report_to", "none"]
    sft_args += ["--synthetic_train_size", "32", "--per_device_train_batch_size", "4", "--max_steps", "3"]
    sft_args += ["--save_steps", "100", "--logging_steps", "1"]
    done = launch_two_cpu_processes(LOGGED_SFT, sft_args, tmp_path, isolated_artifacts, UID_LOG_DIR=str(uids))
    assert done.returncode == 0, done.stderr[-3000:]

    seen = {rank: (uids / f"rank-{rank}.txt").read_text().split() for rank in (0, 1)}
    assert len(seen[0]) >= 12 and len(seen[1]) >= 12  # 3 steps of 4 each (the loader may fetch one batch ahead)
    assert not set(seen[0]) & set(seen[1])  # each rank its own share: 8 distinct examples per step
    state = json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())
    tokens = [e["num_tokens"] for e in state["log_history"] if "num_tokens" in e]
    assert tokens[0] > 8 * 40  # gathered over both ranks: 8 examples of 50+ tokens in the first step
    cache = json.loads((run / "run_record.json").read_text())["vision_feature_cache"]  # rank 0's, under DDP
    assert cache["enabled"] and cache["hits"] + cache["misses"] >= 3 * 4 * 2 and cache["images"] > 0

    from evals import finetuned
    from evals.evaluate import make_parser

    out = tmp_path / "eval"
    metrics = finetuned.main(
        *make_parser().parse_args_and_config(
            [
                "--config",
                str(REPO / "evals/configs/embedded_finetuned.yaml"),
                "--model_name_or_path",
                str(tiny_model_dir),
                "--adapter_path",
                str(run),
                "--output_dir",
                str(out),
                "--synthetic_eval_size",
                "8",
                "--batch_size",
                "8",
            ]
        )
    )
    assert metrics["n"] == 8 and metrics["adapter"] == str(run)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 8


def test_two_cpu_processes_train_a_composed_vlm_and_only_the_main_one_evaluates(
    tiny_composed_vlm, tmp_path, isolated_artifacts
):
    evals, run = tmp_path / "evals", tmp_path / "run"
    evals.mkdir()
    args = ["--config", str(REPO / "training/configs/compose/gpt2v_embedded_stage1.yaml"), "--use_cpu", "true"]
    args += ["--model_name_or_path", str(tiny_composed_vlm), "--output_dir", str(run), "--report_to", "none"]
    args += ["--synthetic_train_size", "16", "--synthetic_eval_size", "4", "--per_device_train_batch_size", "4"]
    args += ["--max_steps", "2", "--warmup_steps", "0", "--logging_steps", "1", "--vlm_eval_max_new_tokens", "4"]
    done = launch_two_cpu_processes(LOGGED_TRAIN_VLM, args, tmp_path, isolated_artifacts, EVAL_LOG_DIR=str(evals))
    assert done.returncode == 0, done.stderr[-3000:]

    assert sorted(p.name for p in evals.iterdir()) == ["rank-0.txt"]  # rank 1 trained and evaluated nothing
    assert (evals / "rank-0.txt").read_text().split() == ["evaluate", "evaluate"]  # before and after training
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and {"before", "after"} <= summary.keys()
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 4
    assert json.loads((run / "run_record.json").read_text())["kind"] == "train_vlm"
