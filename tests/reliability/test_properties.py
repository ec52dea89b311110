"""Property-based tests (hypothesis): label, uid, identifier and answer parsing."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from utils.errors import DataError
from vlm_datasets.labels import Identifier, parse_answer, parse_identifier, parse_label, parse_uid

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")
spaces = st.text(alphabet=" \t\n\r", max_size=3)


def mixed_case(word: str):
    return st.tuples(*[st.sampled_from([c.lower(), c.upper()]) for c in word]).map("".join)


# ---- parse_label -------------------------------------------------------------------------------------------------


@given(st.booleans())
def test_label_bools_and_their_ints_parse_to_themselves(b):
    assert parse_label(b) is b
    assert parse_label(int(b)) is b


@given(st.sampled_from(TRUE_WORDS + FALSE_WORDS).flatmap(mixed_case), spaces, spaces)
def test_label_words_parse_in_any_case_and_padding(word, left, right):
    assert parse_label(left + word + right) is (word.lower() in TRUE_WORDS)


@given(
    st.one_of(
        st.text().filter(lambda s: s.strip().lower() not in TRUE_WORDS + FALSE_WORDS),
        st.integers().filter(lambda i: i not in (0, 1)),
        st.floats(allow_nan=True),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=12),
)
def test_anything_else_is_refused_naming_the_uid(value, uid):
    with pytest.raises(DataError) as err:
        parse_label(value, uid)
    assert err.value.where == f"uid {uid}" and "unparseable label" in err.value.problem


def test_a_missing_label_is_unlabeled():
    assert parse_label(None) is None


# ---- parse_uid ---------------------------------------------------------------------------------------------------


@given(st.text(min_size=1))
def test_uids_are_kept_verbatim_or_refused_for_blank_padding_or_control_characters(text):
    bad = text != text.strip() or any(ord(c) < 32 or ord(c) == 127 for c in text)
    if bad:
        with pytest.raises(DataError, match="empty, padded with spaces or holds control characters"):
            parse_uid(text, "here")
    else:
        assert parse_uid(text, "here") == text  # "../x", "a/b" included: a uid is data, never a path


@given(st.integers())
def test_integer_uids_become_strings(n):
    assert parse_uid(n, "here") == str(n)


@given(st.one_of(st.booleans(), st.floats(), st.none(), st.lists(st.text(), max_size=2)))
def test_uids_of_other_types_are_refused(value):
    with pytest.raises(DataError, match="uid must be a string"):
        parse_uid(value, "here")


# ---- parse_identifier ----------------------------------------------------------------------------------------------

split_names = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=10)
numbers = st.integers(min_value=0, max_value=10**6)


@given(split_names, numbers, numbers, numbers)
def test_identifiers_round_trip(split, set_id, pair_id, sentence_id):
    uid = f"{split}-{set_id}-{pair_id}-{sentence_id}"
    ident = parse_identifier(uid)
    assert ident == Identifier(split, set_id, pair_id, sentence_id)
    assert ident.consistency_group == f"{split}-{set_id}-{sentence_id}"
    assert ident.image_stem(1) == f"{split}-{set_id}-{pair_id}-img1"
    assert "/" not in ident.image_stem(0) and ".." not in ident.image_stem(0)  # a safe file stem


@given(st.one_of(st.text(max_size=40), st.from_regex(r"[a-z]{1,5}-\d{1,3}-\d{1,3}-\d{1,3}\s?", fullmatch=True)))
@example("dev-1-0-0\n")  # found by this test: "$" matched before a final newline
@example("dev-\u0661-0-0")  # found by this test: "\d" took Arabic-Indic digits, so two uids shared one image file
def test_any_text_is_an_ascii_identifier_or_a_named_error(text):
    try:
        ident = parse_identifier(text)
    except DataError as e:
        assert repr(text) in e.where
        return
    assert text.isascii() and text == text.strip()  # no look-alike digits, no trailing newline
    formatted = f"{ident.split}-{ident.set_id}-{ident.pair_id}-{ident.sentence_id}"
    assert parse_identifier(formatted) == ident


# ---- parse_answer --------------------------------------------------------------------------------------------------

fillers = st.lists(
    st.sampled_from(["the", "answer", "is", "I", "think", "untrue", "yesterday", "nothing", "falsely", "notes", "."]),
    max_size=5,
).map(" ".join)


@given(fillers, st.sampled_from(["true", "yes", "false", "no"]).flatmap(mixed_case), fillers, st.sampled_from(".!,: "))
def test_one_polarity_word_decides_the_answer(before, word, after, punct):
    assert parse_answer(f"{before} {word}{punct} {after}") is (word.lower() in ("true", "yes"))


@given(fillers, st.sampled_from(["true", "yes"]), st.sampled_from(["false", "no"]), fillers)
def test_both_polarities_or_none_is_unparseable(before, yes, no, after):
    assert parse_answer(f"{before} {yes} {after} {no}") is None
    assert parse_answer(f"{before} {after}") is None


@given(st.text())
def test_parse_answer_never_raises(text):
    assert parse_answer(text) in (True, False, None)
