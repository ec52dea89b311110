"""File names from uids: plain uids unchanged, anything else sanitized, distinct uids never collide."""

from __future__ import annotations

import pytest

from utils.file_names import image_file_name, safe_stem


def test_plain_uids_keep_their_name():
    assert safe_stem("dev-850-0-0") == "dev-850-0-0"
    assert image_file_name("syn_test-3-1-0", 1) == "syn_test-3-1-0-img1.png"


@pytest.mark.parametrize("uid", ["../../etc/passwd", "a/b", "..", ".hidden", "a\\b", "x:y", "", "é", "a" * 300])
def test_unsafe_uids_become_one_plain_file_name(uid):
    stem = safe_stem(uid)
    assert stem and "/" not in stem and "\\" not in stem and "." not in stem and len(stem) <= 100
    assert stem.isascii()


def test_uids_that_sanitize_alike_get_different_names():
    names = {safe_stem(u) for u in ["a/b", "a_b", "a.b", "a b", "a\\b"]}
    assert len(names) == 5
