"""A static HTML gallery for error analysis: both images, the sentence, the label, categories and each run's answer
(prediction, p_true), for examples chosen by uid, by a seeded random draw, from the UID cache or from evaluation runs.
For runs of training/train_vlm.py (a composed VLM): the image, the task, the question, each run's generated text, the
references and a per-row score, the rows rebuilt from the evaluation data the run's run_record.json names.

# 16 random examples of the embedded default's held-out split (synthetic, offline)
python scripts/sample_gallery.py --config evals/configs/embedded_zero_shot.yaml --random 16 --seed 0

# What a run got wrong, one category, confident mistakes only
python scripts/sample_gallery.py --config evals/configs/embedded_zero_shot.yaml \
    --run artifacts/evals/embedded-zero-shot --wrong --category negation --p-true-min 0.8

# Flips between two runs (A then B): wrong -> right, or right -> wrong
python scripts/sample_gallery.py --config evals/configs/embedded_finetuned.yaml \
    --run artifacts/evals/embedded-zero-shot --run artifacts/evals/embedded-finetuned --flip wrong_to_right

# Bookmarks (utils/uid_cache.py) with one tag; a uid list (e.g. compare.py's right_to_wrong.txt); one file
python scripts/sample_gallery.py --from-cache --tag odd
python scripts/sample_gallery.py --uids-file artifacts/analysis/compare/a__vs__b/right_to_wrong.txt --embed

# A composed VLM's run (training/train_vlm.py): 12 random rows; the 10 worst captions (CIDEr-D), questions missed
python scripts/sample_gallery.py --run artifacts/checkpoints/gpt2v-embedded-stage2 --random 12 --seed 0
python scripts/sample_gallery.py --run artifacts/checkpoints/gpt2v-embedded-stage2 --wrong --category caption --limit 10
python scripts/sample_gallery.py --run artifacts/checkpoints/gpt2v-embedded-stage2 --wrong --category qa
# Two runs on the same evaluation data side by side (both stage 2 configs: mixed, seed 1), chosen uids
python scripts/sample_gallery.py --run artifacts/checkpoints/gpt2v-embedded-stage2 \
    --run artifacts/checkpoints/tinyvlm-embedded-stage2 --uid capsyn_eval-3 --uid capsyn_eval-4

Writes <out>/index.html, <out>/images/*.png (unless --embed) and <out>/uids.txt; prints the page's path.
Default out: <artifact root>/analysis/gallery/<a name built from the selection>.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from evals.caption_runs import SCORES, caption_item, caption_runs, describe, find_rows, worst_first
from evals.comparison import FLIPS
from evals.gallery_page import GalleryItem, write_gallery
from evals.prediction_files import load_annotations
from evals.uid_selection import Run, flips, gold_labels, load_runs, p_true_band, run_categories, wrong
from utils.artifacts import artifact_dir
from utils.errors import DataError
from utils.uid_bookmarks import UidCache
from vlm_datasets.example import Example
from vlm_datasets.example_lookup import data_arguments, find_examples, random_draw, split_index

Opt = typer.Option


def _slug(parts: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "_", "-".join(parts)).strip("_")[:100] or "gallery"


def _read_uids(path: Path) -> list[str]:
    """One uid a line (blank lines and # comments skipped): compare.py's flip lists, uids.txt of a gallery."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def gallery_item(ex: Example, runs: list[Run], phenomena: dict | None) -> GalleryItem:
    """The example with its categories and each run's record; refused when a run saw another sentence or label."""
    for r in runs:  # a run scored on other data than the config names would put wrong answers beside examples
        rec = r.records.get(ex.uid) or {}
        said, label = rec.get("sentence"), rec.get("label")
        if (isinstance(said, str) and said.strip() != ex.sentence.strip()) or label not in (None, ex.label):
            raise DataError(f"{r.path}, uid {ex.uid}", "sentence or label differs from the dataset's: wrong --config?")
    cats = run_categories(runs, ex.uid, phenomena) + ([ex.meta["category"]] if ex.meta.get("category") else [])
    cats += (phenomena or {}).get(ex.sentence.strip(), [])
    return GalleryItem(ex, list(dict.fromkeys(cats)), [(r.name, r.records.get(ex.uid)) for r in runs])


def main(
    config: Annotated[Path | None, Opt(help="Data config YAML (any evals/ or training/ config).")] = None,
    split: Annotated[str | None, Opt(help="Split (default: the config's dataset_eval_split).")] = None,
    dataset_source: Annotated[str | None, Opt(help="Override: hub, nlvr2, jsonl or synthetic (default).")] = None,
    dataset_path: Annotated[str | None, Opt(help="Override: nlvr2 folder or jsonl manifest.")] = None,
    synthetic_eval_size: Annotated[int | None, Opt(help="Override: synthetic examples per split.")] = None,
    synthetic_seed: Annotated[int | None, Opt(help="Override: synthetic generator seed.")] = None,
    uid: Annotated[list[str] | None, Opt("--uid", help="A uid to show (repeat for several).")] = None,
    uids_file: Annotated[Path | None, Opt(help="A file of uids, one a line.")] = None,
    from_cache: Annotated[bool, Opt(help="The UID cache's bookmarks.")] = False,
    tag: Annotated[str | None, Opt(help="Only bookmarks with this tag (implies --from-cache).")] = None,
    uid_cache: Annotated[Path | None, Opt(help="UID cache file (default <root>/analysis/uid_cache.json).")] = None,
    run: Annotated[
        list[Path] | None, Opt("--run", help="Run folder or predictions file (repeat; A then B); or train_vlm runs.")
    ] = None,
    labels: Annotated[Path | None, Opt(help="Official NLVR2 JSON lines (labels for CSV runs).")] = None,
    annotations: Annotated[Path | None, Opt(help="annotated_dev_examples.txt: phenomena as categories.")] = None,
    wrong_only: Annotated[
        bool, Opt("--wrong", help="Only what the first run got wrong (train_vlm runs: its rows, lowest score first).")
    ] = False,
    flip: Annotated[str | None, Opt(help=f"Between two runs: {' or '.join(FLIPS)}.")] = None,
    category: Annotated[
        list[str] | None, Opt("--category", help="Only these categories (repeat; train_vlm runs: caption, qa, chat).")
    ] = None,
    p_true_min: Annotated[float | None, Opt(help="Only first-run p_true >= this.")] = None,
    p_true_max: Annotated[float | None, Opt(help="Only first-run p_true <= this.")] = None,
    n_random: Annotated[int | None, Opt("--random", help="A seeded random draw of N of the selected uids.")] = None,
    seed: Annotated[int, Opt(help="Seed of the random draw.")] = 0,
    limit: Annotated[int, Opt(help="At most this many examples on the page.")] = 200,
    out: Annotated[Path | None, Opt(help="Output folder (default under <root>/analysis/gallery).")] = None,
    embed: Annotated[bool, Opt(help="Images as data URIs inside index.html instead of PNG files.")] = False,
) -> Path:
    """Choose the uids, load their examples from the configured dataset and write the gallery; returns index.html.
    Runs of training/train_vlm.py (generated text) bring their own data: the rows their run_record.json names."""
    text_runs = caption_runs(run or [])  # None: True/False runs (or none)
    texts = text_runs is not None
    given = dict(config=config, split=split, dataset_source=dataset_source, dataset_path=dataset_path, labels=labels,
                 synthetic_eval_size=synthetic_eval_size, synthetic_seed=synthetic_seed, annotations=annotations,
                 flip=flip, p_true_min=p_true_min, p_true_max=p_true_max)  # fmt: skip
    if texts and (refused := [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]):
        raise ValueError(
            f"{', '.join(refused)}: not with train_vlm runs, whose run_record.json names their evaluation data and "
            "whose rows have scores, not p_true (--wrong: lowest score first)"
        )
    data_args = data_arguments(
        config,
        dataset_source=dataset_source,
        dataset_path=dataset_path,
        synthetic_eval_size=synthetic_eval_size,
        synthetic_seed=synthetic_seed,
    )
    split = split or data_args.dataset_eval_split
    runs = text_runs if texts else load_runs(run or [])
    gold = gold_labels(runs, labels) if runs and not texts else {}
    phenomena = load_annotations(annotations) if annotations else None
    index: dict[str, dict] | None = None  # the split's text columns, read only when a choice needs them
    name: list[str] = []

    explicit = list(uid or []) + (_read_uids(uids_file) if uids_file else [])
    if from_cache or tag:
        explicit += [e.uid for e in UidCache(uid_cache).entries(tag)]
        name.append(f"cache-{tag}" if tag else "cache")
    if explicit or from_cache or tag:
        chosen, name = list(dict.fromkeys(explicit)), name or ["uids"]
    elif runs:
        chosen = list(runs[0].records)
    else:
        index = split_index(data_args, split)
        chosen, name = list(index), [split]
    name += [r.name for r in runs[:2]]

    if (wrong_only or flip or p_true_min is not None or p_true_max is not None) and not runs:
        raise ValueError("--wrong, --flip and --p-true-min/max choose from runs: give at least one --run")
    if wrong_only and texts:  # scored per row: the lowest first
        keep = set(chosen)
        chosen, name = [u for u in worst_first(runs[0]) if u in keep], [*name, "worst"]
    elif wrong_only:
        keep = set(wrong(runs[0], gold))
        chosen, name = [u for u in chosen if u in keep], [*name, "wrong"]
    if flip:
        if len(runs) != 2:
            raise ValueError(f"--flip compares two runs (A then B); got {len(runs)} --run")
        keep = set(flips(runs[0], runs[1], gold, flip))
        chosen, name = [u for u in chosen if u in keep], [*name, flip]
    if p_true_min is not None or p_true_max is not None:
        lo, hi = p_true_min if p_true_min is not None else 0.0, p_true_max if p_true_max is not None else 1.0
        chosen, name = p_true_band(runs[0], chosen, lo, hi), [*name, f"p{lo:g}-{hi:g}"]
    if category:  # train_vlm runs: the row's task
        index = index if index is not None or texts else split_index(data_args, split)  # the examples' own categories

        def categories(u: str) -> list[str]:
            row = (index or {}).get(u) or {}
            meta, sentence = row.get("meta", {}), row.get("sentence") or ""
            cats = run_categories(runs, u, phenomena) + ([meta["category"]] if meta.get("category") else [])
            return cats + (phenomena or {}).get(sentence.strip(), [])  # as gallery_item: runs need not carry sentences

        chosen, name = [u for u in chosen if set(categories(u)) & set(category)], [*name, *category]
    if n_random is not None:
        chosen, name = random_draw(chosen, n_random, seed), [*name, f"random{n_random}-seed{seed}"]
    total = len(chosen)
    chosen = chosen[:limit]

    if texts:
        examples = find_rows(runs[0], chosen)
        items = [caption_item(ex, runs) for ex in examples.values()]
        data = [f"data: {describe(runs[0].data)} (named by run A's {runs[0].record_path})", SCORES]
    else:
        examples = find_examples(data_args, split, chosen)
        items = [gallery_item(ex, runs, phenomena) for ex in examples.values()]
        data = [f"data: {data_args.dataset_source}, split {split}" + (f" ({config})" if config else "")]

    out_dir = Path(out) if out else artifact_dir("analysis") / "gallery" / _slug(name)
    about = [
        *data,
        *(f"run {chr(65 + i)}: {r.name} ({r.path})" for i, r in enumerate(runs)),
        f"selection: {' / '.join(name)}; {len(items)} examples"
        + (f" (the first {limit} of {total}: raise --limit)" if total > limit else ""),
        f"written {datetime.now(UTC).isoformat(timespec='seconds')}",
    ]
    if not items:
        about.append("No example matched the selection.")
    page = write_gallery(items, out_dir, f"Gallery: {' / '.join(name)}", about, embed=embed)
    (out_dir / "uids.txt").write_text("".join(f"{u}\n" for u in examples), encoding="utf-8")
    print(page)
    return page


if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=__doc__.split("\n\n")[0])(main)
    try:
        app()
    except (DataError, ValueError, OSError) as e:  # bad input: one line naming it, no traceback
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
