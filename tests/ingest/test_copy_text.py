"""The collector's COPY text: joined raw when nothing needs escaping, escaped otherwise."""

from __future__ import annotations

import pytest

from lambdas.store.inventory import NUL, copy_text


def test_clean_rows_are_joined_with_nul_as_null() -> None:
    assert copy_text([("a", NUL, "c"), ("d", "e", NUL)], 3) == b"a\t\\N\tc\nd\te\t\\N\n"


def test_no_rows_is_empty() -> None:
    assert copy_text([], 3) == b""


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("a\tb", b"a\\tb"),
        ("a\nb", b"a\\nb"),
        ("a\rb", b"a\\rb"),
        ("a\\b", b"a\\\\b"),
        ("\\N", b"\\\\N"),
    ],
)
def test_any_control_character_escapes_the_whole_batch(value: str, escaped: bytes) -> None:
    text = copy_text([("x", NUL), (value, "y")], 2)
    assert text == b"x\t\\N\n" + escaped + b"\ty\n"
