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

SETUP = """\
# Setup: on Colab mount Drive, fetch and install the lab; elsewhere use this checkout and a local artifact root.
import os, subprocess, sys
from pathlib import Path

try:
    import google.colab  # noqa: F401

    IN_COLAB = True
except ImportError:
    IN_COLAB = False
TEST = os.environ.get("VLM_STUDIES_NOTEBOOK_TEST") == "1"  # set by the tests: tiny step and example counts
REPO_URL = "https://github.com/<you>/vlm-studies"  # Colab: your fork of the lab (skipped when already cloned)
DRIVE_ROOT = "/content/drive/MyDrive/VLM_Studies_Files"  # Colab: the artifact root on Drive

if IN_COLAB:
    from google.colab import drive

    drive.mount("/content/drive")
    REPO = Path("/content/vlm-studies")
    if not (REPO / "training" / "sft.py").exists():
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

MODEL_CHOICE = """\
# The model: the embedded default (small local Qwen2-VL-architecture model, synthetic data, runs on a CPU) or the
# real Qwen/Qwen2-VL-2B-Instruct with Q-LoRA on NLVR2 from the hub (needs a GPU and the hub).
USE_QWEN2VL_2B = False
RUN_NAME = "qwen2vl-2b-qlora-nlvr2" if USE_QWEN2VL_2B else "embedded-lora"
EVAL_EXAMPLES = 512  # synthetic held-out examples (the embedded default)
if TEST:
    RUN_NAME, EVAL_EXAMPLES = RUN_NAME + "-notebook-test", 16
if USE_QWEN2VL_2B:
    import torch

    assert torch.cuda.is_available(), "Qwen2-VL-2B needs a GPU runtime (Runtime > Change runtime type)"
    TRAIN_CONFIG = "training/configs/qwen2vl_2b_qlora.yaml"
    EVAL_CONFIG = "evals/configs/qwen2vl_2b_finetuned.yaml"
    MODEL = ["--model_name_or_path", "Qwen/Qwen2-VL-2B-Instruct"]
    DATA = []
else:
    TRAIN_CONFIG = "training/configs/embedded_lora.yaml"
    EVAL_CONFIG = "evals/configs/embedded_finetuned.yaml"
    MODEL_DIR = ROOT / "models" / ("embedded-qwen2vl-notebook-test" if TEST else "embedded-qwen2vl")
    MODEL = ["--model_name_or_path", str(MODEL_DIR)]
    DATA = ["--synthetic_eval_size", str(EVAL_EXAMPLES)]"""

TRAIN_INTRO = """\
# Train: LoRA / Q-LoRA fine-tuning with `training/sft.py`, evaluation, plots

Run the cells in order. On Colab the artifact root is a Drive folder (`VLM_Studies_Files`): checkpoints are written
to the VM's disk and each one is mirrored atomically to `<root>/checkpoints/<run>/` (the newest two plus the best are
kept), TensorBoard logs go to `<root>/logs/<run>/`, evaluations to `<root>/evals/<run>/`, plots to
`<root>/analysis/plots/<run>/`. After a disconnect, run everything again with `RESUME = True`: training continues
from the newest complete checkpoint, local or mirrored. Live curves on Colab: `%load_ext tensorboard` then
`%tensorboard --logdir {ROOT}/logs`."""

TRAIN_PARAMS = """\
# Training knobs (any training/sft.py flag can be added to EXTRA)
MAX_STEPS = 1000 if not USE_QWEN2VL_2B else 500
SAVE_STEPS = 100
RESUME = False  # True after a disconnect: continue from the newest complete checkpoint (local or mirrored)
MIRROR = IN_COLAB  # local output_dir + atomic copies on Drive; elsewhere output_dir is in the artifact root itself
EXTRA = []
if TEST:
    MAX_STEPS, SAVE_STEPS, MIRROR = 3, 1, True
    EXTRA = ["--synthetic_train_size", "32", "--per_device_train_batch_size", "4", "--logging_steps", "1"]
local_runs = Path("/content/runs") if IN_COLAB else ROOT / "local_runs"
OUTPUT_DIR = (local_runs if MIRROR else ROOT / "checkpoints") / RUN_NAME
print("output_dir", OUTPUT_DIR, "| mirror", ROOT / "checkpoints" / RUN_NAME if MIRROR else None)"""

BUILD = """\
# The embedded base model (built once into <root>/models, then reused); nothing to do for the real model.
if not USE_QWEN2VL_2B:
    from scripts import build_embedded_model

    build = build_embedded_model.BuildArguments(output_dir=str(MODEL_DIR))
    if TEST:
        build.vision_steps, build.steps = 0, 0  # untrained: the test checks the plumbing, not the model
    build_embedded_model.main(build)"""

TRAIN = """\
# Fine-tune: the same entry point and YAML config as `python training/sft.py --config ...`
import gc
import logging

from training import sft

logging.basicConfig(level=logging.WARNING)
args = ["--config", TRAIN_CONFIG, *MODEL, "--output_dir", str(OUTPUT_DIR)]
args += ["--max_steps", str(MAX_STEPS), "--save_steps", str(SAVE_STEPS), *EXTRA]
if MIRROR:
    args += ["--mirror_checkpoints_to", str(ROOT)]
if RESUME:
    args += ["--resume_from_checkpoint", "true"]
trainer = sft.main(*sft.make_parser().parse_args_and_config(args))
losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
trend = f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "not logged"
print(f"{trainer.state.global_step} steps; train loss {trend}")
del trainer  # free the model (GPU memory) before evaluating
_ = gc.collect()"""

EVALUATE = """\
# Evaluate base + the adapter just trained on the held-out split (predictions.jsonl keyed by uid, metrics.json)
from evals import finetuned
from evals.evaluate import make_parser as eval_parser

EVAL_DIR = ROOT / "evals" / RUN_NAME
eval_args = ["--config", EVAL_CONFIG, *MODEL, *DATA, "--adapter_path", str(OUTPUT_DIR), "--output_dir", str(EVAL_DIR)]
metrics = finetuned.main(*eval_parser().parse_args_and_config(eval_args))
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

Needs a run of `Train.ipynb` (same `RUN_NAME`): the adapter is the run folder in the artifact root, or, when the run
was mirrored from a Colab VM, its newest complete mirrored checkpoint. The gallery shows what the evaluation of that
run got wrong. For an interactive loop use `python scripts/model_playground.py --config ...` in a terminal."""

FIND_ADAPTER = """\
# The adapter: <root>/checkpoints/<run> itself (trained there), else its newest complete mirrored checkpoint
from training.callbacks import last_mirrored_checkpoint

RUN_DIR = ROOT / "checkpoints" / RUN_NAME
ADAPTER = RUN_DIR if (RUN_DIR / "adapter_config.json").exists() else last_mirrored_checkpoint(RUN_DIR)
assert ADAPTER is not None, f"no adapter in {RUN_DIR}: run Train.ipynb first (same RUN_NAME)"
EVAL_DIR = ROOT / "evals" / RUN_NAME
print("adapter", ADAPTER)"""

PLAYGROUND = """\
# One prompt on a held-out example's two images ({sentence}: the example's statement); decoding knobs at hand
from evals.playground import DecodingKnobs, load_playground
from vlm_datasets.example_lookup import data_arguments, split_index

data_overrides = {"synthetic_eval_size": EVAL_EXAMPLES} if not USE_QWEN2VL_2B else {}
model_name = MODEL[1]
pg = load_playground(EVAL_CONFIG, DecodingKnobs(max_new_tokens=8 if TEST else 32), model=model_name,
                     adapter=str(ADAPTER), **data_overrides)
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
    train = [md(TRAIN_INTRO), code(SETUP), code(MODEL_CHOICE), code(TRAIN_PARAMS), code(BUILD), code(TRAIN)]
    train += [code(EVALUATE), code(PLOT)]
    playground = [md(PLAYGROUND_INTRO), code(SETUP), code(MODEL_CHOICE), code(FIND_ADAPTER)]
    playground += [code(PLAYGROUND), code(GALLERY)]
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
