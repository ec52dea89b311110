"""Every source yields the same canonical examples; hub column mapping; JSONL manifest errors; offline hub."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from PIL import Image

from utils.errors import DataError
from vlm_datasets import hub
from vlm_datasets.cache import build_cache, load_cached_split
from vlm_datasets.config import DataArguments
from vlm_datasets.example import CANONICAL_FEATURES
from vlm_datasets.hub import HubUnreachableError, hub_split, resolve_column_map, to_canonical
from vlm_datasets.loading import iter_examples, load_split
from vlm_datasets.manifest import jsonl_split
from vlm_datasets.synthetic_source import synthetic_split


def _fake_hub(monkeypatch, ds: datasets.Dataset) -> None:
    """hub_split reads `ds` (as a stream when dataset_streaming) instead of calling the hub."""

    def load(args, split):
        return ds.to_iterable_dataset() if args.dataset_streaming else ds

    monkeypatch.setattr(hub, "load_hub_dataset", load)


# ---- (a) one canonical example, whatever the source --------------------------------------------------------


def test_every_source_and_its_cache_yield_the_same_examples(
    tmp_path, monkeypatch, synthetic_examples, official_layout, manifest_layout, hub_like, same_examples
):
    root, lossy = official_layout
    _fake_hub(monkeypatch, hub_like)
    n = len(synthetic_examples)
    args_by_source = {
        "synthetic": DataArguments(dataset_source="synthetic", synthetic_eval_size=n),
        "nlvr2": DataArguments(dataset_source="nlvr2", dataset_path=str(root)),
        "jsonl": DataArguments(dataset_source="jsonl", dataset_path=str(manifest_layout)),
        "hub (streaming)": DataArguments(dataset_source="hub", dataset_streaming=True),
        "hub (downloaded)": DataArguments(dataset_source="hub", dataset_streaming=False),
    }
    from_files = {}
    for name, args in args_by_source.items():
        ds = load_split(args, "dev")
        assert ds.features == CANONICAL_FEATURES, name
        direct = list(iter_examples(ds))
        cache_dir = build_cache(args, ["dev"], tmp_path / "caches" / name.replace(" ", "_"))
        cached = list(iter_examples(load_cached_split(args, "dev", cache_dir)))
        for got in (direct, cached):
            same_examples(got, synthetic_examples, lossy=set() if name == "synthetic" else lossy)
        if name != "synthetic":
            from_files[name] = cached
            assert direct[0].meta == cached[0].meta, name
    # Sources reading the same files decode them identically, JPEG-in-.png included.
    reference = from_files.pop("nlvr2")
    for got in from_files.values():
        same_examples(got, reference)


def test_local_sources_write_their_arrow_files_under_the_artifact_root(
    tmp_path, monkeypatch, official_layout, manifest_layout
):
    hf_cache, root = tmp_path / "hf_datasets_cache", tmp_path / "root"
    hf_cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf_cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hf_cache))
    monkeypatch.setenv("VLM_STUDIES_ROOT", str(root))
    nlvr2 = DataArguments(dataset_source="nlvr2", dataset_path=str(official_layout[0]))
    jsonl = DataArguments(dataset_source="jsonl", dataset_path=str(manifest_layout))
    for args in (nlvr2, jsonl):
        first = load_split(args, "dev")
        assert len(first) == 4
        assert all(Path(f["filename"]).is_relative_to(root / "datasets" / ".arrow") for f in first.cache_files)
        assert load_split(args, "dev").cache_files == first.cache_files  # unchanged files: the Arrow files reused
    assert list(hf_cache.rglob("*")) == []
    assert len(list((root / "datasets" / ".arrow").rglob("*.arrow"))) == 2


def test_synthetic_split_sizes_follow_the_train_split():
    args = DataArguments(synthetic_train_size=5, synthetic_eval_size=3, dataset_train_split="train")
    assert len(synthetic_split(args, "train")) == 5
    assert len(synthetic_split(args, "dev")) == 3
    assert len(synthetic_split(args, "test1")) == 3


def test_load_split_limit_on_map_style_and_streaming(monkeypatch, hub_like):
    args = DataArguments(synthetic_eval_size=4)
    assert len(load_split(args, "dev", limit=2)) == 2
    assert len(load_split(args, "dev", limit=99)) == 4
    _fake_hub(monkeypatch, hub_like)
    stream = load_split(DataArguments(dataset_source="hub", dataset_streaming=True), "dev", limit=3)
    assert isinstance(stream, datasets.IterableDataset)
    assert len(list(stream)) == 3


# ---- (e) hub column mapping, on local in-memory datasets ---------------------------------------------------


def _img(color: tuple[int, int, int], mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", (8, 6), color).convert(mode)


RED, BLUE, GREEN = (200, 0, 0), (0, 0, 200), (0, 160, 0)


def _check_rows(ds, want_labels, want_meta=None):
    rows = list(iter_examples(ds))
    assert [r.uid for r in rows] == ["a-0-0-0", "a-0-1-0"]
    assert [r.label for r in rows] == want_labels
    assert all(len(r.images) == 2 and all(im.mode == "RGB" for im in r.images) for r in rows)
    assert rows[0].images[0].getpixel((0, 0)) == RED and rows[0].images[1].getpixel((0, 0)) == BLUE
    if want_meta is not None:
        assert rows[0].meta == want_meta
    return rows


@pytest.mark.parametrize("streaming", [False, True], ids=["Dataset", "IterableDataset"])
def test_column_map_identifier_left_right_string_labels(streaming):
    ds = datasets.Dataset.from_dict(
        {
            "identifier": ["a-0-0-0", "a-0-1-0"],
            "left_image": [_img(RED), _img(GREEN)],
            "right_image": [_img(BLUE), _img(RED, "L")],  # a grayscale one comes back as RGB
            "sentence": ["s0", "s1"],
            "label": ["True", "False"],
            "writer": ["7", "8"],
            "validation": [{"3": "True"}, {"4": "False"}],
            "thumbnail": [_img(GREEN), _img(GREEN)],  # an unmapped image column: not meta
        },
        features=datasets.Features(
            {
                "identifier": datasets.Value("string"),
                "left_image": datasets.Image(),
                "right_image": datasets.Image(),
                "sentence": datasets.Value("string"),
                "label": datasets.Value("string"),
                "writer": datasets.Value("string"),
                "validation": {"3": datasets.Value("string"), "4": datasets.Value("string")},
                "thumbnail": datasets.Image(),
            }
        ),
    )
    out = to_canonical(ds.to_iterable_dataset() if streaming else ds)
    assert isinstance(out, datasets.IterableDataset) == streaming
    _check_rows(out, [True, False], {"writer": "7", "validation": {"3": "True", "4": None}})


def test_column_map_uid_images_list_int_labels():
    ds = datasets.Dataset.from_dict(
        {
            "uid": ["a-0-0-0", "a-0-1-0"],
            "images": [[_img(RED), _img(BLUE)], [_img(GREEN), _img(RED)]],
            "sentence": ["s0", "s1"],
            "label": [1, 0],
            "scores": [[0.5, 1.0], [0.0, 2.0]],
        },
        features=datasets.Features(
            {
                "uid": datasets.Value("string"),
                "images": datasets.List(datasets.Image()),
                "sentence": datasets.Value("string"),
                "label": datasets.Value("int64"),
                "scores": datasets.List(datasets.Value("float32")),
            }
        ),
    )
    _check_rows(to_canonical(ds), [True, False], {"scores": [0.5, 1.0]})


def test_column_map_id_question_image_0_1_bool_and_class_labels():
    columns = {
        "id": ["a-0-0-0", "a-0-1-0"],
        "image_0": [_img(RED), _img(GREEN)],
        "image_1": [_img(BLUE), _img(RED)],
        "question": ["s0", "s1"],
    }
    base = {"id": datasets.Value("string"), "image_0": datasets.Image(), "image_1": datasets.Image()}
    base["question"] = datasets.Value("string")
    bools = datasets.Dataset.from_dict(
        {**columns, "label": [False, True]},
        features=datasets.Features({**base, "label": datasets.Value("bool")}),
    )
    _check_rows(to_canonical(bools), [False, True], {})
    # A ClassLabel whose names are in the "wrong" order: names decide, not the integers.
    classes = datasets.Dataset.from_dict(
        {**columns, "label": [0, 1]},
        features=datasets.Features({**base, "label": datasets.ClassLabel(names=["True", "False"])}),
    )
    _check_rows(to_canonical(classes), [True, False])
    unlabeled = classes.cast_column("label", datasets.Value("int64")).map(lambda r: {"label": -1})
    unlabeled = unlabeled.cast_column("label", datasets.ClassLabel(names=["True", "False"]))
    _check_rows(to_canonical(unlabeled), [None, None])  # -1: datasets' "no label"


def test_explicit_column_map_overrides_detection_and_allows_unlabeled():
    ds = datasets.Dataset.from_dict(
        {
            "pair": ["a-0-0-0", "a-0-1-0"],
            "l": [_img(RED), _img(GREEN)],
            "r": [_img(BLUE), _img(RED)],
            "statement": ["s0", "s1"],
            "sentence": ["decoy", "decoy"],
            "truth": ["yes", "no"],
        },
        features=datasets.Features(
            {
                "pair": datasets.Value("string"),
                "l": datasets.Image(),
                "r": datasets.Image(),
                "statement": datasets.Value("string"),
                "sentence": datasets.Value("string"),
                "truth": datasets.Value("string"),
            }
        ),
    )
    cmap = {"uid": "pair", "sentence": "statement", "label": "truth", "left_image": "l", "right_image": "r"}
    rows = _check_rows(to_canonical(ds, cmap), [True, False], {"sentence": "decoy"})
    assert rows[1].sentence == "s1"
    # The same map as a JSON string through DataArguments, and "label": null for an unlabeled split.
    args = DataArguments(dataset_source="hub", dataset_column_map=json.dumps({**cmap, "label": None}))
    _check_rows(to_canonical(ds, args.dataset_column_map), [None, None])


def test_column_map_errors_name_the_dataset_and_the_column():
    columns = ["identifier", "left_image", "right_image", "caption", "label"]
    with pytest.raises(DataError, match=r"hub dataset x/y: no 'sentence' column .*'caption'"):
        resolve_column_map(columns, None, "hub dataset x/y")
    with pytest.raises(DataError, match=r"hub dataset x/y: column 'statement' \(dataset_column_map\['sentence'\]\)"):
        resolve_column_map(columns, {"sentence": "statement"}, "hub dataset x/y")
    with pytest.raises(DataError, match="no image columns"):
        resolve_column_map(["identifier", "sentence", "label"], None, "hub dataset x/y")
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_column_map(columns, {"caption": "sentence"})
    with pytest.raises(ValueError, match="go together"):
        resolve_column_map(columns, {"left_image": "left_image"})


def test_bad_hub_rows_name_the_uid():
    feats = datasets.Features(
        {
            "identifier": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
            "sentence": datasets.Value("string"),
            "label": datasets.Value("string"),
        }
    )
    good = {
        "identifier": ["a-0-0-0"],
        "images": [[_img(RED), _img(BLUE)]],
        "sentence": ["s"],
        "label": ["True"],
    }
    with pytest.raises(DataError, match=r"^dataset row 0, uid a-0-0-0: unparseable label 'maybe'"):
        to_canonical(datasets.Dataset.from_dict({**good, "label": ["maybe"]}, features=feats))
    with pytest.raises(DataError, match=r"^dataset row 0, uid a-0-0-0: missing field 'sentence'"):
        to_canonical(datasets.Dataset.from_dict({**good, "sentence": [None]}, features=feats))
    corrupt = {**good, "images": [[{"bytes": b"not an image", "path": None}, _img(BLUE)]]}
    with pytest.raises(DataError, match=r"uid a-0-0-0, image 0: unreadable or corrupt image"):
        to_canonical(datasets.Dataset.from_dict(corrupt, features=feats))


# ---- (f) the hub when offline ------------------------------------------------------------------------------


def test_offline_hub_source_not_in_cache_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = f"nobody-{uuid.uuid4().hex[:8]}/surely-not-cached"
    args = DataArguments(dataset_source="hub", dataset_name=name)
    with pytest.raises(HubUnreachableError) as err:
        load_split(args, "dev")
    message = str(err.value)
    assert f"the hub source '{name}' cannot be reached offline" in message
    for advice in ("dataset_cached", "dataset_source=nlvr2 or jsonl", "dataset_source=synthetic"):
        assert advice in message
    assert isinstance(err.value, RuntimeError)


def test_unreachable_hub_errors_from_datasets_are_wrapped(monkeypatch, tmp_path):
    # Looks cached (a hub cache folder exists), but datasets still cannot reach or find it.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    (tmp_path / "datasets--someone--nlvr2").mkdir()

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/nlvr2' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(HubUnreachableError, match=re.escape("the hub source 'someone/nlvr2' cannot be reached")):
        hub_split(DataArguments(dataset_source="hub", dataset_name="someone/nlvr2"), "dev")


# ---- JSONL manifest ----------------------------------------------------------------------------------------


def _write(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_manifest_single_file_serves_every_split_and_extras_go_to_meta(tmp_path):
    _img(RED).save(tmp_path / "a.png")
    _img(BLUE).save(tmp_path / "b.png")
    _img(GREEN).save(tmp_path / "c.png")
    records = [
        {
            "uid": "u1",
            "images": ["a.png", "b.png", "c.png"],
            "sentence": "three images",
            "label": "no",
            "src": "x",
        },
        {"uid": "u2", "images": [str(tmp_path / "a.png")], "sentence": "one image, unlabeled"},
    ]
    path = _write(tmp_path / "all.jsonl", records)
    args = DataArguments(dataset_source="jsonl", dataset_path=str(path))
    for split in ("train", "dev"):
        rows = list(iter_examples(jsonl_split(args, split)))
        assert [len(r.images) for r in rows] == [3, 1]
        assert [r.label for r in rows] == [False, None]
        assert rows[0].meta == {
            "src": "x",
            "image_files": ["a.png", "b.png", "c.png"],
            "image_sizes": [[8, 6]] * 3,
        }


def test_manifest_column_map(tmp_path):
    _img(RED).save(tmp_path / "a.png")
    _img(BLUE).save(tmp_path / "b.png")
    path = _write(tmp_path / "m.jsonl", [{"id": "u1", "left": "a.png", "right": "b.png", "text": "t", "y": 1}])
    cmap = {"uid": "id", "left_image": "left", "right_image": "right", "sentence": "text", "label": "y"}
    (ex,) = iter_examples(
        jsonl_split(DataArguments(dataset_source="jsonl", dataset_path=str(path), dataset_column_map=cmap), "train")
    )
    assert (ex.uid, ex.sentence, ex.label) == ("u1", "t", True)
    assert [im.getpixel((0, 0)) for im in ex.images] == [RED, BLUE]


def test_jsonl_folder_needs_the_split_file(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'test1.jsonl'}: manifest for split 'test1'")):
        jsonl_split(DataArguments(dataset_source="jsonl", dataset_path=str(tmp_path)), "test1")


@pytest.mark.parametrize(
    "line, pattern",
    [
        ('{"uid": "u1", "images": ["a.png"], "sentence": ', r"m\.jsonl line 2: malformed JSON"),
        ('["not", "an", "object"]', r"m\.jsonl line 2: expected a JSON object"),
        ({"images": ["a.png"], "sentence": "s"}, r"m\.jsonl line 2: missing field 'uid'"),
        ({"uid": "u2", "images": ["a.png"]}, r"m\.jsonl line 2 \(uid u2\): missing field 'sentence'"),
        (
            {"uid": "u2", "images": [], "sentence": "s"},
            r"line 2 \(uid u2\): field 'images' must be a non-empty",
        ),
        (
            {"uid": "u2", "images": ["gone.png"], "sentence": "s"},
            r"line 2 \(uid u2\): image not found: .*gone\.png",
        ),
        (
            {"uid": "u2", "images": ["a.png"], "sentence": "s", "label": "maybe"},
            r"m\.jsonl line 2 \(uid u2\): unparseable label",
        ),
        ({"uid": "u2", "images": ["a.png"], "sentence": 5}, r"m\.jsonl line 2 \(uid u2\): field 'sentence' must be a"),
        ({"uid": "u1", "images": ["a.png"], "sentence": "s"}, r"line 2 \(uid u1\): duplicate uid"),
        (
            {"uid": "u2", "images": ["bad.png"], "sentence": "s"},
            r"uid u2, image .*bad\.png: unreadable or corrupt",
        ),
    ],
    ids=[
        "json",
        "not-object",
        "no-uid",
        "no-sentence",
        "no-images",
        "missing-image",
        "label",
        "sentence-number",
        "dup",
        "corrupt",
    ],
)
def test_manifest_errors_name_the_line_uid_and_file(tmp_path, line, pattern):
    _img(RED).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but truncated")
    path = _write(tmp_path / "m.jsonl", [{"uid": "u1", "images": ["a.png"], "sentence": "s", "label": True}, line])
    with pytest.raises(DataError, match=pattern):
        jsonl_split(DataArguments(dataset_source="jsonl", dataset_path=str(path)), "dev")
