"""Every entry point (a module with a __main__ block) answers --help with its own flags, and importing one whose parser
needs no TrainingArguments loads no torch, peft or bitsandbytes (seconds before any output: peft and bitsandbytes
pull torch._inductor in). The --help times are in docs/, not asserted here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "evals", "scripts", "utils", "vlm_datasets")
ENTRY_POINTS = sorted(
    path.relative_to(REPO).as_posix()
    for package in PACKAGES
    for path in (REPO / package).glob("*.py")
    if re.search(r'^if __name__ == "__main__":', path.read_text(), re.MULTILINE)
)
# What each entry point's --help must show: flags (or commands) of its own arguments.
SHOWS = {
    "evals/benchmark_scoring.py": ["--generate_batch_size", "--scoring"],
    "evals/compare.py": ["--n-resamples", "--labels"],
    "evals/finetuned.py": ["--adapter_path", "--eval_window"],
    "evals/metrics.py": ["--csv-out", "--intersection"],
    "evals/report.py": ["--n-resamples", "--annotations"],
    "evals/side_check.py": ["eval_state.json"],
    "evals/zero_shot.py": ["--scoring", "--dataset_source"],
    "scripts/benchmark_qwen2vl_2b.py": ["--methods", "--tiny"],
    "scripts/benchmark_training.py": ["--timing_warmup_steps", "--check_masking"],
    "scripts/build_embedded_model.py": ["--synthetic_grid", "--vision_steps"],
    "scripts/build_real_shape_model.py": ["--vision_depth", "--wheel_cache"],
    "scripts/compose_vlm.py": ["--projector_type", "--vision_feature_layer"],
    "scripts/demo.py": ["--sft_max_steps", "--model_dir"],
    "scripts/inspect_sample.py": ["--export", "--min-pixels"],
    "scripts/model_playground.py": ["--num-beams", "--uid-cache"],
    "scripts/plot_run.py": ["--all", "--out"],
    "scripts/preflight.py": ["--report_json", "--prompt_template"],
    "scripts/rehearse.py": ["--resume_steps", "--scorings"],
    "scripts/sample_gallery.py": ["--p-true-max", "--uids-file"],
    "scripts/sweep.py": ["--grid", "--seeds"],
    "training/pretrain_lm.py": ["--block_size", "--n_embd"],
    "training/sft.py": ["--prompt_template", "--lora_r", "--mirror_checkpoints_to"],
    "training/train_vlm.py": ["--caption_prompt", "--synthetic_task"],
    "scripts/uid_cache.py": ["add", "remove"],
}
# Parsers holding transformers' TrainingArguments (TRL's SFTConfig among them): transformers.trainer_utils imports
# peft whenever it is installed, so these start at that cost whatever they import themselves.
TRAINING_ARGUMENTS = {
    "scripts/benchmark_training.py",
    "scripts/preflight.py",
    "training/pretrain_lm.py",
    "training/sft.py",
    "training/train_vlm.py",
}
HEAVY = ("torch", "peft", "bitsandbytes")  # the other entry points import these where they run, not for --help


def module_name(entry_point: str) -> str:
    return entry_point.removesuffix(".py").replace("/", ".")


def offline_env() -> dict[str, str]:
    # COLUMNS: typer's rich help keeps long option names whole
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}


# `python <entry point> --help`, watched: when bitsandbytes is first imported, is utils/cli.py's filter of its
# import-time `kernels` notice on its logger already? (The notice itself is logged only on CPUs with AVX512-BF16.)
WATCHED_HELP = """
import atexit, importlib.abc, logging, os, runpy, sys
entry, report = sys.argv[1], sys.argv[2]
class Watch(importlib.abc.MetaPathFinder):
    filtered = "never imported"
    def find_spec(self, name, path=None, target=None):
        if name == "bitsandbytes" and self.filtered == "never imported":
            self.filtered = bool(logging.getLogger("bitsandbytes.backends.cpu.ops").filters)
watch = Watch()
sys.meta_path.insert(0, watch)
atexit.register(lambda: open(report, "w").write(str(watch.filtered)))
sys.argv, sys.path[0] = [entry, "--help"], os.path.dirname(os.path.abspath(entry))
runpy.run_path(entry, run_name="__main__")
"""


@pytest.mark.integration
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_help_exits_0_shows_the_entry_points_flags_and_no_bitsandbytes_notice(entry_point, tmp_path):
    assert entry_point in SHOWS, f"{entry_point}: a new entry point; add what its --help shows to SHOWS"
    report = tmp_path / "filtered"
    done = subprocess.run([sys.executable, "-c", WATCHED_HELP, entry_point, str(report)], cwd=REPO, env=offline_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    missing = [flag for flag in SHOWS[entry_point] if flag not in done.stdout]
    assert not missing, f"{entry_point} --help does not show {missing}:\n{done.stdout}"
    filtered = report.read_text()
    assert filtered != "False", f"{entry_point} imports bitsandbytes before utils.cli: import utils.cli first"


def test_importing_an_entry_point_loads_no_torch_peft_or_bitsandbytes():
    """One process imports the entry points one after another: the first whose import brought torch, peft or
    bitsandbytes in is named (each later one would find them loaded already). torch alone costs 2-3 s of --help."""
    light = [module_name(e) for e in ENTRY_POINTS if e not in TRAINING_ARGUMENTS]
    code = f"""
import importlib, json, sys
for name in {light!r}:
    importlib.import_module(name)
    loaded = [m for m in {HEAVY!r} if m in sys.modules]
    if loaded:
        print(json.dumps([name, loaded]))
        break
else:
    print(json.dumps(None))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=offline_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    first = json.loads(done.stdout.strip().splitlines()[-1])
    assert first is None, f"importing {first[0]} loads {first[1]}"
    assert TRAINING_ARGUMENTS <= set(ENTRY_POINTS)  # no stale exception
