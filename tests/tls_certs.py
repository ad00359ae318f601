"""Throwaway PKI for TLS tests: a CA, a server certificate for localhost/127.0.0.1 and a client one.

Made with the ``openssl`` command (OpenSSL 3; present on the build machines, Debian's ``openssl``),
EC P-256 keys so it takes milliseconds. Valid for two days; never used outside a test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TestPki:
    """Paths of the PEM files, all in one directory."""

    __test__ = False  # not a test class, despite the name

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a second CA that signed nothing here: trusting it must fail the handshake


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> None:
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=vsync test {name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         cwd=directory)


def _leaf(directory: Path, name: str, usage: str, san: str) -> None:
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
         "-out", f"{name}.csr", "-subj", f"/CN=vsync test {name}", cwd=directory)
    ext = directory / f"{name}.ext"
    ext.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
                   f"subjectAltName={san}\n")
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=directory)


def make_pki(directory: Path) -> TestPki:
    """Write a CA, a server and a client certificate into ``directory`` and return their paths.

    Raises:
        RuntimeError: the ``openssl`` command is missing.
    """
    if shutil.which("openssl") is None:
        raise RuntimeError("the TLS tests need the openssl command: apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)
    _ca(directory, "ca")
    _ca(directory, "other-ca")
    _leaf(directory, "server", "serverAuth", "DNS:localhost,IP:127.0.0.1")
    _leaf(directory, "client", "clientAuth", "DNS:vsync-worker")
    return TestPki(ca=directory / "ca.pem", server_cert=directory / "server.pem", server_key=directory / "server.key",
                   client_cert=directory / "client.pem", client_key=directory / "client.key",
                   other_ca=directory / "other-ca.pem")


@pytest.fixture
def no_vsync_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No VSYNC_* variable of the caller's shell leaks into the settings under test
    (``pytestmark = pytest.mark.usefixtures("no_vsync_env")``)."""
    for name in [n for n in os.environ if n.startswith("VSYNC_")]:
        monkeypatch.delenv(name)
    yield


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A throwaway CA with server and client certificates, one per test module."""
    return make_pki(tmp_path_factory.mktemp("pki"))
