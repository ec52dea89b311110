"""A static HTML gallery of examples as a grid of cards: images side by side, sentence, label, categories, each run's
answer and the UID cache's tags and note; or, for a composed VLM's rows (GalleryItem.text), the images, the question,
the references and each run's generated text with its score. Controls above the cards re-sort and filter them in the
page (evals/gallery_controls.py); the page needs no network.

Every piece of text on the page goes through html.escape; image files are named from sanitized uids
(utils.file_names), or the images are embedded as data URIs so the page is one self-contained file.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from PIL import Image

from evals.gallery_controls import SCRIPT, SORTS, CardFacts, card_attributes, controls, ordered, ranks, verdict
from utils.atomic_write import write_text_atomic
from utils.file_names import image_file_name, safe_stem
from utils.uid_bookmarks import Bookmark
from vlm_datasets.example import Example

IMAGE_DIR = "images"
SMALL = 200  # pixels: smaller images are scaled up without smoothing (the synthetic 56x56 ones)

CSS = """
body { font-family: system-ui, sans-serif; margin: 1rem 1.5rem; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 0.3rem; }
.about { color: #555; margin: 0.1rem 0; font-size: 0.85rem; }
form.controls { display: flex; flex-wrap: wrap; align-items: center; gap: 0.3rem 1.2rem; margin: 0.6rem 0;
  padding: 0.4rem 0.7rem; background: #f2f3f7; border-radius: 6px; font-size: 0.9rem; position: sticky; top: 0; }
form.controls output { color: #555; margin-left: auto; }
main.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 0.7rem;
  align-items: start; }
.example { border: 1px solid #ccc; border-radius: 6px; padding: 0.5rem 0.6rem; font-size: 0.85rem; min-width: 0; }
.example[hidden], p.none[hidden] { display: none; }
.example h2 { font-size: 0.85rem; margin: 0 0 0.3rem; overflow-wrap: anywhere; }
.tag { background: #eef; border-radius: 3px; padding: 0 0.3rem; margin-left: 0.3rem; font-weight: normal; }
.pair { display: flex; gap: 0.4rem; }
figure { margin: 0; flex: 1 1 0; min-width: 0; }
figure img { display: block; width: 100%; height: 130px; object-fit: contain; background: #fafafa;
  border: 1px solid #ddd; box-sizing: border-box; }
figure img.small { image-rendering: pixelated; }
figcaption { font-size: 0.75rem; color: #666; }
.sentence { font-size: 0.95rem; margin: 0.35rem 0 0.2rem; overflow-wrap: anywhere; }
.label { margin: 0.1rem 0; }
table { border-collapse: collapse; width: 100%; } td, th { padding: 0.05rem 0.3rem; text-align: left; }
td { overflow-wrap: anywhere; }
tr.right td:last-child { color: #080; } tr.wrong td:last-child { color: #b00; }
.bookmark { margin: 0.3rem 0 0; padding: 0.2rem 0.4rem; background: #fff5d1; border-radius: 4px; }
.mark { background: #f5d36b; border-radius: 3px; padding: 0 0.3rem; margin-right: 0.3rem; }
.note { white-space: pre-line; color: #5a4a10; overflow-wrap: anywhere; }
.turn { color: #555; margin: 0.2rem 0; } ol.references { margin: 0.2rem 0 0.4rem; padding-left: 1.4rem; }
"""


SCORE_NAMES = {"exact_match": "exact match", "cider": "CIDEr-D", "rouge_l": "ROUGE-L"}  # evals/vlm_eval.row_scores


@dataclass
class GeneratedText:
    """A generated-text row (a composed VLM's caption, question or chat turn): how it is scored and against what."""

    task: str  # caption | qa | chat
    references: list[str]
    history: list[dict] = field(default_factory=list)  # earlier chat turns, {"role", "content"}


@dataclass
class GalleryItem:
    example: Example  # with text: the user turn as its sentence, label None
    categories: list[str] = field(default_factory=list)
    answers: list[tuple[str, dict | None]] = field(default_factory=list)  # (run name, its record or None)
    text: GeneratedText | None = None  # None: a True/False item (answers hold prediction, p_true)
    bookmark: Bookmark | None = None  # the UID cache's entry: tags and note shown on the card

    def facts(self) -> CardFacts:
        """What the page's orders and filters look at."""
        return CardFacts(self.example.uid, self.categories, [rec for _, rec in self.answers], self.example.label)


def _side(index: int, count: int) -> str:
    return ("left", "right")[index] if count == 2 else f"image {index + 1}"


def _data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_sources(example: Example, out_dir: Path, embed: bool) -> list[str]:
    """src attributes for the example's images: PNG files written under out_dir/images, or data URIs."""
    if embed:
        return [_data_uri(im) for im in example.images]
    (out_dir / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    sources = []
    for i, image in enumerate(example.images):
        name = image_file_name(example.uid, i)
        image.save(out_dir / IMAGE_DIR / name, format="PNG")
        sources.append(f"{IMAGE_DIR}/{name}")
    return sources


def _answer_row(run: str, record: dict | None, label: bool | None) -> str:
    if record is None:
        cells, word, css = ("no prediction", ""), "", ""
    else:
        pred = record["prediction"]
        p_true = record.get("p_true")
        cells = ("unparseable" if pred is None else str(pred), "" if p_true is None else f"{p_true:.3f}")
        word, css = {True: ("right", "right"), False: ("wrong", "wrong"), None: ("", "")}[verdict(record, label)]
        if record.get("raw"):
            cells = (f"{cells[0]} ({record['raw']!r})", cells[1])
    tds = "".join(f"<td>{escape(c)}</td>" for c in (run, *cells, word))
    return f'<tr class="{css}">{tds}</tr>'


def _label_parts(item: GalleryItem) -> list[str]:
    """The sentence, the label and each run's prediction with p_true."""
    ex = item.example
    label = "unlabeled" if ex.label is None else str(ex.label)
    parts = [f'<p class="sentence">{escape(ex.sentence)}</p>', f'<p class="label">label: <b>{escape(label)}</b></p>']
    if item.answers:
        head = "<tr><th>run</th><th>prediction</th><th>p_true</th><th></th></tr>"
        rows = "".join(_answer_row(run, rec, ex.label) for run, rec in item.answers)
        parts.append(f'<table class="runs">{head}{rows}</table>')
    return parts


def _text_row(run: str, record: dict | None) -> str:
    """A generated-text run's row: its text and per-row scores (a question right or wrong by exact match)."""
    if record is None:
        cells, css = ("no prediction", ""), ""
    else:
        scores = record.get("scores") or {}
        shown = ", ".join(f"{SCORE_NAMES.get(k, k)} {v:.3g}" for k, v in scores.items())
        cells = (record["prediction"] or "(empty)", shown)
        css = {True: "right", False: "wrong", None: ""}[verdict(record, None)]
    tds = "".join(f"<td>{escape(c)}</td>" for c in (run, *cells))
    return f'<tr class="{css}">{tds}</tr>'


def _text_parts(item: GalleryItem) -> list[str]:
    """Earlier turns, the user turn, the references and each run's generated text."""
    text, ex = item.text, item.example
    parts = [f'<p class="turn">{escape(t["role"])}: {escape(t["content"])}</p>' for t in text.history]
    parts.append(f'<p class="sentence">{"prompt" if text.task == "caption" else "question"}: {escape(ex.sentence)}</p>')
    refs = "".join(f"<li>{escape(r)}</li>" for r in text.references)
    parts.append(f'<p class="label">references ({len(text.references)}):</p><ol class="references">{refs}</ol>')
    if item.answers:
        head = "<tr><th>run</th><th>generated</th><th>score</th></tr>"
        rows = "".join(_text_row(run, rec) for run, rec in item.answers)
        parts.append(f'<table class="runs">{head}{rows}</table>')
    return parts


def _bookmark(mark: Bookmark | None) -> list[str]:
    """The UID cache's tags and note."""
    if mark is None:
        return []
    tags = "".join(f'<span class="mark">{escape(t)}</span>' for t in mark.tags or ["bookmarked"])
    note = f'<span class="note">{escape(mark.note)}</span>' if mark.note else ""
    return [f'<p class="bookmark">{tags}{note}</p>']


def _figures(ex: Example, sources: Sequence[str]) -> str:
    figures = []
    for i, (src, image) in enumerate(zip(sources, ex.images, strict=True)):
        side = _side(i, len(ex.images))
        small = ' class="small"' if max(image.size) < SMALL else ""
        alt = escape(f"{side} image of {ex.uid}")
        figures.append(
            f'<figure><img src="{escape(src)}" alt="{alt}"{small}>'
            f"<figcaption>{escape(side)} ({image.size[0]}x{image.size[1]})</figcaption></figure>"
        )
    return f'<div class="pair">{"".join(figures)}</div>'


def render_item(item: GalleryItem, sources: Sequence[str], rank: dict[str, int] | None = None) -> str:
    """One card; `rank`: its place under each of the page's orders (default: first under all)."""
    ex = item.example
    tags = "".join(f'<span class="tag">{escape(c)}</span>' for c in item.categories)
    rank = rank or dict.fromkeys(SORTS, 0)
    marks = None if item.bookmark is None else item.bookmark.tags
    parts = [
        f'<section class="example" id="{escape(safe_stem(ex.uid))}"{card_attributes(item.facts(), marks, rank)}>',
        f"<h2><code>{escape(ex.uid)}</code>{tags}</h2>",
        _figures(ex, sources),
        *(_text_parts(item) if item.text is not None else _label_parts(item)),
        *_bookmark(item.bookmark),
        "</section>",
    ]
    return "\n".join(parts)


def _controls(items: Sequence[GalleryItem], sort: str) -> str:
    """The controls for what this page holds: its runs, categories, bookmarks and their tags."""
    marks = [item.bookmark for item in items if item.bookmark is not None]
    categories = sorted({c for item in items for c in item.categories})
    tags = sorted({t for mark in marks for t in mark.tags})
    runs = max((len(item.answers) for item in items), default=0)
    texts = bool(items) and all(item.text is not None for item in items)
    return controls(sort, categories, tags, runs, bookmarks=bool(marks), texts=texts)


def write_gallery(
    items: Sequence[GalleryItem],
    out_dir: str | Path,
    title: str,
    about: Sequence[str] = (),
    embed: bool = False,
    sort: str = "selection",
) -> Path:
    """Write out_dir/index.html (and out_dir/images/*.png unless embed); returns the page's path. `items` in the
    selection's order; the cards in `sort` order (evals/gallery_controls.SORTS), the page's controls re-sort them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = [item.facts() for item in items]
    places = ranks(facts)
    cards = [
        render_item(items[i], image_sources(items[i].example, out_dir, embed), places[i]) for i in ordered(facts, sort)
    ]
    about_html = "".join(f'<p class="about">{escape(line)}</p>' for line in about)
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{about_html}\n{_controls(items, sort)}\n"
        '<main class="cards">\n' + "\n".join(cards) + "\n</main>\n"
        '<p class="none" hidden>No example matches these filters.</p>\n'
        f"{SCRIPT}\n</body>\n</html>\n"
    )
    return write_text_atomic(out_dir / "index.html", page)
