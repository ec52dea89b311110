"""Fixtures for the analysis scripts: a small synthetic data config, two runs over it, and a JSONL dataset whose uid
and sentence hold characters that must never reach a file name or the HTML unescaped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from utils.example_lookup import data_arguments, split_index

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
