"""Every YAML config loads through the parser of the script that uses it, with no unknown key; a sweep config also
through every training and evaluation config it expands to."""

from __future__ import annotations

from pathlib import Path

import pytest
from trl import TrlParser

from evals.evaluate import make_parser as make_eval_parser
from scripts.sweeps import SweepArguments, expand, plan, validate
from training.pretrain_lm import make_parser as make_lm_parser
from training.sft import make_parser as make_sft_parser
from vlm_datasets.prompts import TEMPLATES

REPO = Path(__file__).resolve().parents[1]
# training/sft.py configs; gpt2_*.yaml belong to training/pretrain_lm.py and compose/ to the composer (own tests).
TRAINING = sorted(p for p in (REPO / "training" / "configs").glob("*.yaml") if not p.name.startswith("gpt2_"))
LM_TRAINING = sorted((REPO / "training" / "configs").glob("gpt2_*.yaml"))
EVALS = sorted((REPO / "evals" / "configs").glob("*.yaml"))
SWEEPS = sorted((REPO / "training" / "configs" / "sweeps").glob("*.yaml"))  # scripts/sweep.py
# The embedded sweeps' time budget on a 2-core CPU: LoRA SFT at ~4.5 steps/s (docs/training_speed.md) + ~12 s a run.
EMBEDDED_STEPS_PER_SECOND, EMBEDDED_RUN_OVERHEAD_S, EMBEDDED_BUDGET_S = 4.5, 12, 30 * 60


def test_there_are_configs():
    names = {p.name for p in TRAINING}
    assert {"qwen2vl_2b_lora.yaml", "qwen2vl_2b_qlora.yaml", "embedded_lora.yaml"} <= names
    assert EVALS


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_training_config_loads(path):
    # GPU configs say bf16; on this CPU-only machine SFTConfig accepts that only with use_cpu.
    data, train, model, lab, _ = make_sft_parser().parse_args_and_config(["--config", str(path), "--use_cpu", "true"])
    assert data.prompt_template in TEMPLATES
    assert path.read_text().startswith("#"), "a config starts with a comment giving its command"
    assert f"--config training/configs/{path.name}" in path.read_text()
    if path.name.startswith("qwen2vl_2b"):  # the real-size configs: a pixel budget (memory) and bf16 (fp16 overflows)
        assert data.max_pixels is not None and train.bf16
        assert model.load_in_4bit == ("qlora" in path.name)


@pytest.mark.parametrize("path", LM_TRAINING, ids=lambda p: p.name)
def test_lm_config_loads(path):
    make_lm_parser().parse_args_and_config(["--config", str(path), "--use_cpu", "true"])
    assert path.read_text().startswith("#")
    assert f"--config training/configs/{path.name}" in path.read_text()


@pytest.mark.parametrize("path", EVALS, ids=lambda p: p.name)
def test_eval_config_loads(path):
    parser = make_eval_parser()
    ev, data, model, lab = parser.parse_args_and_config(["--config", str(path)])
    assert ev.scoring in ("likelihood", "generate")
    assert f"--config evals/configs/{path.name}" in path.read_text()


def test_unknown_config_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nbf16: false\nlora_rank: 8\n")
    with pytest.raises(ValueError, match="lora_rank"):
        make_sft_parser().parse_args_and_config(["--config", str(bad)])


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_config_loads(path, tmp_path):
    text = path.read_text()
    assert text.startswith("#") and f"python scripts/sweep.py --config training/configs/sweeps/{path.name}" in text
    assert "Estimated time" in text
    # GPU configs say bf16; on this CPU-only machine SFTConfig accepts that only with use_cpu.
    cli = ["--config", str(path), "--output_dir", str(tmp_path / "sweep"), "--extra_overrides", '{"use_cpu": true}']
    (args,) = TrlParser((SweepArguments,)).parse_args_and_config(cli)
    cells = expand(args)
    runs = plan(args, cells)
    steps = validate(args, runs)  # every run's training and evaluation config, through the entry points' parsers
    assert len(runs) == len(cells) * len(args.seeds) >= 2 * 3 and all(steps.values())
    if path.name.startswith("embedded_"):
        estimate = sum(steps.values()) / EMBEDDED_STEPS_PER_SECOND + EMBEDDED_RUN_OVERHEAD_S * len(runs)
        assert estimate <= EMBEDDED_BUDGET_S, f"{path.name}: ~{estimate / 60:.0f} min on 2 cores"
    else:
        assert path.name.startswith("qwen2vl_2b_") and "Qwen2-VL-2B-Instruct" in text
