"""A real slow HTTP client: sends a request's headers, or its body, one byte per interval over
a plain or TLS socket, and reports whether (and after how long) the server closed on it."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class SlowResult:
    closed: bool  # the server closed (or answered and closed) before the client finished
    seconds: float  # from connecting to the server closing, or to giving up
    sent: int  # bytes the client managed to send
    answer: bytes  # what the server answered, if anything


def slow_request(
    port: int,
    head: bytes,
    body: bytes = b"",
    *,
    slow: str,
    interval_s: float = 1.0,
    give_up_s: float = 60.0,
    tls: ssl.SSLContext | None = None,
) -> SlowResult:
    """`slow` is "headers" (the head dribbles in, byte by byte) or "body" (the head at once,
    then the body byte by byte). Stops when the server closes or after `give_up_s`."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=give_up_s)
    sock: socket.socket = tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw
    started = time.monotonic()
    sent = 0
    answer = b""
    try:
        if slow == "body":
            sock.sendall(head)
            sent = len(head)
            trickle = body
        else:
            trickle = head + body
        for byte in trickle:
            if time.monotonic() - started > give_up_s:
                return SlowResult(False, time.monotonic() - started, sent, answer)
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return SlowResult(True, time.monotonic() - started, sent, answer)
            sent += 1
            readable, _, _ = select.select([sock], [], [], interval_s)
            if readable or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return SlowResult(True, time.monotonic() - started, sent, answer)
                answer += chunk
                if not chunk:
                    return SlowResult(True, time.monotonic() - started, sent, answer)
                # An answer (408) before the body is complete: wait for the close.
                sock.settimeout(max(give_up_s - (time.monotonic() - started), 0.1))
                # A reset instead of a clean close still means the server gave up on us.
                with contextlib.suppress(OSError):
                    while chunk := sock.recv(65536):
                        answer += chunk
                return SlowResult(True, time.monotonic() - started, sent, answer)
        return SlowResult(False, time.monotonic() - started, sent, answer)
    finally:
        sock.close()


def post_head(path: str, length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {length}\r\n\r\n"
    ).encode()
