"""A real network drop on loopback for the fault harness: packets to and from chosen TCP ports
are discarded by the kernel (traffic control on `lo`), so connections hang and retransmit as
on a partition, and resume when the drop ends. Nothing is stopped or signalled.

The kernels here have neither iptables/nft nor netem nor tc actions; what they have is HTB
and u32: an HTB root on `lo` whose default class passes everything, and a class whose queue
is a `pfifo` of length 0, so every packet a u32 filter (source or destination port) puts
there is dropped. Removing the root qdisc restores `lo` as it was.

Inside a network namespace of its own (`ip netns exec NAME ...`), or, on a machine that runs
nothing else (a CI machine), in its initial namespace when `CCT_NETDROP_HOST_LO=1` says so:
`make test` sets it for its stack phase. Otherwise `lo` of the initial namespace is everyone's,
and is refused. Only the chosen ports are dropped either way, and `lo` is restored after.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

DEV = "lo"


class DropError(RuntimeError):
    """The drop could not be set up (no namespace of its own, tc refused); not retried."""


def _tc(*args: str, check: bool = True) -> None:
    proc = subprocess.run(["tc", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise DropError(f"tc {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


def _own_namespace() -> bool:
    """Inside a named network namespace (`ip netns exec`); /proc/1/ns is not always readable,
    so `ip netns identify` answers. Unknown counts as the shared namespace."""
    try:
        proc = subprocess.run(
            ["ip", "netns", "identify", str(os.getpid())],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def process_ports(pid: int) -> set[int]:
    """Local TCP ports of the process's sockets: what it listens on and the ephemeral ports
    of its outgoing connections (to PostgreSQL, Kafka, VictoriaMetrics, ...)."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class Blackhole:
    """Drops every IPv4 TCP packet whose source or destination port is in the set."""

    def __init__(self) -> None:
        self.ports: set[int] = set()

    def __enter__(self) -> Blackhole:
        if not _own_namespace() and os.environ.get("CCT_NETDROP_HOST_LO") != "1":
            raise DropError(
                "a network drop changes `lo`: run inside a network namespace of its own "
                "(ip netns exec NAME ...), or set CCT_NETDROP_HOST_LO=1 on a machine that "
                "runs nothing else (make test does, for its stack phase)"
            )
        _tc("qdisc", "del", "dev", DEV, "root", check=False)  # a leftover of a killed run
        _tc("qdisc", "add", "dev", DEV, "root", "handle", "1:", "htb", "default", "10")
        for cls in ("1:10", "1:20"):
            _tc("class", "add", "dev", DEV, "parent", "1:", "classid", cls, "htb", "rate", "99gbit")
        _tc("qdisc", "add", "dev", DEV, "parent", "1:20", "handle", "20:", "pfifo", "limit", "0")
        return self

    def add(self, ports: Iterable[int], directions: tuple[str, ...] = ("sport", "dport")) -> None:
        """`directions`: ("sport",) drops only what the port sends. On loopback a packet the
        kernel drops on its way out fails fast for its sender, unlike a partition: dropping
        only a server's answers leaves its clients' sends going out and never acknowledged,
        as across a real one."""
        for port in sorted(set(ports) - self.ports):
            for direction in directions:
                _tc(
                    *("filter", "add", "dev", DEV, "parent", "1:", "protocol", "ip", "prio", "1"),
                    *("u32", "match", "ip", direction, str(port), "0xffff", "flowid", "1:20"),
                )
            self.ports.add(port)

    def __exit__(self, *exc: object) -> None:
        _tc("qdisc", "del", "dev", DEV, "root", check=False)


@contextmanager
def dropped_ports(
    ports: Iterable[int], directions: tuple[str, ...] = ("sport", "dport")
) -> Iterator[Blackhole]:
    """Packets of these ports (a service's listening port: every connection to it) dropped."""
    with Blackhole() as hole:
        hole.add(ports, directions)
        yield hole


def drop_process(pid: int, seconds: float, refresh_s: float = 0.1) -> None:
    """Every TCP connection of process `pid` goes dark for `seconds`: its listening ports and
    its outgoing connections, re-read every `refresh_s` so a connection it opens during the
    drop goes dark too (after at most its first round trip)."""
    with Blackhole() as hole:
        hole.add(process_ports(pid))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(refresh_s)
            hole.add(process_ports(pid))
