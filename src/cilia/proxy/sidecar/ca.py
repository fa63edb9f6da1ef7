"""The node's certificate authority: SPIFFE workload certificates for sidecars (Istio's layout).

The root (ECDSA P-256, self-signed, 10 years) lives in a root-only directory;
each sidecar gets a short-lived leaf whose only SAN is its SPIFFE id
`spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`, delivered to
Envoy through file-based SDS and rotated at half its lifetime, as Istio does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_TRUST_DOMAIN = "cluster.local"
KEY_FILE = "ca-key.pem"
CERT_FILE = "ca-cert.pem"
ROOT_VALIDITY = timedelta(days=3650)
CLOCK_SKEW = timedelta(minutes=1)
"""How far back a certificate's validity starts, for peers whose clock is a little behind."""
CERT_SECRET = "default"
ROOT_SECRET = "ROOTCA"
"""Istio's SDS secret names: the workload's certificate and the roots it trusts."""
_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_DNS_LABEL = re.compile(_LABEL)
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_WORKLOAD_ID = re.compile(r"spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)")


def _check_dns(kind: str, value: str, *, label: bool) -> None:
    """Raise ValueError unless `value` is a lowercase DNS label (or, if not `label`, name)."""
    pattern, limit, what = (_DNS_LABEL, 63, "label") if label else (_DNS_NAME, 253, "name")
    if not value:
        raise ValueError(f"{kind} is empty")
    if len(value) > limit or not pattern.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} is not a lowercase DNS {what}"
            f" (letters, digits and '-', at most {limit} characters)"
        )


def spiffe_id(
    namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> str:
    """The SPIFFE id of a Kubernetes service account, as Istio names workloads."""
    _check_dns("namespace", namespace, label=True)
    _check_dns("service account", service_account, label=False)
    _check_dns("trust domain", trust_domain, label=False)
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def _trust_domain_of(spiffe: str) -> str:
    """The trust domain of a well-formed workload SPIFFE id; ValueError otherwise."""
    match = _WORKLOAD_ID.fullmatch(spiffe)
    if match is None:
        raise ValueError(f"{spiffe!r} is not spiffe://<trust-domain>/ns/<namespace>/sa/<account>")
    trust_domain, namespace, account = match.groups()
    if spiffe_id(namespace, account, trust_domain) != spiffe:
        raise ValueError(f"{spiffe!r} is not a canonical workload SPIFFE id")
    return trust_domain


@dataclass(frozen=True)
class IssuedCert:
    """A workload certificate, its private key and the root that signed it (all PEM)."""

    spiffe: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    chain_pem: bytes
    not_before: datetime
    not_after: datetime


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a temporary file created with `mode`, then rename it onto `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _root_certificate(key: ec.EllipticCurvePrivateKey, trust_domain: str) -> x509.Certificate:
    """A self-signed root for `trust_domain`: CA, path length 0, signs certificates and CRLs."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "cilia root CA"),
        ]
    )
    now = datetime.now(UTC)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 root key in `path`; ValueError naming the file otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: the CA key must be ECDSA P-256")
    return key


def _load_root(path: Path, key: ec.EllipticCurvePrivateKey, trust_domain: str) -> x509.Certificate:
    """The root certificate in `path`, checked against its key and trust domain."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as e:
        raise ValueError(f"{path}: not a PEM certificate ({e})") from e
    if cert.public_key() != key.public_key():
        raise ValueError(f"{path}: does not match the key in {path.parent / KEY_FILE}")
    try:
        ids = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        ids = x509.SubjectAlternativeName([])
    want = f"spiffe://{trust_domain}"
    if ids.get_values_for_type(x509.UniformResourceIdentifier) != [want]:
        raise ValueError(f"{path}: not the root of trust domain {trust_domain!r} (no {want})")
    return cert


class CertificateAuthority:
    """Issues and verifies SPIFFE workload certificates of one trust domain."""

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, root: x509.Certificate, trust_domain: str
    ) -> None:
        self.trust_domain = trust_domain
        self.root_pem = root.public_bytes(serialization.Encoding.PEM)
        self._key = key
        self._root = root

    @classmethod
    def load_or_create(
        cls, directory: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> CertificateAuthority:
        """The CA kept in `directory` (made 0700), created on first use.

        `ca-key.pem` (0600) is written before `ca-cert.pem` (0644); a key left
        without its certificate (a crash in between) gets a new root for it.
        """
        _check_dns("trust domain", trust_domain, label=False)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
        if key_path.exists():
            key = _load_key(key_path)
        elif cert_path.exists():
            raise ValueError(f"{key_path}: missing, but {cert_path} exists (restore the key)")
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_atomic(key_path, pem, 0o600)
        if not cert_path.exists():
            root = _root_certificate(key, trust_domain)
            _write_atomic(cert_path, root.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(key, _load_root(cert_path, key, trust_domain), trust_domain)

    def issue(self, spiffe: str, ttl: timedelta = timedelta(hours=1)) -> IssuedCert:
        """A fresh P-256 key and a leaf for `spiffe` valid for `ttl` (from a minute ago)."""
        if _trust_domain_of(spiffe) != self.trust_domain:
            raise ValueError(f"{spiffe!r} is outside trust domain {self.trust_domain!r}")
        now = datetime.now(UTC)
        if ttl <= timedelta(0) or now + ttl > self._root.not_valid_after_utc:
            raise ValueError(f"ttl {ttl} must be positive and within the root's validity")
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_ski = self._root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # An empty subject makes the SAN the certificate's only name: critical (RFC 5280).
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCert(
            spiffe=spiffe,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            chain_pem=self.root_pem,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )

    def verify(self, cert_pem: bytes, now: datetime | None = None) -> str:
        """The SPIFFE id of a workload certificate this CA signed and that is valid at `now`."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as e:
            raise ValueError(f"not a PEM certificate ({e})") from e
        try:
            cert.verify_directly_issued_by(self._root)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise ValueError("not signed by this CA") from e
        try:
            if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise ValueError("a CA certificate, not a workload's")
        except x509.ExtensionNotFound:
            pass
        at = now or datetime.now(UTC)
        if at < cert.not_valid_before_utc:
            raise ValueError(f"not valid before {cert.not_valid_before_utc.isoformat()}")
        if at > cert.not_valid_after_utc:
            raise ValueError(f"expired at {cert.not_valid_after_utc.isoformat()}")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise ValueError(f"{len(uris)} URI SANs: a SPIFFE certificate has exactly one")
        if not uris[0].startswith("spiffe://"):
            raise ValueError(f"URI SAN {uris[0]!r} is not a SPIFFE id")
        if not uris[0].startswith(f"spiffe://{self.trust_domain}/"):
            raise ValueError(f"{uris[0]!r} is outside trust domain {self.trust_domain!r}")
        return uris[0]


def rotation_due(cert: IssuedCert, now: datetime) -> bool:
    """True once half of the certificate's lifetime has passed (Istio's rotation point)."""
    return now >= cert.not_before + (cert.not_after - cert.not_before) / 2


def _sds_resource(name: str, secret: dict[str, Any]) -> bytes:
    """A file-based SDS file: one named `Secret` resource, as JSON."""
    return json.dumps({"resources": [{"@type": _SECRET_TYPE, "name": name, **secret}]}).encode()


def write_sds(directory: Path, cert: IssuedCert) -> None:
    """Publish `cert` to an Envoy watching `directory` (file-based SDS), swapping it in at once.

    Layout (one writer per directory)::

        current -> gen-XXXX       symlink, replaced by rename: the only switch
        gen-XXXX/cert-chain.pem   leaf + root (0644)
        gen-XXXX/key.pem          the leaf's key (0600)
        gen-XXXX/root-cert.pem    the root (0644)
        sds-cert.json             Secret "default": chain and key under current/
        sds-validation.json       Secret "ROOTCA": trusted_ca under current/

    Envoy loads the JSON files through `sds_config.path_config_source`; their
    `watched_directory` is `directory`, so the rename of `current` reloads the
    certificate, key and root together: Envoy never pairs a new certificate
    with an old key. Older generations are removed after the switch.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    base = directory.resolve()
    generation = Path(tempfile.mkdtemp(prefix="gen-", dir=base))
    _write_atomic(generation / "cert-chain.pem", cert.cert_pem + cert.chain_pem, 0o644)
    _write_atomic(generation / "key.pem", cert.key_pem, 0o600)
    _write_atomic(generation / "root-cert.pem", cert.chain_pem, 0o644)
    current, watched = base / "current", {"watched_directory": {"path": str(base)}}
    tls = {
        "certificate_chain": {"filename": str(current / "cert-chain.pem")},
        "private_key": {"filename": str(current / "key.pem")},
        **watched,
    }
    roots = {"trusted_ca": {"filename": str(current / "root-cert.pem")}, **watched}
    _write_atomic(
        base / "sds-cert.json", _sds_resource(CERT_SECRET, {"tls_certificate": tls}), 0o644
    )
    _write_atomic(
        base / "sds-validation.json",
        _sds_resource(ROOT_SECRET, {"validation_context": roots}),
        0o644,
    )
    link = base / ".current.new"
    link.unlink(missing_ok=True)
    link.symlink_to(generation.name)
    os.replace(link, current)
    for old in base.glob("gen-*"):
        if old != generation:
            shutil.rmtree(old)
