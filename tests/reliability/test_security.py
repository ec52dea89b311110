"""Security: remote code off unless asked, safetensors / weights_only loading (a pickle never runs), file names from
uids that cannot leave their folder, and no token in a run record, a checkpoint or a log."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from trl import ModelConfig, SFTConfig

from evals.evaluate import EvalArguments, load_for_eval
from training.models import LabModelArguments, ModelNotAvailableError, load_model, load_processor
from utils import file_names
from utils.run_record import config_dict, redacted, write_run_record
from vlm_datasets import hub
from vlm_datasets.config import DataArguments
from vlm_datasets.prompts import get_template

REPO = Path(__file__).resolve().parents[2]
PROJECT_DIRS = ("vlm_datasets", "training", "evals", "scripts", "utils")
TOKEN = "hf_" + "Zq7" * 12  # shaped like a Hugging Face token


def _spy(monkeypatch, owner, name: str) -> list[dict]:
    calls: list[dict] = []
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


# ---- remote code and weight formats ------------------------------------------------------------------------------


def test_remote_code_is_off_and_weights_are_safetensors_by_default(tiny_model_dir, monkeypatch):
    assert SFTConfig.__dataclass_fields__["trust_remote_code"].default is False
    assert EvalArguments().trust_remote_code is False
    processor_calls = _spy(monkeypatch, transformers.AutoProcessor, "from_pretrained")
    model_calls = _spy(monkeypatch, transformers.AutoModelForImageTextToText, "from_pretrained")
    load_processor(str(tiny_model_dir))
    load_model(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"))
    load_for_eval(
        EvalArguments(), DataArguments(), ModelConfig(model_name_or_path=str(tiny_model_dir)), LabModelArguments()
    )
    assert len(processor_calls) == 2 and len(model_calls) == 2
    assert all(c["trust_remote_code"] is False for c in processor_calls + model_calls)
    assert all(c["use_safetensors"] is True for c in model_calls)


def test_training_passes_remote_code_off_from_its_config(tiny_model_dir, tmp_path, monkeypatch):
    from test_interruption import run_sft

    model_calls = _spy(monkeypatch, transformers.AutoModelForImageTextToText, "from_pretrained")
    run_sft(tiny_model_dir, tmp_path / "run", "--max_steps", "1")
    assert model_calls and all(c["trust_remote_code"] is False and c["use_safetensors"] for c in model_calls)


def test_the_hub_source_asks_for_no_remote_code(monkeypatch):
    calls = []
    monkeypatch.setattr(hub, "_is_offline", lambda: False)
    monkeypatch.setattr(hub.datasets, "load_dataset", lambda *a, **k: calls.append(k) or [])
    hub.load_hub_dataset(DataArguments(dataset_source="hub"), "dev")
    assert calls and not calls[0].get("trust_remote_code")  # datasets 5 runs no loading scripts at all


class _Payload:
    """Unpickling this creates a marker file: the proof that a pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_never_run(tiny_model_dir, tmp_path):
    marker = tmp_path / "pwned"
    # A model folder holding only pytorch_model.bin: refused (use_safetensors=True), never unpickled.
    pickled = tmp_path / "pickled-model"
    pickled.mkdir()
    shutil.copy(tiny_model_dir / "config.json", pickled / "config.json")
    torch.save({"weight": _Payload(marker)}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError):
        load_model(ModelConfig(model_name_or_path=str(pickled)))
    assert not marker.exists()
    # A PEFT adapter saved as adapter_model.bin: PEFT loads it with torch.load(weights_only=True), which refuses it.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "task_type": None})
    )
    torch.save({"x": _Payload(marker)}, adapter / "adapter_model.bin")
    eval_args = EvalArguments(adapter_path=str(adapter))
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl"):
        load_for_eval(eval_args, DataArguments(), ModelConfig(model_name_or_path=str(tiny_model_dir)), None)
    assert not marker.exists()


def _project_sources():
    for folder in PROJECT_DIRS:
        yield from sorted((REPO / folder).rglob("*.py"))


# from_pretrained receivers that load no weights (tokenizers, processors, configs), and PEFT's adapter loader, which
# reads adapter_model.safetensors or an adapter_model.bin with torch.load(weights_only=True) (test above).
_NO_WEIGHTS = re.compile(r"(Tokenizer(Fast)?|Processor|Config|FeatureExtractor)$|^PeftModel$")


def _kwargs_dicts(function: ast.AST) -> dict[str, set[str]]:
    """name -> keywords set to True, for `name = dict(k=True, ...)` assignments in a function."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "dict":
            true = {k.arg for k in node.value.keywords if isinstance(k.value, ast.Constant) and k.value.value is True}
            out |= {t.id: true for t in node.targets if isinstance(t, ast.Name)}
    return out


def unsafe_model_loads(source: str) -> list[str]:
    """Model from_pretrained calls without use_safetensors=True (given directly, or in the **dict it is called with)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        if call.func.attr != "from_pretrained" or _NO_WEIGHTS.search(ast.unparse(call.func.value)):
            continue
        direct = {k.arg for k in call.keywords if isinstance(k.value, ast.Constant) and k.value.value is True}
        function = call
        while function in parents and not isinstance(function, ast.FunctionDef | ast.Module):
            function = parents[function]
        dicts = _kwargs_dicts(function)
        spread = {
            a
            for k in call.keywords
            if k.arg is None and isinstance(k.value, ast.Name)
            for a in dicts.get(k.value.id, ())
        }
        if "use_safetensors" not in direct | spread:
            found.append(f"line {call.lineno}: {ast.unparse(call)}")
    return found


def test_the_weights_check_sees_every_form_of_model_load():
    source = """
def load(path, kwargs_in):
    AutoTokenizer.from_pretrained(path)
    AutoProcessor.from_pretrained(path)
    AutoConfig.from_pretrained(path)
    PeftModel.from_pretrained(model, path)
    AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    kwargs = dict(dtype=None, use_safetensors=True)
    AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    MODEL_MAPPING[type(config)].from_pretrained(path)
    AutoModelForCausalLM.from_pretrained(path, use_safetensors=False)
    AutoModel.from_pretrained(path, **kwargs_in)
"""
    assert [p.split(":")[0] for p in unsafe_model_loads(source)] == ["line 10", "line 11", "line 12"]


def test_no_unsafe_loading_in_the_project_code():
    """Every torch.load names weights_only=True; every model from_pretrained use_safetensors=True; no pickle.load, no
    trust_remote_code=True."""
    problems = []
    for path in _project_sources():
        text = path.read_text(encoding="utf-8")
        problems += [f"{path.relative_to(REPO)}, {p}" for p in unsafe_model_loads(text)]
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find(")", m.start()) + 1]
            if "weights_only=True" not in call:
                problems.append(f"{path.relative_to(REPO)}: {call}")
        for bad in ("pickle.load", "trust_remote_code=True", "use_safetensors=False", "LOAD_TRUNCATED_IMAGES = True"):
            if bad in text:
                problems.append(f"{path.relative_to(REPO)}: {bad}")
    assert not problems, problems


# ---- file names from uids ------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(uid=st.text(min_size=0, max_size=200))
def test_file_names_from_any_uid_stay_in_their_folder(uid):
    base = Path("/srv/gallery/images")
    name = file_names.image_file_name(uid, 0)
    assert "/" not in name and "\\" not in name and "\x00" not in name and name not in (".", "..")
    assert not name.startswith(".") and name.isascii() and len(name) <= 120
    assert (base / name).resolve().parent == base  # never a path outside the folder


@settings(max_examples=200, deadline=None)
@given(a=st.text(max_size=40), b=st.text(max_size=40))
def test_distinct_uids_get_distinct_file_names(a, b):
    if a != b:
        assert file_names.safe_stem(a) != file_names.safe_stem(b)


# ---- tokens and secrets ---------------------------------------------------------------------------------------------


def test_run_records_hold_no_token(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    data = DataArguments(dataset_source="hub", dataset_name=f"https://user:{TOKEN}@example.org/mirror")
    train = SFTConfig(output_dir=str(tmp_path), hub_token=TOKEN, bf16=False, report_to="none")
    model = ModelConfig(model_name_or_path=f"/models/{TOKEN}")  # a value that is a token, under an innocent key
    eval_args = EvalArguments(output_dir=str(tmp_path))
    manifest = {"source": "hub", "settings": {"dataset_name": data.dataset_name, "api_key": "k-123"}}
    config, template = config_dict(data, train, model, eval_args), get_template("nlvr2_true_false")
    path = write_run_record(tmp_path, "x", 0, config, prompt_template=template, dataset=redacted(manifest))  # as sft
    text = path.read_text()
    assert TOKEN not in text and "k-123" not in text and "user:" not in text
    record = json.loads(text)
    assert "hub_token" not in record["config"]["SFTConfig"]
    assert record["config"]["ModelConfig"]["model_name_or_path"] == "/models/<redacted>"
    assert record["config"]["DataArguments"]["dataset_name"] == "https://<redacted>@example.org/mirror"


def test_a_hub_token_argument_reaches_no_file_of_the_run(tiny_model_dir, tmp_path, monkeypatch, caplog):
    from test_interruption import run_sft

    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")  # restored after the test
    caplog.set_level("INFO")
    out = tmp_path / "run"
    trainer = run_sft(tiny_model_dir, out, "--max_steps", "1", "--hub_token", TOKEN, "--report_to", "tensorboard")
    root = Path(os.environ["VLM_STUDIES_ROOT"])  # TensorBoard writes under <artifact root>/logs (training.callbacks)
    files = [p for folder in (out, root) for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files)  # the Trainer's pickled arguments, in each checkpoint
    assert any("tfevents" in p.name for p in files)
    leaks = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert TOKEN not in caplog.text
    assert os.environ["HF_TOKEN"] == TOKEN and trainer.args.hub_token is None  # the hub still gets it, from env


def test_a_hub_token_argument_reaches_no_file_of_a_train_vlm_run(tiny_composed_vlm, tmp_path, monkeypatch, caplog):
    from test_interruption import run_train_vlm

    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")  # restored after the test
    caplog.set_level("INFO")
    out = tmp_path / "run"
    extra = ["--max_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--report_to", "tensorboard"]
    trainer = run_train_vlm(tiny_composed_vlm, out, *extra, "--hub_token", TOKEN)
    root = Path(os.environ["VLM_STUDIES_ROOT"])
    files = [p for folder in (out, root) for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any("tfevents" in p.name for p in files)
    assert {"summary.json", "run_record.json"} <= {p.name for p in files}
    leaks = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert TOKEN not in caplog.text
    assert os.environ["HF_TOKEN"] == TOKEN and trainer.args.hub_token is None


@pytest.mark.parametrize("split", ["../escape", "a/b", "..", ".hidden", ""])
def test_a_split_name_never_leaves_the_cache_folder(tmp_path, split):
    from vlm_datasets.cache import build_cache

    with pytest.raises(ValueError, match="names a cache folder"):
        build_cache(DataArguments(dataset_source="synthetic", synthetic_eval_size=2), [split], tmp_path / "c" / "cache")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "c").exists()
