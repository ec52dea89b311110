"""The UID cache from the command line (utils/uid_bookmarks.py): add, list, walk and remove bookmarked uids.

# Bookmark examples (a second add of the same uid merges its tags and note); each uid must be in the config's split
python scripts/uid_cache.py add syn_test-12-0-0 --config evals/configs/embedded_zero_shot.yaml --tag odd \
    --note "right image looks empty"
python scripts/uid_cache.py add $(cat artifacts/analysis/compare/a__vs__b/right_to_wrong.txt) --tag regression \
    --config evals/configs/embedded_finetuned.yaml
python scripts/uid_cache.py add some-uid --force    # no dataset at hand: bookmarked unchecked

# List (all, or one tag), walk them, drop one
python scripts/uid_cache.py list --tag odd
python scripts/uid_cache.py next syn_test-12-0-0      # prints the uid after it (no uid: the first one)
python scripts/uid_cache.py prev syn_test-12-0-0
python scripts/uid_cache.py remove syn_test-12-0-0

The file is <artifact root>/analysis/uid_cache.json unless --cache names another.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from utils.errors import DataError, UsageError
from utils.uid_bookmarks import Bookmark, UidCache

app = typer.Typer(add_completion=False, help="Bookmarked uids (tags, notes) for error analysis.")
CacheOpt = Annotated[Path | None, typer.Option("--cache", help="Cache file (default <root>/analysis/uid_cache.json).")]
TagOpt = Annotated[str | None, typer.Option("--tag", help="Only bookmarks with this tag.")]


def _fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _describe(e: Bookmark) -> str:
    tags = f"  [{', '.join(e.tags)}]" if e.tags else ""
    note = "  " + e.note.replace("\n", " | ") if e.note else ""
    return f"{e.uid}{tags}{note}  ({e.time})"


def check_uids(uids: list[str], config: Path | None, split: str | None) -> None:
    """Every uid must be in the config's split (default its dataset_eval_split): a mistyped uid is refused, not
    bookmarked. DataError naming the split and the missing uids; UsageError without a config."""
    if config is None:
        raise UsageError(
            f"no split to check {uids[0]!r} against: give --config (a data config; --split picks its split) or --force"
            " to bookmark unchecked"
        )
    from vlm_datasets.example_lookup import data_arguments, find_examples  # datasets: only when checking

    args = data_arguments(config)
    try:
        find_examples(args, split or args.dataset_eval_split, uids)
    except DataError as e:
        raise DataError(e.where, f"{e.problem}; --force bookmarks it anyway") from None


@app.command()
def add(
    uids: Annotated[list[str], typer.Argument(help="One or more uids.")],
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeat for several).")] = None,
    note: Annotated[str, typer.Option(help="A note (merged into an existing one).")] = "",
    config: Annotated[Path | None, typer.Option(help="Data config YAML: each uid must be in its split.")] = None,
    split: Annotated[str | None, typer.Option(help="Split (default: the config's dataset_eval_split).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Bookmark without checking the uids.")] = False,
    cache: CacheOpt = None,
) -> None:
    """Bookmark uids; an existing bookmark gains the tags and note."""
    store = UidCache(cache)
    try:
        if not force:
            check_uids(uids, config, split)
        for uid in uids:
            typer.echo(_describe(store.add(uid, tag or [], note)))
    except (DataError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"{len(store.entries())} bookmarks in {store.path}", err=True)


@app.command("list")
def list_(tag: TagOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False, cache: CacheOpt = None) -> None:
    """Bookmarks in the order they were added."""
    store = UidCache(cache)
    try:
        entries = store.entries(tag)
    except DataError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps([asdict(e) for e in entries], indent=2, ensure_ascii=False))
    elif not entries:
        typer.echo(f"no bookmarks{f' tagged {tag!r}' if tag else ''} in {store.path}", err=True)
    for e in [] if as_json else entries:
        typer.echo(_describe(e))


@app.command()
def remove(uids: Annotated[list[str], typer.Argument(help="One or more uids.")], cache: CacheOpt = None) -> None:
    """Drop bookmarks; exit status 1 when a uid had none."""
    store, missing = UidCache(cache), []
    try:
        for uid in uids:
            if store.remove(uid):
                typer.echo(f"removed {uid}")
            else:
                missing.append(uid)
    except DataError as e:
        _fail(str(e))
    if missing:
        _fail(f"not in the UID cache {store.path}: {', '.join(missing)}", code=1)


def _walk(uid: str | None, offset: int, tag: str | None, cache: Path | None) -> None:
    store = UidCache(cache)
    try:
        entry = store.step(uid, offset, tag)
    except DataError as e:
        _fail(str(e))
    except KeyError as e:
        _fail(e.args[0], code=1)
    if entry is None:
        _fail(f"no bookmark {'after' if offset > 0 else 'before'} {uid or 'the start'} in {store.path}", code=1)
    typer.echo(entry.uid)


@app.command("next")
def next_(
    uid: Annotated[str | None, typer.Argument(help="Current uid (none: the first).")] = None,
    tag: TagOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Print the uid bookmarked after UID."""
    _walk(uid, 1, tag, cache)


@app.command()
def prev(
    uid: Annotated[str | None, typer.Argument(help="Current uid (none: the last).")] = None,
    tag: TagOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Print the uid bookmarked before UID."""
    _walk(uid, -1, tag, cache)


if __name__ == "__main__":
    from utils.cli import run_typer

    run_typer(app)
