"""The demo wires the shipped base (a checked copy, no pretraining) -> zero-shot -> LoRA SFT -> fine-tuned eval, prints
the analysis commands to run next on its outputs (each run here as printed) and ends by printing summary.json's path.
The shipped base matches the SHA-256 recorded beside it, and a changed file is refused by name."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import datasets
import pytest
import torch

from scripts import build_embedded_model, demo
from training import embedded_build
from training.embedded_build import SHIPPED_MODEL_DIR, provide_shipped_model, verify_build
from training.models import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[2]
NEXT = "Next, on these outputs:"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, list[str], Path]:
    """The demo once at tiny size on the shipped base, run from the repository root with an artifact root of its own,
    any pretraining made to fail: (summary.json path, printed lines, artifact root)."""
    tmp = tmp_path_factory.mktemp("demo")
    args = demo.DemoArguments(  # the SFT in 2 processes (what auto picks on a CPU with 2 or more cores)
        output_dir=str(tmp / "demo"), model_dir=str(tmp / "model"), sft_max_steps=2, max_eval_examples=16
    )
    args.sft_processes = "2"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):  # module scope: no capsys
        mp.setenv("VLM_STUDIES_ROOT", str(tmp / "artifacts"))
        mp.setenv("HF_DATASETS_CACHE", str(tmp / "hf_datasets"))  # the launched SFT processes'
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp / "hf_datasets"))
        mp.setattr(embedded_build, "_build_into", lambda *a: pytest.fail("the demo pretrained a base"))
        mp.chdir(REPO)
        path = demo.main(args)
    return Path(path), printed.getvalue().strip().splitlines(), tmp / "artifacts"


def printed_commands(lines: list[str]) -> dict[str, list[str]]:
    """The commands printed between NEXT and the summary path (comment lines skipped), by script or program name."""
    block = lines[lines.index(NEXT) + 1 : -1]
    commands = [shlex.split(line) for line in block if not line.startswith("#")]
    return {Path(argv[1] if "python" in Path(argv[0]).name else argv[0]).stem: argv for argv in commands}


def run_verbatim(argv: list[str], root: Path) -> subprocess.CompletedProcess:
    """A printed command in a fresh process from the repository root, on the demo's artifact root, offline."""
    env = os.environ | {"VLM_STUDIES_ROOT": str(root), "HF_DATASETS_CACHE": str(root.parent / "hf_datasets")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.integration
def test_build_reuses_a_matching_build_and_rebuilds_otherwise(tmp_path):
    args = build_embedded_model.BuildArguments(output_dir=str(tmp_path / "m"), vision_steps=2, steps=0)
    out = build_embedded_model.main(args)
    info = json.loads((out / "build_info.json").read_text())
    assert info["settings"]["vision_steps"] == 2 and (out / "model.safetensors").exists()
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    build_embedded_model.main(args)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    args.vision_steps = 0
    build_embedded_model.main(args)
    assert json.loads((out / "build_info.json").read_text())["settings"]["vision_steps"] == 0
    assert not (tmp_path / "m.building").exists()


def test_the_shipped_base_matches_its_build_record():
    info = verify_build(SHIPPED_MODEL_DIR)
    files = {p.name for p in SHIPPED_MODEL_DIR.iterdir()} - {"build_info.json"}
    assert set(info["sha256"]) == files >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert info["settings"] == build_embedded_model.BuildArguments().settings()  # the default build
    assert info["weights"] == "pretrained on synthetic tasks by scripts/build_embedded_model.py"
    assert info["command"].startswith("python scripts/build_embedded_model.py")
    assert {"built", "machine", "versions"} <= info.keys()


def shipped_copy(folder: Path) -> Path:
    shutil.copytree(SHIPPED_MODEL_DIR, folder)
    return folder


def test_a_changed_shipped_file_is_refused_by_name(tmp_path):
    shipped = shipped_copy(tmp_path / "shipped")
    with (shipped / "tokenizer.json").open("a") as f:
        f.write(" ")
    with pytest.raises(ValueError, match=r"shipped/tokenizer\.json: changed or corrupted: SHA-256"):
        provide_shipped_model(tmp_path / "model", shipped)
    assert not (tmp_path / "model").exists()
    (shipped / "config.json").unlink()
    with pytest.raises(ValueError, match=r"shipped/config\.json: missing"):
        verify_build(shipped)


def test_the_copy_in_model_dir_is_checked_kept_or_replaced(tmp_path):
    shipped, model = shipped_copy(tmp_path / "shipped"), tmp_path / "model"
    assert "copied from the shipped base" in provide_shipped_model(model, shipped)
    stamp = (model / "model.safetensors").stat().st_mtime_ns
    assert "a checked copy" in provide_shipped_model(model, shipped)
    assert (model / "model.safetensors").stat().st_mtime_ns == stamp  # kept
    (model / "model.safetensors").write_bytes(b"\0" + (model / "model.safetensors").read_bytes()[1:])
    with pytest.raises(ValueError, match=r"model/model\.safetensors: changed or corrupted"):
        provide_shipped_model(model, shipped)
    info = json.loads((model / "build_info.json").read_text())
    (model / "build_info.json").write_text(json.dumps(info | {"settings": {"steps": 1}}))  # another build
    assert "held another build: replaced" in provide_shipped_model(model, shipped)
    assert verify_build(model) == verify_build(shipped)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a build")
    with pytest.raises(ValueError, match="mine: not empty and holds no build_info.json"):
        provide_shipped_model(tmp_path / "mine", shipped)


def test_refresh_shipped_copies_a_default_build_over_the_shipped_base(tmp_path, monkeypatch):
    build = shipped_copy(tmp_path / "build")  # a default build: reused, not rebuilt
    monkeypatch.setattr(embedded_build, "SHIPPED_MODEL_DIR", tmp_path / "shipped")
    monkeypatch.setattr(embedded_build, "_build_into", lambda *a: pytest.fail("rebuilt a matching build"))
    args = build_embedded_model.BuildArguments(output_dir=str(build), refresh_shipped=True)
    build_embedded_model.main(args)
    assert verify_build(tmp_path / "shipped") == verify_build(SHIPPED_MODEL_DIR)
    args.steps = 10
    with pytest.raises(ValueError, match="refresh_shipped: the shipped base is the default build"):
        build_embedded_model.main(args)


@pytest.mark.integration
def test_demo_end_to_end_small(demo_run):
    path, lines, root = demo_run
    assert lines[-1] == str(path)
    model = root.parent / "model"
    shipped = f"absent, copied from the shipped base {SHIPPED_MODEL_DIR} (SHA-256 of every file checked)"
    assert lines[0] == f"[1/4] embedded base model: {model}: {shipped}"
    assert (model / "build_info.json").read_bytes() == (SHIPPED_MODEL_DIR / "build_info.json").read_bytes()
    summary = json.loads(path.read_text())
    assert summary["base"]["source"] == "shipped" and summary["base"]["built"] == verify_build(model)["built"]
    assert {"zero_shot_accuracy", "finetuned_accuracy", "n_eval", "wall_seconds"} <= summary.keys()
    assert summary["n_eval"] == 16 and summary["sft_steps"] == 2 and summary["sft_batch_size"] == 96
    assert summary["sft_processes"] == 2
    assert summary["sft_learning_rate"] == 1.5e-3
    assert summary["sft_bf16"] == (not torch.cuda.is_available() and cpu_has_native_bf16())
    ft = [json.loads(x) for x in (path.parent / "finetuned" / "predictions.jsonl").read_text().splitlines()]
    assert summary["finetuned_accuracy"] == sum(p["prediction"] == p["label"] for p in ft) / 16
    assert any("zero-shot" in line and "LoRA" in line for line in lines)


@pytest.mark.integration
def test_demo_prints_next_commands_that_run_as_printed(demo_run):
    path, lines, root = demo_run
    out = path.parent
    commands = printed_commands(lines)
    assert set(commands) == {"report", "sample_gallery", "compare", "model_playground", "tensorboard"}
    records = [json.loads(x) for x in (out / "finetuned" / "predictions.jsonl").read_text().splitlines()]
    wrong = [r["uid"] for r in records if r["prediction"] != r["label"]]

    report = run_verbatim(commands["report"], root)
    assert str(out / "finetuned" / "report.md") in report.stdout and (out / "finetuned" / "report.md").exists()

    page = Path(run_verbatim(commands["sample_gallery"], root).stdout.strip().splitlines()[-1])
    assert page.exists() and (page.parent / "uids.txt").read_text().split() == wrong

    compare = run_verbatim(commands["compare"], root)
    result = json.loads((root / "analysis" / "compare" / "zero_shot__vs__finetuned" / "compare.json").read_text())
    runs = [str(out / name / "predictions.jsonl") for name in ("zero_shot", "finetuned")]
    assert [result["run_a"], result["run_b"], result["n"]] == [*runs, 16]
    assert "delta B - A" in compare.stdout

    argv = commands["model_playground"]
    uid = argv[argv.index("--uid") + 1]
    assert uid == (wrong or [records[0]["uid"]])[0]
    *answer, scored = run_verbatim(argv, root).stdout.strip().splitlines()  # the answer, then uid, label, p_true
    (logged,) = [json.loads(x) for x in (root / "logs" / "playground.jsonl").read_text().splitlines()]
    assert logged["adapter"] == str(out / "lora") and logged["model"] == str(out.parent / "model")
    assert logged["prompt"].endswith(" True or False?") and "{sentence}" not in logged["prompt"]
    assert logged["output"].strip() == "\n".join(answer).strip()
    assert scored.startswith(f"{uid}: label ") and 0 <= float(scored.rsplit("p_true ", 1)[1]) <= 1

    board = commands["tensorboard"]  # serves until stopped: --inspect reads the same folder and exits
    assert Path(board[board.index("--logdir") + 1]) == root / "logs" / "lora"
    assert "train/train_loss" in run_verbatim([*board, "--inspect"], root).stdout  # 2 steps: the closing log only


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU flags; on a GPU bf16 needs no use_cpu")
@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_only_where_it_is_native_unless_asked(monkeypatch, native):
    monkeypatch.setattr(demo, "cpu_has_native_bf16", lambda: native)
    assert demo._precision_overrides("auto") == (["--bf16", "true", "--use_cpu", "true"] if native else [])
    assert demo._precision_overrides("true") == ["--bf16", "true", "--use_cpu", "true"]
    assert demo._precision_overrides("false") == []


@pytest.mark.integration
def test_the_sft_in_this_process_records_the_same_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_STUDIES_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.chdir(REPO)
    model = str(tmp_path / "model")
    provide_shipped_model(model, SHIPPED_MODEL_DIR)
    args = demo.DemoArguments(output_dir=str(tmp_path / "demo"), model_dir=model, sft_max_steps=2)
    args.sft_processes = "1"
    common = ["--model_name_or_path", model, "--max_eval_examples", "8", "--logging_steps", "1"]
    flags = demo.sft_overrides(args, common, tmp_path / "demo", 1)
    sft = demo.fine_tune(args, flags, tmp_path / "demo", 1)
    assert [sft["steps"], sft["batch_size"], sft["processes"], sft["learning_rate"]] == [2, 96, 1, 1.5e-3]
    assert (
        len(sft["train_loss"]) == 2
        and min(sft["train_loss"]) > 0
        and Path(sft["logging_dir"]) == tmp_path / "artifacts" / "logs" / "lora"
    )


def test_sft_processes(monkeypatch):
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: {0, 1})
    assert demo.sft_processes("auto") == (1 if torch.cuda.is_available() else 2)
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: {0})
    assert demo.sft_processes("auto") == 1 and demo.sft_processes("3") == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="neither auto nor a number of processes"):
            demo.sft_processes(bad)


def test_the_batch_is_split_between_the_processes(tmp_path):
    args = demo.DemoArguments(sft_bf16="false")
    flags = demo.sft_overrides(args, [], tmp_path, 2)
    assert flags[flags.index("--per_device_train_batch_size") + 1] == "48" and flags[-2:] == ["--use_cpu", "true"]
    args.sft_batch_size = 97
    with pytest.raises(ValueError, match="sft_batch_size 97 does not split into 2 processes"):
        demo.sft_overrides(args, [], tmp_path, 2)
