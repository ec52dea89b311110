"""The inspector: image-token counts under the embedded processor, stored formats and meta, runs, export, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from scripts import inspect_sample
from utils.errors import DataError


def test_synthetic_uid_tokens_meta_and_runs(synthetic_config, split_rows, runs, tiny_model_dir, capsys):
    uid = list(split_rows)[1]  # run A wrong (odd position), run B right
    d = inspect_sample.main(uid, config=synthetic_config, model=str(tiny_model_dir), max_pixels=3136, run=list(runs))
    text = capsys.readouterr().out
    assert [im["tokens"] for im in d["images"]] == [4, 4]  # 56x56 -> 4x4 patches of 14 -> 2x2 merge -> 4 tokens
    assert [im["grid_thw"] for im in d["images"]] == [[1, 4, 4], [1, 4, 4]] and d["image_tokens_total"] == 8
    assert d["processor"]["max_pixels"] == 3136 and d["processor"]["merge_size"] == 2
    assert [im["side"] for im in d["images"]] == ["left", "right"]
    assert (d["images"][0]["mode"], d["images"][0]["size"], d["images"][0]["file"]) == ("RGB", [56, 56], None)
    assert d["sentence"] == split_rows[uid]["sentence"] and d["label"] == split_rows[uid]["label"]
    assert d["categories"] == [split_rows[uid]["meta"]["category"]] and "scenes" in d["meta"]
    assert [(p["run"], p["right"], p["p_true"]) for p in d["predictions"]] == [
        ("run_a", False, pytest.approx(1 / 23)),
        ("run_b", True, pytest.approx(1 / 23)),
    ]
    assert d["sentence"] in text and "-> 4 image tokens (grid 1x4x4)" in text and "8 image tokens in all" in text
    assert "run run_a: " in text and "(wrong)" in text and "(right)" in text


def test_json_output_and_the_config_pixel_budget(synthetic_config, split_rows, tiny_model_dir, capsys):
    uid = list(split_rows)[0]
    inspect_sample.main(uid, config=synthetic_config, model=str(tiny_model_dir), as_json=True)
    d = json.loads(capsys.readouterr().out)
    assert d["uid"] == uid and d["split"] == "test" and d["processor"]["max_pixels"] == 3136  # from the config
    assert d["image_tokens_total"] == 8


def test_no_processor_is_reported_not_fatal(synthetic_config, split_rows, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no embedded model here; the config's model does not exist either
    d = inspect_sample.describe(list(split_rows)[0], config=synthetic_config)
    assert "error" in d["processor"] and d["image_tokens_total"] is None and "tokens" not in d["images"][0]
    assert "processor  " in inspect_sample.as_text(d)


def test_stored_images_nlvr2_meta_annotations_and_export(odd_manifest, tmp_path, tiny_model_dir):
    odd = [json.loads(line) for line in (odd_manifest / "dev.jsonl").read_text().splitlines()][1]
    annotations = tmp_path / "annotated.txt"
    annotations.write_text(f"{odd['sentence']}\n* negation\n* coordination\n\nOther.\n* comparison\n")
    overrides = {"dataset_source": "jsonl", "dataset_path": str(odd_manifest)}
    export = tmp_path / "export"
    d = inspect_sample.describe(
        odd["uid"], split="dev", overrides=overrides, model=str(tiny_model_dir), annotations=annotations, export=export
    )
    left, right = d["images"]
    assert (left["file"]["format"], left["file"]["mode"], left["file"]["size"]) == ("JPEG", "RGB", [120, 80])
    assert (right["file"]["format"], right["file"]["mode"]) == ("PNG", "RGBA") and right["mode"] == "RGB"
    assert right["file"]["path"] == str(odd_manifest / "right.png")
    assert left["url"] == "https://example.org/l.jpg" and right["url"] is None
    assert d["meta"]["synset"] == "beer bottle" and d["meta"]["validation"] == {"160": "True"}
    assert d["categories"] == ["negation", "coordination"]
    names = sorted(p.name for p in export.iterdir())
    assert len(names) == 2 and all(re.fullmatch(r"[A-Za-z0-9_-]+-img[01]\.(jpg|png)", n) for n in names)
    assert (export / names[0]).read_bytes() == (odd_manifest / "left.jpg").read_bytes()  # the stored file, as is
    text = inspect_sample.as_text(d)
    assert "meta.synset beer bottle" in text and "JPEG RGB 120x80" in text and "https://example.org/l.jpg" in text
    assert "image tokens" in text


def test_export_without_original_files_writes_the_loaded_images(synthetic_config, split_rows, tmp_path):
    uid = list(split_rows)[0]
    d = inspect_sample.describe(uid, config=synthetic_config, export=tmp_path / "x")
    assert [Path(p).name for p in d["exported"]] == [f"{uid}-img0.png", f"{uid}-img1.png"]
    with Image.open(d["exported"][1]) as im:
        assert im.size == (56, 56)


def test_unknown_uid_names_the_uid_and_the_split(synthetic_config):
    with pytest.raises(DataError, match=r"split 'test' of dataset_source synthetic: uid 'dev-9-9-9' not found"):
        inspect_sample.describe("dev-9-9-9", config=synthetic_config)
    with pytest.raises(DataError, match="split 'dev'.*pick the split with --split"):
        inspect_sample.describe("syn_test-0-0-0", config=synthetic_config, split="dev")
