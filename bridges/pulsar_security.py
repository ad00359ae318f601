"""How the Pulsar clients authenticate and encrypt: the ``VSYNC_PULSAR_*`` security settings, checked once.

TLS follows the service URL (``pulsar+ssl://`` or ``https://``), as in every Pulsar client; the
trust file says which CA signs the brokers' certificates (the system CAs when unset). A JWT in
``VSYNC_PULSAR_AUTH_TOKEN`` authenticates the client. The result is keyword arguments for
``pulsar.Client``, used by the adapter (:mod:`vsync_stream.bridges.pulsar_source`) and the
simulator's publisher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pulsar

from vsync_stream.bridges.tls import readable_file
from vsync_stream.errors import ConfigurationError

if TYPE_CHECKING:
    from vsync_stream.settings import Settings

TLS_SCHEMES = ("pulsar+ssl://", "https://")


def is_tls_url(url: str) -> bool:
    """Tell whether a Pulsar service URL connects over TLS (``pulsar+ssl://``, ``https://``)."""
    return url.strip().lower().startswith(TLS_SCHEMES)


def pulsar_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``pulsar.Client`` for the security settings.

    Args:
        settings: the worker's settings (``pulsar_url``, ``pulsar_tls_*``, ``pulsar_auth_token``).

    Returns:
        For a TLS URL ``tls_validate_hostname`` and, when set, ``tls_trust_certs_file_path``; with a
        token ``authentication`` (a ``pulsar.AuthenticationToken``); empty for plaintext without one.

    Raises:
        ConfigurationError: a trust file with a plaintext URL, a missing or unreadable trust file,
            or an empty token.
    """
    options: dict[str, Any] = {}
    trust = readable_file(settings.pulsar_tls_trust_certs_file, "VSYNC_PULSAR_TLS_TRUST_CERTS_FILE")
    if is_tls_url(settings.pulsar_url):
        options["tls_validate_hostname"] = settings.pulsar_tls_validate_hostname
        if trust is not None:
            options["tls_trust_certs_file_path"] = str(trust)
    elif trust is not None:
        raise ConfigurationError(f"VSYNC_PULSAR_TLS_TRUST_CERTS_FILE is set but VSYNC_PULSAR_URL={settings.pulsar_url} "
                                 "is plaintext: use a pulsar+ssl:// URL (the brokers' TLS port), or unset the file")
    if settings.pulsar_auth_token is not None:
        token = settings.pulsar_auth_token.get_secret_value().strip()
        if not token:
            raise ConfigurationError("VSYNC_PULSAR_AUTH_TOKEN is empty: give the client's JWT, or unset it")
        options["authentication"] = pulsar.AuthenticationToken(token)
    return options
