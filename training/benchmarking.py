"""Measuring SFT throughput in one process: a step timer (samples/s, non-padding tokens/s, per-step loss), peak
memory, several trainers trained together one step each in turn, and data-loading rates per source.

The timer counts from the end of the last warm-up step to the end of the last step, so data loading, collation and
the optimizer are inside the figure and model loading, dataset preparation and the first steps are not (the
preparation is timed apart, as `setup_s`).
"""

from __future__ import annotations

import copy
import gc
import json
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import datasets
import psutil
import torch
from transformers import TrainerCallback


@dataclass
class RunResult:
    name: str
    samples_per_s: float
    tokens_per_s: float  # non-padding tokens (image tokens included), as SFTTrainer's num_tokens counts them
    peak_memory_mb: float
    memory_kind: str
    steps_timed: int
    seconds: float
    setup_s: float  # dataset preparation before the trainer starts (tokenizing once, converting rows)
    losses: list[float] = field(default_factory=list)  # per optimizer step
    collate_ms: float | None = None  # one batch: reading its rows + the collator, median of a few
    vision_feature_cache: dict | None = None  # the lab's cache counters after the run (training/vision_cache.py)

    def to_dict(self) -> dict:
        return asdict(self)


class StepTimer(TrainerCallback):
    """Wall time and cumulative non-padding tokens at each step end, and each step's logged loss (logging_steps=1)."""

    def __init__(self):
        self.ends: list[float] = []
        self.tokens: dict[int, float] = {}
        self.losses: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])
        if "num_tokens" in logs:
            self.tokens[state.global_step] = float(logs["num_tokens"])

    def rates(self, warmup: int, batch_size: int) -> tuple[float, float, int, float]:
        """(samples/s, tokens/s, steps timed, seconds) over the steps after `warmup`."""
        steps = len(self.ends) - warmup
        if warmup < 1 or steps < 1:
            raise ValueError(f"need more steps than warm-up steps ({warmup}) to time any; got {len(self.ends)}")
        seconds = self.ends[-1] - self.ends[warmup - 1]
        tokens = self.tokens[len(self.ends)] - self.tokens[warmup]
        return steps * batch_size / seconds, tokens / seconds, steps, seconds


class PeakMemory:
    """Peak memory while the block runs: CUDA max_memory_allocated on a GPU, else resident memory (RSS) of this
    process and its children (dataloader workers, via psutil), sampled every 20 ms."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.kind = "cuda max_memory_allocated" if self.cuda else "peak RSS (process + workers)"
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a worker that just exited
                pass
        return total / 2**20

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self.rss_mb())

    @contextmanager
    def watch(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            yield self
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            return
        self.peak_mb = self.rss_mb()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def measure(name: str, trainer, warmup: int, setup_s: float, device: str) -> RunResult:
    """Train `trainer` (max_steps, logging_steps=1) and time it."""
    timer = StepTimer()
    trainer.add_callback(timer)
    memory = PeakMemory(device)
    with memory.watch():
        trainer.train()
    args = trainer.args
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    samples_s, tokens_s, steps, seconds = timer.rates(warmup, batch)
    losses = [timer.losses[s] for s in sorted(timer.losses)]
    return RunResult(name, samples_s, tokens_s, memory.peak_mb, memory.kind, steps, seconds, setup_s, losses)


class TakeTurns(TrainerCallback):
    """Several trainers in threads, one optimizer step at a time in rotation, so that they share the machine's
    conditions step by step (a shared machine's load drifts by tens of percent within minutes). Each records the wall
    time of its own turns: from getting the turn to the end of its step (data loading and collation included)."""

    def __init__(self, name: str, turns: Rotation):
        self.name, self.turns = name, turns
        self.durations: list[float] = []
        self.start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.turns.wait(self.name)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self.start)
        self.turns.next(self.name)
        self.turns.wait(self.name)
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.turns.leave(self.name)


class Rotation:
    """Whose turn it is, among the names still running."""

    def __init__(self, names: list[str]):
        self.order, self.current = list(names), names[0]
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.current == name)

    def next(self, name: str) -> None:
        with self.cond:
            i = self.order.index(name)
            self.current = self.order[(i + 1) % len(self.order)]
            self.cond.notify_all()

    def leave(self, name: str) -> None:
        with self.cond:
            if self.current == name and len(self.order) > 1:
                self.next(name)
            self.order.remove(name)
            self.cond.notify_all()


def measure_interleaved(trainers: dict, warmup: int, setup: dict[str, float]) -> dict[str, RunResult]:
    """Train every trainer (same max_steps, logging_steps=1) one step at a time in rotation; rates count only each
    trainer's own turns after `warmup` steps. Memory is not separable here (one process): see `measure`."""
    rotation = Rotation(list(trainers))
    timers, turns, errors = {}, {}, {}
    for name, trainer in trainers.items():
        timers[name], turns[name] = StepTimer(), TakeTurns(name, rotation)
        trainer.add_callback(timers[name])
        trainer.add_callback(turns[name])

    def run(name):
        try:
            trainers[name].train()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other threads are released
            errors[name] = e
            rotation.leave(name)

    threads = [threading.Thread(target=run, args=(n,), name=f"bench-{n}") for n in trainers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        name, error = next(iter(errors.items()))
        raise RuntimeError(f"benchmark run {name!r} failed: {error}") from error
    results = {}
    for name, trainer in trainers.items():
        args, timer = trainer.args, timers[name]
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        seconds = sum(turns[name].durations[warmup:])
        steps = len(turns[name].durations) - warmup
        if steps < 1:
            raise ValueError(f"{name}: need more steps than the {warmup} warm-up steps")
        tokens = timer.tokens[len(timer.ends)] - timer.tokens[warmup]
        losses = [timer.losses[s] for s in sorted(timer.losses)]
        results[name] = RunResult(
            name, steps * batch / seconds, tokens / seconds, 0.0, "", steps, seconds, setup[name], losses
        )
    return results


def collate_ms(trainer, batches: int = 3) -> float:
    """Milliseconds to read one batch of rows (images decoded) and collate it, median over `batches` batches."""
    ds, size = trainer.train_dataset, trainer.args.per_device_train_batch_size
    rows = iter(ds)  # fresh rows each time (TRL's collator mutates them); a stream is read from its start
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        trainer.data_collator([next(rows) for _ in range(size)])
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def cache_stats(trainer) -> dict | None:
    """The vision feature cache's counters of a trainer's model (None without one)."""
    from training.vision_cache import installed

    cache = installed(trainer.model)
    return cache.stats() if cache is not None else None


def release(trainer) -> None:
    """Drop a finished trainer's model and optimizer before the next run measures its memory."""
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed_runs(
    names: list[str], build, training_args, device: str, warmup: int, repeats: int, interleave: bool, memory_steps: int
) -> dict[str, list[RunResult]]:
    """`build(name, training_args) -> (trainer, setup s)` for each name. Peak memory from a short run of each pipeline
    alone (`memory_steps`); throughput and losses from `repeats` rounds of all pipelines trained together, one step
    each in turn (`interleave`), or alone one after the other."""
    memory = {}
    if memory_steps:
        short = copy.deepcopy(training_args)
        short.max_steps = memory_steps
        for name in names:
            trainer, setup = build(name, short)
            memory[name] = measure(name, trainer, 1, setup, device)
            release(trainer)
    runs = {n: [] for n in names}
    for _ in range(repeats):
        if interleave:
            built = {n: build(n, training_args) for n in names}
            trainers = {n: t for n, (t, _) in built.items()}
            collation = {n: collate_ms(t) for n, t in trainers.items()}
            results = measure_interleaved(trainers, warmup, {n: s for n, (_, s) in built.items()})
            for n, r in results.items():
                r.collate_ms, r.vision_feature_cache = collation[n], cache_stats(trainers[n])
            for trainer in trainers.values():
                release(trainer)
        else:
            results = {}
            for n in names:
                trainer, setup = build(n, training_args)
                collation = collate_ms(trainer)
                results[n] = measure(n, trainer, warmup, setup, device)
                results[n].collate_ms, results[n].vision_feature_cache = collation, cache_stats(trainer)
                release(trainer)
        for n, r in results.items():
            if n in memory:
                r.peak_memory_mb, r.memory_kind = memory[n].peak_memory_mb, memory[n].memory_kind
            runs[n].append(r)
    return runs


# ---- data loading ---------------------------------------------------------------------------------------------------


def loading_rate(load, examples: int) -> dict[str, float]:
    """Seconds to get the split (`load()`), and examples/s reading `examples` rows with their images decoded."""
    start = time.perf_counter()
    ds = load()
    loaded = time.perf_counter()
    n = 0
    for row in ds if examples else ():
        _ = [img.size for img in row["images"]]
        n += 1
        if n >= examples:
            break
    read = time.perf_counter() - loaded
    return {"load_s": loaded - start, "examples": n, "read_examples_per_s": n / read if n else 0.0}


def write_jsonl_source(rows: datasets.Dataset, folder: Path) -> Path:
    """Canonical rows written as a local JSONL manifest + PNG files (the jsonl source's layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w") as f:
        for i, row in enumerate(rows):
            names = []
            for j, img in enumerate(row["images"]):
                names.append(f"images/{i}-{j}.png")
                (folder / "images").mkdir(exist_ok=True)
                img.save(folder / names[-1])
            f.write(
                json.dumps({"uid": row["uid"], "sentence": row["sentence"], "label": row["label"], "images": names})
            )
            f.write("\n")
    return folder


def data_loading(data_args, n: int, processor=None, template=None) -> dict[str, dict]:
    """Load time and examples/s reading `n` rows of each offline source, not cached and cached (the cache's first
    build timed apart), and the lab's one-time tokenization rate. Hub streaming needs the network: not measured."""
    from training.pipeline import tokenize_split
    from vlm_datasets.loading import load_split

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = replace(data_args, dataset_source="synthetic", synthetic_train_size=n, max_train_examples=None)
        rows = load_split(synthetic, synthetic.dataset_train_split)
        jsonl = replace(synthetic, dataset_source="jsonl", dataset_path=str(write_jsonl_source(rows, Path(tmp) / "j")))
        for name, args in (("synthetic", synthetic), ("jsonl", jsonl)):
            for cached in (False, True):
                a = replace(args, dataset_cached=cached, dataset_cache_dir=str(Path(tmp) / f"cache-{name}"))
                if cached:
                    rates[f"{name} cache build"] = loading_rate(lambda a=a: load_split(a, a.dataset_train_split), 0)
                rates[f"{name} cached={cached}"] = loading_rate(lambda a=a: load_split(a, a.dataset_train_split), n)
        if processor is not None:  # the lab's setup: every example rendered and tokenized once
            start = time.perf_counter()
            tokenize_split(rows, processor, template)
            seconds = time.perf_counter() - start
            rates["lab tokenize once"] = {"load_s": seconds, "examples": n, "read_examples_per_s": n / seconds}
    return rates
