"""TLS and authentication settings of the Kafka, Pulsar and Bridge clients map to the right client
arguments, and bad combinations stop the start with a ConfigurationError that says what to fix."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import faust
import pulsar
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from tests.tls_certs import TestPki
from vsync_stream.bridges.kafka_security import KafkaSecurity, kafka_security
from vsync_stream.bridges.pulsar_security import is_tls_url, pulsar_client_options
from vsync_stream.bridges.tls import bridge_tls_kwargs
from vsync_stream.errors import ConfigurationError
from vsync_stream.settings import Settings

pytestmark = pytest.mark.usefixtures("no_vsync_env")

PASSWORD = "s3cret-sasl-password"


def settings(**values: Any) -> Settings:
    return Settings(**values)


def faust_view(security: KafkaSecurity) -> dict[str, Any]:
    """What Faust's aiokafka driver makes of our credentials, without the None values."""
    mapped = credentials_to_aiokafka_auth(security.faust_credentials())
    return {k: v for k, v in mapped.items() if v is not None}


# -- Kafka -----------------------------------------------------------------------------------------

def test_plaintext_is_the_default_and_needs_no_credentials() -> None:
    security = kafka_security(settings())
    assert security.faust_credentials() is None
    assert security.client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert faust_view(security) == security.client_kwargs()


def test_ssl_without_a_ca_file_uses_the_system_cas() -> None:
    security = kafka_security(settings(kafka_security_protocol="SSL"))
    context = security.ssl_context
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert isinstance(security.faust_credentials(), faust.SSLCredentials)
    assert security.client_kwargs() == {"security_protocol": "SSL", "ssl_context": context}
    assert faust_view(security) == security.client_kwargs()


def test_ssl_with_ca_and_client_certificate(pki: TestPki) -> None:
    security = kafka_security(settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki.ca,
                                       kafka_ssl_certfile=pki.client_cert, kafka_ssl_keyfile=pki.client_key))
    assert security.ssl_context is not None
    assert [c["subject"] for c in security.ssl_context.get_ca_certs()] == [((("commonName", "vsync test ca"),),)]
    assert faust_view(security) == security.client_kwargs()


@pytest.mark.parametrize(("mechanism", "protocol"), [
    (None, "SASL_PLAINTEXT"), ("SCRAM-SHA-256", "SASL_SSL"), ("SCRAM-SHA-512", "SASL_PLAINTEXT")])
def test_sasl_maps_to_faust_and_aiokafka_alike(mechanism: str | None, protocol: str) -> None:
    security = kafka_security(settings(kafka_security_protocol=protocol, kafka_sasl_mechanism=mechanism,
                                       kafka_sasl_username="vsync", kafka_sasl_password=PASSWORD))
    kwargs = security.client_kwargs()
    assert kwargs["security_protocol"] == protocol
    assert kwargs["sasl_mechanism"] == (mechanism or "PLAIN")
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("vsync", PASSWORD)
    assert ("ssl_context" in kwargs) == (protocol == "SASL_SSL")
    credentials = security.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials) and credentials.protocol.value == protocol
    assert faust_view(security) == kwargs
    assert PASSWORD not in repr(security) and PASSWORD not in repr(credentials)


async def test_the_admin_client_accepts_the_arguments(pki: TestPki) -> None:
    security = kafka_security(settings(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=pki.ca,
                                       kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="vsync",
                                       kafka_sasl_password=PASSWORD))
    admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9", **security.client_kwargs())  # not started
    assert admin._client._security_protocol == "SASL_SSL"
    await admin.close()


@pytest.mark.parametrize(("values", "message"), [
    ({"kafka_ssl_cafile": "ca.pem"},
     "VSYNC_KAFKA_SSL_CAFILE set but VSYNC_KAFKA_SECURITY_PROTOCOL=PLAINTEXT uses no TLS"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_ssl_certfile": "c.pem", "kafka_sasl_username": "u",
      "kafka_sasl_password": PASSWORD}, "VSYNC_KAFKA_SSL_CERTFILE set but .*SASL_PLAINTEXT uses no TLS"),
    ({"kafka_security_protocol": "SSL", "kafka_sasl_username": "u", "kafka_sasl_password": PASSWORD},
     "VSYNC_KAFKA_SASL_USERNAME, VSYNC_KAFKA_SASL_PASSWORD set but .*=SSL uses no SASL"),
    ({"kafka_sasl_mechanism": "PLAIN"}, "VSYNC_KAFKA_SASL_MECHANISM set but"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT"},
     "SASL_PLAINTEXT needs VSYNC_KAFKA_SASL_USERNAME and VSYNC_KAFKA_SASL_PASSWORD"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"}, "SASL_SSL needs VSYNC_KAFKA_SASL_PASSWORD$"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u", "kafka_sasl_password": ""},
     "needs VSYNC_KAFKA_SASL_PASSWORD$"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "k.pem"}, "VSYNC_KAFKA_SSL_KEYFILE set without"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"},
     "VSYNC_KAFKA_SSL_CAFILE=/nonexistent/ca.pem: no such file"),
])
def test_bad_kafka_combinations(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        kafka_security(settings(**values))
    assert PASSWORD not in str(caught.value)


def test_unusable_pem_files_are_named(pki: TestPki, tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match="VSYNC_KAFKA_SSL_CAFILE=.* holds no usable PEM certificate"):
        kafka_security(settings(kafka_security_protocol="SSL", kafka_ssl_cafile=not_pem))
    with pytest.raises(ConfigurationError, match="cannot load the Kafka client certificate"):
        kafka_security(settings(kafka_security_protocol="SSL", kafka_ssl_certfile=pki.client_cert,
                                kafka_ssl_keyfile=pki.server_key))  # a key that is not the certificate's


def test_the_worker_hands_the_credentials_to_faust(pki: TestPki, tmp_path: Path) -> None:
    from vsync_stream.app import VsyncApp

    vapp = VsyncApp(settings(data_dir=tmp_path, kafka_security_protocol="SSL", kafka_ssl_cafile=pki.ca))
    assert isinstance(vapp.faust.conf.broker_credentials, faust.SSLCredentials)
    assert vapp.faust.conf.broker_credentials.context is vapp.kafka_security.ssl_context
    with pytest.raises(ConfigurationError, match="VSYNC_KAFKA_SSL_CAFILE"):
        VsyncApp(settings(data_dir=tmp_path, kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "none.pem"))


# -- Pulsar ----------------------------------------------------------------------------------------

def test_pulsar_plaintext_needs_no_options() -> None:
    assert pulsar_client_options(settings()) == {}
    assert not is_tls_url("pulsar://127.0.0.1:6650") and is_tls_url("pulsar+ssl://b:6651") and is_tls_url("HTTPS://b")


def test_pulsar_tls_and_token(pki: TestPki) -> None:
    options = pulsar_client_options(settings(pulsar_url="pulsar+ssl://broker:6651", pulsar_tls_trust_certs_file=pki.ca,
                                             pulsar_auth_token="eyJhbGciOiJIUzI1NiJ9.e30.sig"))
    assert options["tls_trust_certs_file_path"] == str(pki.ca)
    assert options["tls_validate_hostname"] is True
    assert isinstance(options["authentication"], pulsar.AuthenticationToken)
    options = pulsar_client_options(settings(pulsar_url="pulsar+ssl://broker:6651", pulsar_tls_validate_hostname=False))
    assert options == {"tls_validate_hostname": False}  # the system CAs
    client = pulsar.Client("pulsar+ssl://127.0.0.1:9", **pulsar_client_options(settings(
        pulsar_url="pulsar+ssl://127.0.0.1:9", pulsar_tls_trust_certs_file=pki.ca, pulsar_auth_token="t")))
    client.close()  # the client takes the arguments (it connects lazily)


@pytest.mark.parametrize(("values", "message"), [
    ({"pulsar_tls_trust_certs_file": "ca.pem"}, "use a pulsar\\+ssl:// URL"),
    ({"pulsar_url": "pulsar+ssl://b:6651", "pulsar_tls_trust_certs_file": "/nonexistent/ca.pem"},
     "VSYNC_PULSAR_TLS_TRUST_CERTS_FILE=/nonexistent/ca.pem: no such file"),
    ({"pulsar_auth_token": "  "}, "VSYNC_PULSAR_AUTH_TOKEN is empty"),
])
def test_bad_pulsar_combinations(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    if values.get("pulsar_tls_trust_certs_file") == "ca.pem":
        (tmp_path / "ca.pem").write_text("x")
        values = {**values, "pulsar_tls_trust_certs_file": tmp_path / "ca.pem"}
    with pytest.raises(ConfigurationError, match=message):
        pulsar_client_options(settings(**values))


# -- Bridge (gRPC) ---------------------------------------------------------------------------------

def test_bridge_tls_arguments(pki: TestPki) -> None:
    assert bridge_tls_kwargs(settings()) == {}
    assert bridge_tls_kwargs(settings(bridge_tls_ca=pki.ca)) == {"root_cert_path": pki.ca}
    assert bridge_tls_kwargs(settings(bridge_tls_ca=pki.ca, bridge_tls_cert=pki.client_cert,
                                      bridge_tls_key=pki.client_key)) == {
        "root_cert_path": pki.ca, "cert_chain_path": pki.client_cert, "private_key_path": pki.client_key}
    with pytest.raises(ConfigurationError, match="needs both VSYNC_BRIDGE_TLS_CERT and VSYNC_BRIDGE_TLS_KEY"):
        bridge_tls_kwargs(settings(bridge_tls_cert=pki.client_cert))
    with pytest.raises(ConfigurationError, match="VSYNC_BRIDGE_TLS_CA=/nonexistent/ca.pem: no such file"):
        bridge_tls_kwargs(settings(bridge_tls_ca="/nonexistent/ca.pem"))
