"""Caption / instruction sources: synthetic scenes, the COCO-captions layout, LLaVA chat JSON, hub streaming."""

from __future__ import annotations

import json

import datasets
import pytest
from PIL import Image

from utils.errors import DataError
from vlm_datasets.captions import (
    CAPTION_PROMPT,
    CaptionDataArguments,
    CaptionSourceUnreachableError,
    caption_skip_report,
    load_caption_split,
    synthetic_rows,
    to_chat,
)
from vlm_datasets.synthetic import NUMBERS, Obj, describe


def _image(path, color):
    Image.new("RGB", (32, 24), color).save(path)


def test_synthetic_rows_are_deterministic_and_answers_follow_the_scene():
    rows = list(synthetic_rows(60, seed=3, split="train", task="mixed"))
    again = list(synthetic_rows(60, seed=3, split="train", task="mixed"))
    assert [r["answer"] for r in rows] == [r["answer"] for r in again]
    assert [r["answer"] for r in rows] != [r["answer"] for r in synthetic_rows(60, seed=3, split="eval", task="mixed")]
    assert {r["task"] for r in rows} == {"caption", "qa"}
    for r in rows:
        scene = tuple(Obj(**o) for o in json.loads(r["meta"])["scene"])
        assert r["images"][0].size == (56, 56)
        if r["task"] == "caption":
            assert r["question"] == CAPTION_PROMPT and r["answer"] == describe(scene, 2)
        elif r["question"].startswith("How many") and r["question"].endswith("objects are there?"):
            color = r["question"].split()[2]
            n = len(scene) if color == "objects" else sum(o.color == color for o in scene)
            assert r["answer"] == NUMBERS[n]
        elif r["question"].startswith("Is there a"):
            color, shape = r["question"][len("Is there a ") : -1].split()
            assert r["answer"] == ("yes" if any((o.color, o.shape) == (color, shape) for o in scene) else "no")


def test_coco_layout(tmp_path):
    (tmp_path / "img").mkdir()
    _image(tmp_path / "img" / "a.jpg", "red")
    _image(tmp_path / "img" / "b.jpg", "blue")
    ann = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A red square. "},
            {"id": 11, "image_id": 1, "caption": "Something red."},
            {"id": 12, "image_id": 2, "caption": "A blue square."},
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    captions = str(tmp_path / "captions.json")
    args = CaptionDataArguments(
        dataset_source="coco", data_file=captions, image_folder=str(tmp_path / "img"), eval_data_file=captions
    )
    train = load_caption_split(args, train=True)
    assert train["uid"] == ["coco-1-0", "coco-1-1", "coco-2-0"]  # one row per caption
    assert train[0]["answer"] == "A red square." and train[0]["references"] == ["A red square.", "Something red."]
    assert train[0]["images"][0].size == (32, 24) and train[0]["task"] == "caption"
    evaluation = load_caption_split(args, train=False)
    assert evaluation["uid"] == ["coco-1", "coco-2"]  # one row per image, every caption a reference
    assert evaluation[0]["references"] == ["A red square.", "Something red."]
    (tmp_path / "img" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"uid coco-2-0, image .*b\.jpg: image file not found"):
        load_caption_split(args, train=True)
    args.bad_examples = "skip"  # the image's rows are dropped and counted, each named
    assert load_caption_split(args, train=True)["uid"] == ["coco-1-0", "coco-1-1"]
    report = caption_skip_report(args, train=True)
    assert report["count"] == 1 and report["examples"][0]["uid"] == "coco-2-0"


def test_llava_chat_json(tmp_path, caplog):
    _image(tmp_path / "x.png", "green")
    _image(tmp_path / "y.png", "green")
    entries = [
        {"id": "p1", "image": "y.png", "conversations": [
            {"from": "human", "value": "Give a brief description of the image.\n<image>"},
            {"from": "gpt", "value": "a green square"}]},
        {"id": "i1", "image": "x.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Green."},
            {"from": "human", "value": "Is it round?"}, {"from": "gpt", "value": "No."}]},
        {"id": "t1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    ]  # fmt: skip
    (tmp_path / "chat.json").write_text(json.dumps(entries))
    args = CaptionDataArguments(dataset_source="llava_json", data_file=str(tmp_path / "chat.json"),
                                image_folder=str(tmp_path), max_eval_examples=1)  # fmt: skip
    held_out = load_caption_split(args, train=False)  # no eval_data_file: the first image is held out
    assert held_out["uid"] == ["llava-p1-0"]
    assert (
        held_out[0]["question"] == "Give a brief description of the image."
        and held_out[0]["answer"] == "a green square"
    )
    rows = load_caption_split(args)
    assert rows["uid"] == ["llava-i1-0", "llava-i1-1"]  # one row per assistant turn; text-only skipped, counted
    assert "text-only" in caplog.text
    assert rows[1]["history"] == [{"role": "user", "content": "What colour is it?"},
                                  {"role": "assistant", "content": "Green."}]  # fmt: skip
    chat = to_chat(rows[1])  # the image goes first in the first user turn, <image> never appears as text
    assert chat["prompt"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]
    assert chat["prompt"][2]["content"] == [{"type": "text", "text": "Is it round?"}]
    assert chat["completion"][0]["content"][0]["text"] == "No."
    entries[1]["conversations"][1]["from"] = "human"
    (tmp_path / "chat.json").write_text(json.dumps(entries))
    with pytest.raises(DataError, match="id llava-i1.*turn 1"):
        load_caption_split(args)


def test_hub_caption_columns_streamed_from_a_local_folder(tmp_path):
    # The hub path on a local dataset folder (datasets.load_dataset infers parquet), as a hub mirror would look.
    folder = tmp_path / "mirror"
    folder.mkdir()
    features = datasets.Features({"image": datasets.Image(), "answer": datasets.List(datasets.Value("string"))})
    images = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    ds = datasets.Dataset.from_dict({"image": images, "answer": [["red.", "a red one"], ["blue."]]}, features=features)
    ds.to_parquet(str(folder / "validation.parquet"))
    args = CaptionDataArguments(dataset_source="hub", dataset_name=str(folder), dataset_eval_split="validation")
    rows = list(load_caption_split(args, train=False))
    assert [r["answer"] for r in rows] == ["red.", "blue."]  # evaluation: one row per image
    assert rows[0]["references"] == ["red.", "a red one"] and rows[0]["question"] == CAPTION_PROMPT
    # Train split = eval split: the first max_eval_examples source rows are held out of training.
    args.dataset_train_split, args.max_eval_examples = "validation", 1
    assert [r["answer"] for r in load_caption_split(args, train=False)] == ["red."]
    train = list(load_caption_split(args, train=True))
    assert [r["answer"] for r in train] == ["blue."] and train[0]["uid"].endswith(":validation:1-0")


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "downloaded"])
def test_hub_rows_with_a_bad_image_fail_or_are_skipped_and_counted(tmp_path, streaming):
    folder = tmp_path / "mirror"
    folder.mkdir()
    good = {"bytes": _png_bytes("red"), "path": None}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    data = {"image": [good, {"bytes": b"not an image", "path": None}, good], "caption": ["a", "b", "c"]}
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(folder / "validation.parquet"))
    args = CaptionDataArguments(
        dataset_source="hub", dataset_name=str(folder), dataset_eval_split="validation", dataset_streaming=streaming
    )
    with pytest.raises(DataError, match=r"uid .*:validation:1-0, image 0: unreadable or corrupt image"):
        list(load_caption_split(args, train=False))
    args.bad_examples = "skip"
    rows = list(load_caption_split(args, train=False))
    assert [r["answer"] for r in rows] == ["a", "c"] and rows[0]["images"][0].mode == "RGB"
    report = caption_skip_report(args, train=False)
    assert report["count"] == 1 and report["examples"][0]["reason"].startswith("unreadable or corrupt image")


def _png_bytes(color) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buf, format="PNG")
    return buf.getvalue()


def test_hub_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = CaptionDataArguments(dataset_source="hub", dataset_name="lmms-lab/COCO-Caption-not-cached-here")
    with pytest.raises(CaptionSourceUnreachableError, match="dataset_source synthetic"):
        load_caption_split(args, train=False)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="data_file and image_folder"):
        CaptionDataArguments(dataset_source="coco")
    with pytest.raises(ValueError, match="dataset_name"):
        CaptionDataArguments(dataset_source="hub")
    with pytest.raises(ValueError, match="synthetic_task"):
        CaptionDataArguments(synthetic_task="poems")
