"""The gallery: each way of choosing uids on fixture runs, the --sort orders, the UID cache's tags and notes on the
cards, escaping of hostile text, file names from odd uids, and headless Chromium renderings: every image loads and the
sentence shows as text; at 1400x1800 at least 8 whole cards fit the first screen; the URL hash and the controls
re-sort and filter the cards as the command line would. Composed-VLM runs (real training/train_vlm.py runs of two
steps): generated text, references, per-row scores and the images of the data their run_record.json names (synthetic
by seed, COCO layout, LLaVA JSON, a hub-style parquet folder), and the errors for rows that data lacks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import datasets
import pytest
from PIL import Image

from evals.caption_runs import load_caption_run
from evals.prediction_files import read_generated
from scripts import sample_gallery
from utils.errors import DataError
from utils.file_names import safe_stem
from utils.uid_bookmarks import UidCache
from vlm_datasets.captions import synthetic_rows
from vlm_datasets.example_lookup import data_arguments, random_draw, split_index


def chosen(page: Path) -> list[str]:
    return (page.parent / "uids.txt").read_text().splitlines()


class Cards(HTMLParser):
    """The cards of a page (or of the DOM Chromium dumps) in document order: (uid, hidden)."""

    def __init__(self, html: str):
        super().__init__()
        self.cards: list[tuple[str, bool]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and attrs.get("class") == "example":
            self.cards.append((attrs["data-uid"], "hidden" in attrs))

    def order(self) -> list[str]:
        return [uid for uid, _ in self.cards]

    def shown(self) -> list[str]:
        return [uid for uid, hidden in self.cards if not hidden]


def positions(split_rows, keep) -> list[str]:
    return [u for i, u in enumerate(split_rows) if keep(i)]


def test_random_draw_is_seeded_and_defaults_under_the_artifact_root(synthetic_config, split_rows, isolated_artifacts):
    page = sample_gallery.main(config=synthetic_config, n_random=5, seed=1)
    assert page.parent.parent == isolated_artifacts.resolve() / "analysis" / "gallery"
    first = chosen(page)
    assert len(first) == 5 and set(first) <= set(split_rows)
    assert first == [u for u in split_rows if u in first]  # kept in the split's order
    assert chosen(sample_gallery.main(config=synthetic_config, n_random=5, seed=1)) == first
    assert chosen(sample_gallery.main(config=synthetic_config, n_random=5, seed=2)) != first
    assert len(list((page.parent / "images").glob("*.png"))) == 10


def test_wrong_flips_category_and_p_true_band(synthetic_config, split_rows, runs, tmp_path):
    a, b = runs

    def pick(**kw):
        return chosen(sample_gallery.main(config=synthetic_config, out=tmp_path / "g", **kw))

    assert pick(run=[a], wrong_only=True) == positions(split_rows, lambda i: i % 2 == 1)
    assert pick(run=[a, b], flip="wrong_to_right") == positions(split_rows, lambda i: i % 2 == 1 and i % 3 != 0)
    assert pick(run=[a, b], flip="right_to_wrong") == positions(split_rows, lambda i: i % 2 == 0 and i % 3 == 0)
    # p_true = i / 23: [0.25, 0.5] holds positions 6..11
    assert pick(run=[a], p_true_min=0.25, p_true_max=0.5) == positions(split_rows, lambda i: 6 <= i <= 11)
    assert pick(run=[a], wrong_only=True, p_true_min=0.25, p_true_max=0.5) == positions(
        split_rows, lambda i: i in (7, 9, 11)
    )
    category = next(iter(split_rows.values()))["meta"]["category"]
    in_category = [u for u, r in split_rows.items() if r["meta"]["category"] == category]
    assert pick(run=[a], category=[category]) == in_category
    assert pick(category=[category]) == in_category  # without runs: the examples' own categories
    assert pick(run=[a], n_random=3, seed=0) == pick(run=[a], n_random=3, seed=0)


def test_category_uses_annotated_phenomena_when_runs_carry_no_sentence(synthetic_config, split_rows, runs, tmp_path):
    a, _ = runs
    rows = [json.loads(line) for line in (a / "predictions.jsonl").read_text().splitlines()]
    (a / "predictions.jsonl").write_text("".join(json.dumps(r | {"sentence": None}) + "\n" for r in rows))
    sentences = [r["sentence"] for r in split_rows.values()]
    annotations = tmp_path / "annotated_dev_examples.txt"
    annotations.write_text(f"{sentences[2]}\n* odd phenomenon\n\n{sentences[5]}\n* odd phenomenon\n")
    marked = [u for u, r in split_rows.items() if r["sentence"] in (sentences[2], sentences[5])]

    def pick(**kw):
        page = sample_gallery.main(config=synthetic_config, annotations=annotations, out=tmp_path / "g", **kw)
        return chosen(page)

    assert pick(run=[a], category=["odd phenomenon"]) == marked  # the sentence comes from the dataset
    assert pick(category=["odd phenomenon"]) == marked


def test_uid_lists_and_the_uid_cache(synthetic_config, split_rows, tmp_path):
    uids = list(split_rows)
    listed = tmp_path / "right_to_wrong.txt"
    listed.write_text(f"# from compare.py\n{uids[5]}\n\n{uids[2]}\n")
    page = sample_gallery.main(config=synthetic_config, uid=[uids[7]], uids_file=listed, out=tmp_path / "g1")
    assert chosen(page) == [uids[7], uids[5], uids[2]]  # the order given
    cache = UidCache(tmp_path / "cache.json")
    cache.add(uids[3], ["odd"])
    cache.add(uids[1], ["other"])
    cache.add(uids[0], ["odd"])
    page = sample_gallery.main(config=synthetic_config, tag="odd", uid_cache=cache.path, out=tmp_path / "g2")
    assert chosen(page) == [uids[3], uids[0]]
    page = sample_gallery.main(config=synthetic_config, from_cache=True, uid_cache=cache.path, limit=2)
    assert chosen(page) == [uids[3], uids[1]] and "the first 2 of 3" in page.read_text()


def test_page_shows_every_runs_answer(synthetic_config, split_rows, runs, tmp_path):
    a, b = runs
    uid = list(split_rows)[3]  # A wrong (odd), B wrong (divisible by 3)
    html = sample_gallery.main(config=synthetic_config, uid=[uid], run=[a, b], out=tmp_path / "g").read_text()
    assert html.count("<tr class=") == 2 and f"{3 / (len(split_rows) - 1):.3f}" in html
    assert html.count('class="wrong"') == 2 and "run_a" in html and "run_b" in html
    assert split_rows[uid]["meta"]["category"] in html and split_rows[uid]["sentence"] in html


def test_bad_selections_are_refused(synthetic_config, split_rows, runs, tmp_path):
    a, _ = runs
    with pytest.raises(ValueError, match="two runs"):
        sample_gallery.main(config=synthetic_config, run=[a], flip="wrong_to_right")
    with pytest.raises(ValueError, match="--run"):
        sample_gallery.main(config=synthetic_config, wrong_only=True)
    with pytest.raises(DataError, match="uid 'nope' not found"):
        sample_gallery.main(config=synthetic_config, uid=["nope"])
    rows = [json.loads(line) for line in (a / "predictions.jsonl").read_text().splitlines()]
    rows[0]["sentence"] = "Another dataset's sentence."
    (a / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="sentence or label differs"):
        sample_gallery.main(config=synthetic_config, run=[a], out=tmp_path / "g")
    rows[0]["sentence"], rows[1]["label"] = split_rows[rows[0]["uid"]]["sentence"], not rows[1]["label"]
    (a / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"uid {rows[1]['uid']}: sentence or label differs"):
        sample_gallery.main(config=synthetic_config, run=[a], out=tmp_path / "g")


def test_sort_orders_the_page_before_the_limit_cuts(synthetic_config, split_rows, runs, tmp_path):
    a, b = runs
    uids = list(split_rows)

    def pick(**kw):
        page = sample_gallery.main(config=synthetic_config, out=tmp_path / "g", **kw)
        assert Cards(page.read_text()).order() == chosen(page)  # the cards in uids.txt's order
        return chosen(page)

    # run A's p_true is i / 23: its distance from the label, largest (most confidently wrong) first, ties as selected
    distance = {u: abs(r["label"] - i / (len(uids) - 1)) for i, (u, r) in enumerate(split_rows.items())}
    by_confidence = sorted(uids, key=lambda u: -distance[u])
    assert pick(run=[a, b], sort="confidence") == by_confidence != uids
    assert pick(run=[a, b], sort="confidence", limit=5) == by_confidence[:5]  # the 5 most confident, not the first 5
    wrong_a = set(pick(run=[a], wrong_only=True))
    assert pick(run=[a], wrong_only=True, sort="confidence") == [u for u in by_confidence if u in wrong_a]
    assert pick(run=[a], sort="category") == sorted(uids, key=lambda u: split_rows[u]["meta"]["category"])
    assert pick(uid=[uids[5], uids[2]], sort="confidence") == [uids[5], uids[2]]  # no run, no p_true: as given
    many = list(split_index(data_arguments(synthetic_config, synthetic_eval_size=48), "test"))  # syn_test-0 .. -11
    by_uid = pick(uid=many[::-1], synthetic_eval_size=48, sort="uid")
    assert by_uid == many != sorted(many)  # syn_test-2-... before syn_test-10-...
    with pytest.raises(ValueError, match="sort 'loudest' unknown"):
        pick(run=[a], sort="loudest")


def test_cards_show_the_uid_caches_tags_and_notes(synthetic_config, split_rows, tmp_path):
    uids = list(split_rows)
    cache = UidCache(tmp_path / "cache.json")
    cache.add(uids[3], ["odd", "<i>x</i>"], "right image looks <b>empty</b>")
    cache.add(uids[3], [], "second look: fine")
    cache.add(uids[6])
    page = sample_gallery.main(config=synthetic_config, uid=uids[2:7], uid_cache=cache.path, out=tmp_path / "g")
    html = page.read_text()
    marked = section(html, uids[3])
    assert '<span class="mark">odd</span><span class="mark">&lt;i&gt;x&lt;/i&gt;</span>' in marked
    assert '<span class="note">right image looks &lt;b&gt;empty&lt;/b&gt;\nsecond look: fine</span>' in marked
    assert '<span class="mark">bookmarked</span>' in section(html, uids[6])  # no tag
    assert 'class="bookmark"' not in section(html, uids[4])
    assert f"tags and notes: UID cache {cache.path}" in html
    unmarked = sample_gallery.main(config=synthetic_config, uid=[uids[4]], uid_cache=cache.path, out=tmp_path / "h")
    assert "tags and notes" not in unmarked.read_text()
    cache.path.write_text('{"entries": [')
    with pytest.raises(DataError, match=f"{re.escape(str(cache.path))}: UID cache is not valid JSON"):
        sample_gallery.main(config=synthetic_config, uid=[uids[4]], uid_cache=cache.path, out=tmp_path / "h")


def odd_gallery(manifest: Path, out: Path, embed: bool = False) -> Path:
    """The odd_manifest fixture's two examples, the odd uid first."""
    uids = [json.loads(line)["uid"] for line in (manifest / "dev.jsonl").read_text().splitlines()][::-1]
    args = {"dataset_source": "jsonl", "dataset_path": str(manifest), "split": "dev"}
    return sample_gallery.main(**args, uid=uids, out=out, embed=embed)


def test_text_is_escaped_and_file_names_are_sanitized(odd_manifest, tmp_path):
    out = tmp_path / "gallery"
    html = odd_gallery(odd_manifest, out).read_text()
    assert html.count("<script>") == 1 and "<script>window" not in html and "<b>not bold</b>" not in html  # ours only
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt; &amp; &quot;quotes&quot; &lt;b&gt;not bold&lt;/b&gt;" in html
    assert "odd/../uid &lt;1&gt;&amp;2" in html
    names = sorted(p.name for p in (out / "images").iterdir())
    assert len(names) == 4 and all(re.fullmatch(r"[A-Za-z0-9_-]+-img[01]\.png", n) for n in names)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(["index.html", "uids.txt", *names])
    for src in re.findall(r'src="([^"]+)"', html):
        assert (out / src).resolve().parent == (out / "images").resolve()
    embedded = odd_gallery(odd_manifest, tmp_path / "embedded", embed=True).read_text()
    assert embedded.count('src="data:image/png;base64,') == 4 and not (tmp_path / "embedded" / "images").exists()


CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
  document.title = `images:${images.length}:${ok ? "ok" : "broken"}:pwned:${window.pwned ? 1 : 0}`;
});
</script>
</body>"""


def chromium(*args: str) -> str:
    """Run headless Chromium (Debian's package); skipped when it is missing, except where VLM_STUDIES_REQUIRE_BROWSER=1
    (.ci/run sets it, so CI never skips the browser tests)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        install = "install it with: apt-get update && apt-get install -y chromium"
        if os.environ.get("VLM_STUDIES_REQUIRE_BROWSER") == "1":
            pytest.fail(f"chromium not found and VLM_STUDIES_REQUIRE_BROWSER=1: {install}")
        pytest.skip(f"chromium not found: {install}")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000"]  # fmt: skip
    done = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.integration
@pytest.mark.parametrize("embed", [False, True])
def test_gallery_renders_in_headless_chromium(odd_manifest, tmp_path, embed):
    page = odd_gallery(odd_manifest, tmp_path / "gallery", embed=embed)
    check = page.with_name("check.html")  # beside the page, so relative image paths resolve the same way
    check.write_text(page.read_text().replace("</body>", CHECK))
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    dom = chromium(profile, "--dump-dom", check.as_uri())
    assert "<title>images:4:ok:pwned:0</title>" in dom  # every image decoded; the sentence's script never ran
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt; &amp;" in dom  # shown as text
    if not embed:
        shot = tmp_path / "shot.png"
        chromium(profile, f"--screenshot={shot}", "--window-size=900,700", page.as_uri())
        with Image.open(shot) as im:
            colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
        # the fixture's red (200, 30, 30) and blue (30, 60, 220) images are on screen
        assert any(n > 500 and abs(c[0] - 200) < 40 and c[1] < 80 and c[2] < 80 for n, c in colors)
        assert any(n > 500 and c[0] < 80 and c[2] > 180 for n, c in colors)


SCREEN = (1400, 1800)
FIRST_SCREEN = """<script>
window.addEventListener("load", () => {  // layout depends on the width only: a card whose bottom is above 1800 px
  const inside = (r, box) => r.left >= box.left && r.right <= box.right && r.top >= box.top && r.bottom <= box.bottom;
  const screen = {left: 0, top: 0, right: innerWidth, bottom: HEIGHT};
  const cards = Array.from(document.querySelectorAll("section.example"));
  const whole = cards.filter(c => !c.hidden && inside(c.getBoundingClientRect(), screen));
  const fitted = cards.every(c => Array.from(c.querySelectorAll("img"))
    .every(i => inside(i.getBoundingClientRect(), c.getBoundingClientRect())));
  const loaded = Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);
  document.title = `width:${innerWidth}:whole:${whole.length}:of:${cards.length}:fitted:${fitted}:loaded:${loaded}`;
});
</script>
</body>""".replace("HEIGHT", str(SCREEN[1]))


def bookmarked_runs_gallery(config: Path, runs, uids: list[str], out: Path, **kw) -> Path:
    """The 24 synthetic examples with runs A and B and three bookmarks (tag odd twice, one with a note)."""
    cache = UidCache(out.parent / f"{out.name}-cache.json")
    cache.add(uids[1], ["odd"], "right image looks empty")
    cache.add(uids[6], ["odd", "shape"])
    cache.add(uids[9], [], "count again")
    return sample_gallery.main(config=config, run=list(runs), uid_cache=cache.path, out=out, **kw)


def big_image_gallery(folder: Path, out: Path) -> Path:
    """8 examples whose images (1600x400 and 300x1200) are far larger than a card, sentences of 1 to 3 lines."""
    folder.mkdir()
    Image.new("RGB", (1600, 400), (200, 30, 30)).save(folder / "wide.png")
    Image.new("RGB", (300, 1200), (30, 60, 220)).save(folder / "tall.png")
    sentences = ["A wide image beside a tall one. " * (1 + i % 3) for i in range(8)]
    records = [{"uid": f"big-{i}", "images": ["wide.png", "tall.png"][:: 1 if i % 2 else -1], "sentence": sentence,
                "label": i % 2 == 1} for i, sentence in enumerate(sentences)]  # fmt: skip
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return sample_gallery.main(dataset_source="jsonl", dataset_path=str(folder), split="dev", out=out)


def first_screen(page: Path, profile: str) -> str:
    """The FIRST_SCREEN title of `page` rendered SCREEN wide."""
    check = page.with_name("check.html")
    check.write_text(page.read_text().replace("</body>", FIRST_SCREEN))
    dom = chromium(profile, "--dump-dom", f"--window-size={SCREEN[0]},{SCREEN[1]}", check.as_uri())
    return re.search(r"<title>(.*)</title>", dom).group(1)


@pytest.mark.integration
def test_cards_fit_the_first_screen_at_1400x1800(synthetic_config, split_rows, runs, tmp_path):
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    page = bookmarked_runs_gallery(synthetic_config, runs, list(split_rows), tmp_path / "runs")
    width, whole, total, fitted, loaded = re.fullmatch(
        r"width:(\d+):whole:(\d+):of:(\d+):fitted:(\w+):loaded:(\w+)", first_screen(page, profile)
    ).groups()
    assert (int(width), int(total), fitted, loaded) == (SCREEN[0], 24, "true", "true") and int(whole) >= 8
    big = big_image_gallery(tmp_path / "big_data", tmp_path / "big")
    assert first_screen(big, profile) == f"width:{SCREEN[0]}:whole:8:of:8:fitted:true:loaded:true"  # scaled to fit
    shot = tmp_path / "gallery.png"
    chromium(profile, f"--screenshot={shot}", f"--window-size={SCREEN[0]},{SCREEN[1]}", page.as_uri())
    with Image.open(shot) as im:
        assert im.size == SCREEN
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    # the bookmark band's yellow and the synthetic shapes' blue are on screen
    assert any(n > 500 and c == (255, 245, 209) for n, c in colors)
    assert any(n > 500 and c[0] < 80 and c[2] > 180 for n, c in colors)


CONTROLS = """<script>
window.addEventListener("load", () => {  // a user choosing "uid" then ticking "wrong"
  const form = document.querySelector("form.controls");
  form.elements.sort.value = "uid";
  form.elements.sort.dispatchEvent(new Event("change", {bubbles: true}));
  form.elements.wrong.checked = true;
  form.elements.wrong.dispatchEvent(new Event("change", {bubbles: true}));
  document.title = location.hash;
});
</script>
</body>"""


@pytest.mark.integration
def test_url_hash_and_controls_sort_and_filter_as_the_command_line(synthetic_config, split_rows, runs, tmp_path):
    uids = list(split_rows)
    page = bookmarked_runs_gallery(synthetic_config, runs, uids, tmp_path / "page")
    profile = f"--user-data-dir={tmp_path / 'profile'}"

    def dump(fragment: str, url: Path = page) -> Cards:
        return Cards(chromium(profile, "--dump-dom", f"{url.as_uri()}#{fragment}"))

    def cli(**kw) -> list[str]:
        return chosen(sample_gallery.main(config=synthetic_config, out=tmp_path / "cli", **kw))

    a, b = runs
    assert dump("").order() == dump("").shown() == uids
    for sort in ("confidence", "category", "uid"):  # the page's ranks give the command line's orders
        assert dump(f"sort={sort}").order() == cli(run=[a, b], sort=sort)
    assert dump("wrong=1").shown() == cli(run=[a], wrong_only=True)
    assert dump("sort=confidence&wrong=1").shown() == cli(run=[a], wrong_only=True, sort="confidence")
    flips = {flip: cli(run=[a, b], flip=flip) for flip in ("wrong_to_right", "right_to_wrong")}
    for flip, flipped in flips.items():
        assert dump(f"flip={flip}").shown() == flipped
    assert dump("flip=any").shown() == [u for u in uids if u in {*flips["wrong_to_right"], *flips["right_to_wrong"]}]
    negation = dump("category=negation")
    assert negation.shown() == cli(run=[a], category=["negation"]) and len(negation.shown()) == 4
    assert dump("bookmarked=1").shown() == [uids[1], uids[6], uids[9]]
    assert dump("tag=odd").shown() == [uids[1], uids[6]] and dump("tag=shape").shown() == [uids[6]]
    assert dump("sort=nonsense&category=nowhere&wrong=1").shown() == cli(run=[a], wrong_only=True)  # unknown: ignored
    check = page.with_name("check.html")
    check.write_text(page.read_text().replace("</body>", CONTROLS))
    dom = chromium(profile, "--dump-dom", check.as_uri())
    assert "<title>#sort=uid&amp;wrong=1</title>" in dom  # the controls wrote the hash
    assert Cards(dom).shown() == cli(run=[a], wrong_only=True, sort="uid") and "12 of 24 shown" in dom


# ---- composed-VLM runs (training/train_vlm.py): generated text, references, per-row scores ---------------------------


def generated(run: Path) -> dict[str, dict]:
    return {r["uid"]: r for r in read_generated(run / "predictions.jsonl")}


def section(html: str, uid: str) -> str:
    """The page's section for one uid."""
    start = html.index(f'<section class="example" id="{safe_stem(uid)}"')
    return html[start : html.index("</section>", start)]


def shown_image(out: Path, part: str) -> bytes:
    (src,) = re.findall(r'src="([^"]+)"', part)
    with Image.open(out / src) as im:
        return im.convert("RGB").tobytes()


def test_caption_run_shows_its_images_generated_text_references_and_scores(caption_run_copy, tmp_path):
    run, out = caption_run_copy, tmp_path / "g"
    records = generated(run)
    rows = {r["uid"]: r for r in synthetic_rows(6, 3, "eval", "mixed")}  # the data its run_record.json names: seed 3
    picked = ["capsyn_eval-3", "capsyn_eval-0"]  # a question, a caption
    page = sample_gallery.main(run=[run], uid=picked, out=out)
    html = page.read_text()
    assert chosen(page) == picked and "synthetic mixed, seed 3, 6 rows" in html
    for uid in picked:
        part, rec, row = section(html, uid), records[uid], rows[uid]
        assert f"<td>{escape(rec['prediction'] or '(empty)')}</td>" in part
        assert all(f"<li>{escape(r)}</li>" in part for r in rec["references"])
        assert escape(row["question"]) in part and f'<span class="tag">{row["task"]}</span>' in part
        assert shown_image(out, part) == row["images"][0].convert("RGB").tobytes()  # the image the run was shown
    other_seed = next(r for r in synthetic_rows(6, 0, "eval", "mixed") if r["uid"] == "capsyn_eval-0")
    assert other_seed["images"][0].tobytes() != rows["capsyn_eval-0"]["images"][0].tobytes()  # the seed mattered
    assert re.search(r"exact match [01]</td>", section(html, "capsyn_eval-3"))
    assert re.search(r"CIDEr-D [0-9.e-]+, ROUGE-L [0-9.e-]+</td>", section(html, "capsyn_eval-0"))


def test_per_row_scores_average_to_the_runs_summary(caption_run):
    run = load_caption_run(caption_run)
    tasks = json.loads((caption_run / "summary.json").read_text())["after"]["tasks"]
    captions = [r["scores"]["cider"] for r in run.records.values() if r["task"] == "caption"]
    questions = [r["scores"]["exact_match"] for r in run.records.values() if r["task"] == "qa"]
    assert sum(captions) / len(captions) == pytest.approx(tasks["caption"]["cider"], abs=1e-12)
    assert sum(questions) / len(questions) == pytest.approx(tasks["qa"]["accuracy"])


def test_caption_run_random_draw_uids_and_worst_first(caption_run_copy, tmp_path):
    run = caption_run_copy

    def pick(**kw):
        return chosen(sample_gallery.main(run=[run], out=tmp_path / "g", **kw))

    uids = list(generated(run))
    assert pick() == uids  # every row, in the run's order
    assert pick(n_random=3, seed=1) == random_draw(uids, 3, 1) == pick(n_random=3, seed=1)
    assert pick(uid=["capsyn_eval-5", "capsyn_eval-2"]) == ["capsyn_eval-5", "capsyn_eval-2"]
    # capsyn_eval-2's caption made perfect, capsyn_eval-1's answer made right: the caption sorts last, the answer goes
    records = generated(run)
    for u in ("capsyn_eval-2", "capsyn_eval-1"):
        records[u]["prediction"] = records[u]["references"][0]
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records.values()))
    worst, scored = pick(wrong_only=True), load_caption_run(run).records
    assert sorted(worst) == sorted(set(uids) - {"capsyn_eval-1"}) and worst[-1] == "capsyn_eval-2"
    assert [scored[u]["score"] for u in worst] == sorted(scored[u]["score"] for u in worst)
    assert pick(sort="confidence") == sorted(uids, key=lambda u: scored[u]["score"])  # every row, lowest score first
    assert pick(wrong_only=True, sort="confidence") == worst
    captions = [u for u in worst if scored[u]["task"] == "caption"]
    assert pick(wrong_only=True, category=["caption"]) == captions
    assert pick(wrong_only=True, category=["caption"], limit=2) == captions[:2]
    assert pick(wrong_only=True, category=["qa"]) == ["capsyn_eval-3", "capsyn_eval-5"]


def test_caption_run_refusals(caption_run_copy, runs, tmp_path):
    run, predictions = caption_run_copy, caption_run_copy / "predictions.jsonl"
    with pytest.raises(ValueError, match="--config, --flip: not with train_vlm runs"):
        sample_gallery.main(run=[run], config=tmp_path / "data.yaml", flip="wrong_to_right")
    with pytest.raises(ValueError, match="do not mix"):
        sample_gallery.main(run=[run, runs[0]])
    with pytest.raises(DataError, match=f"{re.escape(str(predictions))}: uid 'nope' not found"):
        sample_gallery.main(run=[run], uid=["nope"])
    extra = {"uid": "capsyn_eval-99", "task": "qa", "prediction": "two", "references": ["two"]}
    predictions.write_text(predictions.read_text() + json.dumps(extra) + "\n")
    message = "uid 'capsyn_eval-99' not found in the evaluation data run_record.json names: synthetic mixed, seed 3"
    with pytest.raises(DataError, match=f"^{re.escape(f'{predictions}: {message}')}"):
        sample_gallery.main(run=[run], out=tmp_path / "g")
    record = json.loads((run / "run_record.json").read_text())  # the run said it evaluated on other scenes
    record["config"]["CaptionDataArguments"]["synthetic_seed"] = 4
    (run / "run_record.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match=r"uid capsyn_eval-0: references differ from those of synthetic mixed, seed 4"):
        sample_gallery.main(run=[run], uid=["capsyn_eval-0"], out=tmp_path / "g")


COLORS = [(200, 30, 30), (30, 160, 40), (30, 60, 220), (220, 200, 40)]


def write_caption_sources(folder: Path) -> None:
    """Four 64x48 images of one colour each, captioned in COCO's layout (captions.json), LLaVA's (chat.json) and as a
    hub dataset's parquet split (mirror/validation.parquet: image + captions columns)."""
    (folder / "img").mkdir(parents=True)
    for i, color in enumerate(COLORS, 1):
        Image.new("RGB", (64, 48), color).save(folder / "img" / f"{i}.png")
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png"} for i in range(1, 5)],
        "annotations": [{"image_id": i, "caption": f"Picture {i}, {kind} <view>."} for i in range(1, 5)
                        for kind in ("a flat", "an even")],
    }  # fmt: skip
    chat = [
        {"id": "a", "image": "1.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Is it bright?"}, {"from": "gpt", "value": "Fairly & evenly."}]},
        *({"id": k, "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": f"Colour {i}."}]}
          for k, i in (("b", 2), ("c", 3), ("d", 4))),
    ]  # fmt: skip
    (folder / "captions.json").write_text(json.dumps(coco))
    (folder / "chat.json").write_text(json.dumps(chat))
    features = datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))})
    hub = {"image": [str(folder / "img" / f"{i}.png") for i in range(1, 5)],
           "captions": [[f"Colour {i} & nothing else."] for i in range(1, 5)]}  # fmt: skip
    (folder / "mirror").mkdir()
    datasets.Dataset.from_dict(hub, features=features).to_parquet(str(folder / "mirror" / "validation.parquet"))


def source_fields(source: str, data: Path) -> dict:
    """train_vlm fields for each source; no separate evaluation data: the first 2 images are held out (rows capped)."""
    if source == "hub":  # a local folder read as the hub path reads a mirror; train split = eval split
        return dict(dataset_name=data / "mirror", dataset_train_split="validation", dataset_eval_split="validation")
    return dict(
        data_file=data / {"coco": "captions.json", "llava_json": "chat.json"}[source], image_folder=data / "img"
    )


@pytest.mark.parametrize("source", ["coco", "llava_json", "hub"])
def test_coco_llava_and_hub_runs_show_the_images_they_evaluated_on(train_vlm_run, tmp_path, isolated_artifacts, source):
    data = tmp_path / "data"
    write_caption_sources(data)
    run = train_vlm_run(tmp_path / "run", tmp_path, dataset_source=source, max_eval_examples=2,
                        **source_fields(source, data))  # fmt: skip
    out = tmp_path / "g"
    html = sample_gallery.main(run=[run], out=out).read_text()
    images = {  # uid -> the image file of the held-out rows
        "coco": {"coco-1": "1.png", "coco-2": "2.png"},
        "llava_json": {"llava-a-0": "1.png", "llava-a-1": "1.png"},
        "hub": {f"{data / 'mirror'}:validation:0-0": "1.png", f"{data / 'mirror'}:validation:1-0": "2.png"},
    }[source]
    records = generated(run)
    assert list(records) == list(images) == chosen(out / "index.html")
    for uid, rec in records.items():
        part = section(html, uid)
        with Image.open(data / "img" / images[uid]) as im:
            assert shown_image(out, part) == im.convert("RGB").tobytes()
        assert all(f"<li>{escape(r)}</li>" in part for r in rec["references"])
        assert f"<td>{escape(rec['prediction'] or '(empty)')}</td>" in part and "CIDEr-D" in part
    if source == "coco":  # one row per image, every caption a reference
        assert "<li>Picture 2, an even &lt;view&gt;.</li>" in section(html, "coco-2")
    elif source == "llava_json":  # the second turn: the first as history, then its question
        part = section(html, "llava-a-1")
        assert '<p class="turn">user: What colour is it?</p>' in part and "assistant: Red." in part
        assert "question: Is it bright?" in part and "<li>Fairly &amp; evenly.</li>" in part
    else:  # streamed again from the folder; the caption column as references
        assert "<li>Colour 2 &amp; nothing else.</li>" in section(html, f"{data / 'mirror'}:validation:1-0")
