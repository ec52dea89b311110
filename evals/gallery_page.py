"""A static HTML gallery of examples: images side by side, sentence, label, categories and each run's answer; or,
for a composed VLM's rows (GalleryItem.text), the images, the question, the references and each run's generated text
with its score.

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

from evals.uid_selection import is_right
from utils.atomic_write import write_text_atomic
from utils.file_names import image_file_name, safe_stem
from vlm_datasets.example import Example

IMAGE_DIR = "images"
SMALL = 200  # pixels: smaller images are scaled up without smoothing (the synthetic 56x56 ones)

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
.about { color: #555; margin: 0.2rem 0; }
.example { border: 1px solid #ccc; border-radius: 6px; padding: 0.8rem 1rem; margin: 1rem 0; }
.example h2 { font-size: 1rem; margin: 0 0 0.5rem; }
.tag { background: #eef; border-radius: 3px; padding: 0 0.4rem; margin-left: 0.4rem; font-weight: normal; }
.pair { display: flex; gap: 1rem; }
figure { margin: 0; flex: 0 1 auto; max-width: 48%; }
figure img { max-width: 100%; max-height: 320px; border: 1px solid #ddd; }
figure img.small { width: 224px; image-rendering: pixelated; }
.sentence { font-size: 1.1rem; margin: 0.6rem 0 0.3rem; }
table { border-collapse: collapse; } td, th { padding: 0.15rem 0.6rem; text-align: left; }
tr.right td:last-child { color: #080; } tr.wrong td:last-child { color: #b00; }
.turn { color: #555; margin: 0.2rem 0; } ol.references { margin: 0.2rem 0 0.6rem; }
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
        cells, verdict, css = ("no prediction", ""), "", ""
    else:
        pred = record["prediction"]
        p_true = record.get("p_true")
        cells = ("unparseable" if pred is None else str(pred), "" if p_true is None else f"{p_true:.3f}")
        right = is_right(record, label)
        verdict, css = {True: ("right", "right"), False: ("wrong", "wrong"), None: ("", "")}[right]
        if record.get("raw"):
            cells = (f"{cells[0]} ({record['raw']!r})", cells[1])
    tds = "".join(f"<td>{escape(c)}</td>" for c in (run, *cells, verdict))
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
        em = scores.get("exact_match")
        css = "" if em is None else ("right" if em == 1 else "wrong")
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


def render_item(item: GalleryItem, sources: Sequence[str]) -> str:
    ex = item.example
    tags = "".join(f'<span class="tag">{escape(c)}</span>' for c in item.categories)
    figures = []
    for i, (src, image) in enumerate(zip(sources, ex.images, strict=True)):
        side = _side(i, len(ex.images))
        small = ' class="small"' if max(image.size) < SMALL else ""
        alt = escape(f"{side} image of {ex.uid}")
        figures.append(
            f'<figure><img src="{escape(src)}" alt="{alt}"{small}>'
            f"<figcaption>{escape(side)} ({image.size[0]}x{image.size[1]})</figcaption></figure>"
        )
    parts = [
        f'<section class="example" id="{escape(safe_stem(ex.uid))}">',
        f"<h2><code>{escape(ex.uid)}</code>{tags}</h2>",
        f'<div class="pair">{"".join(figures)}</div>',
        *(_text_parts(item) if item.text is not None else _label_parts(item)),
    ]
    parts.append("</section>")
    return "\n".join(parts)


def write_gallery(
    items: Sequence[GalleryItem], out_dir: str | Path, title: str, about: Sequence[str] = (), embed: bool = False
) -> Path:
    """Write out_dir/index.html (and out_dir/images/*.png unless embed); returns the page's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [render_item(item, image_sources(item.example, out_dir, embed)) for item in items]
    about_html = "".join(f'<p class="about">{escape(line)}</p>' for line in about)
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{about_html}\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )
    return write_text_atomic(out_dir / "index.html", page)
