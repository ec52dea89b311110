"""Composed-VLM runs (training/train_vlm.py's run folders) for the gallery: each row's generated text scored on its
own, and the evaluation rows, images included, rebuilt from the data that the run's run_record.json names.

Per-row scores (evals/vlm_eval.py's row_scores): questions (task qa) exact match, caption and chat rows CIDEr-D
(document frequencies over the run's rows of that task, so their mean is summary.json's CIDEr) and ROUGE-L; BLEU-4 is
a corpus score, in summary.json only. A row's `score` (what --wrong sorts on) is its exact match or its CIDEr-D.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from evals.comparison import run_name
from evals.gallery_page import GalleryItem, GeneratedText
from evals.prediction_files import predictions_file, read_generated
from utils.errors import DataError
from vlm_datasets.captions import CaptionDataArguments, load_caption_split
from vlm_datasets.example import Example
from vlm_datasets.images import normalize_image

RECORD_KIND = "train_vlm"  # run_record.json's "kind" in a training/train_vlm.py run folder
SCORES = (
    "scores per row: exact match (questions); CIDEr-D, document frequencies over the run's rows of that task, and "
    "ROUGE-L (captions, chat); BLEU-4 is corpus-level only (summary.json)"
)


@dataclass
class CaptionRun:
    """One train_vlm run: {uid: record} (uid, task, prediction, references, scores, score, category = task) and the
    evaluation data its run_record.json names."""

    path: Path  # predictions.jsonl
    name: str
    records: dict[str, dict]
    data: CaptionDataArguments
    record_path: Path  # run_record.json


def _run_record(path: str | Path) -> tuple[Path, dict | None]:
    """(run_record.json beside the predictions, its content or None when there is none)."""
    record = predictions_file(path).parent / "run_record.json"
    if not record.is_file():
        return record, None
    try:
        values = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(str(record), f"unreadable ({e})") from None
    return record, values if isinstance(values, dict) else None


def is_caption_run(path: str | Path) -> bool:
    """True for a training/train_vlm.py run: a run_record.json of kind train_vlm beside its predictions.jsonl."""
    return (_run_record(path)[1] or {}).get("kind") == RECORD_KIND


def eval_data(record_path: Path, record: dict) -> CaptionDataArguments:
    """The CaptionDataArguments a train_vlm run_record.json holds (config_dict's form), as the run resolved them."""
    values = (record.get("config") or {}).get(CaptionDataArguments.__name__)
    if not isinstance(values, dict):
        raise DataError(str(record_path), f"no config.{CaptionDataArguments.__name__}: not a train_vlm run record")
    from transformers import HfArgumentParser  # here, not at import: the gallery's --help needs no transformers

    (args,) = HfArgumentParser(CaptionDataArguments).parse_dict(values, allow_extra_keys=True)
    return args


def describe(args: CaptionDataArguments) -> str:
    """The evaluation data in a few words: source and what picks its rows."""
    if args.dataset_source == "synthetic":
        size = min(args.synthetic_eval_size, args.max_eval_examples or args.synthetic_eval_size)
        return f"synthetic {args.synthetic_task}, seed {args.synthetic_seed}, {size} rows"
    if args.dataset_source == "hub":
        return f"hub {args.dataset_name} split {args.dataset_eval_split}"
    data = args.eval_data_file or f"{args.data_file} (held-out images)"
    return f"{args.dataset_source} {data}, images {args.eval_image_folder or args.image_folder}"


def load_caption_run(path: str | Path) -> CaptionRun:
    """A train_vlm run folder (or its predictions.jsonl): the predictions, scored per row, and its evaluation data."""
    pred_path = predictions_file(path)
    record_path, record = _run_record(pred_path)
    if (record or {}).get("kind") != RECORD_KIND:
        raise DataError(str(record_path), f"no run_record.json of kind {RECORD_KIND}: not a train_vlm run")
    from evals.vlm_eval import row_scores  # torch and the caption scorers load for a caption run only

    records = read_generated(pred_path)
    for rec, scores in zip(records, row_scores(records), strict=True):
        rec.update(scores=scores, score=scores.get("exact_match", scores.get("cider")), category=rec["task"])
    data = eval_data(record_path, record)
    return CaptionRun(pred_path, run_name(pred_path), {r["uid"]: r for r in records}, data, record_path)


def caption_runs(paths: Sequence[str | Path]) -> list[CaptionRun] | None:
    """The runs, when they are train_vlm runs; None when they are not (True/False runs, or none); mixed: refused."""
    kinds = {is_caption_run(p) for p in paths}
    if len(kinds) > 1:
        raise ValueError("train_vlm runs (generated text) and True/False runs do not mix on one page")
    if kinds != {True}:
        return None
    runs = [load_caption_run(p) for p in paths]
    names = [r.name for r in runs]
    for i, run in enumerate(runs):  # as uid_selection.load_runs: two runs named alike get their position appended
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({i + 1})"
    return runs


def worst_first(run: CaptionRun) -> list[str]:
    """The uids of `run` by score, lowest first (ties in the run's order); questions answered right left out."""
    kept = [u for u, r in run.records.items() if not (r["task"] == "qa" and r["score"] == 1)]
    return sorted(kept, key=lambda u: run.records[u]["score"])


def _example(row: dict) -> Example:
    """A caption row as the gallery's example: the user turn as its sentence, no label, the rest in meta."""
    meta = json.loads(row["meta"]) if row["meta"] else {}
    images = [normalize_image(im, f"uid {row['uid']}") for im in row["images"]]  # as to_chat shows them to the model
    extra = {"task": row["task"], "history": row["history"], "references": row["references"]}
    return Example(row["uid"], images, row["question"], None, {**meta, **extra})


def find_rows(run: CaptionRun, uids: list[str]) -> dict[str, Example]:
    """The evaluation rows of `uids` rebuilt through vlm_datasets.captions from run.data (images decoded for those
    only); DataError naming the uid and the predictions file for a uid that data does not hold."""
    wanted = list(dict.fromkeys(uids))
    ds = load_caption_split(run.data, train=False)
    found: dict[str, Example] = {}
    if isinstance(ds, datasets.Dataset):
        position = {u: i for i, u in enumerate(ds["uid"])}  # one column, no image decoding
        found = {r["uid"]: _example(r) for r in ds.select([position[u] for u in wanted if u in position])}
    else:  # a hub stream: read until every wanted uid has been seen
        keep = set(wanted)
        for r in ds:
            if r["uid"] in keep and r["uid"] not in found:
                found[r["uid"]] = _example(r)
                if len(found) == len(wanted):
                    break
    missing = [u for u in wanted if u not in found]
    if missing:
        shown = ", ".join(repr(u) for u in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            str(run.path),
            f"uid {shown} not found in the evaluation data {run.record_path.name} names: {describe(run.data)}",
        )
    return {u: found[u] for u in wanted}


def caption_item(ex: Example, runs: Sequence[CaptionRun]) -> GalleryItem:
    """The row with each run's generated text and scores; refused when a run was scored on other references."""
    for r in runs:  # another run's data (e.g. stage 1 captions vs stage 2 mixed) holds other rows under the same uids
        rec = r.records.get(ex.uid)
        if rec is not None and (rec["references"], rec["task"]) != (ex.meta["references"], ex.meta["task"]):
            raise DataError(f"{r.path}, uid {ex.uid}", f"references differ from those of {describe(runs[0].data)}")
    answers = [(r.name, r.records.get(ex.uid)) for r in runs]
    text = GeneratedText(ex.meta["task"], list(ex.meta["references"]), list(ex.meta["history"]))
    return GalleryItem(ex, [text.task], answers, text)
