"""Measure what every stage does with each case of the bad-input corpus, and print it as markdown tables.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python tests/reliability/reliability_report.py [--kills N]

Stages: each local loader (official NLVR2 layout, JSONL manifest) under bad_examples=fail (the case alone beside
one good example) and skip (every case in one file), the cache build (skip: its manifest.json), training's data
pipeline (training/pipeline.py: tokenize_split, then TokenizedCollator batches) on every labelled example that loaded,
and evaluation (predictions.jsonl and run_record.json) on the tiny model; then the image cases through the caption
loaders (COCO layout, LLaVA chat JSON) under fail and skip. `--kills N` also runs N SIGKILL-and-resume trainings
and N killed cache builds (see test_interruption). The tests in this folder assert the same outcomes against the
expectations in reliability_corpus.py.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from reliability_corpus import (  # noqa: E402
    BY_NAME,
    CAPTION_LOADERS,
    CASES,
    IMAGE_CASES,
    LOADERS,
    SPLIT,
    CaptionCorpus,
    Case,
    Corpus,
    write_caption_corpus,
    write_corpus,
)

from utils.errors import DataError  # noqa: E402
from vlm_datasets.cache import build_cache, load_cached_split  # noqa: E402
from vlm_datasets.config import DataArguments  # noqa: E402
from vlm_datasets.loading import iter_examples, load_split  # noqa: E402


@dataclass
class Outcome:
    """What one stage did with one case: "ok" (loaded, check passed), "rejected" (DataError) or "skipped"."""

    status: str
    detail: str = ""  # the reason (DataError.problem)
    names_it: bool | None = None  # a rejection's message names the uid or the file
    message: str = ""  # the whole message of a rejection

    def cell(self) -> str:
        if self.status == "rejected":
            return f"rejected: {short(self.detail)}" + ("" if self.names_it else " (UNNAMED)")
        if self.status == "skipped":
            return "skipped"  # the reason: as in the fail column (the tests compare both with the expectation)
        return self.status + (f" ({self.detail})" if self.detail else "")


@dataclass
class Row:
    case: Case
    stages: dict[str, Outcome] = field(default_factory=dict)


def short(reason: str, n: int = 60) -> str:
    reason = re.sub(r"\(.*", "", reason).strip().rstrip(":;,")  # drop the library's own detail
    reason = re.sub(r"/\S+/", ".../", reason)
    return reason if len(reason) <= n else reason[: n - 3] + "..."


def data_args(corpus: Corpus, loader: str, policy: str, **kwargs) -> DataArguments:
    path = corpus.nlvr2 if loader == "nlvr2" else corpus.jsonl
    return DataArguments(dataset_source=loader, dataset_path=str(path), bad_examples=policy, **kwargs)


def _names(message: str, corpus: Corpus, case: Case) -> bool:
    uid = corpus.uids.get(case.name)
    files = (str(corpus.nlvr2), str(corpus.jsonl))
    named = uid and (f"uid {uid}" in message or f"uid {uid!r}" in message)
    return bool(named) or any(f in message for f in files)


def _loaded_outcome(case: Case, ex) -> Outcome:
    if ex is None:
        return Outcome("missing")  # loaded without an error but not there: a silent drop
    if case.check:
        try:
            case.check(ex)
        except AssertionError as e:
            return Outcome("WRONG", str(e))
    return Outcome("ok")


def fail_fast(case: Case, loader: str, root: Path) -> Outcome:
    """The case beside one good example, bad_examples=fail: loads (and passes its check) or raises naming it."""
    corpus = write_corpus(root / f"{case.name}-{loader}", [BY_NAME["png"], case])
    try:
        ds = load_split(data_args(corpus, loader, "fail"), SPLIT)
    except DataError as e:
        return Outcome("rejected", e.problem, _names(str(e), corpus, case), str(e))
    examples = {ex.uid: ex for ex in iter_examples(ds)}
    return _loaded_outcome(case, examples.get(corpus.uids[case.name]))


def skipping(corpus: Corpus, ds, report: dict) -> dict[str, Outcome]:
    """Per case: ok (in ds, check passed), skipped (in the report, with its reason) or missing (neither)."""
    examples = {ex.uid: ex for ex in iter_examples(ds)}
    skipped: dict[str, dict] = {}
    for entry in report["examples"]:
        name = corpus.case_of(entry)
        if name is not None:
            skipped.setdefault(name, entry)
    out = {}
    for case in corpus.cases:
        if case.name in skipped:
            out[case.name] = Outcome("skipped", skipped[case.name]["reason"])
        else:
            out[case.name] = _loaded_outcome(case, examples.get(corpus.uids[case.name]))
    return out


def measure_loaders(root: Path, cases: list[Case] = CASES) -> tuple[list[Row], dict[str, Corpus]]:
    """Every case through both loaders (fail and skip) and the cache build (skip); returns rows and corpora."""
    from vlm_datasets.bad_examples import skip_report

    rows = {c.name: Row(c) for c in cases}
    corpora = {}
    for loader in LOADERS:
        for case in cases:
            rows[case.name].stages[f"{loader} fail"] = fail_fast(case, loader, root / "single")
        corpus = corpora[loader] = write_corpus(root / f"all-{loader}", cases)
        args = data_args(corpus, loader, "skip")
        ds = load_split(args, SPLIT)
        for name, outcome in skipping(corpus, ds, skip_report(args, SPLIT)).items():
            rows[name].stages[f"{loader} skip"] = outcome
        cache_dir = build_cache(args, [SPLIT], root / f"cache-{loader}")
        manifest = json.loads((cache_dir / "manifest.json").read_text())
        cached = load_cached_split(args, SPLIT, cache_dir)
        for name, outcome in skipping(corpus, cached, manifest["skipped"][SPLIT]).items():
            rows[name].stages[f"{loader} cache"] = outcome
    return list(rows.values()), corpora


def _pipeline_problems(batch: dict, i: int, row: dict, grids, processor, template) -> list[str]:
    """What is wrong with row i of a TokenizedCollator batch: its image tokens against its images' grid, and its
    labels against the answer's tokens (set there and nowhere else)."""
    from training.collators import IGNORE_INDEX

    tok, merge = processor.tokenizer, processor.image_processor.merge_size
    problems = []
    image_tokens = int((batch["input_ids"][i] == processor.image_token_id).sum())
    if image_tokens != sum(int(g.prod()) // merge**2 for g in grids) or image_tokens != row["image_tokens"]:
        problems.append(f"{image_tokens} image tokens for grids {[g.tolist() for g in grids]}")
    answer = tok(template.answer(row["label"]) + tok.eos_token, add_special_tokens=False).input_ids
    end = int(batch["attention_mask"][i].sum())
    labelled = (batch["labels"][i] != IGNORE_INDEX).nonzero().flatten().tolist()
    got = batch["labels"][i, labelled].tolist()
    if labelled != list(range(end - len(answer), end)) or got != answer:
        problems.append(f"labels {got} on positions {labelled}; the answer is {answer}, the last of {end} tokens")
    return problems


def measure_pipeline(rows: list[Row], corpus: Corpus, model_dir: Path, batch_size: int = 8) -> None:
    """Every labelled example the JSONL loader kept through training/pipeline.py as training/sft.py uses it
    (require_labels, tokenize_split, TokenizedCollator), batch by batch: image tokens match the pixels
    (image_grid_thw) and labels are set on exactly the answer tokens."""
    from training.models import load_processor
    from training.pipeline import TokenizedCollator, tokenize_split
    from vlm_datasets.bad_examples import skip_report
    from vlm_datasets.loading import require_labels
    from vlm_datasets.prompts import get_template

    args = data_args(corpus, "jsonl", "skip")
    processor = load_processor(str(model_dir))
    template = get_template(args.prompt_template)
    ds = load_split(args, SPLIT)
    tokenized = list(tokenize_split(require_labels(ds, args, SPLIT), processor, template))
    collate = TokenizedCollator(processor)
    checked: dict[str, Outcome] = {}
    for start in range(0, len(tokenized), batch_size):
        batch_rows = tokenized[start : start + batch_size]
        batch = collate(batch_rows)
        grids = iter(batch["image_grid_thw"])  # [images in the batch, 3]: each row's images, in order
        for i, row in enumerate(batch_rows):
            problems = _pipeline_problems(batch, i, row, [next(grids) for _ in row["images"]], processor, template)
            checked[row["uid"]] = Outcome("WRONG", "; ".join(problems)) if problems else Outcome("ok")
    kept, reasons = set(ds["uid"]), {e["uid"]: e["reason"] for e in skip_report(args, SPLIT)["examples"]}
    for row in rows:
        uid = corpus.uids[row.case.name]
        if uid in checked:
            row.stages["pipeline"] = checked[uid]
        elif uid in kept:  # loaded, then dropped and counted by require_labels (unlabeled), as in training
            row.stages["pipeline"] = Outcome("skipped", reasons[uid]) if uid in reasons else Outcome("missing")
        else:
            row.stages["pipeline"] = Outcome("-")  # never reaches it: rejected by the loader


def measure_eval(rows: list[Row], corpus: Corpus, model_dir: Path, out_dir: Path) -> dict:
    """run_evaluation on the JSONL corpus (skip): one prediction per kept uid; the run record counts the rest."""
    from trl import ModelConfig

    from evals.evaluate import EvalArguments, run_evaluation

    eval_args = EvalArguments(output_dir=str(out_dir), batch_size=8, report=False)
    args = data_args(corpus, "jsonl", "skip", dataset_eval_split=SPLIT)
    run_evaluation(eval_args, args, ModelConfig(model_name_or_path=str(model_dir), dtype="float32"))
    predicted = {json.loads(line)["uid"] for line in (out_dir / "predictions.jsonl").read_text().splitlines()}
    record = json.loads((out_dir / "run_record.json").read_text())
    skipped = {corpus.case_of(e) for e in record["dataset"]["skipped"]["examples"]}
    for row in rows:
        uid = corpus.uids[row.case.name]
        if row.case.name in skipped and not row.case.duplicate:
            row.stages["eval"] = Outcome("skipped")
        elif uid in predicted:
            row.stages["eval"] = Outcome("predicted" + (", 2nd line skipped" if row.case.duplicate else ""))
        else:
            row.stages["eval"] = Outcome("missing")
    return record


def caption_args(corpus: CaptionCorpus, loader: str, policy: str):
    from vlm_datasets.captions import CaptionDataArguments

    data, images = str(corpus.data_file(loader)), str(corpus.images)
    return CaptionDataArguments(
        dataset_source=loader, data_file=data, image_folder=images, eval_data_file=data, bad_examples=policy
    )


def _caption_outcome(case: Case, row: dict | None) -> Outcome:
    """A caption row's outcome: its check on the images to_chat gives the model (decoded and normalized)."""
    from vlm_datasets.captions import to_chat

    return _loaded_outcome(case, None if row is None else SimpleNamespace(images=to_chat(row)["images"]))


def measure_caption_loaders(root: Path, cases: list[Case] = IMAGE_CASES) -> tuple[list[Row], dict[str, dict]]:
    """The image cases through the caption loaders (vlm_datasets/captions.py) under bad_examples=fail (the case beside
    one good image) and skip (every case in one file); returns rows and, per loader, rows kept / skipped / written."""
    from vlm_datasets.captions import caption_skip_report, load_caption_split

    rows = {c.name: Row(c) for c in cases}
    counts = {}
    for loader in CAPTION_LOADERS:
        for case in cases:
            corpus = write_caption_corpus(root / f"{case.name}-{loader}", [BY_NAME["png"], case])
            uids = corpus.uids[loader][case.name]
            try:
                ds = load_caption_split(caption_args(corpus, loader, "fail"))
            except DataError as e:
                named = any(f"uid {uid}" in str(e) for uid in uids) or str(corpus.images) in str(e)
                rows[case.name].stages[f"{loader} fail"] = Outcome("rejected", e.problem, named, str(e))
                continue
            kept = {r["uid"]: r for r in ds}
            rows[case.name].stages[f"{loader} fail"] = _caption_outcome(case, kept.get(uids[0]))
        corpus = write_caption_corpus(root / f"all-{loader}", cases)
        args = caption_args(corpus, loader, "skip")
        ds = load_caption_split(args)
        report = caption_skip_report(args)
        skipped: dict[str, str] = {}
        for entry in report["examples"]:
            skipped.setdefault(corpus.case_of(loader, entry["uid"]), entry["reason"])
        kept = {r["uid"]: r for r in ds}
        for case in cases:
            if case.name in skipped:
                rows[case.name].stages[f"{loader} skip"] = Outcome("skipped", skipped[case.name])
            else:
                rows[case.name].stages[f"{loader} skip"] = _caption_outcome(
                    case, kept.get(corpus.uids[loader][case.name][0])
                )
        written = sum(len(u) for u in corpus.uids[loader].values())
        counts[loader] = {"kept": len(ds), "skipped": report["count"], "written": written}
    return list(rows.values()), counts


COLUMNS = ("nlvr2 fail", "nlvr2 skip", "nlvr2 cache", "jsonl fail", "jsonl skip", "jsonl cache", "pipeline", "eval")
CAPTION_COLUMNS = ("coco fail", "coco skip", "llava_json fail", "llava_json skip")


def markdown(rows: list[Row], columns: tuple[str, ...] = COLUMNS) -> str:
    head = "| case | input | " + " | ".join(columns) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 2)]
    for row in rows:
        cells = [row.stages[c].cell() if c in row.stages else "" for c in columns]
        lines.append(f"| {row.case.name} | {row.case.description} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> dict[str, int]:
    """Counts over every (case, stage) cell."""
    counts: dict[str, int] = {}
    for row in rows:
        for outcome in row.stages.values():
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
    counts["rejected without naming uid or file"] = sum(
        o.status == "rejected" and not o.names_it for r in rows for o in r.stages.values()
    )
    return counts


def main(argv: list[str]) -> None:
    import argparse
    import os
    import tempfile
    import time

    import datasets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=0, help="SIGKILL-and-resume trainings and killed cache builds")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        datasets.config.HF_DATASETS_CACHE = str(root / "hf_datasets")
        os.environ["VLM_STUDIES_ROOT"] = str(root / "artifacts")  # the local sources' Arrow files go there
        start = time.time()
        rows, corpora = measure_loaders(root / "corpus")
        from training.embedded import build_model, build_processor, build_tokenizer

        model_dir = root / "tiny-model"
        tokenizer = build_tokenizer()
        build_model(tokenizer).save_pretrained(model_dir)
        build_processor(tokenizer, max_pixels=56 * 56).save_pretrained(model_dir)
        measure_pipeline(rows, corpora["jsonl"], model_dir)
        measure_eval(rows, corpora["jsonl"], model_dir, root / "eval")
        print(markdown(rows))
        print(f"\n{len(rows)} cases x {len(COLUMNS)} stages: {summary(rows)} ({time.time() - start:.0f} s)")
        start = time.time()
        caption_rows, counts = measure_caption_loaders(root / "captions")
        print("\n" + markdown(caption_rows, CAPTION_COLUMNS))
        print(f"\nrows kept / skipped / written: {counts}")
        print(
            f"{len(caption_rows)} image cases x {len(CAPTION_COLUMNS)} stages: {summary(caption_rows)} "
            f"({time.time() - start:.0f} s)"
        )
        if opts.kills:
            from test_interruption import kill_and_resume_trials

            for line in kill_and_resume_trials(model_dir, root / "kills", opts.kills):
                print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
