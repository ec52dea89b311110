"""The playground: one-shot calls append exactly one JSON line with the knobs, seeds make sampling reproducible,
adapters are applied, the interactive loop walks the UID cache and names unknown commands, answers on an example show
its uid, label and p_true, and a wrong uid or adapter fails before the model loads."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import pytest

from evals.playground import DecodingKnobs, load_playground
from evals.scoring import score_likelihood
from scripts import model_playground
from utils.errors import DataError
from utils.uid_bookmarks import UidCache
from vlm_datasets.example_lookup import data_arguments, find_example, split_index
from vlm_datasets.prompts import get_template


@pytest.fixture
def image_files(synthetic_config, split_rows, tmp_path):
    ex = find_example(data_arguments(synthetic_config), "test", next(iter(split_rows)))
    paths = [tmp_path / "left.png", tmp_path / "right.png"]
    for path, image in zip(paths, ex.images, strict=True):
        image.save(path)
    return paths


@pytest.fixture(scope="module")
def playground(tiny_model_dir, tmp_path_factory):
    return load_playground(model=str(tiny_model_dir), log=tmp_path_factory.mktemp("pg") / "log.jsonl")


def test_one_shot_appends_exactly_one_json_line(tiny_model_dir, image_files, isolated_artifacts, capsys):
    output = model_playground.main(
        prompt="How many <shapes> & colours?",
        image=image_files,
        model=str(tiny_model_dir),
        max_pixels=3136,
        sample=True,
        temperature=0.9,
        top_k=20,
        max_new_tokens=6,
        seed=7,
    )
    assert capsys.readouterr().out == output + "\n"
    lines = (isolated_artifacts / "logs" / "playground.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert {"time", "model", "adapter", "prompt", "images", "knobs", "output"} <= rec.keys()
    assert rec["model"] == str(tiny_model_dir) and rec["adapter"] is None and rec["output"] == output
    assert rec["prompt"] == "How many <shapes> & colours?"
    assert rec["images"] == {"paths": [str(p.resolve()) for p in image_files]}
    assert rec["knobs"] == {
        "do_sample": True,
        "max_new_tokens": 6,
        "temperature": 0.9,
        "top_p": 1.0,
        "top_k": 20,
        "num_beams": 1,
        "repetition_penalty": 1.0,
        "seed": 7,
    }


def test_seed_makes_sampling_reproducible(playground, image_files):
    playground.load_paths(image_files)
    outputs = {}
    for seed in (0, 1, 2, 3, 0):
        playground.knobs = DecodingKnobs(do_sample=True, max_new_tokens=8, temperature=1.5, seed=seed)
        outputs.setdefault(seed, []).append(playground.ask("Describe the images."))
    assert outputs[0][0] == outputs[0][1]  # same seed, same sample
    assert len({o[0] for o in outputs.values()}) > 1  # and sampling does sample
    playground.knobs = DecodingKnobs(max_new_tokens=8, num_beams=2, repetition_penalty=1.3)
    assert playground.ask("Describe.") == playground.ask("Describe.")  # beam search is deterministic


def test_adapter_is_applied(tiny_model_dir, synthetic_config, split_rows, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from training.models import LORA_TARGETS

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=LORA_TARGETS["qwen2_vl"], init_lora_weights=False)  # random: not a no-op
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    log = tmp_path / "log.jsonl"
    uid = next(iter(split_rows))
    common = dict(config=synthetic_config, model=str(tiny_model_dir), uid=uid, max_new_tokens=8, log=log)
    with_adapter = model_playground.main(prompt="{sentence}", adapter=str(tmp_path / "adapter"), **common)
    without = model_playground.main(prompt="{sentence}", **common)
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert first["adapter"] == str(tmp_path / "adapter") and second["adapter"] is None
    assert first["images"] == {"uid": uid, "split": "test", "dataset_source": "synthetic"}
    assert first["prompt"] == split_rows[uid]["sentence"]  # {sentence} filled in from the example
    assert with_adapter != without


def test_interactive_loop_walks_the_uid_cache(playground, synthetic_config, split_rows, tmp_path):
    uids = list(split_rows)
    cache = UidCache(tmp_path / "cache.json")
    cache.add(uids[4])
    cache.add(uids[2])
    playground.uid_cache, playground.data_args, playground.split = cache, data_arguments(synthetic_config), "test"
    playground.log_path, playground.knobs = tmp_path / "log.jsonl", DecodingKnobs(max_new_tokens=4)
    script = (
        ":next\n:ask\n:next\n:set temperature=x\n:set max_new_tokens=3 bogus=1\n{sentence}?\n:next\n:prev\n:q\nafter\n"
    )
    out = io.StringIO()
    model_playground.interact(playground, io.StringIO(script), out)
    shown = out.getvalue()
    assert f"{uids[4]}: {split_rows[uids[4]]['sentence']}" in shown and f"{uids[2]}: " in shown
    assert "no more bookmarks that way" in shown and shown.count("error: ") == 2
    records = [json.loads(line) for line in playground.log_path.read_text().splitlines()]
    assert [r["images"]["uid"] for r in records] == [uids[4], uids[2]]  # :ask, then the free prompt; "after" never ran
    assert (
        records[0]["prompt_template"] == "nlvr2_true_false" and split_rows[uids[4]]["sentence"] in records[0]["prompt"]
    )
    assert records[1]["prompt"] == split_rows[uids[2]]["sentence"] + "?"
    assert records[1]["knobs"] == asdict(DecodingKnobs(max_new_tokens=4))  # the failed :set changed nothing
    assert playground.example.uid == uids[4]  # :prev after the end went back


def test_uid_and_image_files_are_exclusive(tiny_model_dir, image_files):
    with pytest.raises(ValueError, match="--uid and --image"):
        model_playground.main(prompt="x", uid="syn_test-0-0-0", image=image_files, model=str(tiny_model_dir))


def test_synthetic_overrides_reach_the_uid_lookup(tiny_model_dir, synthetic_config, tmp_path):
    # the config holds 24 synthetic examples: uid 25 exists only with --synthetic-eval-size 26
    wider = split_index(data_arguments(synthetic_config, synthetic_eval_size=26, synthetic_seed=5), "test")
    uid = list(wider)[-1]
    common = dict(prompt="{sentence}", config=synthetic_config, model=str(tiny_model_dir), uid=uid, max_new_tokens=2)
    with pytest.raises(DataError, match="not found"):
        model_playground.main(**common, log=tmp_path / "none.jsonl")
    model_playground.main(**common, synthetic_eval_size=26, synthetic_seed=5, log=tmp_path / "log.jsonl")
    (rec,) = (json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines())
    assert rec["images"]["uid"] == uid and rec["prompt"] == wider[uid]["sentence"]  # seed 5's sentence


def test_uid_and_adapter_are_checked_before_the_model_loads(synthetic_config, tmp_path):
    not_a_model = tmp_path / "empty"  # loading it would raise ModelNotAvailableError
    not_a_model.mkdir()
    (tmp_path / "run").mkdir()  # a folder, but no adapter in it
    common = dict(prompt="x", config=synthetic_config, model=str(not_a_model), log=tmp_path / "log.jsonl")
    with pytest.raises(DataError, match="uid 'syn_test-99-0-0' not found"):
        model_playground.main(uid="syn_test-99-0-0", **common)
    with pytest.raises(FileNotFoundError, match=f"adapter {tmp_path / 'nope'}: no such folder"):
        model_playground.main(adapter=str(tmp_path / "nope"), **common)
    with pytest.raises(FileNotFoundError, match=f"adapter {tmp_path / 'run'}: no adapter_config.json"):
        model_playground.main(adapter=str(tmp_path / "run"), **common)


def test_answers_name_the_example_and_unknown_commands_are_named(playground, synthetic_config, split_rows, tmp_path):
    uid = list(split_rows)[1]
    playground.data_args, playground.split = data_arguments(synthetic_config), "test"
    playground.log_path, playground.knobs = tmp_path / "log.jsonl", DecodingKnobs(max_new_tokens=2)
    out = io.StringIO()
    model_playground.interact(playground, io.StringIO(f":uid {uid}\n:nxt\n{{sentence}}?\n:ask\n:help\n"), out)
    shown = out.getvalue()
    template = get_template(playground.data_args.prompt_template)
    (scored,) = score_likelihood(playground.model, playground.processor, [playground.example], template)
    facts = f"{uid}: label {split_rows[uid]['label']}, p_true {scored.p_true:.3f}"  # as an evaluation scores it
    assert shown.count(facts) == 2  # after the free prompt's answer and after :ask's
    commands = " ".join(model_playground.COMMANDS)
    assert f"error: unknown command :nxt (did you mean :next?); commands: {commands}\n" in shown
    assert model_playground.HELP in shown
    assert len(playground.log_path.read_text().splitlines()) == 2  # the unknown command ran nothing
