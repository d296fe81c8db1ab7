"""Throw-away X.509 certificates: the one builder of the local stack (the admission webhook's
serving and client certificates, the local Kafka broker's listener) and of the tests that
need their own CA. In a cluster the bundle issues them; nothing here is ever committed.

    python -m lambdas.devstack.certs server DIR NAME SAN...

writes DIR/ca.crt and DIR/server.pem (the server's PKCS#8 key, then its certificate: the PEM
keystore Kafka reads), both 0600 in a 0700 DIR. The CA's key is never written: nobody can
sign another certificate the clients would trust; a new CA is made when the files go.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Usage = Literal["server", "client"]
_USAGE = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = _now()
    # A few minutes back: a client whose clock is slightly behind still accepts it.
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(
        now + dt.timedelta(days=days)
    )


def san(value: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def ca(common_name: str, days: int = 365) -> Issued:
    """A self-signed CA that may sign leaves only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    )
    return Issued(key, _validity(builder, days).sign(key, hashes.SHA256()))


def leaf(
    issuer: Issued, common_name: str, *, sans: Sequence[str], usage: Usage, days: int = 365
) -> Issued:
    """A certificate for `sans` (names or addresses), for serving or for client auth only."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName([san(s) for s in sans]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([_USAGE[usage]]), critical=False)
    )
    return Issued(key, _validity(builder, days).sign(issuer.key, hashes.SHA256()))


def _write_private(path: Path, data: bytes) -> Path:
    """Created 0600 before any byte is written: a key is never readable by others."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def cert_pem(issued: Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.PEM)


def key_pem(issued: Issued) -> bytes:
    return issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_cert(path: Path, issued: Issued) -> Path:
    path.write_bytes(cert_pem(issued))
    return path


def write_key(path: Path, issued: Issued) -> Path:
    return _write_private(path, key_pem(issued))


def write_keystore(path: Path, issued: Issued) -> Path:
    """Key then certificate in one 0600 file (Kafka's `ssl.keystore.type=PEM`)."""
    return _write_private(path, key_pem(issued) + cert_pem(issued))


def server(directory: Path, common_name: str, sans: Sequence[str], days: int = 365) -> None:
    """A fresh CA and one serving certificate signed by it (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    authority = ca(f"{common_name}-local-ca", days)
    issued = leaf(authority, common_name, sans=sans, usage="server", days=days)
    write_keystore(directory / "server.pem", issued)
    _write_private(directory / "ca.crt", cert_pem(authority))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lambdas.devstack.certs")
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("server", help="a throw-away CA and one server certificate")
    srv.add_argument("directory", type=Path)
    srv.add_argument("name")
    srv.add_argument("sans", nargs="+")
    srv.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    server(args.directory, args.name, args.sans, args.days)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
