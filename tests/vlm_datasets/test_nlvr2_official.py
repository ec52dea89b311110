"""The official NLVR2 layout: the real dev.json annotations, image lookup by convention, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from utils.errors import DataError
from vlm_datasets.config import DataArguments
from vlm_datasets.labels import parse_identifier
from vlm_datasets.loading import iter_examples, load_split
from vlm_datasets.nlvr2_official import index_images, nlvr2_split

# Real NLVR2 dev lines kept in the repository (tests/data/nlvr2/README.md: source and licence).
NLVR2_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "nlvr2"
PICKED = ("dev-850-0-0", "dev-850-0-1", "dev-850-2-0")  # the first two share an image pair


@pytest.fixture(scope="module")
def real_dev_json() -> Path:
    return NLVR2_SAMPLE / "dev.json"


def _color(stem: str) -> tuple[int, int, int]:
    h = sum(map(ord, stem))
    return (h * 37 % 256, h * 91 % 256, h * 53 % 256)


def test_real_dev_lines_with_generated_images_through_nlvr2_split(tmp_path, real_dev_json):
    lines = [line for line in real_dev_json.read_text().splitlines() if json.loads(line)["identifier"] in PICKED]
    (tmp_path / "dev.json").write_text("\n".join(lines) + "\n")
    records = {r["identifier"]: r for r in map(json.loads, lines)}
    image_dir = tmp_path / "photos"  # not the default <dataset_path>/images: dataset_image_dir
    for uid in PICKED:
        for i in range(2):
            stem = parse_identifier(uid).image_stem(i)
            (image_dir / "dev").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40 + i, 30), _color(stem)).save(image_dir / "dev" / f"{stem}.png")
    args = DataArguments(dataset_source="nlvr2", dataset_path=str(tmp_path), dataset_image_dir=str(image_dir))
    rows = list(iter_examples(nlvr2_split(args, "dev")))
    assert sorted(r.uid for r in rows) == sorted(PICKED)
    for ex in rows:
        rec = records[ex.uid]
        assert ex.sentence == rec["sentence"]
        assert ex.label == (rec["label"] == "True")
        for key in ("left_url", "right_url", "synset", "query", "writer", "validation", "extra_validations"):
            assert ex.meta[key] == rec[key], key
        stems = [parse_identifier(ex.uid).image_stem(i) for i in range(2)]
        assert ex.meta["image_files"] == [f"dev/{s}.png" for s in stems]
        assert ex.meta["image_sizes"] == [[40, 30], [41, 30]]
        assert [im.getpixel((0, 0)) for im in ex.images] == [_color(s) for s in stems]
    by_uid = {r.uid: r for r in rows}
    assert by_uid["dev-850-0-0"].meta["image_files"] == by_uid["dev-850-0-1"].meta["image_files"]


def test_image_index_is_recursive_and_refuses_ambiguous_names(tmp_path):
    for rel in (
        "train/0/train-1-0-img0.png",
        "train/12/train-1-0-img1.PNG",
        "dev/dev-2-0-img0.jpg",
        "notes.txt",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert sorted(index_images(tmp_path)) == ["dev-2-0-img0", "train-1-0-img0", "train-1-0-img1"]
    (tmp_path / "dev" / "dev-2-0-img0.png").write_bytes(b"")
    with pytest.raises(DataError, match="two images for dev-2-0-img0"):
        index_images(tmp_path)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'none'}: image folder not found")):
        index_images(tmp_path / "none")


def test_changed_files_are_read_again(official_layout):
    """from_generator caches by fingerprint: ours follows the files' contents."""
    root, _ = official_layout
    args = DataArguments(dataset_source="nlvr2", dataset_path=str(root))
    first = load_split(args, "dev")
    lines = (root / "dev.json").read_text().splitlines()
    record = json.loads(lines[0])
    record["sentence"] = "An edited sentence."
    (root / "dev.json").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    assert load_split(args, "dev")[0]["sentence"] == "An edited sentence."
    stem = parse_identifier(record["identifier"]).image_stem(0)
    (path,) = (root / "images").rglob(f"{stem}.png")
    Image.new("RGB", (5, 5), (1, 2, 3)).save(path)
    assert load_split(args, "dev")[0]["images"][0].size == (5, 5)
    assert first[0]["sentence"] != "An edited sentence."


def _edit_line(root: Path, index: int, change) -> None:
    """Replace line `index` of dev.json by a string, or edit its record in place with a function."""
    lines = (root / "dev.json").read_text().splitlines()
    if callable(change):
        record = json.loads(lines[index])
        change(record)
        lines[index] = json.dumps(record)
    else:
        lines[index] = change
    (root / "dev.json").write_text("\n".join(lines) + "\n")


def test_missing_image_names_the_uid_and_the_expected_file(official_layout, synthetic_examples):
    root, _ = official_layout
    uid = synthetic_examples[2].uid
    stem = parse_identifier(uid).image_stem(1)
    next((root / "images").rglob(f"{stem}.png")).unlink()
    with pytest.raises(DataError, match=rf"dev\.json line 3, uid {uid}: missing image {stem}\.png"):
        nlvr2_split(DataArguments(dataset_source="nlvr2", dataset_path=str(root)), "dev")


def test_corrupt_image_names_the_uid_and_the_file(official_layout, synthetic_examples):
    root, _ = official_layout
    uid = synthetic_examples[3].uid
    path = next((root / "images").rglob(f"{parse_identifier(uid).image_stem(0)}.png"))
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match=rf"uid {uid}, image {re.escape(str(path))}: unreadable or corrupt"):
        nlvr2_split(DataArguments(dataset_source="nlvr2", dataset_path=str(root)), "dev")


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda r: r.pop("sentence"), r"dev\.json line 2, uid syn_dev-0-1-0: missing field 'sentence'"),
        (lambda r: r.pop("identifier"), r"dev\.json line 2: missing field 'identifier'"),
        (lambda r: r.update(label="Maybe"), r"dev\.json line 2, uid syn_dev-0-1-0: unparseable label 'Maybe'"),
        (lambda r: r.update(sentence="  "), r"dev\.json line 2, uid syn_dev-0-1-0: field 'sentence' is blank"),
        (lambda r: r.update(identifier="dev850"), r"uid 'dev850': not an NLVR2 identifier"),
        ('{"identifier": "dev-1-0-0", "sentence": "cut off', r"dev\.json line 2: malformed JSON"),
    ],
    ids=["no-sentence", "no-identifier", "label", "blank-sentence", "identifier", "json"],
)
def test_bad_annotations_name_the_file_line_and_uid(official_layout, change, pattern):
    root, _ = official_layout
    _edit_line(root, 1, change)
    with pytest.raises(DataError, match=pattern):
        nlvr2_split(DataArguments(dataset_source="nlvr2", dataset_path=str(root)), "dev")


def test_missing_split_file_is_named(official_layout):
    root, _ = official_layout
    with pytest.raises(DataError, match=re.escape(f"{root / 'test1.json'}: annotation file for split 'test1'")):
        nlvr2_split(DataArguments(dataset_source="nlvr2", dataset_path=str(root)), "test1")
