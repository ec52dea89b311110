"""Evaluation of a base model or base + adapter on an NLVR2-style split: predictions.jsonl by uid + metrics.json."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from itertools import islice
from pathlib import Path
from typing import IO

import datasets
import torch
from tqdm.auto import tqdm
from transformers import set_seed
from trl import ModelConfig

from evals.arguments import EvalArguments, make_parser  # noqa: F401  (make_parser: the scripts import it from here too)
from evals.run_metrics import compute_metrics
from evals.run_report import write_report
from evals.scoring import Scored, batches_by_length, score_generate, score_likelihood
from training.models import LabModelArguments, load_model, load_processor
from utils.atomic_write import write_json_atomic, write_jsonl_atomic
from utils.errors import DataError
from utils.run_record import config_dict, redacted, write_run_record
from vlm_datasets.config import DataArguments
from vlm_datasets.example import Example
from vlm_datasets.loading import dataset_manifest, iter_examples, load_split
from vlm_datasets.prompts import get_template

logger = logging.getLogger(__name__)

Scorer = Callable[[list[Example]], list[Scored]]  # a batch of examples -> their answers, in order


def _device(model) -> torch.device:
    return next(model.parameters()).device


def check_adapter(path: str) -> None:
    """Refuse a path that is not a PEFT adapter folder (a training run's output_dir): checked before any model loads."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"adapter {path}: no such folder (give a training run's output_dir)")
    if not (Path(path) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter {path}: no adapter_config.json (not a PEFT adapter folder)")


def load_for_eval(
    eval_args: EvalArguments, data_args: DataArguments, model_args: ModelConfig, lab_args: LabModelArguments
):
    """Base model (+ adapter) in eval mode and the processor (the adapter run's own processor when it saved one)."""
    if eval_args.adapter_path:
        check_adapter(eval_args.adapter_path)
    processor_path = model_args.model_name_or_path
    if eval_args.adapter_path and (Path(eval_args.adapter_path) / "processor_config.json").exists():
        processor_path = eval_args.adapter_path
    processor = load_processor(
        processor_path,
        revision=None if processor_path == eval_args.adapter_path else model_args.model_revision,
        trust_remote_code=eval_args.trust_remote_code,
        min_pixels=data_args.min_pixels,
        max_pixels=data_args.max_pixels,
    )
    model_args.use_peft = False  # evaluation never creates a fresh adapter
    model = load_model(model_args, lab_args, trust_remote_code=eval_args.trust_remote_code)
    if eval_args.adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, eval_args.adapter_path)
    if torch.cuda.is_available() and _device(model).type == "cpu" and not getattr(model, "hf_device_map", None):
        model = model.to("cuda")
    model.eval()
    return model, processor


def summarize(records: list[dict]) -> dict:
    """n, accuracy over labeled examples, unparseable count and accuracy per category (when examples carry one)."""
    labeled = [r for r in records if r["label"] is not None]
    correct = [r["prediction"] == r["label"] for r in labeled]
    by_cat = defaultdict(list)
    for r, ok in zip(labeled, correct, strict=True):
        if r.get("category"):
            by_cat[r["category"]].append(ok)
    return {
        "n": len(records),
        "n_labeled": len(labeled),
        "accuracy": sum(correct) / len(labeled) if labeled else None,
        "n_unparseable": sum(r["prediction"] is None for r in records),
        "accuracy_by_category": {c: sum(v) / len(v) for c, v in sorted(by_cat.items())},
    }


def nlvr2_metrics(records: list[dict], seed: int = 0) -> dict:
    """Consistency and bootstrap CIs (evals.run_metrics) over the labeled records; per category when they carry one."""
    labeled = [r for r in records if r["label"] is not None]
    if not labeled:
        return {}
    full = compute_metrics(
        {r["uid"]: r["prediction"] for r in labeled},
        {r["uid"]: r["label"] for r in labeled},
        categories={r["uid"]: r.get("category") for r in labeled},
        seed=seed,
    )
    keep = (
        "accuracy_ci",
        "consistency",
        "consistency_ci",
        "n_groups",
        "n_consistency_excluded",
        "categories",
        "bootstrap",
    )
    return {k: full[k] for k in keep}


def _fingerprint(eval_args: EvalArguments, data_args: DataArguments, model_args: ModelConfig, template) -> dict:
    """What must match for an evaluation to continue from predictions already in its output_dir."""
    return {
        "model": model_args.model_name_or_path,
        "model_revision": model_args.model_revision,
        "dtype": model_args.dtype,
        "adapter": eval_args.adapter_path,
        "scoring": eval_args.scoring,
        "max_new_tokens": eval_args.max_new_tokens if eval_args.scoring == "generate" else None,
        "prompt_template": asdict(template),
        "data": asdict(data_args),
    }


def read_partial_predictions(path: Path, split_uids: set[str] | None) -> dict[str, dict]:
    """Records already written by an earlier (possibly killed) run; a torn last line is cut off the file. Each uid
    must be in `split_uids` (None: a stream's uids, unknown until it is read; run_evaluation checks them then)."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # killed mid-write: drop the partial line so appends stay line-aligned
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    done = {}
    for line_no, line in enumerate(data.decode("utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
            uid = rec["uid"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(
                f"{path}:{line_no}", "not a prediction record; remove the file or pick another output_dir"
            ) from None
        if split_uids is not None and uid not in split_uids:
            raise DataError(f"{path}:{line_no}", f"uid {uid} is not in the split being evaluated")
        done[uid] = rec  # a uid written twice (killed between write and flush) keeps its last record
    return done


def _resume_state(out_dir: Path, fingerprint: dict, split_uids: set[str] | None, overwrite: bool) -> dict[str, dict]:
    """Predictions to keep from an earlier run in out_dir (refused when made with other settings); out_dir is made
    and its eval_state.json records this run's settings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path, pred_path = out_dir / "eval_state.json", out_dir / "predictions.jsonl"
    if overwrite:
        pred_path.unlink(missing_ok=True)
    elif pred_path.exists():
        stored = json.loads(state_path.read_text()) if state_path.exists() else None
        if stored != json.loads(json.dumps(fingerprint)):
            differ = sorted(k for k in fingerprint if (stored or {}).get(k) != json.loads(json.dumps(fingerprint[k])))
            raise DataError(
                str(pred_path),
                f"predictions from an evaluation with other settings ({', '.join(differ) or 'no eval_state.json'}); "
                "pick another output_dir or pass --overwrite true",
            )
    write_json_atomic(state_path, fingerprint)
    done = read_partial_predictions(pred_path, split_uids)
    if done:
        logger.info("%s: %d examples already scored, continuing", pred_path, len(done))
    return done


def _record(ex, scored) -> dict:
    rec = {
        "uid": ex.uid,
        "sentence": ex.sentence,
        "label": ex.label,
        "prediction": scored.prediction,
        "p_true": scored.p_true,
        "category": ex.meta.get("category"),
    }
    if scored.raw is not None:
        rec["raw"] = scored.raw
    return rec


def _score(model, processor, batch, template, eval_args: EvalArguments):
    if eval_args.scoring == "likelihood":
        return score_likelihood(model, processor, batch, template)
    return score_generate(model, processor, batch, template, eval_args.max_new_tokens)


_SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def image_order_probe_rows(
    window: list[Example], records: dict[str, dict], score: Scorer, batch_size: int
) -> list[dict]:
    """Swap the two images of every statement in `window` that names no side and score it again.

    A model that reads both images gives the same answer either way; one that looks at a single image often does not.
    One row per probed example: uid, prediction, swapped_prediction, p_true, swapped_p_true (`records` holds the
    unswapped answers).
    """
    probe = [ex for ex in window if len(ex.images) == 2 and not _SIDE_WORDS.search(ex.sentence)]
    swapped = [replace(ex, images=ex.images[::-1]) for ex in probe]
    rows = []
    for batch in batches_by_length(swapped, batch_size):
        for ex, s in zip(batch, score(batch), strict=True):
            base = records[ex.uid]
            rows.append(
                {
                    "uid": ex.uid,
                    "prediction": base["prediction"],
                    "swapped_prediction": s.prediction,
                    "p_true": base["p_true"],
                    "swapped_p_true": s.p_true,
                }
            )
    return rows


def write_probe(rows: list[dict], out_dir: Path) -> dict:
    """image_order_probe.jsonl and its summary: the share of answers that change when the images swap."""
    write_jsonl_atomic(out_dir / "image_order_probe.jsonl", rows)
    changed = sum(r["prediction"] != r["swapped_prediction"] for r in rows)
    return {"n": len(rows), "n_changed": changed, "share_changed": changed / len(rows) if rows else None}


def _check_rows(rows: Iterable[tuple[str, dict]], seen: set[str], split: str, template) -> list[str]:
    """The uids of (uid, meta) rows, in order, added to `seen`; ValueError for a uid already seen or for examples
    carrying their own prompt template."""
    uids, templates = [], set()
    for uid, meta in rows:
        if uid in seen:
            raise ValueError(f"uid {uid}: appears twice in split {split!r}; predictions are keyed by uid")
        seen.add(uid)
        uids.append(uid)
        templates.add(meta.get("prompt_template"))
    own = sorted(templates - {None, template.name})
    if own:  # scoring compares the answers of ONE template (train_instructions: multi shapes training splits only)
        raise ValueError(
            f"split {split!r}: examples carry their own prompt templates ({', '.join(own[:5])}); evaluation scores "
            f"every example with prompt_template {template.name!r}: evaluate a split without them"
        )
    return uids


def _split_uids(ds, split: str, template) -> set[str] | None:
    """A map-style split's uids, checked before anything is scored, read from two columns (no image decoded);
    None for a stream, whose rows are checked window by window as they are read."""
    if not isinstance(ds, datasets.Dataset):
        return None
    rows = ((uid, json.loads(meta) if meta else {}) for uid, meta in zip(ds["uid"], ds["meta"], strict=True))
    return set(_check_rows(rows, set(), split, template))


def _windows(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
    """Consecutive runs of `size` examples. The caller drops each window before asking for the next one, so at most
    one window's decoded images are alive."""
    it = iter(examples)
    while window := list(islice(it, size)):
        yield window
        del window  # not alive while the next one is read


@dataclass
class _Pass:
    """One pass over the split: predictions go to `done` and `fh` (flushed per batch), the split's uid order,
    image-order probe rows (when probing) and the scoring counters."""

    score: Scorer
    batch_size: int
    done: dict[str, dict]
    fh: IO[str]
    bar: tqdm
    probe: bool
    seen: set[str] = field(default_factory=set)
    order: list[str] = field(default_factory=list)
    probe_rows: list[dict] = field(default_factory=list)
    n_scored: int = 0
    score_seconds: float = 0.0


def _score_window(run: _Pass, window: list[Example]) -> None:
    """Score the window's examples not already in run.done, in batches of similar length; append and flush each."""
    start = time.time()
    todo = [ex for ex in window if ex.uid not in run.done]
    for batch in batches_by_length(todo, run.batch_size):
        for ex, scored in zip(batch, run.score(batch), strict=True):
            run.done[ex.uid] = _record(ex, scored)
            run.fh.write(json.dumps(run.done[ex.uid]) + "\n")
        run.fh.flush()
        os.fsync(run.fh.fileno())
        run.bar.update(len(batch))
    run.n_scored += len(todo)
    run.score_seconds += time.time() - start


def _score_split(run: _Pass, examples: Iterable[Example], window_size: int, split: str, template) -> None:
    """Read the split a window at a time: check it, score what is missing, probe it; then drop its images."""
    for window in _windows(examples, window_size):
        run.order += _check_rows(((ex.uid, ex.meta) for ex in window), run.seen, split, template)
        _score_window(run, window)
        if run.probe:
            run.probe_rows += image_order_probe_rows(window, run.done, run.score, run.batch_size)
            run.bar.set_postfix(image_order_probe=len(run.probe_rows))
        del window  # before the next window is read


def _progress(split_uids: set[str] | None, done: dict[str, dict], split: str, scoring: str) -> tqdm:
    """A progress bar over the split (no total for a stream) that starts at the examples already scored."""
    total = len(split_uids) if split_uids is not None else None
    return tqdm(total=total, initial=len(done), desc=f"eval {split} ({scoring})", unit="ex")


def _final_predictions(run: _Pass, pred_path: Path) -> list[dict]:
    """The split's records in its own order, predictions.jsonl rewritten so; refused when resumed predictions
    (from a stream, not checked when read) name a uid the split does not hold."""
    foreign = sorted(set(run.done) - set(run.order))
    if foreign:
        raise DataError(str(pred_path), f"uid {foreign[0]} is not in the split being evaluated")
    records = [run.done[uid] for uid in run.order]
    write_jsonl_atomic(pred_path, records)  # complete: the split's own order
    return records


def _metrics(records: list[dict], run: _Pass, eval_args: EvalArguments, out_dir: Path) -> dict:
    """Accuracy, consistency and their confidence intervals; with the image-order probe, its rows written and
    summarized."""
    metrics = summarize(records) | nlvr2_metrics(records, eval_args.seed)
    if eval_args.image_order_probe:
        metrics["image_order_probe"] = write_probe(run.probe_rows, out_dir)
    return metrics


def _run_facts(
    run: _Pass,
    eval_args: EvalArguments,
    data_args: DataArguments,
    model_args: ModelConfig,
    template,
    manifest: dict,
    start: float,
) -> dict:
    """What was evaluated and how (split, scoring, model, adapter, template, examples skipped), and how fast."""
    speed = run.n_scored / run.score_seconds if run.n_scored and run.score_seconds > 0 else None
    return {
        "split": data_args.dataset_eval_split,
        "scoring": eval_args.scoring,
        "model": model_args.model_name_or_path,
        "adapter": eval_args.adapter_path,
        "prompt_template": template.name,
        "n_skipped": manifest["skipped"]["count"],  # listed in run_record.json -> dataset.skipped
        "bad_examples": data_args.bad_examples,
        "n_scored_this_run": run.n_scored,
        "examples_per_second": speed,
        "wall_seconds": time.time() - start,
    }


def _write_results(eval_args: EvalArguments, metrics: dict, config: dict, template, manifest: dict) -> None:
    """metrics.json, run_record.json (config, prompt template, data) and, unless turned off, report.md and plots."""
    out_dir = Path(eval_args.output_dir)
    write_json_atomic(out_dir / "metrics.json", metrics)
    manifest = redacted(manifest)  # a hub URL or a key in the settings never reaches the file
    write_run_record(out_dir, "eval", eval_args.seed, config, prompt_template=template, dataset=manifest)
    if eval_args.report:
        write_report(out_dir, seed=eval_args.seed)


def run_evaluation(
    eval_args: EvalArguments,
    data_args: DataArguments,
    model_args: ModelConfig,
    lab_args: LabModelArguments | None = None,
) -> dict:
    """Score every example of the eval split, write predictions.jsonl (by uid) and metrics.json; return metrics.

    The split is read eval_window examples at a time (memory stays flat as the split grows). Predictions are appended
    and flushed per batch: a killed evaluation started again with the same settings and output_dir scores only the
    examples it has not written yet.
    """
    set_seed(eval_args.seed)
    start = time.time()
    template = get_template(data_args.prompt_template)
    lab_args = lab_args or LabModelArguments()
    model, processor = load_for_eval(eval_args, data_args, model_args, lab_args)
    split = data_args.dataset_eval_split
    ds = load_split(data_args, split, limit=data_args.max_eval_examples)
    split_uids = _split_uids(ds, split, template)

    out_dir = Path(eval_args.output_dir)
    fingerprint = _fingerprint(eval_args, data_args, model_args, template)
    done = _resume_state(out_dir, fingerprint, split_uids, eval_args.overwrite)
    score = partial(_score, model, processor, template=template, eval_args=eval_args)
    pred_path = out_dir / "predictions.jsonl"
    with pred_path.open("a") as fh, _progress(split_uids, done, split, eval_args.scoring) as bar:
        run = _Pass(score, eval_args.batch_size, done, fh, bar, eval_args.image_order_probe)
        _score_split(run, iter_examples(ds), eval_args.eval_window, split, template)
    records = _final_predictions(run, pred_path)

    manifest = dataset_manifest(data_args, split)  # its "skipped": every bad example left out (uid, where, reason)
    metrics = _metrics(records, run, eval_args, out_dir)
    metrics |= _run_facts(run, eval_args, data_args, model_args, template, manifest, start)
    config = config_dict(eval_args, data_args, model_args, lab_args)
    _write_results(eval_args, metrics, config, template, manifest)
    return metrics
