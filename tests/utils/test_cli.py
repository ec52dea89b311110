"""The entry points' error handling (utils/cli.py): a user's mistake is one line and exit status 2 (unknown flags and
config keys with the nearest known one, missing files, bad values), a bug keeps its traceback, --debug and
VLM_STUDIES_DEBUG=1 show it, bitsandbytes' kernels notice stays off the screen; then a few entry points run for real."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
import yaml

from utils import cli
from utils.errors import DataError, UsageError

REPO = Path(__file__).resolve().parents[2]
SFT_CONFIG = REPO / "training" / "configs" / "embedded_lora.yaml"


@pytest.fixture(scope="module")
def sft_parser():
    from training.fine_tuning import make_parser

    return make_parser


def refusal(make_parser, args: list[str]) -> str:
    with pytest.raises(UsageError) as err:
        cli.parse_args(make_parser(), args)
    return str(err.value)


def test_an_unknown_flag_names_the_nearest_one(sft_parser):
    message = refusal(sft_parser, ["--config", str(SFT_CONFIG), "--learning_rat", "0.1"])
    assert message == "unknown flag --learning_rat (did you mean --learning_rate?)"  # not taken as an abbreviation
    assert refusal(sft_parser, ["--config", str(SFT_CONFIG), "--zzzz", "1"]) == "unknown flag --zzzz"


def test_an_unknown_config_key_names_the_file_and_the_nearest_key(sft_parser, tmp_path):
    values = yaml.safe_load(SFT_CONFIG.read_text())
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump({**values, "lora_rr": 8, "max_stepz": 3}))
    message = refusal(sft_parser, ["--config", str(bad)])
    assert message == f"{bad}: unknown keys lora_rr (did you mean lora_r?), max_stepz (did you mean max_steps?)"


def test_config_files_that_cannot_be_read(sft_parser, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert refusal(sft_parser, ["--config", str(missing)]) == f"{missing}: no such config file"
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora_r: 8\n  max_steps: [3\n")
    assert refusal(sft_parser, [f"--config={broken}"]).startswith(f"{broken}: not valid YAML (")
    listed = tmp_path / "list.yaml"
    listed.write_text("- lora_r\n")
    assert refusal(sft_parser, ["--config", str(listed)]) == f"{listed}: not a YAML mapping of key: value"
    assert refusal(sft_parser, ["--config"]) == "--config needs a YAML file"


def test_bad_values_are_one_line(sft_parser):
    base = ["--config", str(SFT_CONFIG)]
    message = refusal(sft_parser, [*base, "--max_steps", "ten"])
    assert message == "argument --max_steps/--max-steps: invalid int value: 'ten'"
    message = refusal(sft_parser, [*base, "--vision_feature_cache_max_gb", "-1"])  # LabModelArguments refuses it
    assert message == "vision_feature_cache_max_gb must be >= 0, got -1.0"


def test_a_good_command_line_parses_as_before(sft_parser):
    data_args, training_args, model_args, lab_args, _ = cli.parse_args(
        sft_parser(), ["--config", str(SFT_CONFIG), "--max_steps", "7", "--lora_r=4"]
    )
    assert (training_args.max_steps, model_args.lora_r) == (7, 4)  # the command line over the config
    assert (data_args.dataset_source, lab_args.vision_feature_cache) == ("synthetic", "auto")  # the config's, defaults


@dataclass
class Knobs:
    steps: int = field(default=1, metadata={"help": "Steps."})
    warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps."})


def test_hf_argument_parser_without_config():
    from transformers import HfArgumentParser

    assert cli.parse_args(HfArgumentParser(Knobs), ["--warmup_steps", "2"]) == (Knobs(1, 2),)
    assert (
        refusal(lambda: HfArgumentParser(Knobs), ["--warmup", "2"])
        == "unknown flag --warmup (did you mean --warmup_steps?)"
    )
    message = refusal(lambda: HfArgumentParser(Knobs), ["--config", "x.yaml"])
    assert message.startswith("unknown flag --config")  # only a TrlParser reads a config file


def run_entry_point(monkeypatch, argv: list[str], body, **kwargs) -> None:
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    with cli.entry_point(**kwargs):
        body()


def raiser(error: BaseException):
    def body():
        raise error

    return body


@pytest.mark.parametrize(
    "error",
    [
        DataError("syn_test-9-9-9", "uid not found"),
        UsageError("unknown flag --x"),
        FileNotFoundError("adapter a/b: no such folder"),
        yaml.YAMLError("bad"),
    ],
)
def test_a_mistake_is_one_line_and_status_2(monkeypatch, capsys, error):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as done:
        run_entry_point(monkeypatch, [], raiser(error))
    assert done.value.code == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(KeyError):
        run_entry_point(monkeypatch, [], raiser(KeyError("a bug")))
    with pytest.raises(SystemExit):  # unless the entry point names it as a user's mistake
        run_entry_point(monkeypatch, [], raiser(KeyError("a bug")), user_errors=(KeyError,))


def test_debug_flag_or_env_shows_the_traceback(monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(UsageError):
        run_entry_point(monkeypatch, ["--max_steps", "3", "--debug"], raiser(UsageError("x")))
    assert sys.argv == ["prog", "--max_steps", "3"]  # the parser never sees it
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(UsageError):
        run_entry_point(monkeypatch, [], raiser(UsageError("x")))


def test_only_a_bare_debug_flag_is_taken(monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    argv = ["prog", "--debug", "underflow_overflow", "--max_steps", "3"]  # TrainingArguments' own --debug MODE
    assert not cli.take_debug_flag(argv) and argv[1:3] == ["--debug", "underflow_overflow"]
    argv = ["prog", "--debug", "--max_steps", "3"]
    assert cli.take_debug_flag(argv) and argv == ["prog", "--max_steps", "3"]
    argv = ["prog", "add", "--debug", "uid-1"]  # a typer CLI has no --debug of its own
    assert cli.take_debug_flag(argv, bare_only=False) and argv == ["prog", "add", "uid-1"]


def greet(name: str, learn: int = 1, code: int = 0) -> None:
    """Say hello."""
    if code:
        raise typer.Exit(code)
    print(f"hello {name} {learn}")


def run_typer(monkeypatch, argv: list[str]) -> int:
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    try:
        cli.run_typer(greet)
    except SystemExit as e:
        return e.code
    return 0


def test_typer_mistakes_are_one_line(monkeypatch, capsys):
    assert run_typer(monkeypatch, ["ada", "--lern", "3"]) == 2
    assert capsys.readouterr().err == "error: unknown flag --lern (did you mean --learn?)\n"
    assert run_typer(monkeypatch, ["ada", "--learn", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid value for '--learn': ") and err.count("\n") == 1
    assert run_typer(monkeypatch, []) == 2
    assert capsys.readouterr().err == "error: Missing argument 'name'.\n"


def test_typer_runs_and_keeps_exit_codes(monkeypatch, capsys):
    assert run_typer(monkeypatch, ["ada", "--learn", "3", "--debug"]) == 0
    assert capsys.readouterr().out == "hello ada 3\n"
    assert run_typer(monkeypatch, ["ada", "--code", "3"]) == 3
    assert run_typer(monkeypatch, ["--help"]) == 0
    assert "Say hello." in capsys.readouterr().out


def bitsandbytes_source(relative: str) -> str:
    """A file of the installed bitsandbytes, read without importing it."""
    (folder,) = importlib.util.find_spec("bitsandbytes").submodule_search_locations
    return (Path(folder) / relative).read_text()


def test_the_bitsandbytes_notice_is_dropped_unless_asked_for(monkeypatch, caplog):
    source = bitsandbytes_source("backends/cpu/ops.py")
    assert f'"{cli.BNB_NOTICE}: %s.' in source  # the message bitsandbytes logs, on the logger of that module
    assert "logger = logging.getLogger(__name__)" in source and cli.BNB_LOGGER == "bitsandbytes.backends.cpu.ops"
    logger = logging.getLogger(cli.BNB_LOGGER)
    notice = f"{cli.BNB_NOTICE}: %s. Please make sure you already `pip install kernels` and the kernels >= 0.11.1"
    try:
        monkeypatch.delenv(cli.BNB_NOTICE_ENV, raising=False)
        cli.silence_bitsandbytes_notice()
        with caplog.at_level(logging.WARNING, logger=cli.BNB_LOGGER):
            logger.warning(notice, "No module named 'kernels'")
            logger.warning("another warning")
        assert [r.getMessage() for r in caplog.records] == ["another warning"]
        caplog.clear()
        monkeypatch.setenv(cli.BNB_NOTICE_ENV, "1")
        cli.silence_bitsandbytes_notice()
        with caplog.at_level(logging.WARNING, logger=cli.BNB_LOGGER):
            logger.warning(notice, "No module named 'kernels'")
        assert caplog.records[0].getMessage().startswith(cli.BNB_NOTICE)
    finally:
        logger.removeFilter(cli._not_bnb_notice)


# The entry points themselves, in subprocesses (each imports the whole stack: slow here)


def run_script(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop(cli.DEBUG_ENV, None)
    env.update({cli.DEBUG_ENV: "1"} if debug else {})
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_sft_unknown_flag_and_missing_config(tmp_path):
    done = run_script("training/sft.py", "--config", str(SFT_CONFIG), "--learning_rat", "0.1")
    assert (done.returncode, done.stderr.splitlines()[-1:]) == (
        2,
        ["error: unknown flag --learning_rat (did you mean --learning_rate?)"],
    ), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    missing = tmp_path / "missing.yaml"
    done = run_script("training/sft.py", "--config", str(missing), debug=True)
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert done.stderr.splitlines()[-1] == f"utils.errors.UsageError: {missing}: no such config file"


@pytest.mark.integration
def test_a_missing_adapter_fails_before_the_base_model_loads(tmp_path):
    not_a_model = tmp_path / "empty"  # loading it would fail otherwise: "model ... could not be loaded"
    not_a_model.mkdir()
    config = REPO / "evals" / "configs" / "embedded_finetuned.yaml"
    args = ["--config", str(config), "--model_name_or_path", str(not_a_model), "--output_dir", str(tmp_path / "out")]
    done = run_script("evals/finetuned.py", *args, "--adapter_path", str(tmp_path / "nope"))
    assert done.returncode == 2, done.stderr[-2000:]
    expected = f"error: adapter {tmp_path / 'nope'}: no such folder (give a training run's output_dir)"
    assert done.stderr.splitlines()[-1] == expected
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_a_folder_without_adapter_config_is_refused_before_any_model_loads(tmp_path):
    from trl import ModelConfig

    from evals.evaluate import EvalArguments, load_for_eval
    from training.models import LabModelArguments
    from vlm_datasets.config import DataArguments

    (tmp_path / "run").mkdir()
    (tmp_path / "empty").mkdir()  # not a model: loading it would raise ModelNotAvailableError
    eval_args = EvalArguments(adapter_path=str(tmp_path / "run"))
    model_args = ModelConfig(model_name_or_path=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=f"adapter {tmp_path / 'run'}: no adapter_config.json"):
        load_for_eval(eval_args, DataArguments(), model_args, LabModelArguments())
