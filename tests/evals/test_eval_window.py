"""Evaluation reads the split eval_window examples at a time: the same predictions and metrics whatever the window,
at most one window of decoded images alive, resume between windows, and streams (no length, uids known late)."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import datasets
import pytest

from evals import evaluate, zero_shot
from evals.evaluate import EvalArguments, make_parser
from utils.errors import DataError

REPO = Path(__file__).resolve().parents[2]
CONFIG = "evals/configs/embedded_zero_shot.yaml"
TIMING = {"wall_seconds", "examples_per_second"}


def run(model_dir, out: Path, *overrides: str) -> dict:
    argv = ["--config", str(REPO / CONFIG), "--model_name_or_path", str(model_dir), "--output_dir", str(out)]
    argv += ["--report", "false", "--synthetic_eval_size", "24", *overrides]
    return zero_shot.main(*make_parser().parse_args_and_config(argv))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def assert_same_predictions(got: list[dict], expected: list[dict], exact: bool) -> None:
    """Same uids in the same order and the same answers; p_true exactly when every batch holds one example, else up to
    padding noise (batches are composed differently)."""
    if exact:
        assert got == expected
        return
    assert [r["uid"] for r in got] == [r["uid"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["prediction"] == b["prediction"] and a["p_true"] == pytest.approx(b["p_true"], abs=1e-4)


@pytest.mark.parametrize("batch_size", ["1", "4"])
def test_a_small_window_gives_the_predictions_and_metrics_of_one_window(
    tiny_model_dir, tmp_path, isolated_artifacts, batch_size
):
    probe = ["--image_order_probe", "true", "--batch_size", batch_size]
    small = run(tiny_model_dir, tmp_path / "small", "--eval_window", "5", *probe)
    whole = run(tiny_model_dir, tmp_path / "whole", "--eval_window", "100", *probe)
    assert_same_predictions(
        lines(tmp_path / "small/predictions.jsonl"), lines(tmp_path / "whole/predictions.jsonl"), batch_size == "1"
    )
    if batch_size == "1":
        assert without_timing(small) == without_timing(whole)
    else:  # metrics are functions of the predictions
        assert small["accuracy"] == whole["accuracy"] and small["consistency"] == whole["consistency"]
        assert small["image_order_probe"] == whole["image_order_probe"]
    probed = [
        sorted(lines(tmp_path / d / "image_order_probe.jsonl"), key=lambda r: r["uid"]) for d in ("small", "whole")
    ]
    assert [r["uid"] for r in probed[0]] == [r["uid"] for r in probed[1]] and probed[0]
    record = json.loads((tmp_path / "small/run_record.json").read_text())
    assert record["config"]["EvalArguments"]["eval_window"] == 5


def alive_counter(monkeypatch) -> list[tuple[int, int]]:
    """Wrap the examples evaluation reads; as each new one arrives, (examples, images) still alive counting it: weak
    references, so any list, batch or swapped probe copy still holding an earlier one keeps it counted."""
    alive = []
    original = evaluate.iter_examples

    def counting(ds):
        examples, images = [], []
        for ex in original(ds):
            examples.append(weakref.ref(ex))
            images += [weakref.ref(im) for im in ex.images]
            alive.append((sum(r() is not None for r in examples), sum(r() is not None for r in images)))
            yield ex

    monkeypatch.setattr(evaluate, "iter_examples", counting)
    return alive


@pytest.mark.parametrize(("window", "most_alive"), [(5, 5), (100, 24)])
def test_at_most_one_window_of_examples_is_alive(
    tiny_model_dir, tmp_path, isolated_artifacts, monkeypatch, window, most_alive
):
    """A window of 5 keeps at most 5 examples (and their two images each) alive, the image-order probe included; a
    window larger than the split keeps all 24, as evaluation did before windows."""
    alive = alive_counter(monkeypatch)
    run(tiny_model_dir, tmp_path / "eval", "--eval_window", str(window), "--batch_size", "2",
        "--image_order_probe", "true")  # fmt: skip
    assert len(alive) == 24
    assert max(n for n, _ in alive) == most_alive and max(n for _, n in alive) == 2 * most_alive


class Killed(Exception):
    """Stands for a SIGKILL partway through the split."""


def test_a_run_killed_in_its_second_window_resumes_with_only_what_is_missing(
    tiny_model_dir, tmp_path, isolated_artifacts, monkeypatch
):
    args = ["--eval_window", "5", "--batch_size", "2"]
    calls = []
    score = evaluate._score

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 5:  # window 1: batches of 2, 2, 1; window 2: 2, then killed
            raise Killed
        return score(*a, **kw)

    monkeypatch.setattr(evaluate, "_score", failing)
    with pytest.raises(Killed):
        run(tiny_model_dir, tmp_path / "killed", *args)
    written = lines(tmp_path / "killed/predictions.jsonl")
    assert len(written) == 7
    monkeypatch.setattr(evaluate, "_score", score)

    resumed = run(tiny_model_dir, tmp_path / "killed", *args)
    assert resumed["n"] == 24 and resumed["n_scored_this_run"] == 17
    clean = run(tiny_model_dir, tmp_path / "clean", *args)
    got, expected = lines(tmp_path / "killed/predictions.jsonl"), lines(tmp_path / "clean/predictions.jsonl")
    by_uid = {r["uid"]: r for r in got}
    assert len(by_uid) == len(got) == 24 and all(by_uid[r["uid"]] == r for r in written)  # kept, not rescored
    assert_same_predictions(got, expected, exact=False)
    assert resumed["accuracy"] == clean["accuracy"]


def as_stream(monkeypatch, repeat_first: bool = False) -> None:
    """load_split hands evaluation a stream (datasets.IterableDataset, as the hub source when streaming); with
    repeat_first, the split's first row comes again at its end."""
    load_split = evaluate.load_split

    def stream(*a, **kw):
        ds = load_split(*a, **kw)
        return (datasets.concatenate_datasets([ds, ds.select([0])]) if repeat_first else ds).to_iterable_dataset()

    monkeypatch.setattr(evaluate, "load_split", stream)


def test_a_stream_is_scored_window_by_window_like_a_map_style_split(
    tiny_model_dir, tmp_path, isolated_artifacts, monkeypatch
):
    args = ["--eval_window", "5", "--batch_size", "2"]  # the same windows: the same batches
    run(tiny_model_dir, tmp_path / "map", *args)
    as_stream(monkeypatch)
    alive = alive_counter(monkeypatch)
    metrics = run(tiny_model_dir, tmp_path / "stream", *args)
    assert lines(tmp_path / "stream/predictions.jsonl") == lines(tmp_path / "map/predictions.jsonl")
    assert metrics["n"] == 24 and max(n for n, _ in alive) == 5


def test_a_stream_resumed_from_foreign_predictions_is_refused(
    tiny_model_dir, tmp_path, isolated_artifacts, monkeypatch
):
    """A stream's uids are known only once it is read: predictions naming a uid outside it are refused then."""
    out = tmp_path / "stream"
    run(tiny_model_dir, out)
    pred = out / "predictions.jsonl"
    pred.write_text(pred.read_text() + json.dumps({"uid": "not-in-the-split", "prediction": True}) + "\n")
    as_stream(monkeypatch)
    with pytest.raises(DataError, match="not-in-the-split is not in the split"):
        run(tiny_model_dir, out)


def test_a_uid_twice_in_a_stream_is_refused_in_the_window_that_repeats_it(
    tiny_model_dir, tmp_path, isolated_artifacts, monkeypatch
):
    as_stream(monkeypatch, repeat_first=True)
    with pytest.raises(ValueError, match="appears twice"):
        run(tiny_model_dir, tmp_path / "eval", "--eval_window", "5")
    assert len(lines(tmp_path / "eval/predictions.jsonl")) == 20  # the four windows before it were scored


def test_eval_window_must_hold_an_example():
    with pytest.raises(ValueError, match="eval_window 0"):
        EvalArguments(eval_window=0)
