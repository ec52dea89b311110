"""A static HTML gallery for error analysis: both images, the sentence, the label, categories and each run's answer
(prediction, p_true), for examples chosen by uid, by a seeded random draw, from the UID cache or from evaluation runs.
For runs of training/train_vlm.py (a composed VLM): the image, the task, the question, each run's generated text, the
references and a per-row score, the rows rebuilt from the evaluation data the run's run_record.json names.

# 16 random examples of the embedded default's held-out split (synthetic, offline)
python scripts/sample_gallery.py --config evals/configs/embedded_zero_shot.yaml --random 16 --seed 0

# What a run got wrong, one category, confident mistakes only
python scripts/sample_gallery.py --config evals/configs/embedded_zero_shot.yaml \
    --run artifacts/evals/embedded-zero-shot --wrong --category negation --p-true-min 0.8

# The 48 most confidently wrong answers first (distance of p_true from the label), then by category or uid
python scripts/sample_gallery.py --config evals/configs/embedded_zero_shot.yaml \
    --run artifacts/evals/embedded-zero-shot --wrong --sort confidence --limit 48

# Flips between two runs (A then B): wrong -> right, or right -> wrong
python scripts/sample_gallery.py --config evals/configs/embedded_finetuned.yaml \
    --run artifacts/evals/embedded-zero-shot --run artifacts/evals/embedded-finetuned --flip wrong_to_right

# Bookmarks (scripts/uid_cache.py) with one tag; a uid list (e.g. compare.py's right_to_wrong.txt); one file
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
Default out: <artifact root>/analysis/gallery/<a name built from the selection>. The page is a grid of cards, in
--sort order (before --limit cuts), each with the UID cache's tags and note; its controls re-sort (as selected,
confidently wrong first, category, uid) and filter (wrong, flipped, category, bookmarked, tag), also from the URL hash:
index.html#sort=confidence&wrong=1&category=negation&flip=wrong_to_right&bookmarked=1&tag=odd.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from evals.caption_runs import SCORES, CaptionRun, caption_item, caption_runs, describe, find_rows, worst_first
from evals.comparison import FLIPS
from evals.gallery_controls import CardFacts, Sort, ordered
from evals.gallery_page import GalleryItem, write_gallery
from evals.prediction_files import load_annotations
from evals.uid_selection import Run, flips, gold_labels, load_runs, p_true_band, run_categories, wrong
from utils.artifacts import artifact_dir
from utils.errors import DataError
from utils.uid_bookmarks import UidCache
from vlm_datasets.config import DataArguments
from vlm_datasets.example import Example
from vlm_datasets.example_lookup import data_arguments, find_examples, random_draw, split_index


@dataclass
class DataOptions:
    """Where True/False examples come from: a data config, its overrides, gold labels and annotated phenomena."""

    config: Path | None
    split: str | None
    dataset_source: str | None
    dataset_path: str | None
    labels: Path | None
    synthetic_eval_size: int | None
    synthetic_seed: int | None
    annotations: Path | None


@dataclass
class Picks:
    """uids given by name: --uid, --uids-file and the UID cache's bookmarks (all of them, or one tag's)."""

    uid: list[str]
    uids_file: Path | None
    from_cache: bool
    tag: str | None
    uid_cache: Path | None

    def from_bookmarks(self) -> bool:
        return bool(self.from_cache or self.tag)


@dataclass
class Filters:
    """What narrows the chosen uids (see NARROWING): wrong answers, a flip, the p_true band, categories, a seeded
    random draw."""

    wrong_only: bool
    flip: str | None
    category: list[str]
    p_true_min: float | None
    p_true_max: float | None
    n_random: int | None
    seed: int

    def p_true_band(self) -> tuple[float, float] | None:
        """[lo, hi] of the first run's p_true (an end not given: 0 or 1); None when neither end is given."""
        lo, hi = self.p_true_min, self.p_true_max
        if lo is None and hi is None:
            return None
        return 0.0 if lo is None else lo, 1.0 if hi is None else hi

    def need_runs(self) -> bool:
        return bool(self.wrong_only or self.flip or self.p_true_band())


@dataclass
class Source:
    """The page's runs and data. True/False runs (or none): the configured split, gold labels and phenomena.
    train_vlm runs (`texts`): generated text with a score per row, on the data their run_record.json names."""

    runs: list[Run] | list[CaptionRun]
    texts: bool
    data_args: DataArguments
    split: str
    config: Path | None
    gold: dict[str, bool]
    phenomena: dict | None
    index: dict[str, dict] | None = None  # the split's text columns, read only when a choice needs them

    def split_index(self) -> dict[str, dict]:
        if self.index is None:
            self.index = split_index(self.data_args, self.split)
        return self.index

    def _row(self, uid: str) -> dict:
        """The split's text columns for uid (train_vlm runs: none, their rows are read with the images)."""
        return {} if self.texts else self.split_index().get(uid) or {}

    def categories(self, uid: str) -> list[str]:
        """train_vlm runs: the row's task (from the run); True/False: the runs', the example's own and phenomena."""
        row = self._row(uid)  # runs need not carry sentences: the split's do
        return _categories(self.runs, uid, row.get("meta", {}), row.get("sentence") or "", self.phenomena)

    def facts(self, uid: str) -> CardFacts:
        """What the page's orders look at, as its card will show them, without decoding an image."""
        answers = [r.records.get(uid) for r in self.runs]
        return CardFacts(uid, self.categories(uid), answers, self._row(uid).get("label"))

    def data_lines(self) -> list[str]:
        """The page's lines naming the data."""
        if self.texts:
            run = self.runs[0]
            return [f"data: {describe(run.data)} (named by run A's {run.record_path})", SCORES]
        return [
            f"data: {self.data_args.dataset_source}, split {self.split}" + (f" ({self.config})" if self.config else "")
        ]


@dataclass
class Selection:
    """The chosen uids in page order, and the words naming the choice (the page's title, the default folder)."""

    uids: list[str]
    name: list[str]

    def keep(self, uids: list[str], *words: str) -> Selection:
        """`uids` (in their order) as the choice, named by what narrowed it."""
        return Selection(uids, [*self.name, *words])

    def keep_chosen(self, kept: list[str], *words: str) -> Selection:
        """Those of the chosen uids in `kept`, in the chosen order."""
        kept_set = set(kept)
        return self.keep([u for u in self.uids if u in kept_set], *words)


def _slug(parts: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "_", "-".join(parts)).strip("_")[:100] or "gallery"


def _read_uids(path: Path) -> list[str]:
    """One uid a line (blank lines and # comments skipped): compare.py's flip lists, uids.txt of a gallery."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _categories(runs: list[Run], uid: str, meta: dict, sentence: str, phenomena: dict | None) -> list[str]:
    """The runs' categories for uid, the example's own, and its sentence's annotated phenomena (first-seen order)."""
    cats = run_categories(runs, uid, phenomena) + ([meta["category"]] if meta.get("category") else [])
    return list(dict.fromkeys(cats + (phenomena or {}).get(sentence.strip(), [])))


def gallery_item(ex: Example, runs: list[Run], phenomena: dict | None) -> GalleryItem:
    """The example with its categories and each run's record; refused when a run saw another sentence or label."""
    for r in runs:  # a run scored on other data than the config names would put wrong answers beside examples
        rec = r.records.get(ex.uid) or {}
        said, label = rec.get("sentence"), rec.get("label")
        if (isinstance(said, str) and said.strip() != ex.sentence.strip()) or label not in (None, ex.label):
            raise DataError(f"{r.path}, uid {ex.uid}", "sentence or label differs from the dataset's: wrong --config?")
    cats = _categories(runs, ex.uid, ex.meta, ex.sentence, phenomena)
    return GalleryItem(ex, cats, [(r.name, r.records.get(ex.uid)) for r in runs])


def _refuse_dataset_options(data: DataOptions, filters: Filters) -> None:
    """train_vlm runs name their own evaluation data and score rows instead of giving p_true: no options for those."""
    given = {**asdict(data), "flip": filters.flip, "p_true_min": filters.p_true_min, "p_true_max": filters.p_true_max}
    if refused := [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]:
        raise ValueError(
            f"{', '.join(refused)}: not with train_vlm runs, whose run_record.json names their evaluation data and "
            "whose rows have scores, not p_true (--wrong: lowest score first)"
        )


def load_source(run: list[Path], data: DataOptions, filters: Filters) -> Source:
    """The runs (train_vlm runs or True/False runs, never both) and the data their examples come from."""
    text_runs = caption_runs(run)  # None: True/False runs (or none)
    texts = text_runs is not None
    if texts:
        _refuse_dataset_options(data, filters)
    data_args = data_arguments(
        data.config,
        dataset_source=data.dataset_source,
        dataset_path=data.dataset_path,
        synthetic_eval_size=data.synthetic_eval_size,
        synthetic_seed=data.synthetic_seed,
    )
    runs = text_runs if texts else load_runs(run)
    return Source(
        runs=runs,
        texts=texts,
        data_args=data_args,
        split=data.split or data_args.dataset_eval_split,
        config=data.config,
        gold=gold_labels(runs, data.labels) if runs and not texts else {},
        phenomena=load_annotations(data.annotations) if data.annotations else None,
    )


def first_choice(source: Source, picks: Picks) -> Selection:
    """The uids to start from: those given by name (and bookmarks), else the first run's, else the whole split's."""
    explicit = picks.uid + (_read_uids(picks.uids_file) if picks.uids_file else [])
    name: list[str] = []
    if picks.from_bookmarks():
        explicit += [e.uid for e in UidCache(picks.uid_cache).entries(picks.tag)]
        name.append(f"cache-{picks.tag}" if picks.tag else "cache")
    if explicit or picks.from_bookmarks():
        chosen, name = list(dict.fromkeys(explicit)), name or ["uids"]
    elif source.runs:
        chosen = list(source.runs[0].records)
    else:
        chosen, name = list(source.split_index()), [source.split]
    return Selection(chosen, name + [r.name for r in source.runs[:2]])


def _wrong(source: Source, chosen: Selection, filters: Filters) -> Selection:
    if not filters.wrong_only:
        return chosen
    if source.texts:  # scored per row: the lowest first
        kept = set(chosen.uids)
        return chosen.keep([u for u in worst_first(source.runs[0]) if u in kept], "worst")
    return chosen.keep_chosen(wrong(source.runs[0], source.gold), "wrong")


def _flip(source: Source, chosen: Selection, filters: Filters) -> Selection:
    if not filters.flip:
        return chosen
    if len(source.runs) != 2:
        raise ValueError(f"--flip compares two runs (A then B); got {len(source.runs)} --run")
    return chosen.keep_chosen(flips(source.runs[0], source.runs[1], source.gold, filters.flip), filters.flip)


def _p_true(source: Source, chosen: Selection, filters: Filters) -> Selection:
    if (band := filters.p_true_band()) is None:
        return chosen
    lo, hi = band
    return chosen.keep(p_true_band(source.runs[0], chosen.uids, lo, hi), f"p{lo:g}-{hi:g}")


def _in_category(source: Source, chosen: Selection, filters: Filters) -> Selection:
    if not filters.category:
        return chosen
    wanted = set(filters.category)
    return chosen.keep([u for u in chosen.uids if set(source.categories(u)) & wanted], *filters.category)


def _random(source: Source, chosen: Selection, filters: Filters) -> Selection:
    if filters.n_random is None:
        return chosen
    n, seed = filters.n_random, filters.seed
    return chosen.keep(random_draw(chosen.uids, n, seed), f"random{n}-seed{seed}")


NARROWING = (_wrong, _flip, _p_true, _in_category, _random)  # in this order; each leaves the choice alone when off


def narrow(source: Source, chosen: Selection, filters: Filters) -> Selection:
    """The chosen uids through each filter of NARROWING."""
    if filters.need_runs() and not source.runs:
        raise ValueError("--wrong, --flip and --p-true-min/max choose from runs: give at least one --run")
    for step in NARROWING:
        chosen = step(source, chosen, filters)
    return chosen


def sorted_choice(source: Source, chosen: Selection, sort: str) -> Selection:
    """The chosen uids in the page's order (evals/gallery_controls.SORTS), before --limit cuts."""
    if sort == "selection":
        return chosen
    order = ordered([source.facts(u) for u in chosen.uids], sort)
    return chosen.keep([chosen.uids[i] for i in order], f"by-{sort}")


def add_bookmarks(items: dict[str, GalleryItem], cache: Path | None) -> Path | None:
    """Each item's UID cache entry (tags, note); returns the cache's path when one of the items has an entry."""
    store = UidCache(cache)
    marks = {e.uid: e for e in store.entries()}
    for uid, item in items.items():
        item.bookmark = marks.get(uid)
    return store.path if any(u in marks for u in items) else None


def load_items(source: Source, uids: list[str]) -> dict[str, GalleryItem]:
    """The page's items by uid: train_vlm rows rebuilt from the data their run names, or the split's examples."""
    if source.texts:
        rows = find_rows(source.runs[0], uids)
        return {u: caption_item(ex, source.runs) for u, ex in rows.items()}
    examples = find_examples(source.data_args, source.split, uids)
    return {u: gallery_item(ex, source.runs, source.phenomena) for u, ex in examples.items()}


def page_notes(source: Source, chosen: Selection, n_items: int, limit: int, cache: Path | None = None) -> list[str]:
    """The lines above the items: data, runs, the UID cache shown, the selection (and what --limit cut), when it was
    written."""
    total = len(chosen.uids)
    notes = [
        *source.data_lines(),
        *(f"run {chr(65 + i)}: {r.name} ({r.path})" for i, r in enumerate(source.runs)),
        *([f"tags and notes: UID cache {cache}"] if cache else []),
        f"selection: {' / '.join(chosen.name)}; {n_items} examples"
        + (f" (the first {limit} of {total}: raise --limit)" if total > limit else ""),
        f"written {datetime.now(UTC).isoformat(timespec='seconds')}",
    ]
    return notes if n_items else [*notes, "No example matched the selection."]


def write_page(
    items: dict[str, GalleryItem], shown: Selection, notes: list[str], out_dir: Path, embed: bool, sort: str
) -> Path:
    """index.html (and images/ unless embed) and uids.txt, the uids shown in page order; returns index.html. `items`
    in the selection's order (the page's "as selected"), `shown` in the page's."""
    title = f"Gallery: {' / '.join(shown.name)}"
    page = write_gallery(list(items.values()), out_dir, title, notes, embed=embed, sort=sort)
    (out_dir / "uids.txt").write_text("".join(f"{u}\n" for u in shown.uids), encoding="utf-8")
    return page


Opt = typer.Option


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
    sort: Annotated[Sort, Opt(help="The page's order (before --limit cuts); the page re-sorts.")] = "selection",
    limit: Annotated[int, Opt(help="At most this many examples on the page.")] = 200,
    out: Annotated[Path | None, Opt(help="Output folder (default under <root>/analysis/gallery).")] = None,
    embed: Annotated[bool, Opt(help="Images as data URIs inside index.html instead of PNG files.")] = False,
) -> Path:
    """Choose the uids, load their examples from the configured dataset and write the gallery; returns index.html.
    Runs of training/train_vlm.py (generated text) bring their own data: the rows their run_record.json names."""
    data = DataOptions(
        config, split, dataset_source, dataset_path, labels, synthetic_eval_size, synthetic_seed, annotations
    )
    picks = Picks(list(uid or []), uids_file, from_cache, tag, uid_cache)
    filters = Filters(wrong_only, flip, list(category or []), p_true_min, p_true_max, n_random, seed)

    source = load_source(list(run or []), data, filters)
    chosen = narrow(source, first_choice(source, picks), filters)
    in_order = sorted_choice(source, chosen, sort)
    shown = in_order.keep(in_order.uids[:limit])
    kept = set(shown.uids)
    items = load_items(source, [u for u in chosen.uids if u in kept])
    cache = add_bookmarks(items, uid_cache)
    out_dir = Path(out) if out else artifact_dir("analysis") / "gallery" / _slug(in_order.name)
    page = write_page(items, shown, page_notes(source, in_order, len(items), limit, cache), out_dir, embed, sort)
    print(page)
    return page


if __name__ == "__main__":
    from utils.cli import run_typer

    run_typer(main, help=__doc__.split("\n\n")[0], user_errors=(ValueError,))
