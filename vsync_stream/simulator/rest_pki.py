"""A throwaway PKI for the DICT simulator's REST face and the Bridge that talks to it.

The real DICT API is reached over mutual TLS inside the RSFN, with certificates issued for the
participant, and signs its answers with its own certificate (BCB, "Manual de Segurança do Pix").
Offline there is none of that, so the simulator makes its own, with ``cryptography``:

* ``dict-ca``: the simulated DICT's CA; signs the server certificate (``localhost``, ``127.0.0.1``)
  and the DICT's XML signing certificate. The Bridge trusts it for TLS and for response signatures.
* ``participant-ca``: the participant's CA; signs the Bridge's client certificate (mutual TLS) and its
  XML signing certificate. The simulator trusts it for client certificates and request signatures.

Keys: EC P-256 for the CAs and TLS (fast), RSA 2048 for the two XML signing certificates (the
signature algorithm is RSA-SHA256). For tests only; never for a real DICT.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

__all__ = ["Authority", "DictPki", "make_dict_pki"]


@dataclass(frozen=True)
class Authority:
    """A CA's key and certificate, to issue more certificates (tests make expired or foreign ones)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem_path: Path

    @classmethod
    def create(cls, directory: Path, name: str, *, days: int = 2) -> Authority:
        """A self-signed CA written to ``<directory>/<name>.pem`` (key kept in memory only)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vsync test {name}")])
        now = datetime.now(UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        path = directory / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, path)

    def issue(self, directory: Path, name: str, *, usage: str, hosts: tuple[str, ...] = (), rsa_key: bool = False,
              not_before: datetime | None = None, not_after: datetime | None = None) -> tuple[Path, Path]:
        """Issue a leaf certificate; write ``<name>.pem`` and ``<name>.key`` (PKCS#8, unencrypted).

        Args:
            usage: ``server``, ``client`` or ``signing``.
            hosts: DNS names and IP addresses of the subject alternative name (TLS certificates).
            rsa_key: an RSA 2048 key instead of EC P-256 (XML signing uses RSA-SHA256).
            not_before: start of validity; 5 minutes ago when None.
            not_after: end of validity; in two days when None (give a past time for an expired one).

        Returns:
            ``(cert_path, key_path)``.
        """
        key: PrivateKey = rsa.generate_private_key(65537, 2048) if rsa_key else ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        start = not_before or now - timedelta(minutes=5)
        end = not_after or now + timedelta(days=2)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vsync test {name}")]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=usage == "signing",
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        if usage in ("server", "client"):
            oid = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([oid]), critical=False)
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path


@dataclass(frozen=True)
class DictPki:
    """Paths of the PEM files of a simulated DICT and of its one participant's Bridge."""

    directory: Path
    dict_ca: Authority
    participant_ca: Authority
    server_cert: Path
    server_key: Path
    dict_signing_cert: Path
    dict_signing_key: Path
    client_cert: Path
    client_key: Path
    participant_signing_cert: Path
    participant_signing_key: Path

    def bridge_env(self) -> dict[str, str]:
        """The ``VSYNC_DICT_API_*`` variables of a ``vsync-stream bridge`` that talks to this DICT."""
        return {
            "VSYNC_DICT_API_TLS_CA": str(self.dict_ca.pem_path),
            "VSYNC_DICT_API_TLS_CERT": str(self.client_cert),
            "VSYNC_DICT_API_TLS_KEY": str(self.client_key),
            "VSYNC_DICT_API_SIGNING_CERT": str(self.participant_signing_cert),
            "VSYNC_DICT_API_SIGNING_KEY": str(self.participant_signing_key),
            "VSYNC_DICT_API_VERIFY_CA": str(self.dict_ca.pem_path),
        }


def make_dict_pki(directory: str | Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> DictPki:
    """Create both CAs and the five leaf certificates in ``directory`` (made if missing).

    Returns:
        Their paths; CA keys stay in memory (on the returned authorities) for tests that issue more.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    dict_ca = Authority.create(path, "dict-ca")
    participant_ca = Authority.create(path, "participant-ca")
    server_cert, server_key = dict_ca.issue(path, "dict-server", usage="server", hosts=hosts)
    dict_signing_cert, dict_signing_key = dict_ca.issue(path, "dict-signing", usage="signing", rsa_key=True)
    client_cert, client_key = participant_ca.issue(path, "bridge-client", usage="client", hosts=("vsync-bridge",))
    signing_cert, signing_key = participant_ca.issue(path, "participant-signing", usage="signing", rsa_key=True)
    return DictPki(path, dict_ca, participant_ca, server_cert, server_key, dict_signing_cert, dict_signing_key,
                   client_cert, client_key, signing_cert, signing_key)
