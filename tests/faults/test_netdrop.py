"""The fault harness's network drop is a real one: while it lasts, packets of the dropped
port go nowhere (a connect times out, an established connection's data does not arrive),
other ports are untouched, and afterwards the same connection carries data again."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

from benchmarks.netdrop import dropped_ports, process_ports
from tests.support.procs import free_port


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", free_port()))
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, port


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1024):
            conn.sendall(data)


def test_a_dropped_port_goes_dark_and_comes_back() -> None:
    dark, dark_port = _echo_server()
    lit, lit_port = _echo_server()
    with dark, lit, socket.create_connection(("127.0.0.1", dark_port), timeout=2) as established:
        with dropped_ports([dark_port]) as hole:
            assert hole.ports == {dark_port}
            with pytest.raises(TimeoutError):
                socket.create_connection(("127.0.0.1", dark_port), timeout=1.5)
            established.settimeout(1.5)
            established.sendall(b"ping")
            with pytest.raises(TimeoutError):
                established.recv(4)
            with socket.create_connection(("127.0.0.1", lit_port), timeout=2) as other:
                other.sendall(b"lit")
                assert other.recv(3) == b"lit"
        # The queued bytes are retransmitted: the connection survived the partition.
        established.settimeout(10)
        assert established.recv(4) == b"ping"
    tc = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True)
    assert "htb" not in tc.stdout, tc.stdout


def test_a_process_s_ports_are_its_listening_and_connected_sockets() -> None:
    server, port = _echo_server()
    with server, socket.create_connection(("127.0.0.1", port), timeout=2) as client:
        ports = process_ports(os.getpid())
        assert port in ports
        assert client.getsockname()[1] in ports
