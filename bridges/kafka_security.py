"""How the Kafka clients authenticate and encrypt: the ``VSYNC_KAFKA_*`` security settings, checked once.

One :class:`KafkaSecurity` feeds both kinds of Kafka client the product builds: Faust's (producer,
consumer, its own admin client) through ``broker_credentials=``, and the aiokafka clients built
directly (the topic admin in :mod:`vsync_stream.bridges.kafka_topics`) through
:meth:`KafkaSecurity.client_kwargs`. A bad combination stops the worker at start-up with a
:class:`~vsync_stream.errors.ConfigurationError` that names the variable to fix; no message
contains the SASL password.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import faust

from vsync_stream.bridges.tls import readable_file
from vsync_stream.errors import ConfigurationError

if TYPE_CHECKING:
    from vsync_stream.settings import Settings

TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
DEFAULT_SASL_MECHANISM = "PLAIN"


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """The security of the Kafka connections, ready for Faust and for aiokafka.

    Attributes:
        protocol: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
        ssl_context: the TLS context (CA, client certificate) for the TLS protocols, else None.
        sasl_mechanism: ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512`` for the SASL protocols.
        sasl_username: the SASL user name.
        sasl_password: the SASL password (left out of ``repr``).
    """

    protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    def faust_credentials(self) -> faust.SSLCredentials | faust.SASLCredentials | None:
        """Faust's ``broker_credentials``: None for PLAINTEXT (Faust's default)."""
        if self.protocol in SASL_PROTOCOLS:
            return faust.SASLCredentials(username=self.sasl_username, password=self.sasl_password,
                                         ssl_context=self.ssl_context, mechanism=self.sasl_mechanism)
        if self.protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context)
        return None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka client (``AIOKafkaAdminClient``, producer, consumer).

        Returns:
            ``security_protocol`` and, as the protocol needs them, ``ssl_context``,
            ``sasl_mechanism``, ``sasl_plain_username`` and ``sasl_plain_password`` (aiokafka takes
            the SCRAM user and password under the same two names).
        """
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol in TLS_PROTOCOLS:
            kwargs["ssl_context"] = self.ssl_context
        if self.protocol in SASL_PROTOCOLS:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password)
        return kwargs


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    cafile = readable_file(settings.kafka_ssl_cafile, "VSYNC_KAFKA_SSL_CAFILE")
    certfile = readable_file(settings.kafka_ssl_certfile, "VSYNC_KAFKA_SSL_CERTFILE")
    keyfile = readable_file(settings.kafka_ssl_keyfile, "VSYNC_KAFKA_SSL_KEYFILE")
    try:
        # Without a CA file the system's CAs verify the brokers (a public or corporate CA).
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None)
    except ssl.SSLError as exc:
        raise ConfigurationError(f"VSYNC_KAFKA_SSL_CAFILE={cafile} holds no usable PEM certificate ({exc.reason}); "
                                 "give the CA bundle that signs the brokers' certificates") from None
    if certfile is not None:
        try:
            context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"cannot load the Kafka client certificate VSYNC_KAFKA_SSL_CERTFILE={certfile} with key "
                f"{keyfile or '(in the same file)'} ({exc.reason}): both must be PEM, the key unencrypted and "
                "matching the certificate") from None
    return context


def kafka_security(settings: Settings) -> KafkaSecurity:
    """Check the ``VSYNC_KAFKA_*`` security settings and build the TLS context they describe.

    Args:
        settings: the worker's settings.

    Returns:
        The security of every Kafka connection of this process.

    Raises:
        ConfigurationError: a TLS file setting with a protocol without TLS, a key file without its
            certificate, a missing or unreadable file, SASL settings with a protocol without SASL,
            or SASL without a user name and password.
    """
    protocol = settings.kafka_security_protocol
    tls_files = {"VSYNC_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
                 "VSYNC_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
                 "VSYNC_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile}
    sasl = {"VSYNC_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
            "VSYNC_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
            "VSYNC_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password}
    if protocol not in TLS_PROTOCOLS and (given := [k for k, v in tls_files.items() if v is not None]):
        raise ConfigurationError(f"{', '.join(given)} set but VSYNC_KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS: "
                                 "set the protocol to SSL or SASL_SSL, or unset the files")
    if protocol not in SASL_PROTOCOLS and (given := [k for k, v in sasl.items() if v is not None]):
        raise ConfigurationError(f"{', '.join(given)} set but VSYNC_KAFKA_SECURITY_PROTOCOL={protocol} uses no SASL: "
                                 "set the protocol to SASL_PLAINTEXT or SASL_SSL, or unset them")
    if settings.kafka_ssl_keyfile is not None and settings.kafka_ssl_certfile is None:
        raise ConfigurationError("VSYNC_KAFKA_SSL_KEYFILE set without VSYNC_KAFKA_SSL_CERTFILE: the client key needs "
                                 "its certificate")
    context = _ssl_context(settings) if protocol in TLS_PROTOCOLS else None
    if protocol not in SASL_PROTOCOLS:
        return KafkaSecurity(protocol, context)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    missing = [name for name, value in (("VSYNC_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
                                        ("VSYNC_KAFKA_SASL_PASSWORD", password)) if not value]
    if missing:
        raise ConfigurationError(f"VSYNC_KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)}")
    return KafkaSecurity(protocol, context, settings.kafka_sasl_mechanism or DEFAULT_SASL_MECHANISM,
                         settings.kafka_sasl_username, password)
