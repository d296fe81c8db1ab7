"""Hypothesis helpers for the hostile-input suites: any JSON value, put at any place of a
real document (one a producer really sends), must get a clear answer from its parser."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

# Lone surrogates too: JSON's "\\ud800" escape decodes to one, which no UTF-8 encoder,
# Kafka key or PostgreSQL text parameter accepts (Hypothesis's text leaves them out).
_broken_text = st.sampled_from(["\ud800", "a\udfffb", "\udc80" * 3])
_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | _broken_text
)

# Any JSON value, small: scalars of every type, lists and objects of them.
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def places(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value inside `doc` (keys and list indexes), `doc` itself first."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += places(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += places(v, (*prefix, i))
    return out


def put(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    """Replace the value at `path` (not the root) inside `doc`, in place."""
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = copy.deepcopy(value)


def mutate(data: st.DataObject, doc: Any, value: Any) -> tuple[Any, ...]:
    """Put `value` at a place of `doc` Hypothesis draws; returns that place."""
    path = data.draw(st.sampled_from(places(doc)[1:]))
    put(doc, path, value)
    return path
