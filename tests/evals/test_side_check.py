"""The side check: statements naming one image judged on the swapped pair; a reader of the named image and a reader of
the other image are told apart, and bad input (a non-synthetic run, an unknown uid) is refused by name."""

from __future__ import annotations

import dataclasses
import json

import pytest

from evals.side_check import GROUPS, main, named_side
from utils.errors import DataError
from vlm_datasets.config import DataArguments
from vlm_datasets.synthetic import generate, scenes_of, statement_truths

N = 96


def eval_folder(tmp_path, answer, source: str = "synthetic"):
    """An evaluation folder over the synthetic test split whose predictions are answer(example, truth function)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = DataArguments(dataset_source=source, synthetic_eval_size=N, dataset_eval_split="test")
    (tmp_path / "eval_state.json").write_text(json.dumps({"data": dataclasses.asdict(data)}))
    examples, truths = statement_truths("test", N, 0)
    with (tmp_path / "predictions.jsonl").open("w") as fh:
        for ex in examples:
            row = {"uid": ex.uid, "sentence": ex.sentence, "label": ex.label}
            fh.write(json.dumps(row | {"prediction": answer(ex, truths[ex.sentence])}) + "\n")
    return tmp_path


def test_statement_truths_are_the_generators_labels_and_the_split_is_unchanged():
    examples, truths = statement_truths("test", N, 0)
    assert [e.uid for e in examples] == [e.uid for e in generate("test", N, 0)]
    assert all(truths[e.sentence](scenes_of(e)) == e.label for e in examples)
    assert named_side("There is a red circle in the left image.") == "left"
    assert named_side("The left image has more circles than the right image.") is None
    assert named_side("At least one of the images contains a square.") is None


def test_a_reader_of_the_named_image_and_one_of_the_other_image(tmp_path, capsys):
    right = main(eval_folder(tmp_path / "named", lambda ex, holds: holds(scenes_of(ex))))
    assert {name.split(", ")[1] for name in right} == set(GROUPS)
    for name, cell in right.items():
        assert cell["accuracy"] == 1.0 and cell["n"] > 0
        assert cell["follows_swapped"] == (0.0 if name.endswith(GROUPS[0]) else 1.0)
    assert "side_check.json" in capsys.readouterr().out
    other = main(eval_folder(tmp_path / "other", lambda ex, holds: holds(scenes_of(ex)[::-1])))
    for name, cell in other.items():
        assert cell["accuracy"] == (0.0 if name.endswith(GROUPS[0]) else 1.0)
        assert cell["n"] == right[name]["n"]
    written = json.loads((tmp_path / "other" / "side_check.json").read_text())
    assert written.keys() == other.keys()


def test_bad_input_is_refused_by_name(tmp_path):
    with pytest.raises(DataError, match="eval_state.json"):
        main(tmp_path)
    hub = eval_folder(tmp_path / "hub", lambda ex, holds: True, source="hub")
    with pytest.raises(DataError, match="needs synthetic data"):
        main(hub)
    run = eval_folder(tmp_path / "bad", lambda ex, holds: True)
    with (run / "predictions.jsonl").open("a") as fh:
        fh.write(json.dumps({"uid": "syn_test-999-0-0", "label": True, "prediction": True}) + "\n")
    with pytest.raises(DataError, match="uid syn_test-999-0-0 is not in synthetic split 'test'"):
        main(run)
