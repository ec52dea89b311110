"""The gallery page's sorting and filtering: the orders (as selected, confidently wrong first, category, uid), the facts
each card carries for the filters (wrong, flipped, category, bookmarked, tag), the controls and the inline script that
applies them, from the controls or from the URL hash (`index.html#sort=confidence&wrong=1&tag=odd`).

Python ranks every card under every order (data-rank-<order>); the script only compares those ranks, so the page's
orders are the command line's (scripts/sample_gallery.py --sort) by construction. No network, no library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Literal, get_args

from evals.uid_selection import is_right

Sort = Literal["selection", "confidence", "category", "uid"]
SORTS = dict(zip(get_args(Sort), ("as selected", "confidently wrong first", "category", "uid"), strict=True))


@dataclass(frozen=True)
class CardFacts:
    """What the orders and filters look at: the uid, its categories, each run's record (None: no answer), the label."""

    uid: str
    categories: Sequence[str] = ()
    answers: Sequence[Mapping | None] = ()
    label: bool | None = None

    @property
    def first(self) -> Mapping | None:
        """Run A's record: the one --wrong, --p-true-min/max and the confidence order look at."""
        return self.answers[0] if self.answers else None


def miss(record: Mapping | None, label: bool | None) -> float | None:
    """How far the first run's answer is from the right one, larger is worse: |label - p_true| for a True/False
    answer (1: certain and wrong, 0: certain and right); minus the row's score for generated text; None without
    either."""
    if record is None:
        return None
    if record.get("p_true") is not None and label is not None:
        return abs(float(label) - record["p_true"])
    return None if record.get("score") is None else -float(record["score"])


def _natural(uid: str) -> list:
    """dev-9-0-0 before dev-10-0-0: digit runs compare as numbers (re.split alternates text, digits, text, ...)."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", uid))]


def _key(sort: str, facts: CardFacts) -> tuple:
    if sort == "confidence":
        m = miss(facts.first, facts.label)
        return (m is None, -(m or 0.0))  # no p_true (or score): last
    if sort == "category":
        return (not facts.categories, list(facts.categories[:1]))  # by the first category; none: last
    if sort == "uid":
        return (_natural(facts.uid),)
    return ()  # selection: the stable sort keeps the order given


def ordered(facts: Sequence[CardFacts], sort: str) -> list[int]:
    """Positions of `facts` in `sort` order; ties keep the order given."""
    if sort not in SORTS:
        raise ValueError(f"sort {sort!r} unknown; choose one of {list(SORTS)}")
    return sorted(range(len(facts)), key=lambda i: _key(sort, facts[i]))


def ranks(facts: Sequence[CardFacts]) -> list[dict[str, int]]:
    """Each card's place under every order."""
    out: list[dict[str, int]] = [{} for _ in facts]
    for sort in SORTS:
        for rank, i in enumerate(ordered(facts, sort)):
            out[i][sort] = rank
    return out


def verdict(record: Mapping | None, label: bool | None) -> bool | None:
    """Right (True), wrong (False) or neither (None): a True/False answer against the label; generated text by its
    exact match (questions; captions and chats have none)."""
    if record is None:
        return None
    if "scores" in record:
        em = (record["scores"] or {}).get("exact_match")
        return None if em is None else em == 1
    return is_right(record, label)


def flip(answers: Sequence[Mapping | None], label: bool | None) -> str | None:
    """wrong_to_right or right_to_wrong between the first two runs' answers, as evals/uid_selection.flips; else None."""
    if len(answers) < 2:
        return None
    pair = (verdict(answers[0], label), verdict(answers[1], label))
    return {(False, True): "wrong_to_right", (True, False): "right_to_wrong"}.get(pair)


def card_attributes(facts: CardFacts, tags: Sequence[str] | None, rank: Mapping[str, int]) -> str:
    """The card's data-* attributes (escaped): its ranks and what the filters test; tags None: not bookmarked."""
    values = {
        "uid": facts.uid,
        **{f"rank-{sort}": str(r) for sort, r in rank.items()},
        "categories": json.dumps(list(facts.categories)),
        "wrong": "1" if verdict(facts.first, facts.label) is False else "",
        "flip": flip(facts.answers, facts.label) or "",
        "bookmarked": "" if tags is None else "1",
        "tags": json.dumps(list(tags or [])),
    }
    return "".join(f' data-{name}="{escape(v)}"' for name, v in values.items())


def _select(name: str, label: str, options: Sequence[tuple[str, str]], chosen: str = "") -> str:
    opts = "".join(
        f'<option value="{escape(v)}"{" selected" if v == chosen else ""}>{escape(text)}</option>'
        for v, text in options
    )
    return f'<label>{escape(label)} <select name="{name}">{opts}</select></label>'


def _checkbox(name: str, label: str) -> str:
    return f'<label><input type="checkbox" name="{name}" value="1"> {escape(label)}</label>'


def controls(
    sort: str, categories: Sequence[str], tags: Sequence[str], runs: int, bookmarks: bool, texts: bool = False
) -> str:
    """The form above the cards: the order (`sort` chosen), then the filters that apply to this page (wrong with a
    run, flips with two, its categories, bookmarks and tags). texts: generated-text rows, ordered by score."""
    orders = SORTS | ({"confidence": "lowest score first"} if texts else {})
    parts = [_select("sort", "sort", list(orders.items()), sort)]
    if runs:
        parts.append(_checkbox("wrong", "wrong (run A)"))
    if runs >= 2:
        flip_options = [("", "any"), ("any", "flipped"), ("wrong_to_right", "wrong → right"),
                        ("right_to_wrong", "right → wrong")]  # fmt: skip
        parts.append(_select("flip", "A → B", flip_options))
    if categories:
        parts.append(_select("category", "category", [("", "any"), *((c, c) for c in categories)]))
    if bookmarks:
        parts.append(_checkbox("bookmarked", "bookmarked"))
    if tags:
        parts.append(_select("tag", "tag", [("", "any"), *((t, t) for t in tags)]))
    return f'<form class="controls">{"".join(parts)}<output></output></form>'


SCRIPT = """<script>
(() => {
  const form = document.querySelector("form.controls");
  const grid = document.querySelector("main.cards");
  const none = document.querySelector("p.none");
  const cards = Array.from(grid.querySelectorAll("section.example"));
  const list = (card, name) => JSON.parse(card.dataset[name] || "[]");
  const passes = {
    wrong: (card, v) => !v || card.dataset.wrong === "1",
    flip: (card, v) => !v || (v === "any" ? card.dataset.flip !== "" : card.dataset.flip === v),
    category: (card, v) => !v || list(card, "categories").includes(v),
    bookmarked: (card, v) => !v || card.dataset.bookmarked === "1",
    tag: (card, v) => !v || list(card, "tags").includes(v),
  };
  const fields = () => Array.from(form.elements).filter(el => el.name);
  const value = el => (el.type === "checkbox" ? (el.checked ? "1" : "") : el.value);
  function render() {
    const state = Object.fromEntries(fields().map(el => [el.name, value(el)]));
    const rank = card => Number(card.getAttribute("data-rank-" + state.sort));
    cards.sort((a, b) => rank(a) - rank(b));
    let shown = 0;
    for (const card of cards) {
      card.hidden = !Object.entries(passes).every(([name, test]) => test(card, state[name]));
      shown += card.hidden ? 0 : 1;
      grid.append(card);
    }
    form.querySelector("output").value = `${shown} of ${cards.length} shown`;
    none.hidden = shown > 0;
    return state;
  }
  function fromHash() {  // #sort=uid&wrong=1&category=negation: unknown names and values are left out
    const params = new URLSearchParams(location.hash.slice(1));
    for (const el of fields()) {
      const v = params.get(el.name);
      if (el.type === "checkbox") el.checked = v === "1";
      else {
        const options = Array.from(el.options);
        el.value = options.some(o => o.value === v) ? v : options.find(o => o.defaultSelected)?.value ?? "";
      }
    }
    render();
  }
  form.addEventListener("change", () => {
    const state = render();
    const params = new URLSearchParams(Object.entries(state).filter(([, v]) => v));
    history.replaceState(null, "", "#" + params);
  });
  form.addEventListener("submit", event => event.preventDefault());
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
</script>"""
