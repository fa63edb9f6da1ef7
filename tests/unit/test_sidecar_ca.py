"""The sidecar CA: root storage, SPIFFE leaves, verification, rotation and file-based SDS."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from cilia.proxy.sidecar import ca as ca_module
from cilia.proxy.sidecar.ca import CertificateAuthority, IssuedCert, rotation_due, spiffe_id

WEB = "spiffe://cluster.local/ns/default/sa/web"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _forged(directory: Path, uris: list[str], *, valid_from: datetime | None = None) -> bytes:
    """A leaf signed with the root key in `directory`, with arbitrary URI SANs."""
    root_key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    root = x509.load_pem_x509_certificate((directory / "ca-cert.pem").read_bytes())
    start = valid_from or datetime.now(UTC) - timedelta(minutes=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(hours=1))
    )
    if uris:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(san, critical=True)
    return builder.sign(root_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


def test_create_then_load_the_same_root(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "ca"
    first = CertificateAuthority.load_or_create(directory)
    key_pem = (directory / "ca-key.pem").read_bytes()
    second = CertificateAuthority.load_or_create(directory)
    assert second.root_pem == first.root_pem
    assert (directory / "ca-key.pem").read_bytes() == key_pem
    assert _mode(directory) == 0o700
    assert _mode(directory / "ca-key.pem") == 0o600
    assert _mode(directory / "ca-cert.pem") == 0o644
    assert sorted(p.name for p in directory.iterdir()) == ["ca-cert.pem", "ca-key.pem"]
    # A leaf of the first instance verifies with the reloaded one.
    assert second.verify(first.issue(WEB).cert_pem) == WEB


def test_root_certificate_shape(authority: CertificateAuthority) -> None:
    root = x509.load_pem_x509_certificate(authority.root_pem)
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    san = root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local"]
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3651)
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)


def test_key_written_without_certificate_gets_a_root(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    CertificateAuthority.load_or_create(directory)
    key_pem = (directory / "ca-key.pem").read_bytes()
    (directory / "ca-cert.pem").unlink()
    again = CertificateAuthority.load_or_create(directory)
    assert (directory / "ca-key.pem").read_bytes() == key_pem
    assert again.verify(again.issue(WEB).cert_pem) == WEB


def test_corrupt_or_mismatched_files_are_named(tmp_path: Path) -> None:
    directory, other = tmp_path / "ca", tmp_path / "other"
    CertificateAuthority.load_or_create(directory)
    CertificateAuthority.load_or_create(other)
    cert = (directory / "ca-cert.pem").read_bytes()

    (directory / "ca-cert.pem").write_bytes((other / "ca-cert.pem").read_bytes())
    with pytest.raises(ValueError, match=r"ca-cert\.pem: does not match the key"):
        CertificateAuthority.load_or_create(directory)

    (directory / "ca-cert.pem").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"ca-cert\.pem: not a PEM certificate"):
        CertificateAuthority.load_or_create(directory)

    (directory / "ca-cert.pem").write_bytes(cert)
    (directory / "ca-key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nxx\n")
    with pytest.raises(ValueError, match=r"ca-key\.pem: not an unencrypted PEM private key"):
        CertificateAuthority.load_or_create(directory)

    (directory / "ca-key.pem").unlink()
    with pytest.raises(ValueError, match=r"ca-key\.pem: missing"):
        CertificateAuthority.load_or_create(directory)


def test_loading_with_another_trust_domain_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    with pytest.raises(ValueError, match=r"ca-cert\.pem: not the root of trust domain 'corp\.io'"):
        CertificateAuthority.load_or_create(tmp_path, trust_domain="corp.io")


def test_issued_leaf_shape(authority: CertificateAuthority) -> None:
    before = datetime.now(UTC)
    issued = authority.issue(WEB, ttl=timedelta(hours=2))
    leaf = x509.load_pem_x509_certificate(issued.cert_pem)
    assert issued.spiffe == WEB and issued.chain_pem == authority.root_pem
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(WEB)]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued.not_before == leaf.not_valid_before_utc
    assert issued.not_after == leaf.not_valid_after_utc
    assert issued.not_before.tzinfo is not None
    skew = before - issued.not_before
    assert timedelta(seconds=59) <= skew <= timedelta(seconds=61)
    assert abs(issued.not_after - before - timedelta(hours=2)) < timedelta(seconds=5)
    key = serialization.load_pem_private_key(issued.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == leaf.public_key()
    assert issued.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in repr(issued)
    assert authority.verify(issued.cert_pem) == WEB


def test_each_issue_has_its_own_key_and_serial(authority: CertificateAuthority) -> None:
    a, b = authority.issue(WEB), authority.issue(WEB)
    assert a.key_pem != b.key_pem
    serial = [x509.load_pem_x509_certificate(c.cert_pem).serial_number for c in (a, b)]
    assert serial[0] != serial[1]


def test_issue_refuses_foreign_or_malformed_ids(authority: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="outside trust domain"):
        authority.issue("spiffe://corp.io/ns/default/sa/web")
    with pytest.raises(ValueError, match="is not spiffe://"):
        authority.issue("spiffe://cluster.local/web")
    with pytest.raises(ValueError, match="namespace 'Default'"):
        authority.issue("spiffe://cluster.local/ns/Default/sa/web")
    with pytest.raises(ValueError, match="ttl"):
        authority.issue(WEB, ttl=timedelta(0))
    with pytest.raises(ValueError, match="ttl"):
        authority.issue(WEB, ttl=timedelta(days=3651))


def test_leaf_of_another_ca_is_refused(tmp_path: Path, authority: CertificateAuthority) -> None:
    stranger = CertificateAuthority.load_or_create(tmp_path / "stranger")
    with pytest.raises(ValueError, match="not signed by this CA"):
        authority.verify(stranger.issue(WEB).cert_pem)
    corp = CertificateAuthority.load_or_create(tmp_path / "corp", trust_domain="corp.io")
    with pytest.raises(ValueError, match="not signed by this CA"):
        authority.verify(corp.issue("spiffe://corp.io/ns/default/sa/web").cert_pem)


def test_expired_and_not_yet_valid_are_refused(authority: CertificateAuthority) -> None:
    issued = authority.issue(WEB, ttl=timedelta(seconds=1))
    assert authority.verify(issued.cert_pem, now=issued.not_after) == WEB
    with pytest.raises(ValueError, match="expired at"):
        authority.verify(issued.cert_pem, now=issued.not_after + timedelta(seconds=1))
    with pytest.raises(ValueError, match="not valid before"):
        authority.verify(issued.cert_pem, now=issued.not_before - timedelta(seconds=1))


def test_san_must_be_one_spiffe_id_of_the_trust_domain(
    tmp_path: Path, authority: CertificateAuthority
) -> None:
    directory = tmp_path / "ca"
    assert authority.verify(_forged(directory, [WEB])) == WEB
    with pytest.raises(ValueError, match=r"outside trust domain 'cluster\.local'"):
        authority.verify(_forged(directory, ["spiffe://corp.io/ns/default/sa/web"]))
    with pytest.raises(ValueError, match="outside trust domain"):
        authority.verify(_forged(directory, ["spiffe://cluster.localhost/ns/a/sa/b"]))
    with pytest.raises(ValueError, match="0 URI SANs"):
        authority.verify(_forged(directory, []))
    with pytest.raises(ValueError, match="2 URI SANs"):
        authority.verify(_forged(directory, [WEB, "spiffe://cluster.local/ns/default/sa/db"]))
    with pytest.raises(ValueError, match="is not a SPIFFE id"):
        authority.verify(_forged(directory, ["https://cluster.local/ns/default/sa/web"]))


def test_the_root_itself_is_not_a_workload(authority: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="a CA certificate"):
        authority.verify(authority.root_pem)


def test_garbage_is_not_a_certificate(authority: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="not a PEM certificate"):
        authority.verify(b"hello")


def test_spiffe_id_names_and_validation() -> None:
    assert spiffe_id("default", "web") == WEB
    assert spiffe_id("kube-system", "coredns", "corp.example") == (
        "spiffe://corp.example/ns/kube-system/sa/coredns"
    )
    assert spiffe_id("a", "build.bot") == "spiffe://cluster.local/ns/a/sa/build.bot"
    bad = [
        (("", "web"), "namespace is empty"),
        (("default", ""), "service account is empty"),
        (("Default", "web"), "namespace 'Default' is not a lowercase DNS label"),
        (("de_fault", "web"), "namespace"),
        (("-default", "web"), "namespace"),
        (("a.b", "web"), "namespace 'a.b'"),
        (("x" * 64, "web"), "at most 63"),
        (("default", "web/admin"), "service account 'web/admin'"),
        (("default", "web", ""), "trust domain is empty"),
        (("default", "web", "Cluster.Local"), "trust domain 'Cluster.Local'"),
        (("default", "web", "cluster..local"), "trust domain"),
        (("default", "web", "spiffe://x"), "trust domain"),
    ]
    for args, reason in bad:
        with pytest.raises(ValueError, match=reason.replace(".", r"\.")):
            spiffe_id(*args)


def test_rotation_at_half_the_lifetime() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    cert = IssuedCert(WEB, b"", b"", b"", start, start + timedelta(hours=1))
    assert not rotation_due(cert, start + timedelta(hours=0.49))
    assert rotation_due(cert, start + timedelta(hours=0.51))
    assert not rotation_due(cert, start)


def test_rotation_of_an_issued_cert(authority: CertificateAuthority) -> None:
    issued = authority.issue(WEB, ttl=timedelta(hours=1))
    life = issued.not_after - issued.not_before
    assert not rotation_due(issued, datetime.now(UTC))
    assert not rotation_due(issued, issued.not_before + life * 0.49)
    assert rotation_due(issued, issued.not_before + life * 0.51)


def _read_pair(current: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    leaf = x509.load_pem_x509_certificates((current / "cert-chain.pem").read_bytes())[0]
    key = serialization.load_pem_private_key((current / "key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return leaf, key


def test_write_sds_files_modes_and_envoy_resources(
    tmp_path: Path, authority: CertificateAuthority
) -> None:
    sds = tmp_path / "sds"
    issued = authority.issue(WEB)
    ca_module.write_sds(sds, issued)
    current = sds / "current"
    assert current.is_symlink() and not os.readlink(current).startswith("/")
    assert (current / "cert-chain.pem").read_bytes() == issued.cert_pem + authority.root_pem
    assert (current / "key.pem").read_bytes() == issued.key_pem
    assert (current / "root-cert.pem").read_bytes() == authority.root_pem
    assert _mode(current / "key.pem") == 0o600
    assert _mode(current / "cert-chain.pem") == _mode(current / "root-cert.pem") == 0o644
    assert _mode(sds) == 0o700

    base = str(sds.resolve())
    cert_doc = json.loads((sds / "sds-cert.json").read_text())
    assert cert_doc == {
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": "default",
                "tls_certificate": {
                    "certificate_chain": {"filename": f"{base}/current/cert-chain.pem"},
                    "private_key": {"filename": f"{base}/current/key.pem"},
                    "watched_directory": {"path": base},
                },
            }
        ]
    }
    roots = json.loads((sds / "sds-validation.json").read_text())["resources"]
    assert [(r["name"], r["validation_context"]) for r in roots] == [
        (
            "ROOTCA",
            {
                "trusted_ca": {"filename": f"{base}/current/root-cert.pem"},
                "watched_directory": {"path": base},
            },
        )
    ]


def test_write_sds_swaps_a_complete_pair_in_one_rename(
    tmp_path: Path, authority: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    sds = tmp_path / "sds"
    first, second = authority.issue(WEB), authority.issue(WEB)
    ca_module.write_sds(sds, first)
    current = sds / "current"
    old_link, old_target = current.lstat().st_ino, current.resolve()

    real_replace = os.replace
    seen: list[str] = []

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == sds.resolve() / "current":
            # Up to the switch, `current` still serves the old, complete pair ...
            leaf, key = _read_pair(current)
            assert leaf.public_key() == key.public_key()
            assert leaf.public_bytes(serialization.Encoding.PEM) == first.cert_pem
            # ... and the new generation is already complete.
            new_leaf, new_key = _read_pair(Path(src).parent / os.readlink(src))
            assert new_leaf.public_bytes(serialization.Encoding.PEM) == second.cert_pem
            assert new_leaf.public_key() == new_key.public_key()
        seen.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(ca_module.os, "replace", replace)
    ca_module.write_sds(sds, second)
    monkeypatch.undo()

    assert seen[-1] == "current" and seen.count("current") == 1
    assert {"cert-chain.pem", "key.pem", "root-cert.pem", "sds-cert.json"} <= set(seen)
    assert current.lstat().st_ino != old_link
    assert current.resolve() != old_target and not old_target.exists()
    leaf, key = _read_pair(current)
    assert leaf.public_bytes(serialization.Encoding.PEM) == second.cert_pem
    assert leaf.public_key() == key.public_key()
    names = sorted(p.name for p in sds.iterdir())
    assert names == sorted(
        ["current", current.resolve().name, "sds-cert.json", "sds-validation.json"]
    )
    assert sorted(p.name for p in current.iterdir()) == [
        "cert-chain.pem",
        "key.pem",
        "root-cert.pem",
    ]
