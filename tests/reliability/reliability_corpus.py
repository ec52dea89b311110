"""The bad-input corpus, generated at test time (nothing binary is committed): images and annotation records that
every local loader, the cache builder, the collator and the evaluator must either normalize or reject naming the
uid or file and the reason.

Each Case is one example (one annotation record with two images) written into both local layouts: the official
NLVR2 one (<root>/nlvr2/dev.json + images/) and a JSONL manifest (<root>/jsonl/dev.jsonl). An image case replaces
the left image file; a record case changes the record (or writes a raw line); uid cases differ by layout because the
official layout only takes NLVR2 identifiers. The image cases are also written for the caption loaders
(`write_caption_corpus`: a COCO-captions layout and a LLaVA chat JSON, one image each).
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlm_datasets.example import Example

SPLIT = "dev"
MISSING = object()  # a field left out of the record
LOADERS = ("nlvr2", "jsonl")
CAPTION_LOADERS = ("coco", "llava_json")
GOOD_SIZE = (56, 56)


# ---- image bytes ---------------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise(size=GOOD_SIZE, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a few bytes of pixel data: a decompression-bomb shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def flipped(data: bytes, start: int, length: int = 40) -> bytes:
    out = bytearray(data)
    for k in range(start, min(start + length, len(out))):
        out[k] ^= 0xFF
    return bytes(out)


def exif_rotated_jpeg() -> bytes:
    """40x20 red, blue top-left corner, EXIF orientation 6: shown upright it is 20x40 with blue top-right."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def palette_with_transparency() -> bytes:
    image = Image.new("P", GOOD_SIZE, 0)
    image.putpalette([0, 0, 255] + [255, 255, 255] * 255)
    return encode(image, "PNG", transparency=1)


# ---- checks on a normalized example ----------------------------------------------------------------------------


def rgb_of_size(size) -> Callable[[Example], None]:
    def check(ex: Example) -> None:
        assert ex.images[0].mode == "RGB" and ex.images[0].size == tuple(size), (ex.images[0].mode, ex.images[0].size)

    return check


def pixel(size, xy, rgb, tol: int = 8) -> Callable[[Example], None]:
    def check(ex: Example) -> None:
        rgb_of_size(size)(ex)
        got = ex.images[0].getpixel(xy)
        assert all(abs(a - b) <= tol for a, b in zip(got, rgb, strict=True)), (xy, got, rgb)

    return check


def field_is(name: str, value: Any) -> Callable[[Example], None]:
    def check(ex: Example) -> None:
        assert getattr(ex, name) == value, (name, getattr(ex, name), value)

    return check


# ---- the cases -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad (or odd) input. expect: "ok" (normalized: `check` holds on the loaded example) or "reject" (the
    DataError matches `reason` and names the uid or the file); per loader when the layouts differ."""

    name: str
    description: str
    expect: str | dict[str, str]
    reason: str | dict[str, str] | None = None
    image: Callable[[], bytes] | None = None  # the left image file's bytes
    suffix: str = ".png"
    fields: dict[str, Any] = field(default_factory=dict)  # uid / sentence / label overrides (MISSING drops one)
    raw_line: bytes | None = None  # written instead of the record
    duplicate: bool = False  # the record is written twice: the second is the bad one
    missing_image: bool = False  # the left image file is not written
    check: Callable[[Example], None] | None = None
    note: str = ""

    def expected(self, loader: str) -> str:
        return self.expect[loader] if isinstance(self.expect, dict) else self.expect

    def reason_for(self, loader: str) -> str | None:
        return self.reason.get(loader) if isinstance(self.reason, dict) else self.reason


_UNREADABLE = r"unreadable or corrupt image"
_JPEG = lambda: encode(noise(), "JPEG", quality=90)  # noqa: E731

IMAGE_CASES = [
    Case("png", "a plain RGB PNG (control)", "ok", image=lambda: encode(noise(), "PNG"), check=rgb_of_size(GOOD_SIZE)),
    Case("zero_byte", "a 0-byte image file", "reject", _UNREADABLE + ": not a known image format", image=lambda: b""),
    Case("text_as_png", "a text file named .png", "reject", _UNREADABLE, image=lambda: b"<html>not an image</html>"),
    Case(
        "truncated_png",
        "a PNG cut after 60% of its bytes",
        "reject",
        _UNREADABLE + r".*truncated",
        image=lambda: (lambda b: b[: len(b) * 6 // 10])(encode(noise(), "PNG")),
    ),
    Case(
        "truncated_jpeg",
        "a JPEG cut after 60% of its bytes",
        "reject",
        _UNREADABLE + r".*([Tt]runcated)",
        image=lambda: (lambda b: b[: len(b) * 6 // 10])(_JPEG()),
    ),
    Case(
        "corrupt_png_header",
        "a PNG whose IHDR chunk is damaged",
        "reject",
        _UNREADABLE,
        image=lambda: flipped(encode(noise(), "PNG"), 16, 4),
    ),
    Case(
        "corrupt_png_data",
        "a PNG with 40 bytes of compressed pixel data flipped",
        "reject",
        _UNREADABLE + r".*broken data stream",
        image=lambda: (lambda b: flipped(b, b.index(b"IDAT") + 20))(encode(noise(), "PNG")),
    ),
    Case(
        "corrupt_jpeg_data",
        "a JPEG with 40 bytes of its entropy-coded scan flipped",
        "ok",
        image=lambda: (lambda b: flipped(b, len(b) // 2))(_JPEG()),
        check=rgb_of_size(GOOD_SIZE),
        note="undetectable: JPEG carries no checksum, PIL decodes the damaged scan",
    ),
    Case(
        "bomb_30000",
        "a PNG header claiming 30000x30000 (9e8 pixels, over 2x PIL's MAX_IMAGE_PIXELS)",
        "reject",
        r"too many pixels, refused as a possible decompression bomb",
        image=lambda: png_header_only(30000, 30000),
    ),
    Case(
        "bomb_12000",
        "a PNG header claiming 12000x12000 (1.4e8 pixels: PIL only warns)",
        "reject",
        r"too many pixels, refused as a possible decompression bomb",
        image=lambda: png_header_only(12000, 12000),
    ),
    Case(
        "aspect_1x300",
        "a 1x300 PNG (Qwen2-VL refuses aspect ratios over 200)",
        "reject",
        r"degenerate image size 1x300",
        image=lambda: encode(Image.new("RGB", (1, 300), (9, 9, 9)), "PNG"),
    ),
    Case(
        "one_by_one",
        "a 1x1 PNG",
        "ok",
        image=lambda: encode(Image.new("RGB", (1, 1), (0, 200, 0)), "PNG"),
        check=pixel((1, 1), (0, 0), (0, 200, 0), 0),
    ),
    Case(
        "large_4000x3000",
        "a 4000x3000 PNG (1.2e7 pixels: under PIL's limit, resized by the processor)",
        "ok",
        image=lambda: encode(Image.new("RGB", (4000, 3000), (1, 2, 3)), "PNG"),
        check=rgb_of_size((4000, 3000)),
    ),
    Case(
        "cmyk_jpeg",
        "a CMYK JPEG",
        "ok",
        image=lambda: encode(Image.new("CMYK", GOOD_SIZE, (0, 255, 255, 0)), "JPEG", quality=95),
        check=pixel(GOOD_SIZE, (5, 5), (255, 0, 0)),
    ),
    Case(
        "rgba_png",
        "an RGBA PNG (alpha 128)",
        "ok",
        image=lambda: encode(Image.new("RGBA", GOOD_SIZE, (10, 20, 30, 128)), "PNG"),
        check=pixel(GOOD_SIZE, (5, 5), (10, 20, 30), 0),
        note="alpha dropped (colour kept, not composited)",
    ),
    Case(
        "grey_L_png",
        "an 8-bit greyscale (L) PNG",
        "ok",
        image=lambda: encode(Image.new("L", GOOD_SIZE, 77), "PNG"),
        check=pixel(GOOD_SIZE, (5, 5), (77, 77, 77), 0),
    ),
    Case(
        "palette_P_png",
        "a palette (P) PNG with a transparent index",
        "ok",
        image=palette_with_transparency,
        check=pixel(GOOD_SIZE, (5, 5), (0, 0, 255), 0),
    ),
    Case(
        "grey_16bit_png",
        "a 16-bit greyscale (I;16) PNG, value 40000 of 65535",
        "ok",
        image=lambda: encode(Image.new("I;16", GOOD_SIZE, 40000), "PNG"),
        check=pixel(GOOD_SIZE, (5, 5), (156, 156, 156), 1),
        note="scaled to 8 bits (40000 >> 8 = 156); a plain convert would clip it to white",
    ),
    Case(
        "exif_rotated_jpeg",
        "a 40x20 JPEG with EXIF orientation 6",
        "ok",
        image=exif_rotated_jpeg,
        check=pixel((20, 40), (17, 2), (0, 0, 255), 40),
        note="rotated upright: 20x40, the blue corner moves to the top right",
    ),
    Case(
        "jpeg_named_png",
        "JPEG bytes in a .png file (an NLVR2 quirk)",
        "ok",
        image=_JPEG,
        check=rgb_of_size(GOOD_SIZE),
    ),
    Case(
        "missing_image",
        "the record's left image file does not exist",
        "reject",
        {
            "nlvr2": r"missing image dev-\d+-0-img0\.png",
            "jsonl": r"image not found",
            "coco": r"image file not found",
            "llava_json": r"image file not found",
        },
        missing_image=True,
    ),
]

_NON_ASCII = "Die linke Abbildung zeigt zwei Hunde \u2014 \u4e2d\u6587 \u00e9\u00e8 \u2713 \U0001f415"
_HTML = "<script>alert('x')</script> & <b>bold</b> \"quoted\" <img src=x onerror=alert(1)>"

RECORD_CASES = [
    Case("label_true", 'label "true"', "ok", fields={"label": "true"}, check=field_is("label", True)),
    Case("label_TRUE", 'label "TRUE"', "ok", fields={"label": "TRUE"}, check=field_is("label", True)),
    Case("label_1", "label 1 (a JSON number)", "ok", fields={"label": 1}, check=field_is("label", True)),
    Case("label_yes", 'label "yes"', "ok", fields={"label": "yes"}, check=field_is("label", True)),
    Case("label_False_spaced", 'label " False "', "ok", fields={"label": " False "}, check=field_is("label", False)),
    Case(
        "label_missing",
        "no label field",
        "ok",
        fields={"label": MISSING},
        check=field_is("label", None),
        note="kept as unlabeled (test splits); refused (or skipped) in a training split",
    ),
    Case("label_maybe", 'label "maybe"', "reject", r"unparseable label 'maybe'", fields={"label": "maybe"}),
    Case("label_2", "label 2", "reject", r"unparseable label 2", fields={"label": 2}),
    Case("sentence_non_ascii", "non-ASCII sentence", "ok", fields={"sentence": _NON_ASCII}),
    Case("sentence_html", "HTML in the sentence", "ok", fields={"sentence": _HTML}, note="kept verbatim"),
    Case("sentence_missing", "no sentence field", "reject", r"missing field 'sentence'", fields={"sentence": MISSING}),
    Case("sentence_blank", "a blank sentence", "reject", r"field 'sentence' is blank", fields={"sentence": "   "}),
    Case("sentence_number", "sentence 5 (a number)", "reject", r"'sentence' must be a string", fields={"sentence": 5}),
    Case(
        "uid_missing",
        "no uid field",
        "reject",
        {"nlvr2": r"missing field 'identifier'", "jsonl": r"missing field 'uid'"},
        fields={"uid": MISSING},
    ),
    Case(
        "uid_path_traversal",
        'uid "../../escaped/x-0-0-0"',
        {"nlvr2": "reject", "jsonl": "ok"},
        {"nlvr2": r"not an NLVR2 identifier"},
        fields={"uid": "../../escaped/x-0-0-0"},
        check=field_is("uid", "../../escaped/x-0-0-0"),
        note="jsonl keeps it as data: no file is named after a uid as it stands",
    ),
    Case(
        "uid_separator",
        'uid "dev/1\\\\2-0-0"',
        {"nlvr2": "reject", "jsonl": "ok"},
        {"nlvr2": r"not an NLVR2 identifier"},
        fields={"uid": "dev/1\\2-0-0"},
        check=field_is("uid", "dev/1\\2-0-0"),
    ),
    Case(
        "uid_newline",
        "a uid holding a newline",
        "reject",
        r"empty, padded with spaces or holds control characters",
        fields={"uid": "dev-7\n-0-0"},
    ),
    Case("uid_empty", 'uid ""', "reject", r"uid '' is empty", fields={"uid": ""}),
    Case("uid_duplicate", "the same uid on two lines", "reject", r"duplicate", duplicate=True),
    Case(
        "json_malformed",
        "a line that is not JSON",
        "reject",
        r"malformed JSON",
        raw_line=b'{"uid": "dev-1-0-0", "sentence": ',
    ),
    Case("json_not_object", "a JSON list line", "reject", r"expected a JSON object", raw_line=b"[1, 2]"),
    Case(
        "json_not_utf8",
        "a line in Latin-1, not UTF-8",
        "reject",
        r"not valid UTF-8",
        raw_line='{"uid": "x", "sentence": "caf\u00e9"}'.encode("latin-1"),
    ),
]

CASES = IMAGE_CASES + RECORD_CASES
BY_NAME = {c.name: c for c in CASES}


# ---- writing the layouts ---------------------------------------------------------------------------------------


def case_uid(index: int) -> str:
    """The NLVR2 identifier of case number `index` (also the manifest's uid unless the case overrides it)."""
    return f"dev-{index + 1}-0-0"


@dataclass
class Corpus:
    """Both layouts of some cases; `uids[name]` is the uid each case's record carries (None if it has none)."""

    root: Path
    cases: list[Case]
    uids: dict[str, str | None]
    lines: dict[int, str]  # annotation line number -> case name (both files have the same lines)

    def case_of(self, entry: dict) -> str | None:
        """The case a skip-report entry ({"uid", "where", "reason"}) is about: by uid, else by line number."""
        by_uid = {uid: name for name, uid in self.uids.items() if uid is not None}
        if entry.get("uid") in by_uid:
            return by_uid[entry["uid"]]
        m = re.search(r" line (\d+)", entry["where"])
        return self.lines.get(int(m[1])) if m else None

    @property
    def nlvr2(self) -> Path:
        return self.root / "nlvr2"

    @property
    def jsonl(self) -> Path:
        return self.root / "jsonl" / f"{SPLIT}.jsonl"


def write_corpus(root: Path, cases: list[Case], good_label: bool = True) -> Corpus:
    """Write `cases` (each its own record, uid dev-<k>-0-0) in both layouts under root; good images are PNG noise."""
    nlvr2_lines: list[bytes] = []
    jsonl_lines: list[bytes] = []
    images = root / "nlvr2" / "images" / SPLIT
    images.mkdir(parents=True, exist_ok=True)
    (root / "jsonl").mkdir(parents=True, exist_ok=True)
    uids: dict[str, str | None] = {}
    line_cases: dict[int, str] = {}
    for n, case in enumerate(cases):
        for k in range(2 if case.duplicate else 1):
            line_cases[len(nlvr2_lines) + 1 + k] = case.name
        uid = case_uid(n)
        stem = uid.rsplit("-", 1)[0]  # dev-<k>-0: image files are dev-<k>-0-img0.png / -img1.png
        left, right = images / f"{stem}-img0{case.suffix}", images / f"{stem}-img1.png"
        if not case.missing_image:
            left.write_bytes(case.image() if case.image else encode(noise(seed=2 * n), "PNG"))
        right.write_bytes(encode(noise(seed=2 * n + 1), "PNG"))
        if case.raw_line is not None:
            nlvr2_lines.append(case.raw_line)
            jsonl_lines.append(case.raw_line)
            uids[case.name] = None
            continue
        base = {"uid": uid, "sentence": f"Case {case.name}: there are two images.", "label": good_label}
        base.update(case.fields)
        official = {"identifier": base["uid"], "sentence": base["sentence"], "label": base["label"], "case": case.name}
        manifest = {"uid": base["uid"], "images": [str(left.relative_to(root)), str(right.relative_to(root))]}
        manifest |= {"sentence": base["sentence"], "label": base["label"], "case": case.name}
        manifest["images"] = ["../" + p for p in manifest["images"]]  # relative to the manifest's folder
        for record, out in ((official, nlvr2_lines), (manifest, jsonl_lines)):
            line = json.dumps({k: v for k, v in record.items() if v is not MISSING}, ensure_ascii=False)
            out.extend([line.encode("utf-8")] * (2 if case.duplicate else 1))
        uids[case.name] = None if base["uid"] is MISSING else base["uid"]
    (root / "nlvr2" / f"{SPLIT}.json").write_bytes(b"\n".join(nlvr2_lines) + b"\n")
    (root / "jsonl" / f"{SPLIT}.jsonl").write_bytes(b"\n".join(jsonl_lines) + b"\n")
    return Corpus(root, cases, uids, line_cases)


@dataclass
class CaptionCorpus:
    """Image cases for the caption loaders: `uids[loader][name]`, the rows each case's image gives (COCO: two
    captions, two rows; LLaVA: one conversation turn)."""

    root: Path
    cases: list[Case]
    uids: dict[str, dict[str, list[str]]]

    @property
    def images(self) -> Path:
        return self.root / "images"

    def data_file(self, loader: str) -> Path:
        return self.root / ("captions.json" if loader == "coco" else "llava.json")

    def case_of(self, loader: str, uid: str) -> str | None:
        return next((name for name, uids in self.uids[loader].items() if uid in uids), None)


def write_caption_corpus(root: Path, cases: list[Case]) -> CaptionCorpus:
    """`cases` (image cases) as a COCO-captions layout (captions.json + images/) and a LLaVA chat JSON (llava.json)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    coco: dict[str, list] = {"images": [], "annotations": []}
    llava = []
    uids: dict[str, dict[str, list[str]]] = {"coco": {}, "llava_json": {}}
    for n, case in enumerate(cases):
        name = f"{n + 1}-{case.name}{case.suffix}"
        if not case.missing_image:
            (images / name).write_bytes(case.image() if case.image else encode(noise(seed=n), "PNG"))
        coco["images"].append({"id": n + 1, "file_name": name})
        for j in range(2):
            coco["annotations"].append({"id": 2 * n + j, "image_id": n + 1, "caption": f"Case {case.name}, {j}."})
        uids["coco"][case.name] = [f"coco-{n + 1}-{j}" for j in range(2)]
        turns = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": case.name}]
        llava.append({"id": f"case{n + 1}", "image": name, "conversations": turns})
        uids["llava_json"][case.name] = [f"llava-case{n + 1}-0"]
    (root / "captions.json").write_text(json.dumps(coco))
    (root / "llava.json").write_text(json.dumps(llava))
    return CaptionCorpus(root, cases, uids)
