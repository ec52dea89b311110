"""A sweep's results from its run folders: results.csv (one row per run), summary.csv and results.md (per cell: mean,
standard deviation and Student-t 95% CI over the seeds) and one plot per metric (metric vs a grid axis, one line per
variant and value of the other axes), all written into the sweep folder.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: a bare Figure saves .png through the Agg canvas, no GUI backend

from utils.atomic_write import write_text_atomic

# Student t quantiles t(0.975, df) for df = 1..30 (the stack has no scipy); beyond 30, the normal 1.96.
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_975(df: int) -> float:
    return T_975[df - 1] if df <= len(T_975) else 1.96


def seed_stats(values: Sequence[float | None]) -> dict:
    """n, mean, std (ddof=1) and the 95% CI of the mean (mean +- t(0.975, n-1) * std / sqrt(n)) of the values that
    are not None; std and CI are None below two values."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    stats = {"n": int(v.size), "mean": None, "std": None, "ci_low": None, "ci_high": None}
    if v.size:
        stats["mean"] = float(v.mean())
    if v.size >= 2:
        std = float(v.std(ddof=1))
        half = t_975(v.size - 1) * std / np.sqrt(v.size)
        stats |= {"std": std, "ci_low": stats["mean"] - half, "ci_high": stats["mean"] + half}
    return stats


def metric_value(metrics: dict, path: str, where: str = "metrics.json"):
    """metrics["a"]["b"] for path "a.b"; a missing key is an error naming the keys there are."""
    value = metrics
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            known = sorted(value) if isinstance(value, dict) else []
            raise ValueError(f"{where}: no metric {path!r} (keys there: {', '.join(known)})")
        value = value[part]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"{where}: metric {path!r} is not a number: {value!r}")
    return value


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def collect(runs: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    """One row per run ({cell, variant, axes, seed, dir}): its metrics (and the evaluator's CI over the test
    examples where metrics.json has <metric>_ci), eval size and split, training steps, loss and seconds."""
    rows = []
    for run in runs:
        run_dir = Path(run["dir"])
        row = {"cell": run["cell"], "variant": run["variant"], **run["axes"], "seed": run["seed"]}
        found = _read_json(run_dir / "metrics.json")
        row["complete"] = found is not None
        for name in metrics:
            row[name] = metric_value(found, name, str(run_dir / "metrics.json")) if found else None
            ci = (found or {}).get(f"{name}_ci") if "." not in name else None
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = ci if ci else (None, None)
        trained = _read_json(run_dir / "train_summary.json") or {}
        row |= {
            "n_eval": (found or {}).get("n"),
            "eval_split": (found or {}).get("split"),
            "train_steps": trained.get("global_step"),
            "train_loss": trained.get("train_loss"),
            "train_seconds": trained.get("seconds"),
            "eval_seconds": (found or {}).get("wall_seconds"),
            "run_dir": str(run_dir),
        }
        rows.append(row)
    return rows


def summarize(rows: Sequence[dict], metrics: Sequence[str], axes: Sequence[str]) -> list[dict]:
    """Per cell, in the order of the rows: variant, axis values, seeds complete / planned, and seed_stats of each
    metric over the complete runs (<metric>_mean, _std, _ci_low, _ci_high)."""
    cells: dict[str, list[dict]] = {}
    for row in rows:
        cells.setdefault(row["cell"], []).append(row)
    out = []
    for name, members in cells.items():
        done = [r for r in members if r["complete"]]
        cell = {"cell": name, "variant": members[0]["variant"], **{a: members[0][a] for a in axes}}
        cell |= {"n_seeds": len(done), "n_planned": len(members)}
        for metric in metrics:
            stats = seed_stats([r[metric] for r in done])
            cell |= {f"{metric}_{k}": stats[k] for k in ("mean", "std", "ci_low", "ci_high")}
        out.append(cell)
    return out


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{k: "" if row.get(k) is None else row[k] for k in columns} for row in rows])
    return write_text_atomic(path, text.getvalue())


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def render_markdown(sweep: dict, summary: Sequence[dict], rows: Sequence[dict], command: str) -> str:
    """results.md: what was run (command, configs, evaluation data) and the per-cell table."""
    metrics, axes = sweep["metrics"], list(sweep.get("grid") or {})
    has_variants = any(c["variant"] for c in summary)
    first = next((r for r in rows if r["complete"]), None)
    lines = [f"# Sweep `{sweep['name']}`", "", f"`{command}`", ""]
    lines.append(
        f"Training config `{sweep['train_config']}`, evaluation config `{sweep['eval_config']}`"
        + (f" (split `{first['eval_split']}`, {first['n_eval']} examples per run)" if first else "")
        + f"; seeds {', '.join(map(str, sweep['seeds']))} (training fields: {', '.join(sweep['seed_fields'])})."
    )
    lines += [
        "",
        "Mean and standard deviation over the complete seeds of each cell; 95% CI of the mean: Student t with n - 1 "
        "degrees of freedom (– with fewer than two seeds). The evaluator's per-run CIs over the test examples "
        "(bootstrap) are in results.csv.",
        "",
    ]
    head = ["cell"] + (["variant"] if has_variants else []) + axes + ["seeds"]
    for m in metrics:
        head += [m, "std", "95% CI"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in summary:
        cells = [c["cell"]] + ([c["variant"] or ""] if has_variants else []) + [str(c[a]) for a in axes]
        cells.append(f"{c['n_seeds']}/{c['n_planned']}")
        for m in metrics:
            lo, hi = c[f"{m}_ci_low"], c[f"{m}_ci_high"]
            cells += [_num(c[f"{m}_mean"]), _num(c[f"{m}_std"]), "–" if lo is None else f"[{lo:.3f}, {hi:.3f}]"]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [r for r in rows if not r["complete"]]
    if missing:
        lines += [
            "",
            f"Not complete ({len(missing)} runs): " + ", ".join(f"{r['cell']} seed {r['seed']}" for r in missing),
        ]
    return "\n".join(lines) + "\n"


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)  # axis values may be lists (unhashable)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def plot_metric(path: Path, summary: Sequence[dict], metric: str, axes: Sequence[str], plot_axis: str | None, title):
    """metric (mean over seeds, 95% CI bars) vs plot_axis (default the first grid axis), one line per variant and
    value of the other axes; with no grid, one point per cell."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    shown = [c for c in summary if c[f"{metric}_mean"] is not None]
    if axes:
        x_axis = plot_axis or axes[0]
        if x_axis not in axes:
            raise ValueError(f"plot_axis {x_axis!r} is not a grid axis ({list(axes)})")
        others = [a for a in axes if a != x_axis]
        xs = list({_key(c[x_axis]): c[x_axis] for c in summary}.values())
        numeric = all(_is_number(v) for v in xs)
        positions = {_key(v): i for i, v in enumerate(xs)}
        series: dict[str, list[dict]] = {}
        for c in shown:  # one line per variant and combination of the other axes' values
            series.setdefault(_key([c["variant"], *(c[a] for a in others)]), []).append(c)
        log = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
        if log:  # the width of the x axis, in its own units: octaves, values or category positions
            width = np.log2(max(xs) / min(xs))
        else:
            width = (max(xs) - min(xs) or 1) if numeric else max(len(xs) - 1, 1)
        for i, cells in enumerate(series.values()):
            variant = cells[0]["variant"]
            parts = ([variant] if variant else []) + [f"{a}={cells[0][a]}" for a in others]
            shift = (i - (len(series) - 1) / 2) * 0.015 * width  # lines side by side: no CI bar hides another
            x = [c[x_axis] if numeric else positions[_key(c[x_axis])] for c in cells]
            _errorbar(ax, [v * 2**shift if log else v + shift for v in x], cells, metric, parts)
        if log:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs if numeric else range(len(xs)), [str(v) for v in xs])
        ax.minorticks_off()
        ax.set_xlabel(x_axis)
        if any(cells[0]["variant"] for cells in series.values()) or others:
            ax.legend(fontsize=8)
    else:
        if shown:
            _errorbar(ax, list(range(len(shown))), shown, metric, [], line=False)
        ax.set_xticks(range(len(shown)), [c["cell"] for c in shown])
        ax.set_xlabel("variant")
    ax.set_ylabel(f"{metric} (mean over seeds, 95% CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def _errorbar(ax, x, cells, metric, label_parts, line=True):
    mean = np.array([c[f"{metric}_mean"] for c in cells])
    lo = np.array([c[f"{metric}_ci_low"] if c[f"{metric}_ci_low"] is not None else c[f"{metric}_mean"] for c in cells])
    hi = np.array(
        [c[f"{metric}_ci_high"] if c[f"{metric}_ci_high"] is not None else c[f"{metric}_mean"] for c in cells]
    )
    ax.errorbar(
        x, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, linestyle="-" if line else "none",
        label=", ".join(label_parts) or None,
    )  # fmt: skip


def plot_name(metric: str) -> str:
    return "plot_" + "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in metric) + ".png"


def write_results(out_dir: Path, sweep: dict, runs: Sequence[dict], command: str, plot_axis: str | None = None):
    """results.csv, summary.csv, results.md and plot_<metric>.png in out_dir; returns their paths."""
    metrics, axes = sweep["metrics"], list(sweep.get("grid") or {})
    rows = collect(runs, metrics)
    summary = summarize(rows, metrics, axes)
    paths = [write_csv(out_dir / "results.csv", rows), write_csv(out_dir / "summary.csv", summary)]
    paths.append(write_text_atomic(out_dir / "results.md", render_markdown(sweep, summary, rows, command)))
    for metric in metrics:
        title = f"{sweep['name']}: {metric}"
        paths.append(plot_metric(out_dir / plot_name(metric), summary, metric, axes, plot_axis, title))
    return paths
