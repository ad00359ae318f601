"""The one frozen settings object of vsync-stream, read from ``VSYNC_*`` environment variables.

Every field documents its environment variable; ``vsync-stream settings`` prints them all.
Settings are read when the app is configured (``Settings()`` in the composition root), never at
import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vsync_stream.domain.keys import KEY_TYPES, is_ispb


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Configuration of a worker and of the operator commands (env prefix ``VSYNC_``)."""

    model_config = SettingsConfigDict(env_prefix="VSYNC_", frozen=True, extra="ignore")

    # --- identity and topics (broker-visible names are schema: see vsync_stream.names) ---
    app_id: str = Field("vsync-stream", description="Kafka consumer group and table-topic prefix [env: VSYNC_APP_ID]")
    key_events_topic: str = Field("vsync-key-events", description="Kafka topic of validated key events, keyed by Pix key [env: VSYNC_KEY_EVENTS_TOPIC]")
    dead_letter_topic: str = Field("vsync-dead-letters", description="Kafka topic of rejected events with their reason [env: VSYNC_DEAD_LETTER_TOPIC]")
    core_notices_topic: str = Field("vsync-core-notices", description="Kafka topic of correction notices for the participant's core system [env: VSYNC_CORE_NOTICES_TOPIC]")
    partitions: int = Field(8, ge=1, le=1024, description="Partitions of the key-events topic and of the table changelogs [env: VSYNC_PARTITIONS]")
    replication_factor: int = Field(1, ge=1, description="Replication factor of the topics the product creates [env: VSYNC_REPLICATION_FACTOR]")
    standby_replicas: int = Field(1, ge=0, description="Standby replicas kept of each table partition [env: VSYNC_STANDBY_REPLICAS]")
    changelog_fencing: bool = Field(True, description="Write each fold batch's changelog records as one Kafka transaction of the partition's own transactional id, so a worker that missed a rebalance (paused, stopped) is fenced and cannot overwrite the new owner's rows; restores and standbys read committed records only [env: VSYNC_CHANGELOG_FENCING]")

    # --- external systems ---
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers, host:port[,host:port] [env: VSYNC_KAFKA_BOOTSTRAP]")
    pulsar_url: str = Field("pulsar://127.0.0.1:16650", description="Pulsar service URL [env: VSYNC_PULSAR_URL]")
    pulsar_topic: str = Field("persistent://public/default/dict-events", description="Pulsar topic of the participant's key events [env: VSYNC_PULSAR_TOPIC]")
    pulsar_subscription: str = Field("vsync-stream", description="Pulsar subscription name [env: VSYNC_PULSAR_SUBSCRIPTION]")
    pulsar_subscription_type: Literal["KeyShared", "Shared", "Failover", "Exclusive"] = Field(
        "KeyShared", description="Pulsar subscription type [env: VSYNC_PULSAR_SUBSCRIPTION_TYPE]")
    adapter_enabled: bool = Field(True, description="Run the Pulsar-to-Kafka adapter inside the worker [env: VSYNC_ADAPTER_ENABLED]")
    adapter_concurrency: int = Field(1, ge=0, description="Adapter processes on the Pulsar subscription: a worker with the adapter enabled starts this many child processes, `vsync-stream adapter` runs this many; 0 = inside the worker's own event loop, sharing the fold's core (slower) [env: VSYNC_ADAPTER_CONCURRENCY]")
    adapter_batch_size: int = Field(1000, ge=1, description="Pulsar messages the adapter takes per receive and hands to Kafka as one batch, at most [env: VSYNC_ADAPTER_BATCH_SIZE]")
    postgres_dsn: SecretStr = Field(SecretStr("postgresql://vsync:vsync@127.0.0.1:15432/vsync"),
                                    description="PostgreSQL DSN of the audit store [env: VSYNC_POSTGRES_DSN]")
    bridge_target: str = Field("127.0.0.1:15051", description="Bridge gRPC target host:port [env: VSYNC_BRIDGE_TARGET]")
    bridge_deadline_s: float = Field(5.0, gt=0, description="Deadline of one Bridge call, seconds [env: VSYNC_BRIDGE_DEADLINE_S]")
    bridge_rate_limits: str = Field("", description="Per-operation overrides of the client's pacing, e.g. 'VerifySync=10/min:50,GetEntryByCid=off'; empty = the DICT's published limits [env: VSYNC_BRIDGE_RATE_LIMITS]")
    bridge_tls_ca: Path | None = Field(None, description="PEM root certificate for TLS to the Bridge; unset = plaintext [env: VSYNC_BRIDGE_TLS_CA]")
    bridge_tls_cert: Path | None = Field(None, description="PEM client certificate chain for mutual TLS to the Bridge; set together with VSYNC_BRIDGE_TLS_KEY [env: VSYNC_BRIDGE_TLS_CERT]")
    bridge_tls_key: Path | None = Field(None, description="PEM private key of the Bridge client certificate (mutual TLS); set together with VSYNC_BRIDGE_TLS_CERT [env: VSYNC_BRIDGE_TLS_KEY]")

    # --- `vsync-stream bridge`: the Bridge in front of BCB's DICT REST API (see vsync_stream.bridges.dict_api) ---
    bridge_listen: str = Field("127.0.0.1:15051", description="Address host:port that `vsync-stream bridge` serves the gRPC Bridge API on (the workers' VSYNC_BRIDGE_TARGET) [env: VSYNC_BRIDGE_LISTEN]")
    bridge_server_tls_cert: Path | None = Field(None, description="PEM certificate chain `vsync-stream bridge` serves gRPC with; unset = plaintext, allowed on a loopback address only [env: VSYNC_BRIDGE_SERVER_TLS_CERT]")
    bridge_server_tls_key: Path | None = Field(None, description="PEM private key of VSYNC_BRIDGE_SERVER_TLS_CERT [env: VSYNC_BRIDGE_SERVER_TLS_KEY]")
    bridge_server_client_ca: Path | None = Field(None, description="PEM CA of the workers' client certificates: set = mutual TLS required; needed off loopback, since the Bridge answers personal data (entries by CID) [env: VSYNC_BRIDGE_SERVER_CLIENT_CA]")
    dict_api_url: str = Field("https://127.0.0.1:16522/api/v1/", description="Root URL of BCB's DICT API, e.g. https://dict-h.pi.rsfn.net.br:16522/api/v1/ (homologation) [env: VSYNC_DICT_API_URL]")
    dict_api_participant: str | None = Field(None, description="ISPB sent as PI-RequestingParticipant when a call names no participant; unset = the first of VSYNC_PARTICIPANTS [env: VSYNC_DICT_API_PARTICIPANT]")
    dict_api_tls_ca: Path | None = Field(None, description="PEM CA that signs the DICT API's server certificate (the only one trusted); required by `vsync-stream bridge` [env: VSYNC_DICT_API_TLS_CA]")
    dict_api_tls_cert: Path | None = Field(None, description="PEM client certificate of the participant for mutual TLS with the DICT API [env: VSYNC_DICT_API_TLS_CERT]")
    dict_api_tls_key: Path | None = Field(None, description="PEM private key of VSYNC_DICT_API_TLS_CERT [env: VSYNC_DICT_API_TLS_KEY]")
    dict_api_signing_cert: Path | None = Field(None, description="PEM certificate of the participant's XML signatures on requests that change data [env: VSYNC_DICT_API_SIGNING_CERT]")
    dict_api_signing_key: Path | None = Field(None, description="PEM private key (RSA) of VSYNC_DICT_API_SIGNING_CERT [env: VSYNC_DICT_API_SIGNING_KEY]")
    dict_api_verify_ca: Path | None = Field(None, description="PEM CA of the DICT's XML signing certificate; every response's signature is checked against it [env: VSYNC_DICT_API_VERIFY_CA]")
    dict_api_timeout_s: float = Field(10.0, gt=0, description="Timeout of one DICT API exchange (connect, or one read), seconds [env: VSYNC_DICT_API_TIMEOUT_S]")

    # --- transport security of the brokers (see vsync_stream.bridges.kafka_security, .pulsar_security) ---
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How the Kafka clients connect: TLS (SSL), SASL authentication, both, or neither [env: VSYNC_KAFKA_SECURITY_PROTOCOL]")
    kafka_ssl_cafile: Path | None = Field(None, description="PEM CA bundle that signs the Kafka brokers' certificates; unset = the system CAs (SSL, SASL_SSL) [env: VSYNC_KAFKA_SSL_CAFILE]")
    kafka_ssl_certfile: Path | None = Field(None, description="PEM client certificate for mutual TLS to Kafka (SSL, SASL_SSL) [env: VSYNC_KAFKA_SSL_CERTFILE]")
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM private key of the Kafka client certificate; unset = inside the certificate file [env: VSYNC_KAFKA_SSL_KEYFILE]")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism for Kafka (SASL_PLAINTEXT, SASL_SSL); unset = PLAIN [env: VSYNC_KAFKA_SASL_MECHANISM]")
    kafka_sasl_username: str | None = Field(None, description="SASL user name for Kafka [env: VSYNC_KAFKA_SASL_USERNAME]")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password for Kafka [env: VSYNC_KAFKA_SASL_PASSWORD]")
    pulsar_tls_trust_certs_file: Path | None = Field(None, description="PEM CA bundle that signs the Pulsar brokers' certificates, for pulsar+ssl:// URLs; unset = the system CAs [env: VSYNC_PULSAR_TLS_TRUST_CERTS_FILE]")
    pulsar_tls_validate_hostname: bool = Field(True, description="Check that the Pulsar broker's certificate names the host connected to (pulsar+ssl://) [env: VSYNC_PULSAR_TLS_VALIDATE_HOSTNAME]")
    pulsar_auth_token: SecretStr | None = Field(None, description="Pulsar JWT authentication token; unset = no authentication [env: VSYNC_PULSAR_AUTH_TOKEN]")

    # --- domain ---
    participants: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["12345678"],
        description="ISPBs verified by this worker: the direct participant and its indirect ones, comma-separated [env: VSYNC_PARTICIPANTS]")
    max_event_bytes: int = Field(16 * 1024, ge=512, description="Largest event payload accepted, bytes [env: VSYNC_MAX_EVENT_BYTES]")

    # --- verification ---
    verify_cron: str = Field("0 3 * * *", description="Crontab of the scheduled verification [env: VSYNC_VERIFY_CRON]")
    verify_timezone: str = Field("America/Sao_Paulo", description="Time zone of verify_cron [env: VSYNC_VERIFY_TIMEZONE]")

    ledger_check_interval_s: float = Field(3600.0, gt=0, description="Seconds between checks of the VSync ledgers against the entries table [env: VSYNC_LEDGER_CHECK_INTERVAL_S]")

    auto_reconcile: bool = Field(True, description="Reconcile a (participant, key type) as soon as a verification answers NOK [env: VSYNC_AUTO_RECONCILE]")
    reconcile_workdir: Path | None = Field(None, description="Directory for CID files and diff buckets; system temp when unset [env: VSYNC_RECONCILE_WORKDIR]")
    cid_file_poll_s: float = Field(60.0, gt=0, description="Seconds between polls of a requested CID file (BCB suggests about once per minute) [env: VSYNC_CID_FILE_POLL_S]")
    persist_dict_budgets: bool = Field(True, description="Keep the client's DICT token-bucket levels in the audit store, shared by the workers of the app id, so a restart or a coordinator move does not start with full buckets [env: VSYNC_PERSIST_DICT_BUDGETS]")

    # --- worker and web view ---
    data_dir: Path = Field(Path(".local/worker"), description="Directory of the RocksDB table state [env: VSYNC_DATA_DIR]")
    rocksdb_write_buffer_mb: int = Field(2, ge=1, le=1024, description="Size of one RocksDB write buffer (memtable) of a table partition, MB; two per partition, active and standby (BENCHMARKS.md: memory) [env: VSYNC_ROCKSDB_WRITE_BUFFER_MB]")
    rocksdb_block_cache_mb: int = Field(4, ge=1, le=65536, description="RocksDB block cache of a table partition, MB: rows already on disk are read through it (and the OS page cache) [env: VSYNC_ROCKSDB_BLOCK_CACHE_MB]")
    malloc_arena_max: int = Field(2, ge=0, le=64, description="glibc malloc arenas of the worker process (mallopt M_ARENA_MAX); 0 = glibc's default of 8 per core, which lets the consumer and RocksDB threads hold memory apart [env: VSYNC_MALLOC_ARENA_MAX]")
    web_host: str = Field("127.0.0.1", description="Address the web view binds [env: VSYNC_WEB_HOST]")
    web_port: int = Field(16066, ge=1, le=65535, description="Port of the web view [env: VSYNC_WEB_PORT]")
    web_advertised_url: str | None = Field(None, description="URL the other workers of the app id use to reach this worker's web view (routed queries); default http://<web_host>:<web_port> [env: VSYNC_WEB_ADVERTISED_URL]")
    group_instance_id: str | None = Field(None, description="Static consumer-group membership id, stable across restarts (e.g. the pod name): a restarted worker keeps its partitions without a rebalance [env: VSYNC_GROUP_INSTANCE_ID]")
    cluster_timeout_s: float = Field(10.0, gt=0, description="Timeout of one request to another worker (routed query, partition report), seconds [env: VSYNC_CLUSTER_TIMEOUT_S]")
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Bearer tokens allowed to change state or see personal data, comma-separated [env: VSYNC_API_TOKENS]")
    api_tokens_file: Path | None = Field(None, description="File with one bearer token per line, added to api_tokens [env: VSYNC_API_TOKENS_FILE]")
    cluster_urls: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Advertised URLs of every worker of the app id (comma-separated, e.g. https://w1:16066,https://w2:16066): the cluster token is sent only to these; empty = only to URLs of this worker's own scheme and host [env: VSYNC_CLUSTER_URLS]")
    web_tls_cert: Path | None = Field(None, description="PEM certificate chain the web view serves HTTPS with (worker-to-worker calls included); set together with VSYNC_WEB_TLS_KEY; unset = plain HTTP [env: VSYNC_WEB_TLS_CERT]")
    web_tls_key: Path | None = Field(None, description="PEM private key of VSYNC_WEB_TLS_CERT [env: VSYNC_WEB_TLS_KEY]")
    cluster_tls_ca: Path | None = Field(None, description="PEM CA that signs the other workers' web view certificates, for https:// cluster URLs; unset = the system CAs [env: VSYNC_CLUSTER_TLS_CA]")
    cluster_token: SecretStr | None = Field(None, description="Shared secret the workers of one app id use between themselves for routed queries (scope cluster only); the same on every worker, at least 16 characters [env: VSYNC_CLUSTER_TOKEN]")
    max_request_bytes: int = Field(65536, ge=1024, description="Largest request body the web view accepts, bytes; larger ones get 413 [env: VSYNC_MAX_REQUEST_BYTES]")
    log_level: str = Field("info", description="Log level of the worker [env: VSYNC_LOG_LEVEL]")
    log_format: Literal["text", "json"] = Field("text", description="Worker log format: Faust's text lines, or one JSON object per line with correlation ids [env: VSYNC_LOG_FORMAT]")

    @field_validator("participants", mode="before")
    @classmethod
    def _split_participants(cls, value: object) -> object:
        return _csv(value)

    @field_validator("participants")
    @classmethod
    def _check_participants(cls, value: list[str]) -> list[str]:
        for ispb in value:
            if not is_ispb(ispb):
                raise ValueError(f"participant {ispb!r} is not an 8-digit ISPB (keep leading zeros)")
        if not value:
            raise ValueError("at least one participant ISPB is needed")
        if len(set(value)) != len(value):
            raise ValueError("a participant ISPB is listed more than once")
        return value

    @field_validator("bridge_rate_limits")
    @classmethod
    def _check_rate_limits(cls, value: str) -> str:
        from vsync_stream.bridges.pacing import parse_rate_limits

        parse_rate_limits(value)  # raises ValueError with what is wrong
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        return _csv(value)

    @field_validator("cluster_urls", mode="before")
    @classmethod
    def _split_cluster_urls(cls, value: object) -> object:
        return _csv(value)

    @field_validator("cluster_urls")
    @classmethod
    def _check_cluster_urls(cls, value: list[str]) -> list[str]:
        from vsync_stream.cluster import origin_of

        return [origin_of(url) for url in value]  # raises ValueError naming the bad URL

    @property
    def kafka_broker_url(self) -> list[str]:
        """Bootstrap servers as Faust broker URLs."""
        return [f"kafka://{hp.strip()}" for hp in self.kafka_bootstrap.split(",") if hp.strip()]

    @property
    def key_types(self) -> tuple[str, ...]:
        """The key types verified: all five (BCB DICT API)."""
        return tuple(kt.value for kt in KEY_TYPES)
