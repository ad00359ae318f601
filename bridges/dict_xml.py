"""XML bodies of BCB's DICT API for the reconciliation operations: build, parse, validate, sign, verify.

BCB DICT API v1.2.0 (``bacen/pix-dict-api``, ``openapi/openapi.yaml``), tag "Reconciliação", plus
the rate-limit policies (``ListPoliciesResponse``). Shared by the REST client
(:mod:`vsync_stream.bridges.dict_api`) and the DICT simulator's REST face
(:mod:`vsync_stream.simulator.rest`), so both sides speak exactly the same documents.

* Bodies are unqualified XML (no namespace), as in BCB's examples; they are checked against the
  XSD ``bridges/xsd/dict-reconciliation.xsd`` (written for this project from the OpenAPI schemas).
* "Assinatura digital": requests that change data and every DICT response carry an enveloped XML
  digital signature (``ds:Signature``, a child of the root). :class:`XmlSigner` and
  :class:`XmlVerifier` wrap ``signxml`` (RSA-SHA256, SHA-256 digests, exclusive C14N, the signer's
  certificate in ``KeyInfo``); no canonicalisation or signature code is written here. A verified
  document is read from what the signature covers (``signed_xml``), never from the raw bytes, so
  content outside the signature cannot slip in.
* Errors are RFC 7807 problems in XML (``urn:ietf:rfc:7807``), type
  ``https://dict.pi.rsfn.net.br/api/v1/error/<TipoErro>``.

Parsing is hardened (no entities, no network, no huge trees). Messages of the errors raised name
elements and schema rules, never values (a value may be a Pix key or a tax id).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree
from signxml import (  # type: ignore[attr-defined]
    CanonicalizationMethod,
    DigestAlgorithm,
    SignatureConstructionMethod,
    SignatureMethod,
    XMLSigner,
    XMLVerifier,
)
from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, InvalidSignature

from vsync_stream.bridges.bridge_proto import CidEvent, CidEventsPage, CidFileStatus, VerifyResult, normalise_sha256
from vsync_stream.domain.entry import Entry
from vsync_stream.errors import DictResponseInvalid, DictSignatureInvalid

__all__ = [
    "DS_NS", "PROBLEM_NS", "PROBLEM_TYPE_PREFIX", "Policy", "Problem", "XmlSigner", "XmlVerifier",
    "cid_set_file_request", "cid_set_file_response", "correlation_id", "entry_by_cid_response", "format_time",
    "list_cid_set_events_response", "parse_body", "parse_cid_set_file", "parse_cid_set_events",
    "parse_entry_by_cid", "parse_policies", "parse_problem", "parse_sync_verification", "parse_time",
    "policies_response", "problem_document", "sync_verification_request", "sync_verification_response",
    "to_bytes", "validate",
]

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
PROBLEM_NS = "urn:ietf:rfc:7807"
PROBLEM_TYPE_PREFIX = "https://dict.pi.rsfn.net.br/api/v1/error/"
XSD_PATH = Path(__file__).with_name("xsd") / "dict-reconciliation.xsd"

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=True)


@cache
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD_PATH)))


# ---------------------------------------------------------------------- primitives


def correlation_id() -> str:
    """A fresh correlation id in the DICT's style (32 hex chars)."""
    return uuid.uuid4().hex


def format_time(moment: datetime) -> str:
    """An aware datetime as the DICT writes it: UTC, milliseconds, ``Z`` (``2020-01-10T10:00:00.000Z``)."""
    if moment.tzinfo is None:
        raise ValueError("use an aware datetime (UTC)")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as :func:`format_time` writes them."""
    return format_time(datetime.fromtimestamp(epoch_ms / 1000, UTC))


def parse_time(text: str) -> datetime:
    """An ``xs:dateTime`` of the DICT as an aware UTC datetime (``Z`` or an offset; naive = UTC)."""
    moment = datetime.fromisoformat(text.strip())
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, tag)
    if text is not None:
        child.text = text
    return child


def _root(tag: str, *, signature_placeholder: bool) -> etree._Element:
    root = etree.Element(tag)
    if signature_placeholder:
        # signxml puts the enveloped signature in place of this placeholder (first child, as BCB's examples).
        etree.SubElement(root, f"{{{DS_NS}}}Signature", Id="placeholder", nsmap={"ds": DS_NS})
    return root


def _header(root: etree._Element, correlation_id: str, now: datetime) -> None:
    _sub(root, "ResponseTime", format_time(now))
    _sub(root, "CorrelationId", correlation_id)


def to_bytes(root: etree._Element) -> bytes:
    """A document as UTF-8 bytes with an XML declaration."""
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def parse_body(data: bytes, what: str) -> etree._Element:
    """Parse XML bytes (hardened parser).

    Raises:
        DictResponseInvalid: not well-formed XML.
    """
    try:
        return etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise DictResponseInvalid(f"{what}: the body is not well-formed XML (line {exc.lineno})") from None


def validate(root: etree._Element, what: str, expected_root: str | None = None) -> None:
    """Check a document against the XSD (and its root element when given).

    Raises:
        DictResponseInvalid: another root element, or a schema violation (element path and rule named,
            no value).
    """
    if expected_root is not None and root.tag != expected_root:
        raise DictResponseInvalid(f"{what}: expected a <{expected_root}> document, got <{root.tag}>")
    schema = _schema()
    if not schema.validate(root):
        error = schema.error_log.last_error
        where = error.path if error is not None else "?"
        rule = error.type_name if error is not None else "?"
        raise DictResponseInvalid(f"{what}: the body violates the DICT schema at {where} ({rule})")


def _text(node: etree._Element, path: str) -> str:
    found = node.findtext(path)
    if found is None:
        raise DictResponseInvalid(f"<{node.tag}> has no <{path}>")
    return found


def _opt(node: etree._Element, path: str) -> str | None:
    return node.findtext(path)


# ---------------------------------------------------------------------- signatures


class XmlSigner:
    """Signs documents with an enveloped XML digital signature (signxml).

    Args:
        key_pem: PEM private key of the signing certificate (RSA or EC).
        cert_pem: PEM signing certificate (chain), put in ``KeyInfo/X509Data``.
    """

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        # Loaded once: signxml would parse (and, for RSA, validate: ~0.1 s) a PEM key on every signature.
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):  # the signature method is RSA-SHA256
            raise ValueError(f"the XML signing key must be an RSA key, not {type(key).__name__}")
        self._key = key
        self._cert = cert_pem.decode("ascii")
        self._signer = XMLSigner(method=SignatureConstructionMethod.enveloped,
                                 signature_algorithm=SignatureMethod.RSA_SHA256,
                                 digest_algorithm=DigestAlgorithm.SHA256,
                                 c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)
        self._signer.namespaces = {"ds": DS_NS}

    @classmethod
    def from_files(cls, key_path: str | Path, cert_path: str | Path) -> XmlSigner:
        """Read the key and certificate from PEM files.

        Raises:
            OSError: a file cannot be read.
        """
        return cls(Path(key_path).read_bytes(), Path(cert_path).read_bytes())

    def sign(self, root: etree._Element) -> bytes:
        """The signed document as bytes (``root`` must hold a signature placeholder or none)."""
        signed = self._signer.sign(root, key=self._key, cert=self._cert)
        return to_bytes(signed)


class XmlVerifier:
    """Verifies the enveloped signature of a document against a trusted CA (signxml).

    The signing certificate travels in ``KeyInfo``; it must chain to ``ca_pem_path``, be valid now
    (not expired) and allow digitalSignature. Exactly one reference, covering the whole document.

    Args:
        ca_pem_path: PEM file of the CA(s) that sign the other side's signing certificates.
    """

    def __init__(self, ca_pem_path: str | Path) -> None:
        self.ca_pem_path = str(ca_pem_path)
        # Reading it now makes a wrong path a start-up error rather than a per-call one.
        x509.load_pem_x509_certificates(Path(ca_pem_path).read_bytes())

    def verify(self, data: bytes, what: str) -> etree._Element:
        """The signed content of a document (signature removed), after checking its signature.

        Raises:
            DictSignatureInvalid: no signature, a signature that does not verify (content changed,
                another key), or a signing certificate that is expired or not from the trusted CA.
        """
        try:
            result = XMLVerifier().verify(data, ca_pem_file=self.ca_pem_path, expect_references=1)
        except InvalidCertificate as exc:
            raise DictSignatureInvalid(f"{what}: the signing certificate is not trusted ({_short(exc)}); "
                                       "check the DICT's signing CA (expired or from another CA)") from None
        except (InvalidSignature, InvalidDigest) as exc:
            raise DictSignatureInvalid(f"{what}: the XML signature does not verify ({_short(exc)}); "
                                       "the content was changed or signed with another key") from None
        except InvalidInput as exc:
            raise DictSignatureInvalid(f"{what}: the document is not signed as the DICT API requires "
                                       f"({_short(exc)})") from None
        except etree.DocumentInvalid as exc:  # signxml checks the ds:Signature element against XML-DSig's schema
            raise DictSignatureInvalid(f"{what}: the ds:Signature element is malformed ({_short(exc)})") from None
        except etree.XMLSyntaxError as exc:
            raise DictResponseInvalid(f"{what}: the body is not well-formed XML (line {exc.lineno})") from None
        signed = result.signed_xml  # type: ignore[union-attr]
        if signed is None or signed.getparent() is not None:
            raise DictSignatureInvalid(f"{what}: the signature does not cover the whole document")
        return signed


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


# ---------------------------------------------------------------------- requests (participant side)


def sync_verification_request(participant: str, key_type: str, vsync: str) -> etree._Element:
    """``CreateSyncVerificationRequest`` with a signature placeholder (sign before sending)."""
    root = _root("CreateSyncVerificationRequest", signature_placeholder=True)
    sync = _sub(root, "SyncVerification")
    _sub(sync, "Participant", participant)
    _sub(sync, "KeyType", key_type)
    _sub(sync, "SyncVerifier", vsync.lower())
    return root


def cid_set_file_request(participant: str, key_type: str) -> etree._Element:
    """``CreateCidSetFileRequest`` with a signature placeholder (sign before sending)."""
    root = _root("CreateCidSetFileRequest", signature_placeholder=True)
    _sub(root, "Participant", participant)
    _sub(root, "KeyType", key_type)
    return root


# ---------------------------------------------------------------------- responses (DICT side)


@dataclass(frozen=True, slots=True)
class Policy:
    """A rate-limit policy as the DICT publishes it: a token bucket of ``capacity`` tokens refilled
    by ``refill_tokens`` every ``refill_period_s`` seconds, ``available_tokens`` in it now."""

    name: str
    capacity: int
    refill_tokens: int
    refill_period_s: int
    available_tokens: int


@dataclass(frozen=True, slots=True)
class Problem:
    """An RFC 7807 problem answered by the DICT; ``type_name`` is the last segment of its type."""

    status: int
    type_name: str
    title: str
    detail: str | None = None


def sync_verification_response(participant: str, key_type: str, vsync: str, verification_id: str,
                               result: Literal["OK", "NOK"], correlation_id: str, now: datetime) -> etree._Element:
    """``CreateSyncVerificationResponse`` (unsigned; the DICT signs it)."""
    root = _root("CreateSyncVerificationResponse", signature_placeholder=True)
    _header(root, correlation_id, now)
    sync = _sub(root, "SyncVerification")
    _sub(sync, "Participant", participant)
    _sub(sync, "KeyType", key_type)
    _sub(sync, "ParticipantSyncVerifier", vsync.lower())
    _sub(sync, "Id", verification_id)
    _sub(sync, "Result", result)
    return root


def cid_set_file_response(tag: Literal["CreateCidSetFileResponse", "GetCidSetFileResponse"], file_id: int,
                          status: str, participant: str, key_type: str, requested_at: datetime,
                          correlation_id: str, now: datetime, *, created_at: datetime | None = None,
                          url: str | None = None, byte_size: int | None = None,
                          sha256: str | None = None) -> etree._Element:
    """``CreateCidSetFileResponse`` / ``GetCidSetFileResponse`` (unsigned)."""
    root = _root(tag, signature_placeholder=True)
    _header(root, correlation_id, now)
    node = _sub(root, "CidSetFile")
    _sub(node, "Id", str(file_id))
    _sub(node, "Status", status)
    _sub(node, "Participant", participant)
    _sub(node, "KeyType", key_type)
    _sub(node, "RequestTime", format_time(requested_at))
    if created_at is not None:
        _sub(node, "CreationTime", format_time(created_at))
    if url is not None:
        _sub(node, "Url", url)
    if byte_size is not None:
        _sub(node, "Bytes", str(byte_size))
    if sha256 is not None:
        _sub(node, "Sha256", sha256)
    return root


def list_cid_set_events_response(participant: str, key_type: str, events: list[tuple[str, str, int]],
                                 has_more: bool, vsync_start: str | None, vsync_end: str | None,
                                 correlation_id: str, now: datetime, *, start: datetime | None = None,
                                 end: datetime | None = None) -> etree._Element:
    """``ListCidSetEventsResponse`` (unsigned); ``events`` are ``(type, cid, epoch ms)``."""
    root = _root("ListCidSetEventsResponse", signature_placeholder=True)
    _header(root, correlation_id, now)
    _sub(root, "HasMoreElements", "true" if has_more else "false")
    _sub(root, "Participant", participant)
    _sub(root, "KeyType", key_type)
    if start is not None:
        _sub(root, "StartTime", format_time(start))
    if end is not None:
        _sub(root, "EndTime", format_time(end))
    if vsync_start is not None:
        _sub(root, "SyncVerifierStart", vsync_start)
    if vsync_end is not None:
        _sub(root, "SyncVerifierEnd", vsync_end)
    node = _sub(root, "CidSetEvents")
    for kind, cid, at_ms in events:
        event = _sub(node, "CidSetEvent")
        _sub(event, "Type", kind)
        _sub(event, "Cid", cid)
        _sub(event, "Timestamp", format_ms(at_ms))
    return root


def entry_by_cid_response(entry: Entry, cid: str, correlation_id: str, now: datetime) -> etree._Element:
    """``GetEntryByCidResponse`` (unsigned); every hashed string is written unchanged."""
    root = _root("GetEntryByCidResponse", signature_placeholder=True)
    _header(root, correlation_id, now)
    _sub(root, "Cid", cid)
    node = _sub(root, "Entry")
    _sub(node, "Key", entry.key)
    _sub(node, "KeyType", entry.key_type)
    account = _sub(node, "Account")
    _sub(account, "Participant", entry.participant)
    if entry.branch is not None:
        _sub(account, "Branch", entry.branch)
    _sub(account, "AccountNumber", entry.account_number)
    _sub(account, "AccountType", entry.account_type)
    if entry.opening_date:
        _sub(account, "OpeningDate", format_time(parse_time(entry.opening_date)))
    owner = _sub(node, "Owner")
    _sub(owner, "Type", entry.owner_type)
    _sub(owner, "TaxIdNumber", entry.owner_tax_id)
    _sub(owner, "Name", entry.owner_name)
    if entry.owner_trade_name is not None:
        _sub(owner, "TradeName", entry.owner_trade_name)
    _sub(root, "RequestId", entry.request_id)
    return root


def policies_response(policies: list[Policy], correlation_id: str, now: datetime,
                      category: str = "A") -> etree._Element:
    """``ListPoliciesResponse`` (unsigned)."""
    root = _root("ListPoliciesResponse", signature_placeholder=True)
    _sub(root, "CorrelationId", correlation_id)
    _sub(root, "ResponseTime", format_time(now))
    _sub(root, "Category", category)
    node = _sub(root, "Policies")
    for policy in policies:
        item = _sub(node, "Policy")
        _sub(item, "AvailableTokens", str(policy.available_tokens))
        _sub(item, "Capacity", str(policy.capacity))
        _sub(item, "RefillTokens", str(policy.refill_tokens))
        _sub(item, "RefillPeriodSec", str(policy.refill_period_s))
        _sub(item, "Name", policy.name)
    return root


def problem_document(status: int, type_name: str, title: str, detail: str | None = None) -> bytes:
    """An RFC 7807 problem in XML, as the DICT answers errors."""
    root = etree.Element(f"{{{PROBLEM_NS}}}problem", nsmap={None: PROBLEM_NS})
    for tag, text in (("type", PROBLEM_TYPE_PREFIX + type_name), ("title", title), ("status", str(status)),
                      ("detail", detail)):
        if text is not None:
            etree.SubElement(root, f"{{{PROBLEM_NS}}}{tag}").text = text
    return to_bytes(root)


# ---------------------------------------------------------------------- parsers (of verified documents)


def parse_sync_verification(root: etree._Element) -> VerifyResult:
    """A verified ``CreateSyncVerificationResponse`` as a :class:`VerifyResult`."""
    sync = root.find("SyncVerification")
    assert sync is not None  # the schema requires it
    result = _text(sync, "Result")
    if result not in ("OK", "NOK"):
        raise DictResponseInvalid("CreateSyncVerificationResponse: Result is neither OK nor NOK")
    return VerifyResult(result, _text(sync, "Id"), parse_time(_text(root, "ResponseTime")))  # type: ignore[arg-type]


def parse_cid_set_file(root: etree._Element) -> CidFileStatus:
    """A verified ``CreateCidSetFileResponse``/``GetCidSetFileResponse`` as a :class:`CidFileStatus`.

    Raises:
        DictResponseInvalid: an AVAILABLE file without URL, size or SHA-256.
    """
    node = root.find("CidSetFile")
    assert node is not None
    status = _text(node, "Status")
    url, size, sha = _opt(node, "Url"), _opt(node, "Bytes"), _opt(node, "Sha256")
    if status == "AVAILABLE" and (url is None or size is None or sha is None):
        raise DictResponseInvalid(f"{root.tag}: an AVAILABLE CID file needs Url, Bytes and Sha256")
    available = status == "AVAILABLE"
    return CidFileStatus(
        job_id=_text(node, "Id"), status=status,  # type: ignore[arg-type]
        url=url if available else None, byte_size=int(size) if available and size else None,
        sha256=normalise_sha256(sha) if available and sha else None,
        participant=_text(node, "Participant"), key_type=_text(node, "KeyType"),
        requested_at=parse_time(_text(node, "RequestTime")))


def parse_cid_set_events(root: etree._Element) -> CidEventsPage:
    """A verified ``ListCidSetEventsResponse`` as a :class:`CidEventsPage` (hex lower-cased).

    ``SyncVerifierStart``/``SyncVerifierEnd`` are read as the VSync after the page's first and last
    event (DESIGN 2.6).

    Raises:
        DictResponseInvalid: events out of ascending time order.
    """
    events = []
    for node in root.iterfind("CidSetEvents/CidSetEvent"):
        kind = _text(node, "Type")
        events.append(CidEvent(_text(node, "Cid").lower(), kind, parse_time(_text(node, "Timestamp"))))  # type: ignore[arg-type]
    if any(b.timestamp < a.timestamp for a, b in zip(events, events[1:], strict=False)):
        raise DictResponseInvalid("ListCidSetEventsResponse: events are not in ascending Timestamp order")
    start, end = _opt(root, "SyncVerifierStart"), _opt(root, "SyncVerifierEnd")
    return CidEventsPage(events, _text(root, "HasMoreElements").strip() in ("true", "1"),
                         start.lower() if start else None, end.lower() if end else None)


def parse_entry_by_cid(root: etree._Element) -> tuple[str, Entry]:
    """A verified ``GetEntryByCidResponse`` as ``(cid, entry)``; strings kept exactly as sent."""
    node = root.find("Entry")
    assert node is not None
    account, owner = node.find("Account"), node.find("Owner")
    assert account is not None and owner is not None
    opening = _opt(account, "OpeningDate")
    entry = Entry(
        key=_text(node, "Key"), key_type=_text(node, "KeyType"), request_id=_text(root, "RequestId").lower(),
        participant=_text(account, "Participant"), branch=_opt(account, "Branch"),
        account_number=_text(account, "AccountNumber"), account_type=_text(account, "AccountType"),
        owner_type=_text(owner, "Type"), owner_tax_id=_text(owner, "TaxIdNumber"), owner_name=_text(owner, "Name"),
        owner_trade_name=_opt(owner, "TradeName"),
        opening_date=format_time(parse_time(opening)) if opening else None)
    return _text(root, "Cid").lower(), entry


def parse_policies(root: etree._Element) -> list[Policy]:
    """A verified ``ListPoliciesResponse`` as its policies."""
    return [Policy(name=_text(p, "Name"), capacity=int(_text(p, "Capacity")),
                   refill_tokens=int(_text(p, "RefillTokens")), refill_period_s=int(_text(p, "RefillPeriodSec")),
                   available_tokens=int(_text(p, "AvailableTokens")))
            for p in root.iterfind("Policies/Policy")]


def parse_problem(data: bytes, status: int) -> Problem:
    """The DICT's problem body (XML RFC 7807) — or a stand-in when the body is not one.

    Never raises: an error answer without a readable problem still maps by its HTTP status.
    """
    try:
        root = etree.fromstring(data, _PARSER) if data else None
    except etree.XMLSyntaxError:
        root = None
    if root is None or etree.QName(root).localname != "problem":
        return Problem(status, "", f"HTTP {status}")
    ns = {"p": PROBLEM_NS} if etree.QName(root).namespace == PROBLEM_NS else None

    def field(name: str) -> str | None:
        return root.findtext(f"p:{name}", namespaces=ns) if ns else root.findtext(name)

    type_uri = field("type") or ""
    return Problem(status, type_uri.rsplit("/", 1)[-1], field("title") or f"HTTP {status}", field("detail"))
