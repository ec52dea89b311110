"""Everything the lab knows about one uid: sentence, label, images (as loaded; the original file's format, mode and size
for local sources; urls) and how many image tokens each becomes under the processor's pixel budget, what the example's
meta holds (synset, writer, validations for NLVR2; scenes for synthetic data), its categories and each run's answer.

# A synthetic example of the embedded default's held-out split, with two runs' answers
python scripts/inspect_sample.py syn_test-3-1-0 --config evals/configs/embedded_zero_shot.yaml \
    --run artifacts/evals/embedded-zero-shot --run artifacts/evals/embedded-finetuned

# NLVR2 dev from the official files (a folder holding dev.json and images/), phenomena from the annotations (util/ of
# the official NLVR2 repository), tokens under the real configs' pixel budget, as JSON
python scripts/inspect_sample.py dev-850-0-0 --dataset-source nlvr2 --dataset-path /data/nlvr2 --split dev \
    --annotations nlvr2/util/annotated_dev_examples.txt --model Qwen/Qwen2-VL-2B-Instruct --max-pixels 200704 \
    --json

# Also copy the images out: the original files (nlvr2, jsonl sources), else PNGs of the images as loaded
python scripts/inspect_sample.py syn_test-3-1-0 --config evals/configs/embedded_zero_shot.yaml --export /tmp/images
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image

from evals.prediction_files import load_annotations
from evals.uid_selection import is_right, load_runs
from training.embedded import EMBEDDED_MODEL_DIR
from training.models import ModelNotAvailableError, load_processor
from utils.file_names import safe_stem

Opt = typer.Option
_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def image_token_counts(processor, images: list[Image.Image]) -> list[dict]:
    """Per image: the patch grid (t, h, w) the image processor makes and the tokens it becomes, t*h*w / merge**2."""
    ip = processor.image_processor
    merge = getattr(ip, "merge_size", 1)
    grid = ip(images=images, return_tensors="pt")["image_grid_thw"]  # [N, 3]: temporal, height, width patches
    return [{"grid_thw": g, "tokens": g[0] * g[1] * g[2] // merge**2} for g in grid.tolist()]


def _file_info(path: Path) -> dict:
    """The original file as it is on disk (NLVR2 has ".png" files holding JPEGs: the format is read from content)."""
    with Image.open(path) as im:
        return {
            "path": str(path),
            "format": im.format,
            "mode": im.mode,
            "size": list(im.size),
            "bytes": path.stat().st_size,
        }


def export_images(ex, files: list[Path] | None, folder: Path) -> list[str]:
    """Copy the original files byte for byte (suffix from their content), else write the loaded images as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, image in enumerate(ex.images):
        if files:
            fmt = _file_info(files[i])["format"] or "bin"
            target = folder / f"{safe_stem(ex.uid)}-img{i}{_SUFFIX.get(fmt, '.' + fmt.lower())}"
            target.write_bytes(files[i].read_bytes())
        else:
            target = folder / f"{safe_stem(ex.uid)}-img{i}.png"
            image.save(target, format="PNG")
        written.append(str(target))
    return written


def _processor_info(model: str | None, config: dict, min_pixels, max_pixels):
    """(processor or None, description): --model must load; an implicit one (config, embedded dir) may be absent."""
    path = (
        model or config.get("model_name_or_path") or (str(EMBEDDED_MODEL_DIR) if EMBEDDED_MODEL_DIR.is_dir() else None)
    )
    info = {"path": path, "min_pixels": min_pixels, "max_pixels": max_pixels}
    if path is None:
        return None, info | {"error": "no processor: pass --model (the embedded model is not built here)"}
    try:
        processor = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
    except (ModelNotAvailableError, OSError, ValueError) as e:
        if model:
            raise
        return None, info | {"error": f"processor {path!r} not loaded ({type(e).__name__}: {e})"}
    size = processor.image_processor.size
    info |= {"min_pixels": size.get("shortest_edge"), "max_pixels": size.get("longest_edge")}
    return processor, info | {"merge_size": getattr(processor.image_processor, "merge_size", 1)}


def describe(
    uid: str,
    config: Path | None = None,
    split: str | None = None,
    overrides: dict | None = None,
    model: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    runs: list[Path] | None = None,
    annotations: Path | None = None,
    export: Path | None = None,
) -> dict[str, Any]:
    """The inspection as a JSON-able dict (what --json prints)."""
    # Here, not at the top: the data sources (datasets, transformers) load when an example is looked up, not for --help.
    from vlm_datasets.example_lookup import data_arguments, find_example, image_files, read_config

    values = read_config(config)
    data_args = data_arguments(values, **(overrides or {}))
    split = split or data_args.dataset_eval_split
    ex = find_example(data_args, split, uid)
    files = image_files(data_args, split, ex)
    min_pixels = min_pixels if min_pixels is not None else data_args.min_pixels
    max_pixels = max_pixels if max_pixels is not None else data_args.max_pixels
    processor, proc_info = _processor_info(model, values, min_pixels, max_pixels)
    counts = image_token_counts(processor, ex.images) if processor is not None else [None] * len(ex.images)
    sides = ("left", "right") if len(ex.images) == 2 else tuple(f"image {i + 1}" for i in range(len(ex.images)))
    images = []
    for i, (image, count) in enumerate(zip(ex.images, counts, strict=True)):
        url = ex.meta.get(f"{sides[i]}_url")  # NLVR2's left_url / right_url
        entry = {"side": sides[i], "mode": image.mode, "size": list(image.size)}
        entry["file"] = _file_info(files[i]) if files else None
        images.append(entry | {"url": url} | (count or {}))
    categories = [ex.meta["category"]] if ex.meta.get("category") else []
    if annotations:
        categories += load_annotations(annotations).get(ex.sentence.strip(), [])
    predictions = []
    for run in load_runs(runs or []):
        rec = run.records.get(uid)
        keep = {k: rec.get(k) for k in ("prediction", "p_true", "raw") if k in rec} if rec else {"missing": True}
        predictions.append({"run": run.name, "path": str(run.path), **keep, "right": is_right(rec, ex.label)})
    result = {
        "uid": uid,
        "split": split,
        "dataset_source": data_args.dataset_source,
        "sentence": ex.sentence,
        "label": ex.label,
        "categories": list(dict.fromkeys(categories)),
        "images": images,
        "image_tokens_total": sum(c["tokens"] for c in counts) if processor is not None else None,
        "processor": proc_info,
        "meta": ex.meta,
        "predictions": predictions,
    }
    if export is not None:
        result["exported"] = export_images(ex, files, export)
    return result


def as_text(d: dict) -> str:
    """The readable form: one fact a line, meta values as compact JSON."""
    lines = [
        f"uid        {d['uid']}  (split {d['split']}, source {d['dataset_source']})",
        f"sentence   {d['sentence']}",
        f"label      {d['label']}",
        f"categories {', '.join(d['categories']) or '-'}",
    ]
    proc = d["processor"]
    if proc.get("error"):
        lines.append(f"processor  {proc['error']}")
    else:
        budget = f"min_pixels {proc['min_pixels']}, max_pixels {proc['max_pixels']}, merge {proc['merge_size']}"
        lines.append(f"processor  {proc['path']} ({budget})")
    for im in d["images"]:
        tokens = (
            f" -> {im['tokens']} image tokens (grid {'x'.join(map(str, im['grid_thw']))})" if "tokens" in im else ""
        )
        lines.append(f"{im['side']:<10} {im['mode']} {im['size'][0]}x{im['size'][1]}{tokens}")
        if im["file"]:
            f = im["file"]
            size = f"{f['size'][0]}x{f['size'][1]}"
            lines.append(f"{'':<10} file {f['path']}: {f['format']} {f['mode']} {size}, {f['bytes']} bytes")
        if im.get("url"):
            lines.append(f"{'':<10} {im['url']}")
    if d["image_tokens_total"] is not None:
        lines.append(f"{'tokens':<10} {d['image_tokens_total']} image tokens in all")
    for key, value in d["meta"].items():
        lines.append(f"meta.{key:<5} {value if isinstance(value, str) else json.dumps(value)}")
    for p in d["predictions"]:
        if p.get("missing"):
            lines.append(f"run {p['run']}: no prediction for this uid ({p['path']})")
            continue
        pred = "unparseable" if p["prediction"] is None else p["prediction"]
        verdict = {True: "right", False: "wrong", None: "unlabeled"}[p["right"]]
        p_true = f", p_true {p['p_true']:.3f}" if p.get("p_true") is not None else ""
        raw = f", raw {p['raw']!r}" if p.get("raw") else ""
        lines.append(f"run {p['run']}: {pred}{p_true}{raw} ({verdict})")
    lines += [f"exported   {name}" for name in d.get("exported", [])]
    return "\n".join(lines)


def main(
    uid: Annotated[str, typer.Argument(help="The example's uid.")],
    config: Annotated[Path | None, Opt(help="Data config YAML (its model_name_or_path gives the processor).")] = None,
    split: Annotated[str | None, Opt(help="Split (default: the config's dataset_eval_split).")] = None,
    dataset_source: Annotated[str | None, Opt(help="Override: hub, nlvr2, jsonl or synthetic (default).")] = None,
    dataset_path: Annotated[str | None, Opt(help="Override: nlvr2 folder or jsonl manifest.")] = None,
    synthetic_eval_size: Annotated[int | None, Opt(help="Override: synthetic examples per split.")] = None,
    synthetic_seed: Annotated[int | None, Opt(help="Override: synthetic generator seed.")] = None,
    model: Annotated[str | None, Opt(help="Model folder or hub id whose processor counts image tokens.")] = None,
    min_pixels: Annotated[int | None, Opt(help="Processor min pixels (default: the config's, else its own).")] = None,
    max_pixels: Annotated[int | None, Opt(help="Processor max pixels (default: the config's, else its own).")] = None,
    run: Annotated[list[Path] | None, Opt("--run", help="Run folder or predictions file (repeat).")] = None,
    annotations: Annotated[Path | None, Opt(help="annotated_dev_examples.txt: the sentence's phenomena.")] = None,
    export: Annotated[Path | None, Opt(help="Copy the images into this folder.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON instead of text.")] = False,
) -> dict:
    """Print what is known about UID (text, or JSON with --json); returns it as a dict."""
    overrides = dict(
        dataset_source=dataset_source,
        dataset_path=dataset_path,
        synthetic_eval_size=synthetic_eval_size,
        synthetic_seed=synthetic_seed,
    )
    d = describe(uid, config, split, overrides, model, min_pixels, max_pixels, run, annotations, export)
    print(json.dumps(d, indent=2, ensure_ascii=False) if as_json else as_text(d))
    return d


if __name__ == "__main__":
    from utils.cli import run_typer

    run_typer(main, help=__doc__.split("\n\n")[0], user_errors=(ValueError,))
