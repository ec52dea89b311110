"""Writes colab/Train.ipynb and colab/Playground.ipynb (nbformat v4, no outputs) from the cells below.

# After editing a cell here (tests/colab/test_notebooks.py fails while the .ipynb files differ from this script)
python colab/build_notebooks.py

The notebooks run on Colab (Drive mounted, requirements installed) and anywhere else (a local artifact root); the
tests execute both headless on the embedded default with VLM_STUDIES_NOTEBOOK_TEST=1, which shrinks every count.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

REPO_CELL = """\
# >>> Your fork of this lab: the URL Colab clones (edit it, or set VLM_STUDIES_REPO_URL). Unused outside Colab. <<<
import os

REPO_URL = os.environ.get("VLM_STUDIES_REPO_URL") or "https://github.com/<you>/vlm-studies\""""

TRAIN_SETTINGS = """\
# Settings: edit here, then Runtime > Run all. Any training/sft.py flag can be added to EXTRA.
DRIVE_ROOT = "/content/drive/MyDrive/VLM_Studies_Files"  # Colab: the artifact root on Drive
USE_QWEN2VL_2B = False  # True: Qwen/Qwen2-VL-2B-Instruct, Q-LoRA on NLVR2 (GPU runtime + the hub); False: embedded
MAX_STEPS = 500 if USE_QWEN2VL_2B else 1000
SAVE_STEPS = 100
MAX_EVAL_EXAMPLES = 500  # the evaluation scores the first N held-out examples (--max_eval_examples); None: all
RESUME = False  # True after a disconnect: continue from the newest complete checkpoint (local or mirrored)
EXTRA = []  # e.g. ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "8"]"""

PLAYGROUND_SETTINGS = """\
# Settings: the same as the Train.ipynb run to open
DRIVE_ROOT = "/content/drive/MyDrive/VLM_Studies_Files"  # Colab: the artifact root on Drive
USE_QWEN2VL_2B = False  # True: the Qwen/Qwen2-VL-2B-Instruct Q-LoRA run; False: the embedded default's run"""

SETUP = """\
# Setup: on Colab mount Drive, fetch and install the lab; elsewhere use this checkout and a local artifact root.
import subprocess, sys
from pathlib import Path

try:
    import google.colab  # noqa: F401

    IN_COLAB = True
except ImportError:
    IN_COLAB = False
TEST = os.environ.get("VLM_STUDIES_NOTEBOOK_TEST") == "1"  # set by the tests: tiny step and example counts

if IN_COLAB:
    REPO = Path("/content/vlm-studies")
    cloned = (REPO / "training" / "sft.py").exists()
    if not cloned and "<you>" in REPO_URL:
        raise ValueError(
            f"REPO_URL is still the placeholder {REPO_URL!r}: set it in the first code cell to the clone URL of "
            "your fork of the lab (or set VLM_STUDIES_REPO_URL), then run again"
        )
    from google.colab import drive

    drive.mount("/content/drive")
    if not cloned:
        subprocess.run(["git", "clone", REPO_URL, str(REPO)], check=True)
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-r", "requirements.txt"], cwd=REPO, check=True)
    subprocess.run([*pip, "--no-deps", "-e", "."], cwd=REPO, check=True)
    ROOT = Path(DRIVE_ROOT)
else:
    REPO = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "training" / "sft.py").exists())
    ROOT = Path(os.environ.get("VLM_STUDIES_ROOT") or REPO / "artifacts").resolve()
os.environ["VLM_STUDIES_ROOT"] = str(ROOT)  # utils/artifacts.py: checkpoints/, logs/, datasets/, analysis/, models/
os.chdir(REPO)
sys.path.insert(0, str(REPO))
for kind in ("checkpoints", "logs", "datasets", "analysis", "models"):
    (ROOT / kind).mkdir(parents=True, exist_ok=True)
print(f"repo {REPO}\\nartifact root {ROOT}\\ncolab {IN_COLAB}, test mode {TEST}")"""

PRECISION = """\
# Precision follows the hardware: bf16 where the GPU computes it natively (compute capability 8.0+: A100, L4, H100),
# else float32. Never fp16: Qwen2-VL overflows in fp16 (answers of "!!!!"). A T4 (7.5) has no bf16 units and torch
# only emulates it, hence including_emulation=False. Training, evaluation and the playground all get DTYPE.
import torch

GPU = torch.cuda.get_device_name() if torch.cuda.is_available() else None
if GPU and torch.cuda.is_bf16_supported(including_emulation=False):
    DTYPE, reason = "bfloat16", f"{GPU} computes bf16 natively"
elif GPU:
    major, minor = torch.cuda.get_device_capability()
    DTYPE, reason = "float32", f"{GPU} (compute capability {major}.{minor}) has no native bf16, and fp16 overflows"
else:
    DTYPE, reason = "float32", "no CUDA GPU (a CPU runtime computes in float32)"
TRAIN_PRECISION = ["--dtype", DTYPE, "--bf16", str(DTYPE == "bfloat16").lower(), "--fp16", "false"]
print(f"dtype {DTYPE}: {reason}")"""

MODEL_CHOICE = """\
# The model: the embedded default (small local Qwen2-VL-architecture model, synthetic data, runs on a CPU) or the
# real Qwen/Qwen2-VL-2B-Instruct with Q-LoRA on NLVR2 from the hub (needs a GPU and the hub).
RUN_NAME = "qwen2vl-2b-qlora-nlvr2" if USE_QWEN2VL_2B else "embedded-lora"
EVAL_EXAMPLES = 512  # synthetic held-out examples (the embedded default)
if TEST:
    RUN_NAME, EVAL_EXAMPLES = RUN_NAME + "-notebook-test", 16
if USE_QWEN2VL_2B:
    if GPU is None:
        raise RuntimeError("Qwen2-VL-2B needs a GPU runtime: Runtime > Change runtime type > T4 GPU or better")
    TRAIN_CONFIG = "training/configs/qwen2vl_2b_qlora.yaml"
    EVAL_CONFIG = "evals/configs/qwen2vl_2b_finetuned.yaml"
    MODEL = ["--model_name_or_path", "Qwen/Qwen2-VL-2B-Instruct"]
    DATA = []
else:
    TRAIN_CONFIG = "training/configs/embedded_lora.yaml"
    EVAL_CONFIG = "evals/configs/embedded_finetuned.yaml"
    MODEL_DIR = ROOT / "models" / ("embedded-qwen2vl-notebook-test" if TEST else "embedded-qwen2vl")
    MODEL = ["--model_name_or_path", str(MODEL_DIR)]
    DATA = ["--synthetic_eval_size", str(EVAL_EXAMPLES)]
print(f"run {RUN_NAME}: {TRAIN_CONFIG}, {EVAL_CONFIG}")"""

TRAIN_INTRO = """\
# Train: LoRA / Q-LoRA fine-tuning with `training/sft.py`, evaluation, plots

Set the fork's URL and the settings in the first two code cells, then run everything. On Colab the artifact root is a
Drive folder (`VLM_Studies_Files`): checkpoints are written to the VM's disk and each one is mirrored atomically to
`<root>/checkpoints/<run>/` (the newest two plus the best are kept), TensorBoard logs go to `<root>/logs/<run>/` (shown
live by the TensorBoard cell), evaluations to `<root>/evals/<run>/`, plots to `<root>/analysis/plots/<run>/`.
Precision follows the GPU: bf16 on an A100 / L4, float32 on a T4. After a disconnect, set `RESUME = True` and run
everything again: training continues from the newest complete checkpoint, local or mirrored."""

RUN_DIRS = """\
# Where the run writes: output_dir on the VM's disk mirrored to Drive on Colab, the artifact root itself elsewhere
MIRROR = IN_COLAB
if TEST:
    MAX_STEPS, SAVE_STEPS, MAX_EVAL_EXAMPLES, MIRROR = 3, 1, 12, True
    EXTRA = ["--synthetic_train_size", "32", "--per_device_train_batch_size", "4", "--logging_steps", "1"]
local_runs = Path("/content/runs") if IN_COLAB else ROOT / "local_runs"
OUTPUT_DIR = (local_runs if MIRROR else ROOT / "checkpoints") / RUN_NAME
print("output_dir", OUTPUT_DIR, "| mirror", ROOT / "checkpoints" / RUN_NAME if MIRROR else None)"""

BUILD = """\
# The embedded base model (built once into <root>/models, then reused); nothing to do for the real model.
if not USE_QWEN2VL_2B:
    from training.embedded_build import BuildArguments, build_embedded_model

    build = BuildArguments(output_dir=str(MODEL_DIR))
    if TEST:
        build.vision_steps, build.steps = 0, 0  # untrained: the test checks the plumbing, not the model
    print("embedded base", build_embedded_model(build))"""

TENSORBOARD = """\
# Live curves while training: each run logs to <root>/logs/<run name> (training/callbacks.py); refresh to update
%load_ext tensorboard
%tensorboard --logdir "{ROOT}/logs\""""

TRAIN = """\
# Fine-tune: the same entry point and YAML config as `python training/sft.py --config ...`
import gc
import logging
import shlex

from training import sft

logging.basicConfig(level=logging.WARNING)
args = ["--config", TRAIN_CONFIG, *MODEL, *TRAIN_PRECISION, "--output_dir", str(OUTPUT_DIR)]
args += ["--max_steps", str(MAX_STEPS), "--save_steps", str(SAVE_STEPS), *EXTRA]
if MIRROR:
    args += ["--mirror_checkpoints_to", str(ROOT)]
if RESUME:
    args += ["--resume_from_checkpoint", "true"]
print("python training/sft.py", shlex.join(args))
trainer = sft.main(*sft.make_parser().parse_args_and_config(args))
losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
trend = f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "not logged"
print(f"{trainer.state.global_step} steps; train loss {trend}")
del trainer  # free the model (GPU memory) before evaluating
_ = gc.collect()"""

EVALUATE = """\
# Evaluate base + the adapter just trained on the held-out split (predictions.jsonl keyed by uid, metrics.json)
from evals.evaluate import make_parser as eval_parser
from evals.modes import finetuned

EVAL_DIR = ROOT / "evals" / RUN_NAME
eval_args = ["--config", EVAL_CONFIG, *MODEL, *DATA, "--dtype", DTYPE, "--adapter_path", str(OUTPUT_DIR)]
eval_args += ["--output_dir", str(EVAL_DIR)]
if MAX_EVAL_EXAMPLES is not None:
    eval_args += ["--max_eval_examples", str(MAX_EVAL_EXAMPLES)]
print("python evals/finetuned.py", shlex.join(eval_args))
metrics = finetuned(*eval_parser().parse_args_and_config(eval_args))
print(f"accuracy {metrics['accuracy']:.3f} on {metrics['n']} examples -> {EVAL_DIR}")"""

PLOT = """\
# TensorBoard scalars -> PNGs (loss, learning rate, grad norm, token accuracy) and a table of final values
from IPython.display import Image, Markdown, display

from scripts import plot_run

PLOTS = plot_run.main(OUTPUT_DIR, out=ROOT / "analysis" / "plots" / RUN_NAME)
display(Image(filename=str(PLOTS / "summary.png")))
display(Markdown((PLOTS / "summary.md").read_text()))"""

PLAYGROUND_INTRO = """\
# Playground: the base model + a trained adapter, one prompt, a gallery of wrong answers

Needs a run of `Train.ipynb` with the same settings (`DRIVE_ROOT`, `USE_QWEN2VL_2B`): the adapter is the run folder
in the artifact root, or, when the run was mirrored from a Colab VM, its newest complete mirrored checkpoint. The
gallery shows what the evaluation of that run got wrong. For an interactive loop use
`python scripts/model_playground.py --config ...` in a terminal."""

FIND_ADAPTER = """\
# The adapter: <root>/checkpoints/<run> itself (trained there), else its newest complete mirrored checkpoint
from training.callbacks import last_mirrored_checkpoint

RUN_DIR = ROOT / "checkpoints" / RUN_NAME
ADAPTER = RUN_DIR if (RUN_DIR / "adapter_config.json").exists() else last_mirrored_checkpoint(RUN_DIR)
assert ADAPTER is not None, f"no adapter in {RUN_DIR}: run Train.ipynb first (same settings)"
EVAL_DIR = ROOT / "evals" / RUN_NAME
print("adapter", ADAPTER)"""

PLAYGROUND = """\
# One prompt on a held-out example's two images ({sentence}: the example's statement); decoding knobs at hand
from evals.playground import DecodingKnobs, load_playground
from vlm_datasets.example_lookup import data_arguments, split_index

data_overrides = {"synthetic_eval_size": EVAL_EXAMPLES} if not USE_QWEN2VL_2B else {}
model_name = MODEL[1]
knobs = DecodingKnobs(max_new_tokens=8 if TEST else 32)
pg = load_playground(EVAL_CONFIG, knobs, model=model_name, adapter=str(ADAPTER), dtype=DTYPE, **data_overrides)
uid = next(iter(split_index(data_arguments(EVAL_CONFIG, **data_overrides), pg.split)))
example = pg.load_uid(uid)
display(*example.images)
print(f"{uid}: {example.sentence} (label {example.label})")
print("answer:", pg.ask("{sentence} True or False?"))
print("answer to the evaluation prompt:", pg.ask_template())"""

GALLERY = """\
# What the evaluation of this run got wrong (scripts/sample_gallery.py), shown inline
from IPython.display import HTML, display

from scripts import sample_gallery

assert (EVAL_DIR / "predictions.jsonl").exists(), f"no evaluation in {EVAL_DIR}: run Train.ipynb first"
page = sample_gallery.main(config=Path(EVAL_CONFIG), run=[EVAL_DIR], wrong_only=True, limit=8 if TEST else 48,
                           embed=True, **data_overrides)
display(HTML(page.read_text()))"""


def notebook(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": []},
    }
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same files
        cell["id"] = f"cell-{i}"
    return nb


def notebooks() -> dict[str, nbformat.NotebookNode]:
    md, code = new_markdown_cell, new_code_cell
    head = [code(REPO_CELL)]
    train = [md(TRAIN_INTRO), *head, code(TRAIN_SETTINGS), code(SETUP), code(PRECISION), code(MODEL_CHOICE)]
    train += [code(RUN_DIRS), code(BUILD), code(TENSORBOARD), code(TRAIN), code(EVALUATE), code(PLOT)]
    playground = [md(PLAYGROUND_INTRO), *head, code(PLAYGROUND_SETTINGS), code(SETUP), code(PRECISION)]
    playground += [code(MODEL_CHOICE), code(FIND_ADAPTER), code(PLAYGROUND), code(GALLERY)]
    return {"Train.ipynb": notebook(train), "Playground.ipynb": notebook(playground)}


def main() -> list[Path]:
    written = []
    for name, nb in notebooks().items():
        nbformat.validate(nb)
        path = HERE / name
        path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main():
        print(path)
