"""CID: the content identifier of a DICT entry (BCB DICT API, "Cálculo de CID").

``CID = HMAC-SHA-256(key = RequestId bytes, message = entry attributes)``, where the RequestId bytes
are the 16 raw bytes of the UUID in RFC 4122 order and the attributes are nine values joined by
``&``: keyType, key, ownerTaxIdNumber, ownerName, ownerTradeName, participant, branch,
accountNumber, accountType. An absent value is the empty string; nothing is escaped, trimmed,
re-cased or normalised: the DICT hashes exactly the strings it holds.
"""

from __future__ import annotations

import re
import uuid
from hashlib import sha256
from typing import Protocol


class CidSource(Protocol):
    """What a CID is computed from: the RequestId and the nine attributes of a DICT entry.

    :class:`vsync_stream.domain.entry.Entry` is one; a protocol here keeps ``cid`` below ``entry``
    in the import graph (``entry`` computes its CID with this module).
    """

    @property
    def key_type(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def owner_tax_id(self) -> str: ...
    @property
    def owner_name(self) -> str: ...
    @property
    def owner_trade_name(self) -> str | None: ...
    @property
    def participant(self) -> str: ...
    @property
    def branch(self) -> str | None: ...
    @property
    def account_number(self) -> str: ...
    @property
    def account_type(self) -> str: ...

CID_HEX_LENGTH = 64
# HMAC (RFC 2104) spelled out over hashlib's SHA-256: H((K ^ opad) || H((K ^ ipad) || m)), K the key
# zero-padded to SHA-256's 64-byte block. hmac.digest on OpenSSL 3 fetches the digest and builds an
# HMAC context per call (2.6 vs 1.2 µs here, BENCHMARKS.md); a RequestId is 16 bytes, never longer
# than the block, so no key hashing is needed. tests/unit/test_cid_vsync.py checks it against
# hmac.new and the official vectors.
_BLOCK = 64
_IPAD = bytes(b ^ 0x36 for b in range(256))  # bytes.translate tables: XOR of every byte value
_OPAD = bytes(b ^ 0x5C for b in range(256))
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def entry_attributes(entry: CidSource) -> str:
    """Build the CID message of an entry: the nine attributes joined by ``&``, in the DICT's order.

    Args:
        entry: the entry as the DICT holds it.

    Returns:
        The text to hash (still ``str``; UTF-8 encoded by :func:`compute_cid`).
    """
    return "&".join(
        (
            entry.key_type,
            entry.key,
            entry.owner_tax_id,
            entry.owner_name,
            entry.owner_trade_name or "",
            entry.participant,
            entry.branch or "",
            entry.account_number,
            entry.account_type,
        )
    )


def request_id_bytes(request_id: str) -> bytes:
    """Return the 16 raw bytes of a RequestId in RFC 4122 order (``uuid.UUID(s).bytes``).

    Raises:
        ValueError: the text is not a UUID.
    """
    return uuid.UUID(request_id).bytes


def cid_of(request_id: bytes, attributes: str) -> str:
    """Compute a CID from raw RequestId bytes and the attribute string.

    Args:
        request_id: 16 bytes, RFC 4122 order.
        attributes: the output of :func:`entry_attributes`.

    Returns:
        64 lower-case hex chars.

    Raises:
        ValueError: ``request_id`` is longer than SHA-256's 64-byte block (a RequestId is 16).
    """
    if len(request_id) > _BLOCK:
        raise ValueError(f"a RequestId is 16 bytes, got {len(request_id)}")
    key = request_id + bytes(_BLOCK - len(request_id))
    inner = sha256(key.translate(_IPAD) + attributes.encode("utf-8")).digest()
    return sha256(key.translate(_OPAD) + inner).hexdigest()


def compute_cid(entry: CidSource) -> str:
    """Compute the CID of an entry with its own RequestId (BCB DICT API, "Cálculo de CID").

    Args:
        entry: the entry; ``entry.request_id`` is the RequestId of its create request (or of the
            complete-claim request for an entry created by a claim).

    Returns:
        64 lower-case hex chars.

    Raises:
        ValueError: the entry's RequestId is not a UUID.
    """
    return cid_of(request_id_bytes(entry.request_id), entry_attributes(entry))


def normalise_cid(text: str) -> str:
    """Validate a CID given as hex from outside (a CID file, the Bridge) and lower-case it.

    Raises:
        ValueError: not exactly 64 hex characters.
    """
    if len(text) != CID_HEX_LENGTH:
        raise ValueError(f"a CID is 64 hex characters, got {len(text)}")
    if not _HEX64.fullmatch(text):
        raise ValueError("a CID is hexadecimal (0-9, a-f, A-F only)")
    return text.lower()
