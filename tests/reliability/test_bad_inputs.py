"""The bad-input corpus through both local loaders (fail and skip), the cache build, training's data pipeline,
evaluation and training, and its image cases through the caption loaders (COCO, LLaVA JSON): every case is normalized
or rejected naming its uid or file and the reason; skipped ones are counted."""

from __future__ import annotations

import json
import re

import datasets
import pytest
from PIL import Image
from reliability_corpus import BY_NAME, CAPTION_LOADERS, CASES, IMAGE_CASES, LOADERS, SPLIT, Case, write_corpus
from reliability_report import data_args, measure_caption_loaders, measure_eval, measure_loaders, measure_pipeline

from training.models import load_processor
from training.pipeline import tokenize_split
from utils.errors import DataError
from vlm_datasets import hub
from vlm_datasets.bad_examples import skip_report
from vlm_datasets.cache import CacheError, NotCachedError, build_cache, load_cached_split, verify_cache
from vlm_datasets.config import DataArguments
from vlm_datasets.example import Example, examples_to_dataset
from vlm_datasets.loading import iter_examples, load_split
from vlm_datasets.prompts import get_template

REJECTED = [c for c in CASES if c.expected("jsonl") == "reject"]  # by the JSONL loader (evaluation, training)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """(rows, corpora, root): every case through both loaders (fail, skip) and the cache build, measured once."""
    root = tmp_path_factory.mktemp("corpus")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf_datasets"))
        mp.setenv("VLM_STUDIES_ROOT", str(root / "artifacts"))  # the local sources' Arrow files go there
        rows, corpora = measure_loaders(root)
    return {r.case.name: r for r in rows}, corpora, root


@pytest.mark.integration
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("loader", LOADERS)
def test_each_case_is_normalized_or_rejected_naming_it(measured, case: Case, loader: str):
    rows, _, _ = measured
    stages = rows[case.name].stages
    fail, skip, cache = stages[f"{loader} fail"], stages[f"{loader} skip"], stages[f"{loader} cache"]
    if case.expected(loader) == "ok":
        assert (fail.status, skip.status, cache.status) == ("ok", "ok", "ok"), (fail, skip, cache)
    else:
        reason = case.reason_for(loader)
        assert fail.status == "rejected" and re.search(reason, fail.detail), fail
        assert fail.names_it, f"the error names neither the uid nor the file: {fail.message}"
        if case.raw_line is not None:  # no uid to name: the file and the line
            assert re.search(r"dev\.jsonl? line 2: ", fail.message), fail.message
        for outcome in (skip, cache):  # skipped and counted with the same reason, in the load and in the cache
            assert outcome.status == "skipped" and re.search(reason, outcome.detail), outcome


@pytest.mark.integration
@pytest.mark.parametrize("loader", LOADERS)
def test_nothing_is_dropped_silently(measured, loader):
    _, corpora, _ = measured
    corpus = corpora[loader]
    args = data_args(corpus, loader, "skip")
    ds = load_split(args, SPLIT)
    report = skip_report(args, SPLIT)
    assert len(ds) + report["count"] == len(corpus.lines)  # every line of the file: kept or named
    assert report["policy"] == "skip" and all(e["reason"] and e["where"] for e in report["examples"])
    # The duplicate keeps its first line only.
    uid = corpus.uids["uid_duplicate"]
    assert [r for r in ds["uid"] if r == uid] == [uid]
    # The cache manifest records the same skips, and the split sizes that go with them.
    manifest = json.loads((measured[2] / f"cache-{loader}" / "manifest.json").read_text())
    assert manifest["bad_examples"] == "skip" and manifest["settings"]["bad_examples"] == "skip"
    assert manifest["splits"][SPLIT] == len(ds)
    assert manifest["skipped"][SPLIT]["count"] == report["count"]


@pytest.mark.integration
def test_a_second_read_reuses_the_arrow_files_and_still_names_the_skipped(measured):
    _, corpora, _ = measured
    args = data_args(corpora["jsonl"], "jsonl", "skip")
    first_ds = load_split(args, SPLIT)
    first = skip_report(args, SPLIT)
    second_ds = load_split(args, SPLIT)  # from_generator's Arrow files are reused: no image is decoded again...
    assert second_ds.cache_files == first_ds.cache_files
    assert skip_report(args, SPLIT) == first  # ...but those of the missing examples are, to name them again


@pytest.mark.integration
def test_fail_fast_cache_build_leaves_no_cache(measured, tmp_path):
    _, corpora, _ = measured
    args = data_args(corpora["nlvr2"], "nlvr2", "fail")
    with pytest.raises(DataError, match=r"dev\.json line 21, uid dev-21-0-0: missing image dev-21-0-img0\.png"):
        build_cache(args, [SPLIT], tmp_path / "cache")  # records are checked before any image is opened
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NotCachedError):
        verify_cache(args, tmp_path / "cache")


@pytest.mark.integration
def test_a_skipping_cache_is_refused_under_fail_fast(measured):
    _, corpora, root = measured
    args = data_args(corpora["jsonl"], "jsonl", "fail")
    with pytest.raises(CacheError, match=r"settings differ .*bad_examples: cache 'skip', now 'fail'"):
        load_cached_split(args, SPLIT, root / "cache-jsonl")


def test_the_training_pipeline_batches_every_kept_labelled_example(measured, tiny_model_dir):
    rows, corpora, _ = measured
    measure_pipeline(list(rows.values()), corpora["jsonl"], tiny_model_dir)
    for case in CASES:
        outcome = rows[case.name].stages["pipeline"]
        if case.name == "label_missing":  # dropped and counted before tokenizing, as training does
            assert outcome.status == "skipped" and outcome.detail.startswith("unlabeled example"), outcome
        elif case.expected("jsonl") == "ok" or case.duplicate:  # image tokens match the pixels, labels the answer
            assert outcome.status == "ok", (case.name, outcome)
        else:
            assert outcome.status == "-", (case.name, outcome)


def test_the_pipeline_names_the_uid_whose_images_the_processor_refuses(tiny_model_dir):
    processor = load_processor(str(tiny_model_dir))
    good = Image.new("RGB", (56, 56), (0, 0, 200))
    examples = [
        Example("dev-1-0-0", [good, good], "Fine.", True),
        Example("odd/uid", [Image.new("RGB", (1, 300)), good], "Too thin.", False),  # not via a loader
    ]
    with pytest.raises(DataError, match=r"uid odd/uid: the image processor refuses its images .*aspect ratio"):
        tokenize_split(examples_to_dataset(examples), processor, get_template("nlvr2_true_false"))


def test_evaluation_predicts_every_kept_example_and_records_the_skipped(measured, tiny_model_dir, tmp_path):
    rows, corpora, _ = measured
    corpus = corpora["jsonl"]
    record = measure_eval(list(rows.values()), corpus, tiny_model_dir, tmp_path / "eval")
    for case in CASES:
        want = "predicted" if case.expected("jsonl") == "ok" else "skipped"
        if case.duplicate:
            want = "predicted, 2nd line skipped"
        assert rows[case.name].stages["eval"].status == want, case.name
    skipped = record["dataset"]["skipped"]
    assert skipped["policy"] == "skip" and skipped["count"] == len(REJECTED)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())  # the run summary counts them too
    assert (metrics["n_skipped"], metrics["bad_examples"]) == (len(REJECTED), "skip")
    preds = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    by_uid = {p["uid"]: p for p in preds}
    for name in ("sentence_non_ascii", "sentence_html"):  # verbatim: escaping is for whoever renders HTML
        assert by_uid[corpus.uids[name]]["sentence"] == BY_NAME[name].fields["sentence"]
    # A uid holding "../" is data: nothing was written outside the run's folders.
    assert not any(p.name == "escaped" for p in tmp_path.parent.rglob("escaped"))


def test_training_skips_and_counts_bad_and_unlabeled_examples(measured, tiny_model_dir, tmp_path):
    from test_interruption import run_sft

    _, corpora, _ = measured
    corpus = corpora["jsonl"]
    out = tmp_path / "run"
    data = ["--dataset_source", "jsonl", "--dataset_path", str(corpus.jsonl), "--dataset_train_split", SPLIT]
    run_sft(tiny_model_dir, out, *data, "--bad_examples", "skip", "--max_steps", "1", "--save_steps", "1")
    skipped = json.loads((out / "run_record.json").read_text())["dataset"]["skipped"]
    names = {corpus.case_of(e) for e in skipped["examples"]}
    assert names == {c.name for c in REJECTED} | {"label_missing"}
    assert skipped["count"] == len(REJECTED) + 1
    unlabeled = [e for e in skipped["examples"] if corpus.case_of(e) == "label_missing"]
    assert unlabeled[0]["reason"] == f"unlabeled example in training split {SPLIT!r}"


def test_training_refuses_an_unlabeled_example_before_the_first_step(tiny_model_dir, tmp_path):
    from test_interruption import run_sft

    corpus = write_corpus(tmp_path / "data", [BY_NAME["png"], BY_NAME["label_missing"]])
    out = tmp_path / "run"
    data = ["--dataset_source", "jsonl", "--dataset_path", str(corpus.jsonl), "--dataset_train_split", SPLIT]
    with pytest.raises(DataError, match=r"uid dev-2-0-0: unlabeled example in training split 'dev'"):
        run_sft(tiny_model_dir, out, *data, "--max_steps", "1")
    assert not list(out.glob("checkpoint-*"))


# ---- the caption loaders (COCO layout, LLaVA chat JSON) -------------------------------------------------------


@pytest.fixture(scope="module")
def captions_measured(tmp_path_factory):
    return measure_caption_loaders(tmp_path_factory.mktemp("captions"))


@pytest.mark.integration
@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("loader", CAPTION_LOADERS)
def test_each_image_case_through_the_caption_loaders(captions_measured, case: Case, loader: str):
    rows, _ = captions_measured
    stages = {r.case.name: r.stages for r in rows}[case.name]
    fail, skip = stages[f"{loader} fail"], stages[f"{loader} skip"]
    if case.expected(loader) == "ok":  # checked on the images the model gets (to_chat)
        assert (fail.status, skip.status) == ("ok", "ok"), (fail, skip)
    else:
        reason = case.reason_for(loader)
        assert fail.status == "rejected" and re.search(reason, fail.detail), fail
        assert fail.names_it, f"the error names neither the uid nor the file: {fail.message}"
        assert skip.status == "skipped" and re.search(reason, skip.detail), skip


@pytest.mark.integration
@pytest.mark.parametrize("loader", CAPTION_LOADERS)
def test_the_caption_loaders_drop_nothing_silently(captions_measured, loader):
    _, counts = captions_measured
    rejected = [c for c in IMAGE_CASES if c.expected(loader) == "reject"]
    rows_per_image = 2 if loader == "coco" else 1  # COCO: a row per caption
    assert counts[loader]["skipped"] == rows_per_image * len(rejected)
    assert counts[loader]["kept"] + counts[loader]["skipped"] == counts[loader]["written"]


def test_train_vlm_skips_and_counts_bad_images(tiny_composed_vlm, tmp_path):
    from reliability_corpus import write_caption_corpus
    from test_interruption import run_train_vlm

    corpus = write_caption_corpus(tmp_path / "data", [BY_NAME["png"], BY_NAME["zero_byte"], BY_NAME["one_by_one"]])
    data = str(corpus.data_file("coco"))
    coco = ["--dataset_source", "coco", "--data_file", data, "--eval_data_file", data, "--image_folder"]
    out = tmp_path / "run"
    run_train_vlm(tiny_composed_vlm, out, *coco, str(corpus.images), "--bad_examples", "skip", "--max_steps", "1")
    summary = json.loads((out / "summary.json").read_text())["data"]
    assert (summary["train_rows"], summary["skipped_train_rows"]) == (4, 2)  # two captions per image
    assert (summary["eval_rows"], summary["skipped_eval_rows"], summary["bad_examples"]) == (2, 1, "skip")
    skipped = json.loads((out / "run_record.json").read_text())["skipped"]
    assert [e["uid"] for e in skipped["train"]["examples"]] == corpus.uids["coco"]["zero_byte"]
    assert skipped["eval"]["examples"][0]["reason"].startswith("unreadable or corrupt image")


# ---- hub rows (an in-memory mirror stands in for the hub) ---------------------------------------------------------


def _png(color) -> dict:
    from reliability_corpus import encode

    return {"bytes": encode(Image.new("RGB", (56, 56), color), "PNG"), "path": None}


@pytest.fixture
def bad_mirror() -> datasets.Dataset:
    good, broken = _png((200, 0, 0)), {"bytes": b"not an image", "path": None}
    return datasets.Dataset.from_dict(
        {
            "identifier": ["a-0-0-0", None, "a-0-2-0", "a-0-3-0", "a-0-4-0"],
            "left_image": [good, good, good, broken, good],
            "right_image": [good] * 5,
            "sentence": ["ok", "no uid", "bad label", "bad image", "ok too"],
            "label": ["True", "True", "maybe", "False", "false"],
        },
        features=datasets.Features(
            {
                "identifier": datasets.Value("string"),
                "left_image": datasets.Image(),
                "right_image": datasets.Image(),
                "sentence": datasets.Value("string"),
                "label": datasets.Value("string"),
            }
        ),
    )


@pytest.mark.parametrize("streaming", [False, True], ids=["downloaded", "streaming"])
def test_malformed_hub_rows_fail_or_are_skipped_and_counted(monkeypatch, bad_mirror, streaming, tmp_path):
    monkeypatch.setattr(
        hub, "load_hub_dataset", lambda a, s: bad_mirror.to_iterable_dataset() if streaming else bad_mirror
    )
    args = DataArguments(dataset_source="hub", dataset_streaming=streaming, bad_examples="skip")
    rows = list(iter_examples(load_split(args, "dev")))
    assert [ex.uid for ex in rows] == ["a-0-0-0", "a-0-4-0"]
    report = skip_report(args, "dev")
    assert report["count"] == 3
    reasons = {e["where"]: e["reason"] for e in report["examples"]}
    assert re.match(r"row without a uid", reasons["hub dataset pingzhili/nlvr2 split dev row 1"])
    assert reasons["hub dataset pingzhili/nlvr2 split dev row 2, uid a-0-2-0"].startswith("unparseable label 'maybe'")
    assert reasons["hub dataset pingzhili/nlvr2 split dev row 3, uid a-0-3-0, image 0"].startswith("unreadable or")
    # A cache built from it lists them too.
    manifest = json.loads((build_cache(args, ["dev"], tmp_path / "cache") / "manifest.json").read_text())
    assert manifest["skipped"]["dev"]["count"] == 3 and manifest["splits"]["dev"] == 2
    fail = DataArguments(dataset_source="hub", dataset_streaming=streaming)
    with pytest.raises(DataError, match=r"row 1: row without a uid"):
        list(load_split(fail, "dev"))
