"""The gallery: each way of choosing uids on fixture runs, escaping of hostile text, file names from odd uids, and
a headless Chromium rendering in which every image loads and the sentence shows as text."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from scripts import sample_gallery
from utils.uid_cache import UidCache
from vlm_datasets.errors import DataError


def chosen(page: Path) -> list[str]:
    return (page.parent / "uids.txt").read_text().splitlines()


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


def odd_gallery(manifest: Path, out: Path, embed: bool = False) -> Path:
    """The odd_manifest fixture's two examples, the odd uid first."""
    uids = [json.loads(line)["uid"] for line in (manifest / "dev.jsonl").read_text().splitlines()][::-1]
    args = {"dataset_source": "jsonl", "dataset_path": str(manifest), "split": "dev"}
    return sample_gallery.main(**args, uid=uids, out=out, embed=embed)


def test_text_is_escaped_and_file_names_are_sanitized(odd_manifest, tmp_path):
    out = tmp_path / "gallery"
    html = odd_gallery(odd_manifest, out).read_text()
    assert "<script>" not in html and "<b>not bold</b>" not in html
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
    """Run headless Chromium (Debian's package in CI); fail, not skip, when it is missing."""
    if os.environ.get("VLM_STUDIES_SKIP_BROWSER") == "1":
        pytest.skip("VLM_STUDIES_SKIP_BROWSER=1")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium not found: apt-get install -y chromium (or set VLM_STUDIES_SKIP_BROWSER=1)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000"]  # fmt: skip
    done = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


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
