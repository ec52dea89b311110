"""Interruption: training killed with SIGKILL at a random step and resumed ends with the adapter of an uninterrupted
run; resume skips a half-written checkpoint (training/sft.py and training/train_vlm.py); a killed cache build never
leaves a cache that verifies."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from training.callbacks import resume_checkpoint
from training.sft import main, make_parser
from utils.checkpoints import is_complete, last_complete_checkpoint
from vlm_datasets.cache import CacheError, NotCachedError, build_cache, verify_cache
from vlm_datasets.config import DataArguments
from vlm_datasets.loading import load_split

REPO = Path(__file__).resolve().parents[2]
CONFIG = "training/configs/embedded_lora.yaml"
STEPS = 8
TOLERANCE = 1e-5  # max |resumed - uninterrupted| over every adapter weight (measured: 0.0 on CPU, float32)
ADAPTER = "adapter_model.safetensors"


def sft_overrides(model_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """The embedded LoRA recipe at toy size: 64 synthetic examples, batch 8, a checkpoint every step."""
    return [
        "--config",
        str(REPO / CONFIG),
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out_dir),
        "--synthetic_train_size",
        "64",
        "--per_device_train_batch_size",
        "8",
        "--max_steps",
        str(STEPS),
        "--save_steps",
        "1",
        "--save_total_limit",
        str(STEPS + 1),
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        *extra,
    ]


def run_sft(model_dir: Path, out_dir: Path, *extra: str):
    """training/sft.py's main in this process."""
    return main(*make_parser().parse_args_and_config(sft_overrides(model_dir, out_dir, *extra)))


def train_vlm_overrides(model_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """The embedded GPT-2v stage-1 recipe at toy size: 16 synthetic caption rows, 4 held out, batch 4."""
    return [
        "--config",
        str(REPO / "training/configs/compose/gpt2v_embedded_stage1.yaml"),
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out_dir),
        "--synthetic_train_size",
        "16",
        "--synthetic_eval_size",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--vlm_eval_before",
        "false",
        "--vlm_eval_max_new_tokens",
        "4",
        "--warmup_steps",
        "0",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        *extra,
    ]


def run_train_vlm(model_dir: Path, out_dir: Path, *extra: str):
    """training/train_vlm.py's main in this process."""
    from training.train_vlm import main as train_vlm
    from training.train_vlm import make_parser as train_vlm_parser

    return train_vlm(*train_vlm_parser().parse_args_and_config(train_vlm_overrides(model_dir, out_dir, *extra)))


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env |= {"HF_DATASETS_CACHE": str(tmp / "hf_datasets"), "VLM_STUDIES_ROOT": str(tmp / "artifacts")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _kill_when(proc: subprocess.Popen, ready, delay: float, timeout: float = 300) -> bool:
    """SIGKILL proc `delay` seconds after ready() first holds; False when it exited before that."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            time.sleep(delay)
            if proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.kill()
    raise TimeoutError(f"{proc.args}: not ready after {timeout} s")


def train_and_kill(model_dir: Path, out_dir: Path, rng: random.Random) -> dict:
    """training/sft.py in a subprocess, SIGKILLed a random 0-0.6 s after checkpoint-k appears (k random in 1-3):
    during a later step, or while a checkpoint is being written."""
    target, delay = rng.randint(1, 3), rng.uniform(0, 0.6)
    log = (out_dir.parent / f"{out_dir.name}.log").open("w")
    cmd = [sys.executable, str(REPO / "training" / "sft.py"), *sft_overrides(model_dir, out_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(out_dir.parent), stdout=log, stderr=subprocess.STDOUT)
    killed = _kill_when(proc, lambda: (out_dir / f"checkpoint-{target}").exists(), delay)
    assert killed, f"the run finished before the kill (target step {target}): see {log.name}"
    found = {step: is_complete(step, f) for step, f in _checkpoints(out_dir)}
    return {"target": target, "delay": round(delay, 3), "checkpoints": found}


def _checkpoints(out_dir: Path):
    from utils.checkpoints import checkpoints

    return checkpoints(out_dir)


def max_abs_diff(a_dir: Path, b_dir: Path) -> float:
    a, b = load_file(a_dir / ADAPTER), load_file(b_dir / ADAPTER)
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    with pytest.MonkeyPatch.context() as mp:
        import datasets

        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(out.parent / "hf_datasets"))
        mp.setenv("VLM_STUDIES_ROOT", str(out.parent / "artifacts"))
        run_sft(tiny_model_dir, out)
    return out


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tiny_model_dir, uninterrupted, tmp_path):
    seed = random.SystemRandom().randrange(10**6)  # not the global RNG: training's set_seed(0) resets it
    out = tmp_path / "run"
    kill = train_and_kill(tiny_model_dir, out, random.Random(seed))
    assert not (out / ADAPTER).exists(), "killed before the end: no final adapter yet"
    resumed = run_sft(tiny_model_dir, out, "--resume_from_checkpoint", "true")
    assert resumed.state.global_step == STEPS
    diff = max_abs_diff(uninterrupted, out)
    assert diff <= TOLERANCE, f"seed {seed}, kill {kill}: max abs diff {diff}"


def test_resume_skips_a_half_written_checkpoint(tiny_model_dir, uninterrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    for step, folder in _checkpoints(out):
        if step > 4:
            shutil.rmtree(folder)
    (out / ADAPTER).unlink()
    # checkpoint-4 as a save killed half-way leaves it: weights written, optimizer cut short, no trainer_state.json.
    half = out / "checkpoint-4"
    (half / "trainer_state.json").unlink()
    optimizer = half / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 3])
    assert get_last_checkpoint(str(out)) == str(half)  # transformers' own choice: the broken one
    assert last_complete_checkpoint(out) == out / "checkpoint-3"
    resumed = run_sft(tiny_model_dir, out, "--resume_from_checkpoint", "true")
    assert resumed.state.global_step == STEPS
    assert (out / "checkpoint-4.incomplete").is_dir()  # set aside, not deleted: rotation can no longer keep it
    assert is_complete(4, out / "checkpoint-4")  # saved again, complete this time
    assert max_abs_diff(uninterrupted, out) <= TOLERANCE


def test_completeness_needs_a_parsable_trainer_state_for_its_step(tmp_path):
    for step, state in ((1, {"global_step": 1}), (2, None), (3, "torn"), (4, {"global_step": 3})):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state == "torn":
            (folder / "trainer_state.json").write_text('{"global_step": 3, "log_hist')
        elif state is not None:
            (folder / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / "checkpoint-9.incomplete").mkdir()  # set aside earlier: not a checkpoint
    assert [is_complete(s, f) for s, f in _checkpoints(tmp_path)] == [True, False, False, False]
    assert last_complete_checkpoint(tmp_path, set_aside=True) == tmp_path / "checkpoint-1"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "checkpoint-1",
        "checkpoint-2.incomplete",
        "checkpoint-3.incomplete",
        "checkpoint-4.incomplete",
        "checkpoint-9.incomplete",
    ]
    with pytest.raises(ValueError, match="no complete checkpoint-N"):
        resume_checkpoint("true", str(tmp_path / "empty"))


def test_a_run_killed_during_its_first_save_starts_again_from_step_zero(tmp_path):
    (tmp_path / "checkpoint-1").mkdir()  # weights half-written, no trainer_state.json
    assert resume_checkpoint("true", str(tmp_path)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1.incomplete"]


def test_train_vlm_resumes_from_the_newest_complete_checkpoint(tiny_composed_vlm, tmp_path):
    out = tmp_path / "run"
    steps = ["--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "4"]
    run_train_vlm(tiny_composed_vlm, out, *steps)
    (out / "checkpoint-3" / "trainer_state.json").unlink()  # a save killed half-way
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-3")  # transformers' own choice: the broken one
    resumed = run_train_vlm(tiny_composed_vlm, out, *steps, "--resume_from_checkpoint", "true")
    assert resumed.state.global_step == 3
    assert (out / "checkpoint-3.incomplete").is_dir() and is_complete(3, out / "checkpoint-3")


# ---- the dataset cache ------------------------------------------------------------------------------------------

_BUILD = (
    "import sys; from vlm_datasets.cache import build_cache; from vlm_datasets.config import DataArguments; "
    "build_cache(DataArguments(dataset_source='synthetic', synthetic_train_size=int(sys.argv[2]), "
    "synthetic_eval_size=4), ['dev', 'train'], sys.argv[1])"
)


def build_and_kill(cache_dir: Path, rng: random.Random, train_size: int = 1500) -> dict:
    """Extend a verified cache (dev) with a train split in a subprocess, SIGKILLed a random 0-2 s into the build."""
    delay = rng.uniform(0, 2.0)
    cmd = [sys.executable, "-c", _BUILD, str(cache_dir), str(train_size)]
    env = _env(cache_dir.parent)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    building = lambda: any(cache_dir.parent.glob(f".{cache_dir.name}.tmp-*"))  # noqa: E731
    killed = _kill_when(proc, building, delay)
    return {"delay": round(delay, 3), "killed": killed, "exit": proc.returncode}


def cache_state_after_kill(cache_dir: Path, train_size: int = 1500) -> str:
    """ "old" (dev only, verifies), "new" (dev + full train, verifies), "none" or "partial" (verifies with other
    splits: what must never happen)."""
    args = DataArguments(dataset_source="synthetic", synthetic_train_size=train_size, synthetic_eval_size=4)
    try:
        manifest = verify_cache(args, cache_dir)
    except NotCachedError:
        return "none"  # killed between the two renames of the swap: no cache, never a wrong one
    splits = manifest["splits"]
    if splits == {"dev": 4}:
        return "old"
    return "new" if splits == {"dev": 4, "train": train_size} else "partial"


@pytest.mark.integration
@pytest.mark.parametrize("trial", range(2))
def test_a_killed_cache_build_never_leaves_a_cache_that_verifies_partially(tmp_path, trial):
    cache_dir = tmp_path / "cache"
    args = DataArguments(dataset_source="synthetic", synthetic_train_size=1500, synthetic_eval_size=4)
    build_cache(args, ["dev"], cache_dir)
    kill = build_and_kill(cache_dir, random.Random(trial))
    state = cache_state_after_kill(cache_dir)
    # A kill can land after the final rename (the process was still shutting down): then the cache is the new one,
    # complete. Never a partial one.
    assert state in ({"old", "none", "new"} if kill["killed"] else {"new"}), (kill, state)
    # The next cached load goes on from whatever is there, and ends with a complete, verified cache.
    cached = DataArguments(**{**vars(args), "dataset_cached": True, "dataset_cache_dir": str(cache_dir)})
    assert len(load_split(cached, "train")) == 1500
    assert set(verify_cache(args, cache_dir)["splits"]) == {"dev", "train"}


def test_data_without_its_manifest_never_verifies(tmp_path):
    args = DataArguments(dataset_source="synthetic", synthetic_eval_size=4)
    cache_dir = build_cache(args, ["dev"], tmp_path / "cache")
    (cache_dir / "manifest.json").unlink()
    with pytest.raises(CacheError, match="missing: not a finished cache"):
        verify_cache(args, cache_dir)


# ---- figures for docs/reliability.md ---------------------------------------------------------------------------


def kill_and_resume_trials(model_dir: Path, root: Path, n: int):
    """n training kills (resumed, compared with an uninterrupted run) and n cache-build kills; yields report lines."""
    import datasets

    datasets.config.HF_DATASETS_CACHE = str(root / "hf_datasets")
    os.environ["VLM_STUDIES_ROOT"] = str(root / "artifacts")
    straight = root / "uninterrupted"
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its logs
        run_sft(model_dir, straight)
    diffs = []
    for i in range(n):
        seed = random.SystemRandom().randrange(10**6)
        out = root / f"kill-{i}"
        kill = train_and_kill(model_dir, out, random.Random(seed))
        resumed_from = last_complete_checkpoint(out)
        with contextlib.redirect_stdout(io.StringIO()):
            run_sft(model_dir, out, "--resume_from_checkpoint", "true")
        diffs.append(max_abs_diff(straight, out))
        incomplete = [s for s, ok in kill["checkpoints"].items() if not ok]
        yield (
            f"training kill {i + 1}: seed {seed}, SIGKILL {kill['delay']} s after checkpoint-{kill['target']} "
            f"appeared; checkpoints then {sorted(kill['checkpoints'])}, incomplete {incomplete}; resumed from "
            f"{resumed_from.name}; max abs diff vs uninterrupted {diffs[-1]:.3g}"
        )
    yield f"training: {n} kills, {sum(d <= TOLERANCE for d in diffs)} resumed within {TOLERANCE}, max {max(diffs):.3g}"
    states: dict[str, int] = {}
    for i in range(n):
        cache_dir = root / f"cache-{i}" / "cache"
        args = DataArguments(dataset_source="synthetic", synthetic_train_size=1500, synthetic_eval_size=4)
        build_cache(args, ["dev"], cache_dir)
        kill = build_and_kill(cache_dir, random.Random(i))
        state = cache_state_after_kill(cache_dir)
        states[state] = states.get(state, 0) + 1
        yield f"cache kill {i + 1}: {kill}, cache after: {state}"
    yield (
        f"cache: {n} builds killed or finished, states after {states}, partial caches that verified: "
        f"{states.get('partial', 0)}"
    )
