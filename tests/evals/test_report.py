"""Run report: report.md with the headline numbers, the confusion matrix's counts and rates, and valid PNG plots named
after the run (report.md's links reach them), from a small run folder written here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import matplotlib.image
import pytest

from evals.run_report import confusion_rates, plot_files, write_report
from utils.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]
RUN_PLOTS = ["{}_accuracy_by_category.png", "{}_confusion_matrix.png", "{}_reliability.png"]


def write_run(folder: Path, with_p_true: bool = True) -> Path:
    """12 synthetic-style examples: 9 right, 2 wrong, 1 unparseable; categories count / color."""
    folder.mkdir(parents=True)
    records = []
    for i in range(12):
        label = i % 2 == 0
        pred = None if i == 11 else (not label if i in (3, 6) else label)
        p_true = None if pred is None or not with_p_true else (0.9 if pred else 0.2)
        records.append(
            {
                "uid": f"syn_test-{i // 2}-{i % 2}-0",
                "sentence": f"statement {i}",
                "label": label,
                "prediction": pred,
                "p_true": p_true,
                "category": "count" if i < 6 else "color",
            }
        )
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = {"model": "tiny-qwen2vl", "adapter": "artifacts/checkpoints/lora", "split": "test", "accuracy": 9 / 12}
    (folder / "metrics.json").write_text(json.dumps(metrics | {"scoring": "likelihood"}))
    return folder


def assert_png(path: Path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def linked_files(report: Path) -> list[Path]:
    """The files report.md's image links point at, resolved beside it."""
    return [report.parent / unquote(link) for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())]


def test_report_and_plots_written(tmp_path):
    run = write_run(tmp_path / "run")
    path = write_report(run, n_resamples=100)
    assert path == run / "report.md"
    assert sorted(p.name for p in run.glob("*.png")) == sorted(name.format("run") for name in RUN_PLOTS)
    assert linked_files(path) == list(plot_files(run).values())
    for png in plot_files(run).values():
        assert_png(png)
    text = path.read_text()
    for expected in (
        "tiny-qwen2vl",
        "artifacts/checkpoints/lora",
        "| split | test |",
        "75.00%",
        "9 of 12 correct",
        "**unparseable predictions**: 1",
        "| count | 6 | 83.33% |",
        "| color | 6 | 66.67% |",
        "| True | 5 (83.33%) | 1 (16.67%) | 0 (0.00%) |",  # label True: 5 right, 1 wrong, 0 unparseable of 6
        "| False | 1 (16.67%) | 4 (66.67%) | 1 (16.67%) |",
        "expected calibration error",
    ):
        assert expected in text, expected
    assert "note: metrics.json says" not in text  # metrics.json agrees with predictions.jsonl


def test_report_without_p_true_still_writes_every_plot(tmp_path):
    run = write_run(tmp_path / "run", with_p_true=False)
    text = write_report(run, n_resamples=10).read_text()
    assert "expected calibration error" not in text
    for png in plot_files(run).values():
        assert_png(png)


@pytest.mark.integration
def test_plot_names_and_links_follow_the_run_folder(tmp_path):
    run = write_run(tmp_path / "zero shot #2")  # a space and a hash: the links must be quoted to reach the files
    report = subprocess.run(
        [sys.executable, str(REPO / "evals" / "report.py"), ".", "--n-resamples", "10"],
        cwd=run,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    names = [name.format("zero shot #2") for name in RUN_PLOTS]
    assert report.stdout.strip().endswith(", ".join(names))
    assert [p.name for p in linked_files(run / "report.md")] == names
    assert all(p.exists() for p in linked_files(run / "report.md"))
    assert (run / "report.md").read_text().startswith("# Evaluation report: zero shot #2\n")


def test_confusion_rates_are_shares_of_each_label():
    confusion = {"True": {"True": 3, "False": 0, "unparseable": 1}, "False": {"True": 0, "False": 0, "unparseable": 0}}
    rates = confusion_rates(confusion)
    assert rates["True"] == {"True": 0.75, "False": 0.0, "unparseable": 0.25}
    assert rates["False"] == {"True": None, "False": None, "unparseable": None}  # no example labeled False


def test_report_needs_predictions(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path)
    run = tmp_path / "unlabeled"
    run.mkdir()
    (run / "predictions.jsonl").write_text(json.dumps({"uid": "a", "label": None, "prediction": True}) + "\n")
    with pytest.raises(DataError, match="no labeled example"):
        write_report(run)


def test_report_states_the_bad_examples_skipped(tmp_path):
    run = write_run(tmp_path / "run")
    assert "| bad examples |" not in write_report(run, n_resamples=10).read_text()  # not recorded: no row
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics | {"n_skipped": 3, "bad_examples": "skip"}))
    text = write_report(run, n_resamples=10).read_text()
    assert "| bad examples | 3 skipped (bad_examples: skip; listed in run_record.json) |" in text


def test_report_says_how_many_uids_consistency_left_out(tmp_path):
    run = write_run(tmp_path / "run")
    text = write_report(run, n_resamples=10).read_text()
    assert "over 6 groups" in text and "left out" not in text
    with (run / "predictions.jsonl").open("a") as fh:  # one uid of another dataset among the NLVR2-style ones
        fh.write(json.dumps({"uid": "coco-17", "sentence": "x", "label": True, "prediction": True}) + "\n")
    text = write_report(run, n_resamples=10).read_text()
    assert "over 6 groups" in text  # consistency kept, over the same groups
    assert "1 of 13 scored uids are not of the form split-set_id-pair_id-sentence_id and were left out" in text
