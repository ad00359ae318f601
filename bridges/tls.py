"""TLS file settings checked once, at start-up: a configured path that is missing stops the worker.

Shared by the Kafka, Pulsar and Bridge clients, so each fails the same way and names the
environment variable to fix rather than failing later, in a background task, with a library error.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from vsync_stream.errors import ConfigurationError

if TYPE_CHECKING:
    from vsync_stream.settings import Settings


def readable_file(path: Path | None, env: str) -> Path | None:
    """``path`` when it names a readable file, None when unset.

    Args:
        path: the configured path, or None.
        env: the environment variable it came from, for the message.

    Raises:
        ConfigurationError: the path does not exist, is not a file, or cannot be read.
    """
    if path is None:
        return None
    if not path.is_file():
        raise ConfigurationError(f"{env}={path}: no such file; give the path of a PEM file or unset {env}")
    if not os.access(path, os.R_OK):
        raise ConfigurationError(f"{env}={path}: the worker cannot read it; check its permissions")
    return path


class BridgeTlsFiles(TypedDict, total=False):
    """The TLS keyword arguments of ``BridgeClient`` (absent: not set)."""

    root_cert_path: Path
    cert_chain_path: Path
    private_key_path: Path


def bridge_tls_kwargs(settings: Settings) -> BridgeTlsFiles:
    """The TLS arguments of :class:`~vsync_stream.bridges.dict_bridge.BridgeClient` from the settings.

    Returns:
        ``root_cert_path``, ``cert_chain_path`` and ``private_key_path`` for those that are set
        (empty: plaintext).

    Raises:
        ConfigurationError: a file is missing, or only one of the client certificate and its key is set.
    """
    if (settings.bridge_tls_cert is None) != (settings.bridge_tls_key is None):
        raise ConfigurationError("mutual TLS to the Bridge needs both VSYNC_BRIDGE_TLS_CERT and VSYNC_BRIDGE_TLS_KEY; "
                                 "set both, or neither for server-authenticated TLS only")
    found = BridgeTlsFiles()
    if (ca := readable_file(settings.bridge_tls_ca, "VSYNC_BRIDGE_TLS_CA")) is not None:
        found["root_cert_path"] = ca
    if (cert := readable_file(settings.bridge_tls_cert, "VSYNC_BRIDGE_TLS_CERT")) is not None:
        found["cert_chain_path"] = cert
    if (key := readable_file(settings.bridge_tls_key, "VSYNC_BRIDGE_TLS_KEY")) is not None:
        found["private_key_path"] = key
    return found


def web_server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the web view's server (``VSYNC_WEB_TLS_CERT`` + ``VSYNC_WEB_TLS_KEY``), or None.

    The web view carries the worker-to-worker calls (``/internal/*``, forwarded requests with the
    cluster token), so with several workers it should be served over TLS.

    Raises:
        ConfigurationError: only one of the two is set, a file is missing, or they do not load.
    """
    cert = readable_file(settings.web_tls_cert, "VSYNC_WEB_TLS_CERT")
    key = readable_file(settings.web_tls_key, "VSYNC_WEB_TLS_KEY")
    if (cert is None) != (key is None):
        raise ConfigurationError("TLS of the web view needs both VSYNC_WEB_TLS_CERT and VSYNC_WEB_TLS_KEY; set both, "
                                 "or neither for plain HTTP")
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise ConfigurationError(f"VSYNC_WEB_TLS_CERT={cert} / VSYNC_WEB_TLS_KEY={key} do not load as a PEM "
                                 f"certificate chain and its key ({exc.reason})") from None
    return context


def cluster_client_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context a worker verifies its peers' web views with (``https://`` cluster URLs).

    ``VSYNC_CLUSTER_TLS_CA`` names the CA that signs the workers' certificates; unset, the system
    CAs verify them. Hostnames are checked against the certificates.

    Raises:
        ConfigurationError: the CA file is missing or holds no usable certificate.
    """
    cafile = readable_file(settings.cluster_tls_ca, "VSYNC_CLUSTER_TLS_CA")
    try:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None)
    except ssl.SSLError as exc:
        raise ConfigurationError(f"VSYNC_CLUSTER_TLS_CA={cafile} holds no usable PEM certificate ({exc.reason})") \
            from None
