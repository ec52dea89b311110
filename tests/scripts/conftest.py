"""Fixtures for the analysis scripts: a small synthetic data config, two runs over it, and a JSONL dataset whose uid
and sentence hold characters that must never reach a file name or the HTML unescaped."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import datasets
import pytest
import yaml
from PIL import Image

from vlm_datasets.example_lookup import data_arguments, split_index

N = 24  # synthetic examples in the split
SPLIT = "test"
ODD_UID = "odd/../uid <1>&2"  # the odd_manifest's second example
ODD_SENTENCE = 'The left image has <script>window.pwned = 1</script> & "quotes" <b>not bold</b>.'


@pytest.fixture
def synthetic_config(tmp_path, isolated_artifacts) -> Path:
    path = tmp_path / "data.yaml"
    config = {
        "dataset_source": "synthetic",
        "synthetic_eval_size": N,
        "dataset_eval_split": SPLIT,
        "max_pixels": 3136,
        "model_name_or_path": "not/used-here",  # keys of other dataclasses are left alone
        "scoring": "likelihood",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def split_rows(synthetic_config) -> dict[str, dict]:
    return split_index(data_arguments(synthetic_config), SPLIT)


def write_predictions(folder: Path, rows: dict[str, dict], right) -> Path:
    """predictions.jsonl over `rows`: right(i) decides whether example i is answered correctly; p_true = i / (N - 1)."""
    folder.mkdir(parents=True)
    with (folder / "predictions.jsonl").open("w") as fh:
        for i, (uid, row) in enumerate(rows.items()):
            pred = row["label"] if right(i) else not row["label"]
            rec = {"uid": uid, "sentence": row["sentence"], "label": row["label"], "prediction": pred}
            fh.write(json.dumps(rec | {"p_true": i / (N - 1), "category": row["meta"]["category"]}) + "\n")
    return folder


@pytest.fixture
def runs(tmp_path, split_rows) -> tuple[Path, Path]:
    """Run A is wrong on odd positions, run B on positions divisible by 3."""
    a = write_predictions(tmp_path / "evals" / "run_a", split_rows, lambda i: i % 2 == 0)
    b = write_predictions(tmp_path / "evals" / "run_b", split_rows, lambda i: i % 3 != 0)
    return a, b


@pytest.fixture
def odd_manifest(tmp_path, isolated_artifacts) -> Path:
    """A JSONL dataset of two examples: one plain, one with the odd uid and sentence; JPEG and RGBA PNG images."""
    folder = tmp_path / "odd_data"
    folder.mkdir()
    Image.new("RGB", (120, 80), (200, 30, 30)).save(folder / "left.jpg", format="JPEG")
    Image.new("RGBA", (90, 90), (30, 60, 220, 255)).save(folder / "right.png")
    nlvr2_fields = {"left_url": "https://example.org/l.jpg", "synset": "beer bottle", "validation": {"160": "True"}}
    records = [
        {"uid": "dev-1-0-0", "images": ["left.jpg", "right.png"], "sentence": "Plain.", "label": True},
        {"uid": ODD_UID, "images": ["left.jpg", "right.png"], "sentence": ODD_SENTENCE, "label": False} | nlvr2_fields,
    ]
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


# ---- composed-VLM runs (training/train_vlm.py) for the gallery's generated-text pages --------------------------------

REPO = Path(__file__).resolve().parents[2]


def _train_vlm_run(model_dir: Path, out_dir: Path, root: Path, **fields) -> Path:
    """training/train_vlm.py's main in this process: the embedded stage-1 recipe, two steps, `fields` overriding it;
    returns the run folder (predictions.jsonl, summary.json, run_record.json beside the model)."""
    from training.train_vlm import main, make_parser

    fields = dict(model_name_or_path=model_dir, output_dir=out_dir, max_steps=2, per_device_train_batch_size=4,
                  vlm_eval_before="false", vlm_eval_max_new_tokens=6, warmup_steps=0, logging_steps=1,
                  report_to="none", save_strategy="no", **fields)  # fmt: skip
    argv = ["--config", str(REPO / "training/configs/compose/gpt2v_embedded_stage1.yaml")]
    argv += [x for k, v in fields.items() for x in (f"--{k}", str(v))]
    with pytest.MonkeyPatch.context() as mp:  # module-scoped callers: no function-scoped monkeypatch
        mp.setenv("VLM_STUDIES_ROOT", str(root / "artifacts"))
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf_datasets"))
        main(*make_parser().parse_args_and_config(argv))
    return out_dir


@pytest.fixture(scope="session")
def train_vlm_run(tiny_composed_vlm):
    """train_vlm_run(out_dir, root, **fields): a two-step train_vlm run of the composed toy model (root: its
    artifact root); returns the run folder."""
    return functools.partial(_train_vlm_run, tiny_composed_vlm)


@pytest.fixture(scope="module")
def caption_run(train_vlm_run, tmp_path_factory) -> Path:
    """A train_vlm run evaluated on 6 synthetic rows, captions and questions alternating (uids capsyn_eval-0..5)."""
    tmp = tmp_path_factory.mktemp("caption-run")
    return train_vlm_run(tmp / "gpt2v-mixed", tmp, synthetic_task="mixed", synthetic_train_size=16,
                         synthetic_eval_size=6, synthetic_seed=3)  # fmt: skip


@pytest.fixture
def caption_run_copy(caption_run, tmp_path) -> Path:
    """The run's record files in a folder of this test's own, free to edit (the model stays behind)."""
    folder = tmp_path / "runs" / caption_run.name
    folder.mkdir(parents=True)
    for name in ("predictions.jsonl", "run_record.json", "summary.json"):
        (folder / name).write_bytes((caption_run / name).read_bytes())
    return folder
