"""The one exception tree of vsync-stream.

Every error the product raises derives from :class:`VsyncError`. ``retriable`` says whether the
same call may succeed later (a broker or the Bridge coming back); retry loops branch on that flag
only, never on the class name.
"""

from __future__ import annotations


class VsyncError(Exception):
    """Base of every vsync-stream error."""

    retriable: bool = False


class ConfigurationError(VsyncError):
    """A setting or an existing broker resource is wrong; the message says what to fix."""


class InvalidEvent(VsyncError):
    """A key event breaks the contract (DESIGN 4.1); it is dead-lettered with ``code`` and reason.

    Attributes:
        code: a short stable code, used as the metric label and in the dead-letter record.
        reason: a human-readable explanation with no personal data.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class InvalidEntry(VsyncError):
    """An operator-supplied entry or CID file line is malformed."""


class StateNotReady(VsyncError):
    """Table state is recovering or partitions are being reassigned; ask again shortly."""

    retriable = True


class BridgeError(VsyncError):
    """The Bridge (the participant's gRPC gateway to the DICT) answered with an error.

    Attributes:
        status_code: the gRPC status code (a ``grpc.StatusCode``) when the error came from a call,
            else None. Typed loosely so this module stays free of gRPC imports.
        retry_after_s: the server's hint of when to try again, seconds (RESOURCE_EXHAUSTED), or None.
    """

    status_code: object | None = None
    retry_after_s: float | None = None
    http_status: int | None = None  # the DICT API's HTTP status, when the error came from it
    policy: str | None = None  # the DICT's rate-limit policy (RateLimited from the DICT API), e.g. CIDS_EVENTS_LIST


class BridgeUnavailable(BridgeError):
    """The Bridge or the DICT behind it cannot be reached now (gRPC UNAVAILABLE, deadline)."""

    retriable = True


class RateLimited(BridgeError):
    """The DICT's token bucket for this operation is empty (gRPC RESOURCE_EXHAUSTED)."""

    retriable = True


class BridgeNotFound(BridgeError):
    """The DICT has no such object (gRPC NOT_FOUND)."""


class CidFileCorrupt(BridgeError):
    """A downloaded CID file does not match its announced byte size or SHA-256, or has a bad line.

    Retriable: the copy on the DICT's side may be fine and the next download good; download it
    again (and request a new file if it keeps failing).
    """

    retriable = True


class CidFileFailed(BridgeError):
    """The DICT ended a CID file job as ERROR or UNAVAILABLE; request a new file."""


class DictSignatureInvalid(BridgeError):
    """A DICT API response is unsigned, its XML signature does not verify, or its signing
    certificate is expired or not from the trusted CA. Never retried: the answer cannot be trusted,
    and asking again does not change the DICT's certificate; check VSYNC_DICT_API_VERIFY_CA."""


class DictResponseInvalid(BridgeError):
    """A DICT API response is not well-formed XML or violates the DICT's schema; not retried."""


class DictTlsError(BridgeError):
    """Mutual TLS with the DICT API failed (server certificate expired or from another CA, our
    client certificate refused); not retried: fix the certificates named in the message."""


class PublishFailed(VsyncError):
    """Publishing to a broker failed (a send was not acknowledged, or the producer cannot start)."""

    retriable = True


class AuditStoreError(VsyncError):
    """The PostgreSQL audit store failed."""

    retriable = True
