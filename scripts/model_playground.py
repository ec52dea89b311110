"""Free-form prompts through a base model or base + PEFT adapter, with images from files or from dataset uids, and
every decoding knob at hand. Each call is appended as one JSON line (time, model, adapter, prompt, images, knobs,
output) to <artifact root>/logs/playground.jsonl (or --log).

# One shot on the embedded base, two image files
python scripts/model_playground.py --prompt "Describe the left image." --image left.png --image right.png

# The fine-tuned adapter of the embedded default on a synthetic example; {sentence} is the example's statement
python scripts/model_playground.py --config evals/configs/embedded_finetuned.yaml --uid syn_test-3-1-0 \
    --prompt "{sentence} True or False?" --sample --temperature 0.8 --top-p 0.9 --seed 1

# Interactive: a prompt a line until EOF or :q; :help lists the commands (:uid, :next / :prev over the UID cache,
# :ask for the evaluation prompt of the loaded example, :image, :set temperature=0.7, ...)
python scripts/model_playground.py --config evals/configs/embedded_finetuned.yaml
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from utils.cli import did_you_mean
from utils.errors import DataError, UsageError

if TYPE_CHECKING:  # evals.playground (torch, the model code) loads in main: --help needs none of it
    from evals.playground import Playground

Opt = typer.Option
HELP = """commands:
  TEXT                 generate from TEXT ({sentence}: the loaded example's statement) and the current images
  :uid UID             load that example's images (from the data config's split)
  :next / :prev        the next / previous uid of the UID cache (from the loaded uid, else the first / last)
  :ask                 the loaded example's evaluation prompt (the config's prompt_template)
  :image PATH [PATH]   images from files;   :noimage   no images
  :set KEY=VALUE ...   change decoding knobs;   :knobs   show them
  :help                this list
  :q                   quit (so does end of input)
with a loaded example, each answer is followed by its uid, label and p_true (answer likelihood, as evaluation scores)"""
COMMANDS = (":uid", ":next", ":prev", ":ask", ":image", ":noimage", ":set", ":knobs", ":help", ":q")


def answer(pg: Playground, output: str) -> str:
    """The model's output, then for a loaded example a line with its uid, label and p_true."""
    if pg.example is None:
        return output
    return f"{output}\n{pg.example.uid}: label {pg.example.label}, p_true {pg.p_true():.3f}"


def command(pg: Playground, line: str, out: TextIO) -> bool:
    """Run one input line; False to stop."""
    word, _, rest = line.strip().partition(" ")
    if word in (":q", ":quit", ":exit"):
        return False
    if word in (":uid", ":next", ":prev"):
        ex = pg.load_uid(rest.strip()) if word == ":uid" else pg.step(1 if word == ":next" else -1)
        print(f"{ex.uid}: {ex.sentence} (label {ex.label})" if ex else "no more bookmarks that way", file=out)
    elif word == ":ask":
        print(answer(pg, pg.ask_template()), file=out)
    elif word == ":image":
        pg.load_paths(shlex.split(rest))
        print(f"{len(pg.images)} images", file=out)
    elif word == ":noimage":
        pg.load_paths([])
    elif word == ":set":
        knobs = replace(pg.knobs)  # all or nothing: a bad pair leaves the knobs as they were
        for pair in rest.split():
            key, _, value = pair.partition("=")
            knobs.set(key, value)
        pg.knobs = knobs
        print(asdict(pg.knobs), file=out)
    elif word == ":knobs":
        print(asdict(pg.knobs), file=out)
    elif word == ":help":
        print(HELP, file=out)
    elif word.startswith(":"):
        raise UsageError(f"unknown command {word}{did_you_mean(word, COMMANDS)}; commands: {' '.join(COMMANDS)}")
    elif line.strip():
        print(answer(pg, pg.ask(line.rstrip("\n"))), file=out)
    return True


def interact(pg: Playground, lines: TextIO | None = None, out: TextIO | None = None) -> None:
    """Prompts a line at a time (stdin) until end of input or :q; a bad command prints its error, the loop goes on."""
    lines, out = lines or sys.stdin, out or sys.stdout
    show_prompt = lines.isatty()
    while True:
        if show_prompt:
            print("> ", end="", file=out, flush=True)
        line = lines.readline()
        if not line:
            break
        try:
            if not command(pg, line, out):
                break
        except (DataError, KeyError, ValueError, OSError) as e:
            print(f"error: {e}", file=out)


def main(
    prompt: Annotated[str | None, Opt(help="One-shot prompt (none: interactive).")] = None,
    image: Annotated[list[Path] | None, Opt("--image", help="Image file (repeat: left then right).")] = None,
    uid: Annotated[str | None, Opt(help="Use this example's images (from the data config).")] = None,
    config: Annotated[Path | None, Opt(help="YAML config: data, and model/adapter unless --model is given.")] = None,
    split: Annotated[str | None, Opt(help="Split for uids (default: the config's dataset_eval_split).")] = None,
    dataset_source: Annotated[str | None, Opt(help="Override: hub, nlvr2, jsonl or synthetic.")] = None,
    dataset_path: Annotated[str | None, Opt(help="Override: nlvr2 folder or jsonl manifest.")] = None,
    synthetic_eval_size: Annotated[int | None, Opt(help="Override: synthetic examples per split.")] = None,
    synthetic_seed: Annotated[int | None, Opt(help="Override: synthetic generator seed.")] = None,
    model: Annotated[str | None, Opt(help="Base model folder or hub id (default: the embedded model).")] = None,
    adapter: Annotated[str | None, Opt(help="PEFT adapter folder (a training run) on the base model.")] = None,
    dtype: Annotated[str | None, Opt(help="float32, bfloat16, auto (default: the config's, else float32).")] = None,
    min_pixels: Annotated[int | None, Opt(help="Image processor min pixels.")] = None,
    max_pixels: Annotated[int | None, Opt(help="Image processor max pixels.")] = None,
    sample: Annotated[bool, Opt("--sample/--greedy", help="Sample, or greedy / beam search.")] = False,
    max_new_tokens: Annotated[int, Opt(help="New tokens at most.")] = 64,
    temperature: Annotated[float, Opt(help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, Opt(help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, Opt(help="Sampling: the k most likely tokens.")] = 50,
    num_beams: Annotated[int, Opt(help="Beam search width.")] = 1,
    repetition_penalty: Annotated[float, Opt(help="> 1 discourages repeats.")] = 1.0,
    seed: Annotated[int, Opt(help="Seed set before each generate.")] = 0,
    log: Annotated[Path | None, Opt(help="JSONL log (default <root>/logs/playground.jsonl).")] = None,
    uid_cache: Annotated[Path | None, Opt(help="UID cache for :next/:prev.")] = None,
) -> str | None:
    """One prompt (printed and returned), or the interactive loop when no --prompt is given."""
    if uid and image:
        raise UsageError("--uid and --image both name images: give one of them")
    from evals.playground import DecodingKnobs, load_playground

    knobs = DecodingKnobs(sample, max_new_tokens, temperature, top_p, top_k, num_beams, repetition_penalty, seed)
    pg = load_playground(
        config,
        knobs,
        model=model,
        adapter=adapter,
        dtype=dtype,
        split=split,
        log=log,
        uid_cache=uid_cache,
        dataset_source=dataset_source,
        dataset_path=dataset_path,
        synthetic_eval_size=synthetic_eval_size,
        synthetic_seed=synthetic_seed,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        uid=uid,
    )
    if image:
        pg.load_paths(image)
    if prompt is None:
        adapter = f" + adapter {pg.adapter}" if pg.adapter else ""
        print(f"model {pg.model_name}{adapter}; :help for commands", file=sys.stderr)
        interact(pg)
        return None
    output = pg.ask(prompt)
    print(answer(pg, output))
    return output


if __name__ == "__main__":
    from utils.cli import run_typer

    run_typer(main, help=__doc__.split("\n\n")[0], user_errors=(ValueError,))
