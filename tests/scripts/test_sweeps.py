"""scripts/sweeps.py: grid and variant expansion, cell names, seeds, where overrides go, and the refusals that come
before anything runs (unknown fields, empty grids, fields the sweep sets itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from trl import TrlParser

from scripts.sweeps import SweepArguments, config_texts, expand, plan, validate, value_label
from utils.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def sweep(tmp_path, **kwargs) -> SweepArguments:
    return SweepArguments(output_dir=str(tmp_path / "sweep"), **kwargs)


def test_grid_is_the_cartesian_product_in_axis_order(tmp_path):
    cells = expand(sweep(tmp_path, grid={"lora_r": [4, 16], "learning_rate": [1.0e-3, 2.0e-3]}))
    assert [c.name for c in cells] == [
        "lora_r-4__learning_rate-0.001",
        "lora_r-4__learning_rate-0.002",
        "lora_r-16__learning_rate-0.001",
        "lora_r-16__learning_rate-0.002",
    ]
    assert cells[1].axes == cells[1].train == {"lora_r": 4, "learning_rate": 2.0e-3}
    assert all(c.variant is None and c.eval == {} for c in cells)


def test_variants_cross_the_grid_and_every_cell_runs_once_per_seed(tmp_path):
    args = sweep(
        tmp_path,
        variants={"lora": {}, "qlora": {"load_in_4bit": True, "eval.load_in_4bit": True, "max_steps": 7}},
        grid={"lora_r": [8]},
        overrides={"max_steps": 3, "eval.batch_size": 4},
        extra_overrides={"logging_steps": 1},
        seeds=[0, 1],
    )
    lora, qlora = expand(args)
    assert (lora.name, qlora.name) == ("lora__lora_r-8", "qlora__lora_r-8")
    assert lora.train == {"max_steps": 3, "logging_steps": 1, "lora_r": 8} and lora.eval == {"batch_size": 4}
    assert qlora.train == {"max_steps": 7, "logging_steps": 1, "load_in_4bit": True, "lora_r": 8}  # variant wins
    assert qlora.eval == {"batch_size": 4, "load_in_4bit": True}
    runs = plan(args, [lora, qlora])  # seed-major: a sweep cut short holds whole seeds
    assert [(r.cell.name, r.seed) for r in runs] == [
        ("lora__lora_r-8", 0),
        ("qlora__lora_r-8", 0),
        ("lora__lora_r-8", 1),
        ("qlora__lora_r-8", 1),
    ]
    assert runs[3].dir == tmp_path / "sweep" / "qlora__lora_r-8" / "seed-1"


def test_variants_alone_and_value_labels(tmp_path):
    cells = expand(sweep(tmp_path, variants={"single": None, "multi": {"train_instructions": "multi"}}))
    assert [(c.name, c.axes, c.train) for c in cells] == [
        ("single", {}, {}),
        ("multi", {}, {"train_instructions": "multi"}),
    ]
    assert [value_label(v) for v in (True, None, 2.0e-3, 8, "a/b c", [1, 2])] == [
        "true",
        "none",
        "0.002",
        "8",
        "a_b_c",
        "1_2",
    ]


def test_run_configs_route_overrides_and_set_the_run_fields(tmp_path):
    args = sweep(
        tmp_path,
        grid={"lora_r": [8]},
        overrides={"eval.max_eval_examples": 16, "model_name_or_path": "other/base"},
        seeds=[3],
    )
    (run,) = plan(args, expand(args))
    train_text, eval_text = config_texts(args, run)
    train, evaluation = yaml.safe_load(train_text), yaml.safe_load(eval_text)
    base_train = yaml.safe_load((REPO / args.train_config).read_text())
    base_eval = yaml.safe_load((REPO / args.eval_config).read_text())
    assert train == base_train | {
        "lora_r": 8,
        "model_name_or_path": "other/base",
        "seed": 3,
        "output_dir": str(run.dir / "train"),
        "logging_dir": str(run.dir / "logs"),
        "run_name": "sweep-lora_r-8-seed-3",
    }
    assert evaluation == base_eval | {
        "max_eval_examples": 16,
        "model_name_or_path": "other/base",  # an adapter is evaluated on the base it was trained on
        "output_dir": str(run.dir),
        "adapter_path": str(run.dir / "train"),
    }
    assert train_text.startswith(f"# training/sft.py --config {run.dir / 'train.yaml'}\n")
    assert eval_text.startswith(f"# evals/finetuned.py --config {run.dir / 'eval.yaml'}\n")


@pytest.mark.parametrize(
    ("grid", "kind", "name"),
    [({"lora_rank": [8]}, "train", "lora_rank"), ({"eval.max_eval_exampels": [8]}, "eval", "max_eval_exampels")],
)
def test_unknown_fields_are_refused_like_the_entry_points_refuse_them(tmp_path, grid, kind, name):
    args = sweep(tmp_path, grid=grid)
    with pytest.raises(UsageError, match=rf"cell .*: {kind} config: Unknown arguments from config file: .*{name}"):
        validate(args, plan(args, expand(args)))
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "empty sweep"),
        ({"grid": {}, "variants": {}}, "empty sweep"),
        ({"grid": {"lora_r": []}}, "has no values"),
        ({"grid": {"lora_r": 8}}, "a list of values"),
        ({"grid": {"lora_r": [8, 8]}}, "share a name"),
        ({"variants": {"a": {"lora_r": 4}}, "grid": {"lora_r": [8]}}, "which the grid also sweeps"),
        ({"variants": {"bad name": {}}}, "variant name"),
        ({"grid": {"output_dir": ["x"]}}, "set by the sweep"),
        ({"grid": {"eval.adapter_path": ["x"]}}, "set by the sweep"),
        ({"grid": {"seed": [1, 2]}}, "use seeds instead"),
    ],
)
def test_bad_sweeps_are_refused(tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message):
        expand(sweep(tmp_path, **kwargs))


def test_the_sweep_parser_reads_yaml_and_json_overrides(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text("grid:\n  lora_r: [2, 4]\nseeds: [0, 1]\nvariants:\n  a: {}\n")
    (args,) = TrlParser((SweepArguments,)).parse_args_and_config(
        ["--config", str(config), "--seeds", "5", "--extra_overrides", '{"max_steps": 2}']
    )
    assert args.grid == {"lora_r": [2, 4]} and args.variants == {"a": {}} and args.seeds == [5]
    assert args.extra_overrides == {"max_steps": 2}
    with pytest.raises(UsageError, match="seeds"):
        SweepArguments(seeds=[])
    with pytest.raises(UsageError, match="not valid JSON"):
        SweepArguments(grid="{lora_r: [2]}")
