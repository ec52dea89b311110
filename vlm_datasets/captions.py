"""Caption and visual-instruction data for composing and training a VLM (training/train_vlm.py).

Every source yields the same row, `CAPTION_FEATURES`: one image (list of one), earlier chat turns (`history`), the
user's `question`, the assistant's `answer` (the training target) and `references` (every acceptable answer: the
image's five COCO captions, or the answer alone), so nothing downstream knows which source a row came from.
- coco: the COCO-captions layout, annotations JSON (`images` + `annotations` with `image_id`, `caption`) and an
  image folder. Training: one row per caption; evaluation (`per_image`): one row per image, all captions as refs.
- llava_json: the LLaVA chat JSON (LLaVA-CC3M-Pretrain-595K, LLaVA-Instruct-150K): a list of {"id", "image",
  "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}, ...]}, images relative to
  an image folder. One row per assistant turn, the turns before it as history (so every answer is trained on).
  The `<image>` placeholder is taken out of the text: the image always goes first in the first user turn.
- hub: a hub dataset streamed by name, either LLaVA-format (`conversations` + `image` columns, e.g.
  lmms-lab/LLaVA-OneVision-Data) or caption columns (`image` + `caption`/`captions`/`answer`, a string or a list).
- synthetic: scenes of vlm_datasets/synthetic.py (random_scene + render), captioned by its describe(), plus
  questions about the same scene (counts, existence, what is where), deterministic by seed; offline.

Images are checked as the NLVR2 sources check theirs: every image of the rows a split keeps is opened with
`open_image` (missing, unreadable, truncated, a decompression bomb, a degenerate aspect ratio: a DataError naming the
uid and the file), and `bad_examples` fails on the first bad one or skips its rows and counts them
(`caption_skip_report`). Hub rows hold the opened image; COCO and LLaVA rows keep the image's path, not a decoded copy
(COCO has five caption rows per image), and `to_chat` normalizes the decoded image exactly as `open_image` does (RGB,
upright, 16-bit grey scaled). A malformed conversation or annotation stops the load naming its id whatever the policy.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from PIL import Image

from utils.errors import DataError
from vlm_datasets.bad_examples import SkipLog, new_skip_log, skip_report
from vlm_datasets.config import BAD_EXAMPLE_POLICIES
from vlm_datasets.hub import _in_local_cache, _is_image_feature, _is_offline, _to_rgb, _undecoded
from vlm_datasets.images import normalize_image
from vlm_datasets.synthetic import COLORS, NUMBERS, SHAPES, Obj, describe, random_scene, render

logger = logging.getLogger(__name__)

CAPTION_SOURCES = ("synthetic", "coco", "llava_json", "hub")
SYNTHETIC_TASKS = ("caption", "qa", "mixed")
CAPTION_PROMPT = "Describe the image."
IMAGE_PLACEHOLDER = "<image>"  # LLaVA JSON's marker in the human turn

CAPTION_FEATURES = datasets.Features(
    {
        "uid": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "history": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "references": datasets.List(datasets.Value("string")),
        "task": datasets.Value("string"),  # caption | qa | chat: how it is scored (caption metrics or exact match)
        "meta": datasets.Value("string"),  # JSON: source-specific details
    }
)


class CaptionSourceUnreachableError(RuntimeError):
    """A hub caption dataset cannot be reached (offline, no network) and is not in the local HF cache."""

    def __init__(self, name: str, reason: str):
        super().__init__(
            f"the hub dataset '{name}' cannot be streamed ({reason}). Offline, use local files "
            "(dataset_source coco: annotations_file + image_folder; dataset_source llava_json: data_file + "
            "image_folder) or the synthetic scenes (dataset_source synthetic, the embedded defaults)."
        )


@dataclass
class CaptionDataArguments:
    dataset_source: str = field(
        default="synthetic", metadata={"help": "Where the rows come from.", "choices": list(CAPTION_SOURCES)}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "hub: dataset id, streamed."})
    dataset_config: str | None = field(default=None, metadata={"help": "hub: configuration (subset) name."})
    dataset_revision: str | None = field(default=None, metadata={"help": "hub: revision (commit, tag)."})
    dataset_streaming: bool = field(default=True, metadata={"help": "hub: stream instead of downloading."})
    dataset_column_map: dict | str | None = field(
        default=None,
        metadata={
            "help": "hub: column names as a mapping or JSON string, keys image, caption, question, conversations "
            "(default: found by name)."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "hub: training split."})
    dataset_eval_split: str = field(default="validation", metadata={"help": "hub: evaluation split."})
    data_file: str | None = field(
        default=None, metadata={"help": "coco: captions annotations JSON; llava_json: the chat JSON (training)."}
    )
    image_folder: str | None = field(default=None, metadata={"help": "coco / llava_json: image folder (training)."})
    eval_data_file: str | None = field(default=None, metadata={"help": "coco / llava_json: evaluation JSON."})
    eval_image_folder: str | None = field(
        default=None, metadata={"help": "coco / llava_json: evaluation image folder (default: image_folder)."}
    )
    caption_prompt: str = field(
        default=CAPTION_PROMPT, metadata={"help": "The user turn of caption-only sources (coco, hub captions)."}
    )
    synthetic_task: str = field(
        default="caption", metadata={"help": "synthetic: rows to make.", "choices": list(SYNTHETIC_TASKS)}
    )
    synthetic_train_size: int = field(default=4000, metadata={"help": "synthetic: training rows."})
    synthetic_eval_size: int = field(default=200, metadata={"help": "synthetic: evaluation rows."})
    synthetic_seed: int = field(default=0, metadata={"help": "synthetic: generator seed."})
    synthetic_grid: int = field(default=2, metadata={"help": "synthetic: cells a side (28 px each)."})
    synthetic_max_objects: int = field(default=4, metadata={"help": "synthetic: most objects in a scene."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Cap on training rows."})
    max_eval_examples: int | None = field(default=None, metadata={"help": "Cap on evaluation rows."})
    bad_examples: str = field(
        default="fail",
        metadata={
            "help": "A bad image (missing, unreadable, truncated, too many pixels): fail stops at the first one "
            "naming its uid and file; skip drops its rows and counts them (uid + reason) in summary.json and "
            "run_record.json.",
            "choices": list(BAD_EXAMPLE_POLICIES),
        },
    )

    def __post_init__(self):
        if self.dataset_source not in CAPTION_SOURCES:
            raise ValueError(f"dataset_source {self.dataset_source!r}: choose one of {list(CAPTION_SOURCES)}")
        if self.synthetic_task not in SYNTHETIC_TASKS:
            raise ValueError(f"synthetic_task {self.synthetic_task!r}: choose one of {list(SYNTHETIC_TASKS)}")
        if self.dataset_source == "hub" and not self.dataset_name:
            raise ValueError("dataset_source hub needs dataset_name (a hub dataset id)")
        if self.dataset_source in ("coco", "llava_json") and not (self.data_file and self.image_folder):
            raise ValueError(f"dataset_source {self.dataset_source} needs data_file and image_folder")
        if isinstance(self.dataset_column_map, str):
            self.dataset_column_map = json.loads(self.dataset_column_map)
        if self.bad_examples not in BAD_EXAMPLE_POLICIES:
            raise ValueError(f"bad_examples {self.bad_examples!r} unknown; choose one of {list(BAD_EXAMPLE_POLICIES)}")


def row(uid, images, question, answer, references=None, history=(), task="chat", meta=None) -> dict[str, Any]:
    """One row in CAPTION_FEATURES."""
    return {
        "uid": uid,
        "images": list(images),
        "history": [dict(t) for t in history],
        "question": question,
        "answer": answer,
        "references": list(references) if references else [answer],
        "task": task,
        "meta": json.dumps(meta or {}, sort_keys=True),
    }


def to_chat(example: dict[str, Any]) -> dict[str, Any]:
    """A row -> the prompt/completion chat the collator renders: the images first in the first user turn."""
    turns = list(example["history"]) + [{"role": "user", "content": example["question"]}]
    images = [normalize_image(im, f"uid {example['uid']}") for im in example["images"]]  # as open_image does
    prompt, placed = [], False
    for turn in turns:
        content = [{"type": "text", "text": turn["content"]}]
        if turn["role"] == "user" and not placed:
            content = [{"type": "image"} for _ in images] + content
            placed = True
        prompt.append({"role": turn["role"], "content": content})
    completion = [{"role": "assistant", "content": [{"type": "text", "text": example["answer"]}]}]
    return {"uid": example["uid"], "images": images, "prompt": prompt, "completion": completion}


# ---- synthetic scenes: captions and questions ---------------------------------------------------------------------


def _position(r: int, c: int, grid: int) -> str:
    """The position name describe() uses for cell (r, c)."""
    return describe((Obj(r, c, "red", "circle", "small"),), grid).split(":")[0]


def _phrase(o: Obj) -> str:
    return f"{o.size} {o.color} {o.shape}"


def _question(rng: random.Random, scene, grid: int) -> tuple[str, str]:
    kind = rng.choice(("count_color", "count_shape", "exists", "what_at", "where"))
    if kind == "count_color":
        color = rng.choice(list(COLORS))
        return f"How many {color} objects are there?", NUMBERS[sum(o.color == color for o in scene)]
    if kind == "count_shape":
        shape = rng.choice(SHAPES)
        return f"How many {shape}s are there?", NUMBERS[sum(o.shape == shape for o in scene)]
    if kind == "exists":  # half the time about an object that is there: balanced yes/no
        o = rng.choice(scene) if rng.random() < 0.5 else Obj(0, 0, rng.choice(list(COLORS)), rng.choice(SHAPES), "")
        present = any(p.color == o.color and p.shape == o.shape for p in scene)
        return f"Is there a {o.color} {o.shape}?", "yes" if present else "no"
    if kind == "what_at":
        r, c = rng.randrange(grid), rng.randrange(grid)
        here = [o for o in scene if (o.row, o.col) == (r, c)]
        return f"What is at the {_position(r, c, grid)}?", f"a {_phrase(here[0])}" if here else "nothing"
    unique = [o for o in scene if sum(_phrase(p) == _phrase(o) for p in scene) == 1]
    if not unique:  # every object has a twin: "where" has no single answer
        return "How many objects are there?", NUMBERS[len(scene)]
    o = rng.choice(unique)
    return f"Where is the {_phrase(o)}?", _position(o.row, o.col, grid)


def synthetic_rows(
    num: int, seed: int, split: str, task: str = "caption", grid: int = 2, max_objects: int = 4
) -> Iterator[dict[str, Any]]:
    """`num` rows over random scenes: captions (describe()), questions, or both alternating; uids capsyn_{split}-i."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"synthetic task {task!r}: choose one of {list(SYNTHETIC_TASKS)}")
    rng = random.Random(f"captions-{seed}-{split}")
    for i in range(num):
        scene = random_scene(rng, grid, max_objects)
        image = render(scene, grid, rng)
        kind = task if task != "mixed" else ("caption", "qa")[i % 2]
        if kind == "caption":
            question, answer = CAPTION_PROMPT, describe(scene, grid)
        else:
            question, answer = _question(rng, scene, grid)
        meta = {"source": "synthetic", "seed": seed, "scene": [o.__dict__ for o in scene]}
        yield row(f"capsyn_{split}-{i}", [image], question, answer, task=kind, meta=meta)


# ---- images: opened and checked once the rows are chosen (the bad-example policy) --------------------------------


def _open_shared_image(group: list[dict[str, Any]], log: SkipLog) -> Image.Image | None:
    """The image the rows of `group` share, opened with open_image (RGB, upright); None when it does not open: then
    each row goes to `log` (raised under bad_examples=fail) naming its uid, the image file and the reason."""
    image = group[0]["images"][0]
    name = image if isinstance(image, str) else (isinstance(image, dict) and image.get("path")) or 0
    try:
        return _to_rgb(image, f"uid {group[0]['uid']}, image {name}")
    except DataError as e:
        for r in group:
            log.bad(DataError(f"uid {r['uid']}, image {name}", e.problem), uid=r["uid"])
        return None


def checked_rows(rows: Iterable[dict[str, Any]], log: SkipLog) -> Iterator[dict[str, Any]]:
    """The rows whose image file opens (once for consecutive rows of the same image), still holding its path; the
    others go to `log`."""
    for _, group in itertools.groupby(rows, key=lambda r: r["images"][0]):
        group = list(group)
        if _open_shared_image(group, log) is not None:
            yield from group


# ---- COCO captions layout -----------------------------------------------------------------------------------------


def coco_rows(
    annotations_file: str, image_folder: str, per_image: bool = False, prompt: str = CAPTION_PROMPT
) -> Iterator[dict[str, Any]]:
    """COCO captions: one row per caption, or per image (`per_image`, for evaluation) with every caption a ref."""
    data = json.loads(Path(annotations_file).read_text(encoding="utf-8"))
    files = {im["id"]: im["file_name"] for im in data["images"]}
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        captions[ann["image_id"]].append(ann["caption"].strip())
    for image_id in sorted(captions):
        if image_id not in files:
            raise DataError(f"{annotations_file}: image_id {image_id}", "has captions but no entry in images")
        path = str(Path(image_folder) / files[image_id])  # opened by checked_rows
        refs = captions[image_id]
        meta = {"source": "coco", "image_id": image_id, "file_name": files[image_id]}
        if per_image:
            yield row(f"coco-{image_id}", [path], prompt, refs[0], refs, task="caption", meta=meta)
            continue
        for j, caption in enumerate(refs):
            yield row(f"coco-{image_id}-{j}", [path], prompt, caption, refs, task="caption", meta=meta)


# ---- LLaVA chat format ----------------------------------------------------------------------------------------------

_ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


def _strip_placeholder(text: str) -> str:
    return (
        text.replace(IMAGE_PLACEHOLDER + "\n", "")
        .replace("\n" + IMAGE_PLACEHOLDER, "")
        .replace(IMAGE_PLACEHOLDER, "")
        .strip()
    )


def conversation_rows(uid: str, image, conversations: list[dict], meta: dict) -> Iterator[dict[str, Any]]:
    """One LLaVA conversation -> one row per assistant turn (earlier turns as history)."""
    turns = []
    for k, turn in enumerate(conversations):
        role = _ROLES.get(turn.get("from", turn.get("role")))
        want = "user" if k % 2 == 0 else "assistant"
        if role != want:
            raise DataError(f"id {uid}", f"turn {k} is from {turn.get('from')!r}; expected {want} turns alternating")
        turns.append({"role": role, "content": _strip_placeholder(turn.get("value", turn.get("content", "")))})
    if len(turns) < 2:
        raise DataError(f"id {uid}", "a conversation needs a human turn and a gpt turn")
    for t in range(1, len(turns), 2):
        yield row(
            f"{uid}-{t // 2}",
            [image],
            turns[t - 1]["content"],
            turns[t]["content"],
            history=turns[: t - 1],
            task="chat",
            meta=meta,
        )


def llava_rows(data_file: str, image_folder: str) -> Iterator[dict[str, Any]]:
    """The LLaVA chat JSON (a list of {"id", "image", "conversations"}); text-only entries are skipped, counted."""
    entries = json.loads(Path(data_file).read_text(encoding="utf-8"))
    text_only = 0
    for entry in entries:
        uid = f"llava-{entry['id']}"
        if not entry.get("image"):
            text_only += 1
            continue
        path = str(Path(image_folder) / entry["image"])  # opened by checked_rows
        yield from conversation_rows(uid, path, entry["conversations"], {"source": "llava_json", "image": path})
    if text_only:
        logger.warning(
            "%s: skipped %d text-only entries (no image): this loader trains on image rows", data_file, text_only
        )


# ---- hub streaming --------------------------------------------------------------------------------------------------

_CANDIDATES = {
    "image": ("image", "images", "jpg", "img"),
    "conversations": ("conversations", "conversation"),
    "caption": ("caption", "captions", "answer", "sentences", "text"),
    "question": ("question", "prompt"),
}


def _columns(names: list[str], explicit: dict | None) -> dict[str, str | None]:
    out = {}
    for key, candidates in _CANDIDATES.items():
        given = (explicit or {}).get(key)
        if given is not None and given not in names:
            raise ValueError(f"dataset_column_map {key}={given!r} is not a column; columns: {names}")
        out[key] = given or next((c for c in candidates if c in names), None)
    if out["image"] is None or (out["conversations"] is None and out["caption"] is None):
        raise ValueError(f"no image + conversations or image + caption columns among {names}; set dataset_column_map")
    return out


def _first_image(value):
    return value[0] if isinstance(value, list) else value


def hub_rows(
    args: CaptionDataArguments,
    split: str,
    per_image: bool = False,
    skip: int = 0,
    take: int | None = None,
    log: SkipLog | None = None,
):
    """A hub dataset (streamed when dataset_streaming) mapped to CAPTION_FEATURES, after skipping `skip` source rows
    and keeping `take`; a clear error when offline. The rows of an image that does not open go to `log` (default:
    fail on it), as the rows are read for a stream."""
    log = SkipLog("fail", f"hub dataset {args.dataset_name} split {split}") if log is None else log
    name = args.dataset_name
    if _is_offline() and not Path(name).exists() and not _in_local_cache(name):
        raise CaptionSourceUnreachableError(name, "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache")
    try:
        ds = datasets.load_dataset(
            name, args.dataset_config, split=split, revision=args.dataset_revision, streaming=args.dataset_streaming
        )
    except (ConnectionError, OfflineModeIsEnabled, LocalEntryNotFoundError) as e:
        raise CaptionSourceUnreachableError(name, f"{type(e).__name__}: {e}") from e
    names = list(ds.column_names or next(iter(ds)).keys())
    cols = _columns(names, args.dataset_column_map)
    if ds.features and _is_image_feature(ds.features.get(cols["image"])):  # undecoded: opened by content, checked
        ds = ds.cast_column(cols["image"], _undecoded(ds.features[cols["image"]]))
    if skip:
        ds = ds.skip(skip) if isinstance(ds, datasets.IterableDataset) else ds.select(range(skip, len(ds)))
    ds = _take(ds, take)

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out = []
        for k, index in enumerate(indices):
            uid = f"{name}:{split}:{index + skip}"
            image = _first_image(batch[cols["image"]][k])
            meta = {"source": "hub", "dataset": name, "split": split, "index": index}
            if cols["conversations"] is not None:
                rows = list(conversation_rows(uid, image, batch[cols["conversations"]][k], meta))
            else:
                caps = batch[cols["caption"]][k]
                caps = [caps] if isinstance(caps, str) else list(caps)
                question = batch[cols["question"]][k] if cols["question"] else args.caption_prompt
                rows = [
                    row(f"{uid}-{j}", [image], question, cap, caps, task="caption", meta=meta)
                    for j, cap in enumerate(caps[:1] if per_image else caps)
                ]
            opened = _open_shared_image(rows, log) if rows else None
            out += [{**r, "images": [opened]} for r in rows] if opened is not None else []
        return {key: [r[key] for r in out] for key in CAPTION_FEATURES}

    kwargs = {}
    if isinstance(ds, datasets.Dataset) and log.policy == "skip":
        kwargs["load_from_cache_file"] = False  # a reused map cache would skip rows without naming them again
    return ds.map(
        convert,
        batched=True,
        batch_size=16,
        with_indices=True,
        remove_columns=names,
        features=CAPTION_FEATURES,
        **kwargs,
    )


# ---- one entry point ----------------------------------------------------------------------------------------------


def _take(ds, limit: int | None):
    if limit is None:
        return ds
    return ds.take(limit) if isinstance(ds, datasets.IterableDataset) else ds.select(range(min(limit, len(ds))))


def _held_out_by_image(rows: list[dict], held: int, train: bool) -> list[dict]:
    """No separate evaluation file: the first `held` images are evaluation, training gets the other images' rows."""
    images: list[str] = []
    for r in rows:
        if r["images"][0] not in images:
            images.append(r["images"][0])
        if len(images) == held:
            break
    keep = set(images)
    return [r for r in rows if (r["images"][0] in keep) != train]


def load_caption_split(args: CaptionDataArguments, train: bool = True):
    """The training split (one row per caption) or the evaluation split (one row per image), capped by max_*.

    With no separate evaluation data (a file source without eval_data_file, or a hub source whose eval split is its
    train split), the first max_eval_examples images (hub: source rows) are held out: evaluated on, never trained on.
    Rows whose image does not open fail or are skipped per args.bad_examples (caption_skip_report lists them).
    """
    limit = args.max_train_examples if train else args.max_eval_examples
    held = args.max_eval_examples or 200
    src = args.dataset_source
    log = new_skip_log(args, _split_name(train))
    if src == "hub":
        same = args.dataset_eval_split == args.dataset_train_split
        split = args.dataset_train_split if train else args.dataset_eval_split
        rows = hub_rows(
            args,
            split,
            per_image=not train,
            skip=held if (same and train) else 0,
            take=held if (same and not train) else None,
            log=log,
        )
        return _take(rows, limit)
    if src == "synthetic":
        num = args.synthetic_train_size if train else args.synthetic_eval_size
        rows = synthetic_rows(
            num if limit is None else min(num, limit),
            args.synthetic_seed,
            "train" if train else "eval",
            args.synthetic_task,
            args.synthetic_grid,
            args.synthetic_max_objects,
        )
    else:
        separate = not train and args.eval_data_file
        data_file = args.eval_data_file if separate else args.data_file
        folder = (args.eval_image_folder or args.image_folder) if separate else args.image_folder
        per_image = not train
        if src == "coco":
            rows = coco_rows(data_file, folder, per_image=per_image, prompt=args.caption_prompt)
        else:
            rows = llava_rows(data_file, folder)
        rows = list(rows)
        if not args.eval_data_file:
            rows = _held_out_by_image(rows, held, train)
        rows = checked_rows(rows, log)  # images opened once the split's rows are chosen
    return datasets.Dataset.from_list(list(itertools.islice(rows, limit)), features=CAPTION_FEATURES)


def _split_name(train: bool) -> str:
    return "train" if train else "eval"


def caption_skip_report(args: CaptionDataArguments, train: bool = True) -> dict[str, Any]:
    """{"policy", "count", "examples": [{"uid", "where", "reason"}, ...]}: the rows the latest load of the training
    (or evaluation) split left out; for a stream, those read so far."""
    return skip_report(args, _split_name(train))
