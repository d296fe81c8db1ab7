"""Bounds every HTTP handler puts on what a client sends, before anything is parsed or stored.

A client that sends its headers or body slowly holds a connection (and, for the body, a
handler) for as long as it likes unless the server gives up: headers are bounded through
aiohttp's keep-alive timer (`runner_options`: it also runs from the moment a connection is
made until its first request is complete), bodies by `read_body`. JSON that nests deeper
than any real document is refused with a clear error (`loads_bounded`) instead of a
RecursionError deep in the parser.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web


class BodyTimeout(Exception):
    """The client did not send its whole body in time. Answer 408 and close the connection."""


class TooDeep(ValueError):
    """The JSON nests deeper than the limit. Answer 400; do not retry."""


# After answering a request whose body was not read to the end (a 408, a 413), aiohttp keeps
# reading and discarding the rest for this long so the client sees the answer; its default
# (10 s) let a slow client hold the connection that much longer.
LINGER_S = 1.0


def runner_options(header_timeout_s: float) -> dict[str, Any]:
    """Keyword arguments for web.AppRunner / web.run_app: a connection that has not completed
    a request's headers within `header_timeout_s` of connecting (or of its previous response)
    is closed."""
    return {"keepalive_timeout": header_timeout_s, "lingering_time": LINGER_S}


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The whole body, or BodyTimeout when it takes longer than `timeout_s`. The size limit is
    the application's `client_max_size` (HTTPRequestEntityTooLarge)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {timeout_s:g} s") from None


def timeout_response(body: dict[str, Any]) -> web.Response:
    """408 that also closes the connection: the rest of a slow body is never read."""
    response = web.json_response(body, status=408, headers={"Connection": "close"})
    response.force_close()
    return response


def loads_bounded(raw: bytes | str, max_depth: int) -> Any:
    """json.loads, refusing documents nested deeper than `max_depth` with TooDeep; other
    malformed input raises ValueError (JSONDecodeError or UnicodeDecodeError) as json does."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise TooDeep(f"JSON nests deeper than {max_depth} levels") from None
    depth = _depth(doc)
    if depth > max_depth:
        raise TooDeep(f"JSON nests {depth} levels deep, more than the limit of {max_depth}")
    return doc


def _depth(doc: Any) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in value)
    return deepest


def holds_nul(doc: Any) -> bool:
    """Whether any key or string inside decoded JSON holds a NUL character (PostgreSQL text
    and jsonb cannot store one), without recursion."""
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False
