"""Certificate authorities and certificates generated with pulumi-tls, kept in the stack's
state (the private keys as secrets): the admission webhook's and Vault's. ECDSA P-256; a
certificate lives a year and is renewed by the first `pulumi up` in its last 30 days (its CA
lives five)."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_tls as tls

CERT_VALIDITY_HOURS = 24 * 365
CERT_EARLY_RENEWAL_HOURS = 24 * 30


def generate_ca(
    resource_name: str, common_name: str, opts: pulumi.ResourceOptions
) -> tuple[tls.PrivateKey, tls.SelfSignedCert]:
    key = tls.PrivateKey(f"{resource_name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=opts)
    cert = tls.SelfSignedCert(
        resource_name,
        private_key_pem=key.private_key_pem,
        is_ca_certificate=True,
        subject={"common_name": common_name, "organization": "CCT"},
        validity_period_hours=CERT_VALIDITY_HOURS * 5,
        early_renewal_hours=CERT_EARLY_RENEWAL_HOURS,
        allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
        opts=opts,
    )
    return key, cert


def signed_pair(
    resource_name: str,
    ca: tuple[tls.PrivateKey, tls.SelfSignedCert],
    *,
    common_name: pulumi.Input[str],
    dns_names: Sequence[pulumi.Input[str]],
    usage: str,
    opts: pulumi.ResourceOptions,
    ip_addresses: Sequence[str] = (),
) -> tuple[tls.PrivateKey, tls.LocallySignedCert]:
    """A key and a certificate signed by `ca`, for `usage` (server_auth or client_auth)."""
    key = tls.PrivateKey(f"{resource_name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=opts)
    request = tls.CertRequest(
        f"{resource_name}-csr",
        private_key_pem=key.private_key_pem,
        subject={"common_name": common_name},
        dns_names=list(dns_names),
        ip_addresses=list(ip_addresses) or None,
        opts=opts,
    )
    cert = tls.LocallySignedCert(
        f"{resource_name}-cert",
        cert_request_pem=request.cert_request_pem,
        ca_private_key_pem=ca[0].private_key_pem,
        ca_cert_pem=ca[1].cert_pem,
        validity_period_hours=CERT_VALIDITY_HOURS,
        early_renewal_hours=CERT_EARLY_RENEWAL_HOURS,
        allowed_uses=["digital_signature", "key_encipherment", usage],
        opts=opts,
    )
    return key, cert
