"""Patches of third-party private names (training/upstream.py): the installed versions are the ones each patch was
checked on, the private names still look as they did, and outside those versions nothing is patched."""

from __future__ import annotations

import importlib.metadata
import inspect
import logging

import pytest
import torch
import trl.trainer.utils as trl_utils
from trl.kernels import chunked_logprob

from training import trainer, upstream


def test_the_installed_versions_are_the_checked_ones():
    assert upstream.unchecked_versions("trl_use_triton") == [], (
        "TRL moved: re-read trl/trainer/utils.py (add_fused_lm_head) and trl/kernels/chunked_logprob.py (_use_triton), "
        "then widen training/upstream.py's CHECKED"
    )


def test_trls_private_device_test_is_as_checked():
    """What the patch relies on: TRL's fused LM head consults `_use_triton(device)`, looked up in trl.trainer.utils
    at call time, and TRL answers no on the CPU."""
    own = chunked_logprob._use_triton  # where TRL defines it (never patched)
    assert list(inspect.signature(own).parameters) == ["device"]
    assert own(torch.device("cpu")) is False
    code = trl_utils.add_fused_lm_head.__code__.co_consts
    fused = next(c for c in code if inspect.iscode(c) and c.co_name == "_fused_forward")
    assert "_use_triton" in fused.co_names  # a global name, read at every call
    assert trl_utils.add_fused_lm_head.__globals__ is vars(trl_utils)  # ... in trl.trainer.utils
    assert trainer.install() and upstream.original("trl_use_triton") is own
    assert trl_utils._use_triton is not own  # the wrapped one


def test_outside_the_checked_versions_nothing_is_patched(monkeypatch, caplog):
    own = chunked_logprob._use_triton
    monkeypatch.setattr(trl_utils, "_use_triton", own)  # as shipped
    monkeypatch.setattr(upstream, "_originals", {})
    monkeypatch.setattr(upstream, "_refused", set())
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda p: "1.17.0" if p == "trl" else real_version(p))
    with caplog.at_level(logging.WARNING, logger="training.upstream"):
        assert not upstream.patch_trl_use_triton(lambda f: pytest.fail("patched outside the checked versions"))
        assert not trainer.install()  # asked again: still not patched, warned once
    assert trl_utils._use_triton is own and upstream.original("trl_use_triton") is None
    assert [r.message for r in caplog.records] == [
        "not patching trl_use_triton: trl 1.17.0 (checked: <1.17,>=1.16.0); re-read trl/trainer/utils.py and widen "
        "CHECKED; the library runs as shipped"
    ]


def test_a_missing_name_is_not_patched(monkeypatch, caplog):
    monkeypatch.delattr(trl_utils, "_use_triton")
    monkeypatch.setattr(upstream, "_originals", {})
    monkeypatch.setattr(upstream, "_refused", set())
    with caplog.at_level(logging.WARNING, logger="training.upstream"):
        assert not upstream.patch_trl_use_triton(lambda f: f)
    assert not hasattr(trl_utils, "_use_triton") and "_use_triton is gone" in caplog.text
