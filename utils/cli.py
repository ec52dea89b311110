"""How every entry point ends: a user's mistake in one line naming it (exit status 2), a bug with its traceback.

User mistakes: the lab's UserError (utils/errors.py: DataError, UsageError, training.models' ModelNotAvailableError),
OSError (a missing or unreadable file or folder), a YAML file that does not parse, and what the parsers refuse: an
unknown flag or config key (with the nearest known one), a bad value, a missing argument. Anything else is a bug and
keeps its traceback. `--debug` (bare: at the end or before another flag) or VLM_STUDIES_DEBUG=1 shows the traceback of
a mistake too.

    if __name__ == "__main__":                     # TrlParser / HfArgumentParser scripts
        with entry_point():
            main(*parse_args(make_parser()))

    if __name__ == "__main__":                     # typer scripts: a function (one command) or a typer.Typer app
        run_typer(main)

Importing this module keeps bitsandbytes' notice about its optional `kernels` package off the screen
(VLM_STUDIES_BNB_NOTICE=1 lets it through). bitsandbytes logs it while being imported, and transformers imports it (even
`from transformers import set_seed`): an entry point whose own imports load transformers imports this module first.
This module imports nothing of the project above utils.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import yaml

from utils.errors import UsageError, UserError

DEBUG_ENV = "VLM_STUDIES_DEBUG"
BNB_NOTICE_ENV = "VLM_STUDIES_BNB_NOTICE"
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError, yaml.YAMLError)

# bitsandbytes 0.50 logs this warning once, while it is imported, on a CPU with AVX512-BF16 when the optional `kernels`
# package cannot give it a faster 4-bit CPU kernel; its own kernel is used instead (bitsandbytes/backends/cpu/ops.py).
BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_bnb_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(BNB_NOTICE)


def silence_bitsandbytes_notice() -> None:
    """Drop bitsandbytes' `kernels` notice (only that message) unless VLM_STUDIES_BNB_NOTICE=1. bitsandbytes logs it
    while being imported (transformers, peft and trl import it), so call this first."""
    logger = logging.getLogger(BNB_LOGGER)
    if _flag(BNB_NOTICE_ENV):
        logger.removeFilter(_not_bnb_notice)
    else:
        logger.addFilter(_not_bnb_notice)  # a second add is a no-op


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


silence_bitsandbytes_notice()


def take_debug_flag(argv: list[str], bare_only: bool = True) -> bool:
    """Remove --debug from argv (in place); True when it was there or VLM_STUDIES_DEBUG is set. With bare_only, a
    --debug followed by a value stays: it is the parser's own (TrainingArguments' --debug MODE)."""
    found = False
    for i in reversed(range(1, len(argv))):
        bare = i + 1 == len(argv) or argv[i + 1].startswith("-")
        if argv[i] == "--debug" and (bare or not bare_only):
            del argv[i]
            found = True
    return found or _flag(DEBUG_ENV)


@contextlib.contextmanager
def _mistakes_in_one_line(debug: bool, user_errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    silence_bitsandbytes_notice()
    try:
        yield
    except (*USER_ERRORS, *user_errors) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def entry_point(user_errors: tuple[type[BaseException], ...] = ()) -> contextlib.AbstractContextManager[None]:
    """The body of an entry point: a user's mistake (USER_ERRORS, plus `user_errors`) ends in `error: <message>` on
    stderr and exit status 2, no traceback unless --debug / VLM_STUDIES_DEBUG=1; a bug keeps its traceback."""
    return _mistakes_in_one_line(take_debug_flag(sys.argv), user_errors)


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """' (did you mean X?)' with the closest of `known` to `name`, or '' when none is close."""
    match = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {match[0]}?)" if match else ""


def _refuse(message: str):
    raise UsageError(message)


def parse_args(parser: argparse.ArgumentParser, args: Sequence[str] | None = None) -> tuple:
    """The parser's dataclasses from the command line (default sys.argv) and, for a TrlParser, --config's YAML file.

    Every mistake is a UsageError in one line: an unknown flag or config key (with the nearest known one), a missing
    or malformed config, a bad or missing value, a value a dataclass refuses. Flags are matched exactly (argparse would
    take --learning_rat for --learning_rate)."""
    args = _split_equals(list(sys.argv[1:] if args is None else args), "--config")
    parser.allow_abbrev = False
    parser.error = _refuse  # argparse's own errors: the message, not the whole usage and an exit
    takes_config = hasattr(parser, "parse_args_and_config")
    # every flag the parser takes (argparse keeps no public list)
    flags = set(parser._option_string_actions) | ({"--config"} if takes_config else set())
    _check_flags(args, flags)
    if takes_config and "--config" in args:
        i = args.index("--config")
        if i + 1 == len(args):
            raise UsageError("--config needs a YAML file")
        _check_config(Path(args[i + 1]), {a.dest for a in parser._actions} - {"help"})
    try:
        return parser.parse_args_and_config(args) if takes_config else parser.parse_args_into_dataclasses(args)
    except UsageError:
        raise
    except ValueError as e:  # a dataclass's __post_init__ refusing a value it was given
        raise UsageError(str(e)) from e


def _split_equals(args: list[str], flag: str) -> list[str]:
    """--config=x as --config x (the form TrlParser reads)."""
    out = []
    for arg in args:
        out += arg.split("=", 1) if arg.startswith(f"{flag}=") else [arg]
    return out


def _check_flags(args: list[str], flags: set[str]) -> None:
    for arg in args:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name not in flags:
            raise UsageError(f"unknown flag {name}{did_you_mean(name, flags)}")


def _check_config(path: Path, keys: set[str]) -> None:
    """The config file exists, is a YAML mapping, and every key is a field of the parser's dataclasses (or env)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: config unreadable ({e})") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: not a YAML mapping of key: value")
    unknown = [str(k) for k in values if k != "env" and k not in keys]
    if unknown:
        named = ", ".join(f"{k}{did_you_mean(k, keys)}" for k in unknown)
        raise UsageError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {named}")


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return " ".join(str(e).split())
    return f"{getattr(e, 'problem', None) or 'error'} at line {mark.line + 1}, column {mark.column + 1}"


def run_typer(
    command: Callable | object, help: str | None = None, user_errors: tuple[type[BaseException], ...] = ()
) -> None:
    """Run a typer CLI as an entry point (entry_point()): `command` is a typer.Typer app, or a function made its one
    command (help: `help`, else its docstring). typer's own refusals (unknown option, missing argument, bad value)
    are UsageErrors too; an Exit's code or a command's int result is the exit status."""
    import typer

    debug = take_debug_flag(sys.argv, bare_only=False)  # no typer CLI here has a --debug of its own
    if not isinstance(command, typer.Typer):
        app = typer.Typer(add_completion=False)
        app.command(help=help)(command)
        command = app
    command.pretty_exceptions_enable = False  # a traceback, when one is shown, is Python's own
    with _mistakes_in_one_line(debug, user_errors):
        try:
            result = command(standalone_mode=False)
        except typer.TyperException as e:
            raise UsageError(_typer_problem(e)) from None
        except typer.Abort:
            raise SystemExit(1) from None
    if isinstance(result, int) and not isinstance(result, bool) and result:
        raise SystemExit(result)


def _typer_problem(e: Exception) -> str:
    """typer's message, an unknown option as ours: `unknown flag --x (did you mean --y?)`."""
    if hasattr(e, "possibilities"):  # No such option
        return f"unknown flag {e.option_name}{did_you_mean(e.option_name, e.possibilities or [])}"
    return e.format_message() if hasattr(e, "format_message") else str(e)
