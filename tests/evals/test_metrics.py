"""NLVR2 metrics on hand-computed fixtures and the real dev annotations: official consistency groups, refusal of
missing/extra uids, unparseable = wrong, CSV round trip, seeded bootstrap CIs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from evals import metrics, run_metrics
from evals.prediction_files import (
    load_annotations,
    load_labels,
    load_run,
    read_prediction_records,
    read_predictions_csv,
    write_predictions_csv,
)
from evals.run_metrics import bootstrap_ci, compute_metrics, consistency_groups
from utils.errors import DataError

NLVR2 = Path(__file__).resolve().parents[1] / "data" / "nlvr2"  # real dev lines (tests/data/nlvr2/README.md)

# uid: (sentence, label, prediction). Consistency groups (identifier without pair_id): dev-1-0 all right,
# dev-2-0 one wrong, dev-3-1 one unparseable -> 1/3. Grouping by sentence text instead: S and T both hold a wrong
# example -> 0/2. Accuracy 5/7.
FIXTURE = {
    "dev-1-0-0": ("S", True, True),
    "dev-1-1-0": ("S", False, False),
    "dev-2-0-0": ("S", True, False),
    "dev-2-1-0": ("S", False, False),
    "dev-3-0-1": ("T", True, True),
    "dev-3-1-1": ("T", False, None),
    "dev-3-2-1": ("T", False, False),
}
SENTENCES = {u: s for u, (s, _, _) in FIXTURE.items()}
LABELS = {u: y for u, (_, y, _) in FIXTURE.items()}
PREDICTIONS = {u: p for u, (_, _, p) in FIXTURE.items()}


def write_records(path: Path, fixture: dict = FIXTURE, categories: dict | None = None) -> Path:
    with path.open("w") as fh:
        for uid, (sentence, label, pred) in fixture.items():
            rec = {"uid": uid, "sentence": sentence, "label": label, "prediction": pred, "p_true": 0.5}
            fh.write(json.dumps(rec | {"category": (categories or {}).get(uid)}) + "\n")
    return path


def test_accuracy_and_official_consistency_differ_from_sentence_grouping():
    m = compute_metrics(PREDICTIONS, LABELS, n_resamples=200)
    assert (m["n"], m["n_correct"], m["n_unparseable"]) == (7, 5, 1)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["n_groups"] == 3
    assert m["consistency"] == pytest.approx(1 / 3)
    by_text = {}
    for sentence, label, pred in FIXTURE.values():
        by_text.setdefault(sentence, []).append(pred == label)
    assert sum(all(v) for v in by_text.values()) / len(by_text) == 0.0  # the wrong definition gives another number
    assert m["scored_on"] == "all" and m["n_missing"] == m["n_extra"] == 0


def test_consistency_groups_drop_only_the_pair_id():
    groups = consistency_groups(["dev-1-0-0", "dev-1-3-0", "dev-1-0-1", "test1-1-0-0"])
    assert groups == {"dev-1-0": ["dev-1-0-0", "dev-1-3-0"], "dev-1-1": ["dev-1-0-1"], "test1-1-0": ["test1-1-0-0"]}
    assert consistency_groups(["dev-1-0-0", "not-an-identifier"]) == {"dev-1-0": ["dev-1-0-0"]}
    m = compute_metrics({"a": True, "b": False}, {"a": True, "b": True}, n_resamples=10)
    assert m["consistency"] is None and m["n_groups"] is None and m["accuracy"] == 0.5
    assert m["n_consistency_excluded"] == 2


def test_one_foreign_uid_is_left_out_of_consistency_and_counted(tmp_path):
    foreign = "coco-caption-17"  # not split-set_id-pair_id-sentence_id
    m = compute_metrics(PREDICTIONS | {foreign: False}, LABELS | {foreign: True}, n_resamples=50)
    assert (m["consistency"], m["n_groups"], m["n_consistency_excluded"]) == (pytest.approx(1 / 3), 3, 1)
    assert m["n"] == 8 and m["accuracy"] == pytest.approx(5 / 8)  # accuracy still counts it
    plain = compute_metrics(PREDICTIONS, LABELS, n_resamples=50)
    assert plain["n_consistency_excluded"] == 0 and m["consistency_ci"] == plain["consistency_ci"]
    write_records(tmp_path / "predictions.jsonl", FIXTURE | {foreign: ("U", True, False)})
    result = CliRunner().invoke(cli_app(), [str(tmp_path / "predictions.jsonl"), "--n-resamples", "20"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_consistency_excluded"] == 1
    assert "1 of 8 scored uids" in result.stderr and "left out" in result.stderr
    write_records(tmp_path / "plain.jsonl")
    assert (
        "left out" not in CliRunner().invoke(cli_app(), [str(tmp_path / "plain.jsonl"), "--n-resamples", "20"]).stderr
    )


def test_unparseable_is_wrong_for_either_label():
    m = compute_metrics({"dev-1-0-0": None, "dev-1-1-0": None}, {"dev-1-0-0": True, "dev-1-1-0": False})
    assert (m["accuracy"], m["n_unparseable"], m["consistency"]) == (0.0, 2, 0.0)


def test_phenomena_by_sentence_text_and_uid_categories():
    annotations = {"S": ["negation", "coordination"], "T": ["negation"], "unused sentence": ["comparison"]}
    categories = {"dev-1-0-0": "count", "dev-2-0-0": ["count", "color"]}
    m = compute_metrics(PREDICTIONS, LABELS, SENTENCES, annotations, categories, n_resamples=200)
    cats = m["categories"]
    assert list(cats) == ["color", "coordination", "count", "negation"]
    assert (cats["negation"]["n"], cats["negation"]["accuracy"]) == (7, pytest.approx(5 / 7))
    assert (cats["coordination"]["n"], cats["coordination"]["accuracy"]) == (4, 0.75)
    assert (cats["count"]["n"], cats["count"]["accuracy"]) == (2, 0.5)
    assert (cats["color"]["n"], cats["color"]["accuracy"]) == (1, 0.0)
    assert cats["negation"]["n_unparseable"] == 1 and cats["coordination"]["n_unparseable"] == 0
    for c in cats.values():
        assert c["accuracy_ci"][0] <= c["accuracy"] <= c["accuracy_ci"][1]


def test_subsets_scored_and_unknown_subset_identifiers_refused():
    m = compute_metrics(PREDICTIONS, LABELS, subsets={"balanced": ["dev-1-0-0", "dev-2-0-0"]}, n_resamples=10)
    assert m["subsets"]["balanced"]["n"] == 2 and m["subsets"]["balanced"]["accuracy"] == 0.5
    with pytest.raises(DataError, match="dev-99-0-0"):
        compute_metrics(PREDICTIONS, LABELS, subsets={"balanced": ["dev-99-0-0"]})


def test_missing_and_extra_uids_refused_unless_intersection():
    preds = {u: p for u, p in PREDICTIONS.items() if u != "dev-1-0-0"} | {"dev-9-0-0": True}
    with pytest.raises(DataError) as err:
        compute_metrics(preds, LABELS, where="run/predictions.jsonl")
    msg = str(err.value)
    assert msg.startswith("run/predictions.jsonl:")
    assert "1 missing" in msg and "dev-1-0-0" in msg and "1 extra" in msg and "dev-9-0-0" in msg
    assert "--intersection" in msg
    m = compute_metrics(preds, LABELS, intersection=True, n_resamples=10)
    assert (m["scored_on"], m["n_missing"], m["n_extra"]) == ("intersection", 1, 1)
    assert (m["missing_uids"], m["extra_uids"]) == (["dev-1-0-0"], ["dev-9-0-0"])
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(4 / 6)


def test_refusal_names_the_first_twenty_and_counts_the_rest():
    labels = {f"dev-{i}-0-0": True for i in range(30)}
    with pytest.raises(DataError) as err:
        compute_metrics({"dev-0-0-0": True}, labels)
    msg = str(err.value)
    assert "29 missing" in msg and "dev-20-0-0" in msg and "dev-21-0-0" not in msg and "(9 more)" in msg


def test_csv_round_trip_is_exact(tmp_path):
    preds = load_run(write_records(tmp_path / "predictions.jsonl")).predictions
    assert preds == PREDICTIONS
    csv_path = write_predictions_csv(preds, tmp_path / "predictions.csv")
    assert csv_path.read_text().splitlines()[:2] == ["dev-1-0-0,True", "dev-1-1-0,False"]
    back = read_predictions_csv(csv_path)
    assert back == preds and list(back) == list(preds)
    assert load_run(csv_path).predictions == preds
    (tmp_path / "header.csv").write_text("identifier,prediction\r\ndev-1-0-0,True\r\n\r\ndev-1-1-0,false\r\n")
    assert read_predictions_csv(tmp_path / "header.csv") == {"dev-1-0-0": True, "dev-1-1-0": False}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dev-1-0-0,True\ndev-1-1-0,maybe\n", r"bad.csv:2: uid dev-1-1-0: prediction 'maybe'"),
        ("dev-1-0-0,True,extra\n", r"bad.csv:1: expected 2 fields"),
        ("dev-1-0-0,True\ndev-1-0-0,False\n", r"bad.csv:2: uid dev-1-0-0 appears twice"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, text, expected):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=expected):
        read_predictions_csv(tmp_path / "bad.csv")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"uid": "dev-1-0-0", "label": true, "prediction": "True"}', "uid dev-1-0-0: prediction 'True'"),
        ('{"uid": "dev-1-0-0", "label": "perhaps", "prediction": true}', "uid dev-1-0-0: unparseable label"),
        ('{"label": true, "prediction": true}', "no uid"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, line, expected):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"uid": "dev-0-0-0", "label": true, "prediction": null}\n\n' + line + "\n")
    with pytest.raises(DataError, match=rf"predictions.jsonl:3: {expected}"):
        read_prediction_records(path)


def test_annotations_format_and_errors(tmp_path):
    path = tmp_path / "ann.txt"
    path.write_text("One dog.\n* hard cardinality\n* negation\n\nTwo cats.\n* soft cardinality\n\n\n")
    assert load_annotations(path) == {"One dog.": ["hard cardinality", "negation"], "Two cats.": ["soft cardinality"]}
    path.write_text("One dog.\nTwo cats.\n* negation\n")
    with pytest.raises(DataError, match=r"ann.txt:2: a second sentence line"):
        load_annotations(path)
    path.write_text("\n* negation\n")
    with pytest.raises(DataError, match=r"ann.txt:2: a `\* phenomenon` line with no sentence"):
        load_annotations(path)


def test_bootstrap_ci_contains_estimate_and_is_deterministic_by_seed():
    values = [(i * 7919) % 101 / 100 for i in range(60)]  # spread-out values: CI ends off any coarse grid
    mean = sum(values) / len(values)
    ci = bootstrap_ci(values, n_resamples=1000, seed=3)
    assert ci[0] < mean < ci[1]
    assert bootstrap_ci(values, n_resamples=1000, seed=3) == ci
    assert bootstrap_ci(values, n_resamples=1000, seed=4) != ci
    narrow = bootstrap_ci(values * 16, n_resamples=1000, seed=3)
    assert ci[0] < narrow[0] < mean < narrow[1] < ci[1]  # more data, narrower interval
    assert bootstrap_ci([1, 1, 1]) == [1.0, 1.0]
    assert bootstrap_ci([]) is None
    m1 = compute_metrics(PREDICTIONS, LABELS, seed=7)
    assert compute_metrics(PREDICTIONS, LABELS, seed=7) == m1
    assert m1["consistency_ci"][0] <= m1["consistency"] <= m1["consistency_ci"][1]


def test_main_uses_the_jsonl_labels_and_categories_and_exports_csv(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_records(run / "predictions.jsonl", categories={"dev-1-0-0": "count", "dev-2-0-0": "count"})
    m = run_metrics.file_metrics(run, csv_out=tmp_path / "out.csv", n_resamples=50)
    assert m["accuracy"] == pytest.approx(5 / 7) and m["consistency"] == pytest.approx(1 / 3)
    assert m["categories"]["count"]["n"] == 2 and m["categories"]["count"]["accuracy"] == 0.5
    assert read_predictions_csv(tmp_path / "out.csv") == PREDICTIONS


def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(metrics.cli)
    return app


def test_cli_prints_json_and_refuses_a_mismatch(tmp_path):
    app = cli_app()
    labels_path = tmp_path / "labels.json"
    labels_path.write_text(
        "".join(json.dumps({"identifier": u, "label": str(y), "sentence": "x"}) + "\n" for u, y in LABELS.items())
    )
    write_predictions_csv(PREDICTIONS, tmp_path / "p.csv")
    result = CliRunner().invoke(app, [str(tmp_path / "p.csv"), str(labels_path), "--n-resamples", "20"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["accuracy"] == pytest.approx(5 / 7) and "consistency" in out and out["categories"] == {}
    write_predictions_csv({"dev-1-0-0": True}, tmp_path / "short.csv")
    result = CliRunner().invoke(app, [str(tmp_path / "short.csv"), str(labels_path)])
    assert result.exit_code == 2 and "6 missing" in result.stderr
    result = CliRunner().invoke(app, [str(tmp_path / "short.csv"), str(labels_path), "--intersection"])
    assert result.exit_code == 0 and json.loads(result.stdout)["scored_on"] == "intersection"


def test_real_dev_all_true_scores_the_share_of_true_labels():
    rows = [json.loads(line) for line in (NLVR2 / "dev.json").read_text().splitlines() if line.strip()]
    share_true = sum(r["label"] == "True" for r in rows) / len(rows)
    labels, sentences = load_labels(NLVR2 / "dev.json")
    assert list(labels) == [r["identifier"] for r in rows]
    annotations = load_annotations(NLVR2 / "annotated_dev_examples.txt")
    balanced = load_labels(NLVR2 / "balanced" / "balanced_dev.json")[0]
    m = compute_metrics(
        dict.fromkeys(labels, True), labels, sentences, annotations, subsets={"balanced": balanced}, n_resamples=100
    )
    assert m["accuracy"] == pytest.approx(share_true)
    assert m["subsets"]["balanced"]["accuracy"] == pytest.approx(sum(balanced.values()) / len(balanced))
    blocks = [b.splitlines() for b in (NLVR2 / "annotated_dev_examples.txt").read_text().split("\n\n") if b.strip()]
    cardinal = {b[0] for b in blocks if "* hard cardinality" in b}
    assert m["categories"]["hard cardinality"]["n"] == sum(r["sentence"] in cardinal for r in rows) > 0
    assert m["n_groups"] == len({(u.rsplit("-", 3)[0], u.rsplit("-", 3)[1], u.rsplit("-", 3)[3]) for u in labels})


def official_scores(predictions: dict[str, bool], label_file: Path) -> tuple[float, float]:
    """(precision, consistency) as NLVR2's eval/metrics.py gives them with `label_file` as its labels: groups are the
    file's identifiers with the third dash-field (pair_id) blanked; a group is consistent when all of it is right."""
    rows = [json.loads(line) for line in label_file.read_text().splitlines() if line.strip()]
    right = {r["identifier"]: str(predictions[r["identifier"]]).lower() == r["label"].lower() for r in rows}
    groups: dict[str, bool] = {}
    for uid, ok in right.items():
        fields = uid.split("-")
        fields[2] = ""
        key = "-".join(fields)
        groups[key] = groups.get(key, True) and ok
    return sum(right.values()) / len(rows), sum(groups.values()) / len(groups)


def test_subset_accuracy_and_consistency_equal_the_official_script_on_real_dev_lines(tmp_path):
    rng = random.Random(0)
    labels = load_labels(NLVR2 / "dev.json")[0]
    predictions = {u: y if rng.random() < 0.8 else not y for u, y in labels.items()}  # a seeded mix of right and wrong
    write_predictions_csv(predictions, tmp_path / "predictions.csv")
    files = {
        "all": NLVR2 / "dev.json",
        "balanced": NLVR2 / "balanced" / "balanced_dev.json",
        "unbalanced": NLVR2 / "unbalanced" / "unbalanced_dev.json",
    }
    args = [str(tmp_path / "predictions.csv"), str(files["all"]), "--n-resamples", "50"]
    args += ["--balanced", str(files["balanced"]), "--unbalanced", str(files["unbalanced"])]
    result = CliRunner().invoke(cli_app(), args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    for name, path in files.items():
        block = out if name == "all" else out["subsets"][name]
        official = tuple(round(x, 4) for x in official_scores(predictions, path))
        assert (round(block["accuracy"], 4), round(block["consistency"], 4)) == official, name
        assert 0 < official[1] < 1
        assert block["consistency_ci"][0] <= block["consistency"] <= block["consistency_ci"][1]
        assert block["n_consistency_excluded"] == 0
    balanced = load_labels(files["balanced"])[0]
    assert out["subsets"]["balanced"]["n"] == len(balanced) == 44
    # The subset's groups hold its own examples: dev's whole groups (some members outside the subset) score otherwise
    whole = [g for g in consistency_groups(labels).values() if any(u in balanced for u in g)]
    assert out["subsets"]["balanced"]["n_groups"] == len(whole)
    whole_consistency = sum(all(predictions[u] == labels[u] for u in g) for g in whole) / len(whole)
    assert whole_consistency != pytest.approx(out["subsets"]["balanced"]["consistency"])
    direct = compute_metrics(predictions, labels, subsets={"balanced": balanced}, n_resamples=50)
    assert direct["subsets"]["balanced"] == out["subsets"]["balanced"]  # the library call, as the CLI
