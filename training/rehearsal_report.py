"""The report of a CPU rehearsal (scripts/rehearse.py): what ran and on what, per phase exit code, seconds and peak
RSS, seconds per training step, tokens per example, the adapter, the defaults the run decided, and the GPU
projections of training/projection.py; as a JSON-ready dict and as markdown."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

from training import projection
from training.rehearsal import Phase, adapter_stats, decisions, global_step, step_times
from utils.run_record import library_versions


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo") if line.startswith("model name")), "")
    mem = next((int(line.split()[1]) for line in _lines("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(mem * 1024 / 1e9, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def model_about(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    info = folder / "build_info.json"
    weights = json.loads(info.read_text())["weights"] if info.exists() else "unknown: no build_info.json"
    text = config.get("text_config", config)
    return {
        "path": str(folder),
        "weights": weights,
        "text_layers": text.get("num_hidden_layers"),
        "vision_depth": config.get("vision_config", {}).get("depth"),
        "hidden_size": text.get("hidden_size"),
    }


def training_figures(phase: Phase, out: Path, step: int) -> dict:
    """What a training phase wrote: its steps' times, the global step of its checkpoint-<step>, the decisions of its
    run record (the copy scripts/rehearse.py kept beside the phase's log)."""
    record = json.loads(Path(phase.log).with_suffix(".run_record.json").read_text())
    logs = record["config"].get("LabTrainingArguments", {}).get("logging_dir")
    window = (phase.started, phase.started + phase.seconds)
    steps = step_times(Path(logs), *window) if logs and Path(logs).exists() else []
    seconds = [s["seconds"] for s in steps if s["seconds"] is not None]
    return {
        "steps": steps,  # the steps this phase ran: after a resume, only the new ones
        "seconds_per_step": round(sum(seconds) / len(seconds), 2) if seconds else None,
        "global_step": global_step(out / f"checkpoint-{step}"),
        "decisions": decisions(record),
    }


def tokens_of(preflight: Path) -> dict:
    """Per example, from the pre-flight over the rehearsal's examples: image / text / total token distributions."""
    budget = json.loads(preflight.read_text())
    return {k: budget[k] for k in ("examples", "image_tokens", "text_tokens", "total_tokens", "needed_max_length")}


def predictions(work: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((work / "eval").glob("*/predictions.jsonl")):
        out[path.parent.name] = {r["uid"]: r["prediction"] for r in map(json.loads, path.read_text().splitlines())}
    return out


def build_report(args, work: Path, uids: list[str], stand_ins: list[dict], ran: list[Phase], planned: list[str]):
    config = yaml.safe_load(Path(args.config).read_text())
    report = {
        "weights": "random: every answer, loss and prediction is noise; memory and time are what the report measures",
        "model": model_about(Path(args.model_name_or_path)),
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "command": " ".join(["python", *sys.argv]),
        "config": args.config,
        "overrides": {
            "max_steps": args.max_steps,
            "resume_steps": args.resume_steps,
            "max_pixels": args.max_pixels,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
        },
        "data": {"annotations": args.annotations, "uids": uids, "stand_in_images": stand_ins},
        "phases": {p.name: p.to_dict() for p in ran},
        "not_run": [name for name in planned if name not in {p.name for p in ran}],
    }
    report["ok"] = not report["not_run"] and all(p.ok for p in ran)
    steps = {"train": args.max_steps, "resume": args.max_steps + args.resume_steps}
    for p in ran:
        if p.name in steps and Path(p.log).with_suffix(".run_record.json").exists():
            report["phases"][p.name] |= training_figures(p, work / "train", steps[p.name])
    if (work / "train" / "adapter_model.safetensors").exists():
        report["adapter"] = adapter_stats(work / "train")
    if (work / "preflight.json").exists():
        report["tokens"] = tokens_of(work / "preflight.json")
        report["projection"] = project(config, args, report["tokens"])
    report["predictions"] = predictions(work)
    return report


def project(config: dict, args, tokens: dict) -> dict:
    size = projection.real_size(int(config.get("lora_r", 16)))
    measured = {
        "total_max": tokens["total_tokens"]["max"],
        "total_median": int(tokens["total_tokens"]["median"]),
        "image_max": tokens["image_tokens"]["max"],
        "image_median": int(tokens["image_tokens"]["median"]),
    }
    return {
        "model": projection.__doc__.split("\n\n", 1)[1].strip(),
        "real_size": projection.describe_size(size),
        "tokens": measured,
        "examples": projection.NLVR2_TRAIN_EXAMPLES,
        "gpus": projection.project(size, config, measured),
    }


def render_markdown(r: dict) -> str:
    m, mach = r["model"], r["machine"]
    lines = [
        f"# Rehearsal of {r['config']}",
        "",
        f"**Random weights** ({m['weights']}). Model: {m['path']}, {m['text_layers']} text layers, ViT depth "
        f"{m['vision_depth']}, hidden {m['hidden_size']}. Machine: {mach['cpu']}, {mach['cores']} cores, "
        f"{mach['memory_gb']} GB (load average at the end {mach['load_average_at_end']}), CPU only. {r['date']}.",
        "",
        f"Command: `{r['command']}`. All phases {'passed' if r['ok'] else 'did NOT all pass'}"
        + (f"; not run: {', '.join(r['not_run'])}" if r["not_run"] else "")
        + ".",
        "",
        "Overrides of the config (besides the model path and the data): "
        + ", ".join(f"{k} {v}" for k, v in r["overrides"].items() if v is not None)
        + ".",
        "",
        "| phase | exit | seconds | peak_rss_gb | s/step | steps run | global step | missing outputs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in r["phases"].items():
        run = ", ".join(str(s["step"]) for s in p.get("steps", []))
        lines.append(
            f"| {name} | {p['returncode']} | {p['seconds']} | {p['peak_rss_gb']} | {p.get('seconds_per_step', '')} | "
            f"{run} | {p.get('global_step', '')} | {', '.join(p['missing'])} |"
        )
    lines += _tokens_and_adapter(r) + _decisions(r) + _projection(r)
    return "\n".join(lines) + "\n"


def _tokens_and_adapter(r: dict) -> list[str]:
    out = []
    if "tokens" in r:
        t = r["tokens"]
        out += [
            "",
            f"Tokens per example ({t['examples']} examples, the folder's processor at the config's pixel budget"
            f"{'' if r['overrides']['max_pixels'] is None else ' overridden'}):",
            "",
            "| | min | median | p95 | max |",
            "| --- | --- | --- | --- | --- |",
        ]
        for k in ("image_tokens", "text_tokens", "total_tokens"):
            d = t[k]
            out.append(f"| {k} | {d['min']} | {d['median']:.0f} | {d['p95']:.0f} | {d['max']} |")
    if "adapter" in r:
        a = r["adapter"]
        out += ["", f"Adapter: {a['trainable_parameters']:,} trainable parameters, {a['adapter_mb']} MB on disk."]
    return out


def _decisions(r: dict) -> list[str]:
    out = []
    for name in ("train", "resume"):
        for key, d in r["phases"].get(name, {}).get("decisions", {}).items():
            out.append(f"- {name}: {key} = {'on' if d['enabled'] else 'off'} (setting {d['setting']}): {d['reason']}")
    return ["", "Defaults the run decided (run_record.json):", "", *out] if out else []


def _projection(r: dict) -> list[str]:
    if "projection" not in r:
        return []
    p = r["projection"]
    out = [
        "",
        f"## Projection at real size ({p['real_size']['parameters']:,} parameters, LoRA "
        f"{p['real_size']['lora']:,}), NLVR2 train ({p['examples']:,} examples), tokens as measured here",
        "",
        "| GPU | compute | memory GB (weights + LoRA state + activations + overhead) | fits | hours/epoch | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for gpu, row in p["gpus"].items():
        mem = row["memory"]
        parts = (
            f"{mem['total_gb']} ({mem['weights_gb']} + {mem['lora_state_gb']} + {mem['activations_gb']} + "
            f"{mem['overhead_gb']})"
        )
        note = "; ".join(x for x in (row.get("fits_with"), row.get("flag")) if x)
        if "fp16_hours_per_epoch" in row:
            note += f" (fp16: {row['fp16_hours_per_epoch']} h)"
        out.append(
            f"| {gpu} | {row['compute']} | {parts} | {'yes' if row['fits'] else 'no'} | "
            f"{row['hours_per_epoch']} (MFU {row['mfu']}, peak {row['peak_tflops']} TFLOPS) | {note} |"
        )
    return out + ["", "Model of the projection:", "", "```", p["model"], "```"]
