"""training/pretrain_lm.py: packing, tokenizer, language evaluation, configs, end-to-end training and resume."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, EvalPrediction, GPT2LMHeadModel

from evals.language import PROMPTS, LanguageMetrics, scored_tokens, unigram_counts, unigram_perplexity
from training.gpt2 import EOS, LMModelArguments, load_tokenizer, train_byte_bpe
from training.packing import pack_documents, tokenize_and_pack
from training.pretrain_lm import _resume_arg, main, make_parser, run_config
from utils.atomic_write import write_json_atomic
from vlm_datasets.stories import generate_stories
from vlm_datasets.text import TextDataArguments, load_texts

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "training" / "configs").glob("gpt2_*.yaml"))
UNICODE = ["Zoë ate crème brûlée — naïve café, 日本語, Ελληνικά, emoji 🙂🐇!", "tabs\tand  double  spaces\nnew line"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_byte_bpe(generate_stories(300, seed=0), vocab_size=600, model_max_length=64)


# ---- packing ------------------------------------------------------------------------------------------------------


def test_pack_documents_exact_blocks_eos_between_documents():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    assert pack_documents(docs, eos_token_id=0, block_size=4) == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    # stream 1 2 3 0 4 5 0 6 7 8 9 0 10 0: 14 tokens -> 3 blocks, the tail remainder (10 0) dropped


def test_tokenize_and_pack_loses_only_the_tail(tokenizer):
    stories = generate_stories(40, seed=5)
    ds = datasets.Dataset.from_dict({"text": stories})
    packed = tokenize_and_pack(ds, tokenizer, block_size=32, batch_size=1000)  # one packing batch
    eos = tokenizer.eos_token_id
    blocks = packed["input_ids"]
    assert packed.column_names == ["input_ids", "labels"] and list(packed["labels"]) == list(blocks)
    assert all(len(b) == 32 for b in blocks)
    stream = [t for s in stories for t in [*tokenizer(s, add_special_tokens=False)["input_ids"], eos]]
    flat = [t for b in blocks for t in b]
    assert flat == stream[: len(flat)] and len(stream) - len(flat) < 32
    assert flat.count(eos) in (len(stories), len(stories) - 1)  # one eos after every story (the last may be cut)
    assert tokenizer.decode(stream).split(EOS)[:-1] == stories


def test_packing_a_stream(tokenizer):
    stories = generate_stories(20, seed=6)
    stream = datasets.Dataset.from_dict({"text": stories}).to_iterable_dataset()
    packed = list(tokenize_and_pack(stream, tokenizer, block_size=16, batch_size=5))
    assert packed and all(len(row["input_ids"]) == 16 for row in packed)


# ---- tokenizer ----------------------------------------------------------------------------------------------------


def test_byte_bpe_round_trip_and_eos(tokenizer, tmp_path):
    texts = generate_stories(20, seed=9) + UNICODE
    for text in texts:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.eos_token == EOS and tokenizer.convert_tokens_to_ids(EOS) == tokenizer.eos_token_id
    assert tokenizer(EOS + "Lily", add_special_tokens=False)["input_ids"][0] == tokenizer.eos_token_id
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in texts:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"] and loaded.decode(ids) == text


def test_tokenizer_sources_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = LMModelArguments(tokenizer_name_or_path="no-such-org/no-such-tokenizer", tokenizer_vocab_size=300)
    tok, how = load_tokenizer(args, iter(generate_stories(50)))  # auto: falls back to training a BPE
    assert "byte-level BPE" in how and tok.eos_token == EOS
    args.tokenizer_source = "pretrained"
    with pytest.raises(OSError, match="--tokenizer_source train"):
        load_tokenizer(args, iter([]))


# ---- evaluation ---------------------------------------------------------------------------------------------------


def test_unigram_perplexity_by_hand():
    blocks = np.array([[0, 1, 1], [2, 1, 0]])
    counts = unigram_counts(blocks, vocab_size=4)
    assert counts.tolist() == [2, 3, 1, 0] and unigram_counts(iter(blocks.tolist()), 4).tolist() == [2, 3, 1, 0]
    # add-one: p = (c + 1) / (6 + 4) = [.3, .4, .2, .1]; tokens 1 and 3 -> exp(-(ln .4 + ln .1) / 2) = 1 / sqrt(.04)
    assert unigram_perplexity(counts, np.array([1, 3])) == pytest.approx(5.0)
    assert scored_tokens(np.array([[7, 1, 3], [7, 3, 3]])).tolist() == [1, 3, 3, 3]  # position 0 is never scored


def test_language_metrics_perplexity_is_exp_mean_loss():
    labels = np.array([[5, 1, 2, 3], [5, 2, 2, 3]])
    preds = np.array([[1, 2, 0, 9], [2, 0, 0, 9]])  # logits at t predict t + 1: 2 + 1 of 6 right
    losses = np.array([1.0, 2.0])  # per-example copies of the per-batch mean token losses
    metrics = LanguageMetrics(unigram_ppl=100.0)(EvalPrediction(predictions=preds, label_ids=labels, losses=losses))
    assert metrics["perplexity"] == pytest.approx(math.exp(1.5))
    assert metrics["next_token_accuracy"] == pytest.approx(3 / 6)
    assert metrics["perplexity_ratio"] == pytest.approx(math.exp(1.5) / 100.0)
    with pytest.raises(ValueError, match="include_for_metrics"):
        LanguageMetrics()(EvalPrediction(predictions=preds, label_ids=labels))


# ---- configs ------------------------------------------------------------------------------------------------------


def test_there_are_gpt2_configs():
    assert {p.name for p in CONFIGS} >= {"gpt2_embedded.yaml", "gpt2_124m_tinystories.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_round_trip(path, tmp_path):
    # GPU configs say bf16; on a CPU-only machine TrainingArguments accepts that only with use_cpu.
    parsed = make_parser().parse_args_and_config(["--config", str(path), "--use_cpu", "true"])
    data, model, ev, train = parsed
    assert data.block_size <= model.n_positions  # a longer block would index past the position table

    # The config section of run_record.json, written as a run writes it, parses back to the same arguments.
    record = write_json_atomic(tmp_path / "run_record.json", {"config": run_config(*parsed)})
    config = json.loads(record.read_text())["config"]
    assert set(config) == {"TextDataArguments", "LMModelArguments", "LMEvalArguments", "TrainingArguments"}
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump({k: v for section in config.values() for k, v in section.items()}))
    assert make_parser().parse_args_and_config(["--config", str(again)]) == parsed
    # Left out of the record: TrainingArguments keys that look like credentials (config_dict's filter), at defaults.
    dropped = set(train.to_dict()) - set(config["TrainingArguments"])
    assert "hub_token" in dropped and all("token" in k for k in dropped)


def test_unknown_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_embd: 64\nnum_layers: 2\n")
    with pytest.raises(ValueError, match="num_layers"):
        make_parser().parse_args_and_config(["--config", str(bad)])


# ---- end to end ---------------------------------------------------------------------------------------------------

TINY = [
    "--synthetic_train_docs", "120",
    "--max_eval_docs", "16",
    "--tokenizer_vocab_size", "400",
    "--n_embd", "32",
    "--n_layer", "1",
    "--n_head", "2",
    "--n_positions", "32",
    "--block_size", "32",
    "--per_device_train_batch_size", "4",
    "--per_device_eval_batch_size", "8",
    "--learning_rate", "3e-3",
    "--warmup_steps", "1",
    "--logging_steps", "1",
    "--eval_max_new_tokens", "8",
    "--use_cpu", "true",
]  # fmt: skip


def run_lm(out_dir, *extra):
    argv = ["--config", str(REPO / "training/configs/gpt2_embedded.yaml"), *TINY, "--output_dir", str(out_dir)]
    return main(*make_parser().parse_args_and_config([*argv, *extra]))


@pytest.mark.integration
def test_train_evaluate_save_and_reload(tmp_path, isolated_artifacts):
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    trainer = run_lm(out, "--max_steps", "6", "--eval_steps", "3", "--save_steps", "6")  # the YAML: 1 thread
    assert torch.get_num_threads() == threads  # restored for the rest of the process
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["tokens_seen"] == 6 * 4 * 32
    assert summary["val_perplexity"] == pytest.approx(math.exp(summary["val_loss"]))
    assert summary["unigram_perplexity"] > 1 and summary["perplexity_ratio"] == pytest.approx(
        summary["val_perplexity"] / summary["unigram_perplexity"]
    )
    assert "byte-level BPE" in summary["tokenizer"]
    evals = [e for e in trainer.state.log_history if "eval_perplexity" in e]
    assert [e["step"] for e in evals] == [3, 6]  # periodic and at the end

    # HF format: loads with the Auto classes, no conversion
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert isinstance(model, GPT2LMHeadModel) and tok.eos_token == EOS and model.config.eos_token_id == tok.eos_token_id
    assert model.config.vocab_size == len(tok)

    # The reported perplexity is exp(mean token loss) of the saved model on the held-out blocks, recomputed here
    args = make_parser().parse_args_and_config(
        ["--config", str(REPO / "training/configs/gpt2_embedded.yaml"), *TINY, "--output_dir", str(out)]
    )[0]
    _, held_out = load_texts(args)
    blocks = torch.tensor(tokenize_and_pack(held_out, tok, 32)["input_ids"])  # [N, 32]
    with torch.no_grad():
        logits = model(input_ids=blocks).logits[:, :-1]  # [N, 31, V]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1))
    assert summary["val_loss"] == pytest.approx(loss.item(), rel=1e-4)
    assert summary["eval_scored_tokens"] == blocks[:, 1:].numel()

    # Continuations: every prompt at every evaluation, in JSONL and TensorBoard text
    rows = [json.loads(line) for line in (out / "continuations.jsonl").read_text().splitlines()]
    assert [(r["step"], r["prompt"]) for r in rows] == [(s, p) for s in (3, 6) for p in PROMPTS]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (out / "runs").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
    acc.Reload()
    assert "eval/continuations/text_summary" in acc.Tags()["tensors"]
    assert "eval/perplexity" in acc.Tags()["scalars"] and "eval/unigram_perplexity" in acc.Tags()["scalars"]
    record = json.loads((out / "run_record.json").read_text())
    assert record["dataset"]["source"] == "synthetic" and record["versions"]["transformers"]
    assert record["config"]["LMModelArguments"]["tokenizer_vocab_size"] == 400  # "token" keys kept
    assert record["config"]["TrainingArguments"]["max_steps"] == 6


@pytest.mark.integration
def test_resume_continues_global_step(tmp_path, isolated_artifacts):
    quiet = ["--eval_strategy", "no", "--report_to", "none", "--max_steps", "4", "--save_steps", "2"]
    straight = run_lm(tmp_path / "straight", *quiet)
    # A run that stopped after its step-2 checkpoint: the same folder without checkpoint-4 and final weights.
    out = tmp_path / "run"
    top = {"checkpoint-4", "model.safetensors", "summary.json"}
    shutil.copytree(
        tmp_path / "straight", out, ignore=lambda d, names: top & set(names) if Path(d).name == "straight" else []
    )
    assert (out / "checkpoint-2" / "optimizer.pt").exists()
    resumed = run_lm(out, *quiet, "--resume_from_checkpoint", "true")  # the newest checkpoint-N of output_dir
    assert resumed.state.global_step == 4
    assert json.loads((out / "summary.json").read_text())["tokens_seen"] == 4 * 4 * 32
    losses = [(e["step"], e["loss"]) for e in resumed.state.log_history if "loss" in e]
    assert losses == [(e["step"], e["loss"]) for e in straight.state.log_history if "loss" in e]
    # Same data order, optimizer and LR schedule: the resumed weights match the uninterrupted run's.
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)

    again = run_lm(out, *quiet, "--max_steps", "5", "--resume_from_checkpoint", str(out / "checkpoint-4"))  # a PATH
    assert again.state.global_step == 5


@pytest.mark.integration
def test_resume_skips_a_half_written_checkpoint(tmp_path, isolated_artifacts):
    quiet = ["--eval_strategy", "no", "--report_to", "none", "--max_steps", "4", "--save_steps", "2"]
    out = tmp_path / "run"
    run_lm(out, *quiet, "--max_steps", "2")
    torn = out / "checkpoint-3"  # a save killed half-way: weights written, no trainer_state.json
    shutil.copytree(out / "checkpoint-2", torn)
    (torn / "trainer_state.json").unlink()
    resumed = run_lm(out, *quiet, "--resume_from_checkpoint", "true")
    steps = [e["step"] for e in resumed.state.log_history if "loss" in e]
    assert steps == [1, 2, 3, 4] and resumed.state.global_step == 4  # checkpoint-2's history, then steps 3 and 4
    assert not torn.exists() and (out / "checkpoint-3.incomplete").exists()  # set aside, not deleted


@pytest.mark.integration
def test_a_hub_token_argument_reaches_no_file_of_the_run(tmp_path, isolated_artifacts, monkeypatch):
    token = "hf_" + "pretrainLeakCheck0123456789"
    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")  # restored after the test
    out = tmp_path / "run"
    trainer = run_lm(out, "--max_steps", "2", "--save_steps", "2", "--eval_strategy", "no", "--hub_token", token)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(p.name == "run_record.json" for p in files)
    assert not [str(p) for p in files if token.encode() in p.read_bytes()]
    assert os.environ["HF_TOKEN"] == token and trainer.args.hub_token is None  # the hub still gets it, from env


def test_resume_false_or_none_means_no_resume():
    (*_, train) = make_parser().parse_args_and_config(["--resume_from_checkpoint", "false", "--use_cpu", "true"])
    assert train.resume_from_checkpoint == "false"  # TrainingArguments keeps the string
    assert _resume_arg("false") is None and _resume_arg("None") is None and _resume_arg(None) is None
    assert _resume_arg("true") is True and _resume_arg("last") is True  # the newest checkpoint-N of output_dir
    assert _resume_arg("run/checkpoint-4") == "run/checkpoint-4"


def test_held_out_text_shorter_than_one_block_is_refused(tmp_path, isolated_artifacts):
    stories, short = tmp_path / "stories.txt", tmp_path / "held_out.txt"
    stories.write_text("\n".join(generate_stories(40, seed=3)) + "\n")
    short.write_text("The end.\n")
    text = ["--dataset_source", "text", "--dataset_path", str(stories), "--dataset_eval_path", str(short)]
    with pytest.raises(ValueError, match=r"held-out text \(1 documents.*block_size=32.*max_eval_docs"):
        run_lm(tmp_path / "run", *text, "--max_steps", "2", "--report_to", "none")


def test_local_text_too_short_to_hold_out_a_tenth_is_refused(tmp_path, isolated_artifacts):
    path = tmp_path / "stories.txt"
    path.write_text("\n".join(generate_stories(5, seed=3)) + "\n")
    with pytest.raises(ValueError, match="5 documents, too few to hold out.*dataset_eval_path"):
        load_texts(TextDataArguments(dataset_source="text", dataset_path=str(path)))


@pytest.mark.integration
def test_a_streamed_training_set_trains_and_resumes(tmp_path, isolated_artifacts, monkeypatch):
    """The real config's path: an IterableDataset (hub streaming) packed lazily, max_steps, resume mid-stream."""
    import training.pretrain_lm as script

    def streamed(args):
        train, held_out = load_texts(args)
        return train.to_iterable_dataset(num_shards=2).shuffle(seed=0, buffer_size=50), held_out

    monkeypatch.setattr(script, "load_texts", streamed)
    out = tmp_path / "run"
    quiet = ["--report_to", "none", "--eval_steps", "3", "--save_steps", "3"]
    first = run_lm(out, *quiet, "--max_steps", "3")
    assert first.state.global_step == 3 and json.loads((out / "summary.json").read_text())["train_blocks"] is None
    resumed = run_lm(out, *quiet, "--max_steps", "5", "--resume_from_checkpoint", str(out / "checkpoint-3"))
    assert resumed.state.global_step == 5 and resumed.state.num_input_tokens_seen == 5 * 4 * 32
