"""Fixtures for the data tests: a few synthetic examples written out in every source's layout."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from vlm_datasets.example import Example
from vlm_datasets.labels import parse_identifier
from vlm_datasets.synthetic import generate

NUM_EXAMPLES = 4
SPLIT = "dev"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """datasets' own Arrow cache (from_generator, map) and the artifact root live in temporary folders."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))
    monkeypatch.setenv("VLM_STUDIES_ROOT", str(tmp_path_factory.mktemp("artifacts")))


@pytest.fixture(scope="session")
def synthetic_examples() -> list[Example]:
    """The reference examples: the synthetic source's first dev examples."""
    return list(generate(SPLIT, NUM_EXAMPLES, 0))


def save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def save_jpeg_as_png(image: Image.Image, path: Path) -> None:
    """NLVR2 quirk: JPEG bytes under a .png name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    path.write_bytes(buf.getvalue())


@pytest.fixture
def official_layout(tmp_path, synthetic_examples) -> tuple[Path, set[tuple[str, int]]]:
    """<tmp>/nlvr2/{dev.json, images/...}: official names, split and numbered subfolders, one JPEG-as-.png.

    Returns (root, lossy) where lossy holds the (uid, image index) pairs stored as JPEG.
    """
    root = tmp_path / "nlvr2"
    lossy = {(synthetic_examples[1].uid, 1)}
    lines = []
    for n, ex in enumerate(synthetic_examples):
        ident = parse_identifier(ex.uid)
        folder = root / "images" / "dev" / (str(n % 2) if n >= 2 else "")  # some in numbered subfolders
        for i, image in enumerate(ex.images):
            path = folder / f"{ident.image_stem(i)}.png"
            (save_jpeg_as_png if (ex.uid, i) in lossy else save_png)(image, path)
        record = {
            "identifier": ex.uid,
            "sentence": ex.sentence,
            "label": str(ex.label),
            "left_url": f"https://example.org/{ex.uid}/left.jpg",
            "right_url": f"https://example.org/{ex.uid}/right.jpg",
            "synset": "shape",
            "query": "coloured shapes",
            "writer": "7",
            "validation": {"8": str(ex.label)},
            "extra_validations": {"9": str(ex.label)},
        }
        lines.append(json.dumps(record))
    (root / "dev.json").write_text("\n".join(lines) + "\n")
    return root, lossy


def image_files(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in (root / "images").rglob("*.png")}


@pytest.fixture
def manifest_layout(tmp_path, official_layout, synthetic_examples) -> Path:
    """<tmp>/manifest/dev.jsonl naming the official layout's image files (relative and absolute paths)."""
    root, _ = official_layout
    files = image_files(root)
    folder = tmp_path / "manifest"
    folder.mkdir()
    lines = []
    for n, ex in enumerate(synthetic_examples):
        ident = parse_identifier(ex.uid)
        paths = [files[ident.image_stem(i)] for i in range(2)]
        names = [str(p) if n % 2 else str(Path("..") / p.relative_to(tmp_path)) for p in paths]
        lines.append(json.dumps({"uid": ex.uid, "images": names, "sentence": ex.sentence, "label": ex.label, "n": n}))
    (folder / "dev.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def hub_like(official_layout, synthetic_examples) -> datasets.Dataset:
    """An in-memory mirror: identifier, left_image, right_image (the files' bytes), "True"/"False" labels."""
    root, _ = official_layout
    files = image_files(root)
    stems = [parse_identifier(ex.uid) for ex in synthetic_examples]
    cell = lambda stem: {"bytes": files[stem].read_bytes(), "path": None}  # noqa: E731
    return datasets.Dataset.from_dict(
        {
            "identifier": [ex.uid for ex in synthetic_examples],
            "left_image": [cell(s.image_stem(0)) for s in stems],
            "right_image": [cell(s.image_stem(1)) for s in stems],
            "sentence": [ex.sentence for ex in synthetic_examples],
            "label": [str(ex.label) for ex in synthetic_examples],
            "synset": ["shape"] * len(stems),
        },
        features=datasets.Features(
            {
                "identifier": datasets.Value("string"),
                "left_image": datasets.Image(),
                "right_image": datasets.Image(),
                "sentence": datasets.Value("string"),
                "label": datasets.Value("string"),
                "synset": datasets.Value("string"),
            }
        ),
    )


def assert_same_examples(got: list[Example], want: list[Example], lossy: set[tuple[str, int]] = frozenset()):
    """uid, sentence, label and image pixels equal; images in `lossy` (JPEG) compare by size and mode only."""
    assert [e.uid for e in got] == [e.uid for e in want]
    for g, w in zip(got, want, strict=True):
        assert (g.sentence, g.label) == (w.sentence, w.label), g.uid
        assert len(g.images) == len(w.images), g.uid
        for i, (a, b) in enumerate(zip(g.images, w.images, strict=True)):
            assert (a.size, a.mode) == (b.size, b.mode), (g.uid, i)
            if (g.uid, i) not in lossy:
                assert np.array_equal(np.asarray(a), np.asarray(b)), (g.uid, i)


@pytest.fixture
def same_examples() -> Callable[..., None]:
    return assert_same_examples
