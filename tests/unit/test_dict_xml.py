"""The DICT API's XML: BCB's own examples against the schema and parsers, build → sign → verify round
trips, every way a signature can fail, and the mapping of problems to errors and gRPC codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from lxml import etree

from vsync_stream.bridges import dict_xml as dx
from vsync_stream.bridges.bridge_server import grpc_status_of
from vsync_stream.bridges.dict_api import _map_problem, limits_from_policies
from vsync_stream.domain.entry import Entry
from vsync_stream.errors import (
    BridgeError,
    BridgeNotFound,
    BridgeUnavailable,
    DictResponseInvalid,
    DictSignatureInvalid,
    DictTlsError,
    RateLimited,
)
from vsync_stream.simulator.rest_pki import Authority, DictPki, make_dict_pki

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "bcb-dict-api"
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DictPki:
    return make_dict_pki(tmp_path_factory.mktemp("dict-pki"))


def example(name: str) -> etree._Element:
    """A BCB example without its empty ``<Signature></Signature>`` placeholder."""
    root = etree.fromstring((EXAMPLES / f"{name}.xml").read_bytes(), etree.XMLParser(remove_blank_text=True))
    for placeholder in root.findall("Signature"):
        root.remove(placeholder)
    return root


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.xml")))
def test_bcb_examples_are_valid_under_the_schema(name: str) -> None:
    dx.validate(example(name), name, name)


def test_bcb_examples_parse_to_what_they_say() -> None:
    result = dx.parse_sync_verification(example("CreateSyncVerificationResponse"))
    assert (result.result, result.verification_id) == ("OK", "1234")
    file = dx.parse_cid_set_file(example("GetCidSetFileResponse"))
    assert (file.job_id, file.status, file.byte_size, file.key_type) == ("1234", "AVAILABLE", 3_200_000, "PHONE")
    assert file.sha256 == "f0e4c2f76c58916ec258f246851bea091d14d4247a2fc3e18694461b1816e13b"
    requested = dx.parse_cid_set_file(example("CreateCidSetFileResponse"))
    assert (requested.status, requested.url, requested.sha256) == ("REQUESTED", None, None)
    page = dx.parse_cid_set_events(example("ListCidSetEventsResponse"))
    assert [e.type for e in page.events] == ["ADDED", "REMOVED"] and page.has_more_elements
    assert page.events[1].timestamp == datetime(2020, 1, 10, 11, 11, 11, tzinfo=UTC)
    assert page.vsync_after_last == "a592f5fb5bef95a3ec8431ebaf609e1af1e4c1b46edb0475394c5595988c748c"
    cid, entry = dx.parse_entry_by_cid(example("GetEntryByCidResponse"))
    assert (entry.key, entry.owner_name, entry.branch, entry.owner_trade_name) == ("11122233300", "João Silva",
                                                                                   "0001", None)
    assert entry.request_id == "a946d533-7f22-42a5-9a9b-e87cd55c0f4d" and len(cid) == 64
    (policy,) = dx.parse_policies(example("ListPoliciesResponse"))
    assert policy.name == "ENTRIES_READ_PARTICIPANT_ANTISCAN"


def test_bcb_request_example_is_what_the_bridge_builds() -> None:
    ours = dx.sync_verification_request("12345678", "CPF",
                                        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    ours.remove(ours[0])  # the ds:Signature placeholder
    assert etree.tostring(ours) == etree.tostring(example("CreateSyncVerificationRequest"))
    file_request = dx.cid_set_file_request("12345678", "PHONE")
    file_request.remove(file_request[0])
    assert etree.tostring(file_request) == etree.tostring(example("CreateCidSetFileRequest"))


def test_a_schema_violation_names_the_element_not_the_value() -> None:
    root = example("GetEntryByCidResponse")
    root.find("Entry/KeyType").text = "SECRET-VALUE"  # type: ignore[union-attr]
    with pytest.raises(DictResponseInvalid, match="KeyType") as caught:
        dx.validate(root, "GetEntryByCid", "GetEntryByCidResponse")
    assert "SECRET-VALUE" not in str(caught.value)
    with pytest.raises(DictResponseInvalid, match="expected a <GetCidSetFileResponse>"):
        dx.validate(example("CreateCidSetFileResponse"), "x", "GetCidSetFileResponse")


def test_sign_and_verify_round_trip_keeps_every_field(pki: DictPki) -> None:
    entry = Entry(key="+5511987654321", key_type="PHONE", request_id="a946d533-7f22-42a5-9a9b-e87cd55c0f4d",
                  participant="00000208", branch=None, account_number="0007654321", account_type="TRAN",
                  owner_type="LEGAL_PERSON", owner_tax_id="11222333000181", owner_name="Ação & Cia <Ltda>",
                  owner_trade_name="Café", opening_date="2010-01-10T03:00:00.000Z")
    signer = dx.XmlSigner.from_files(pki.dict_signing_key, pki.dict_signing_cert)
    body = signer.sign(dx.entry_by_cid_response(entry, entry.cid, "c0ffee", NOW))
    signed = dx.XmlVerifier(pki.dict_ca.pem_path).verify(body, "GetEntryByCid")
    dx.validate(signed, "GetEntryByCid", "GetEntryByCidResponse")
    cid, parsed = dx.parse_entry_by_cid(signed)
    assert parsed == entry and cid == entry.cid == parsed.cid


def test_a_request_signed_by_the_participant_verifies_only_against_its_ca(pki: DictPki) -> None:
    signer = dx.XmlSigner.from_files(pki.participant_signing_key, pki.participant_signing_cert)
    body = signer.sign(dx.sync_verification_request("12345678", "EVP", "AB" * 32))
    signed = dx.XmlVerifier(pki.participant_ca.pem_path).verify(body, "request")
    assert signed.findtext("SyncVerification/SyncVerifier") == "ab" * 32
    with pytest.raises(DictSignatureInvalid, match="not trusted"):
        dx.XmlVerifier(pki.dict_ca.pem_path).verify(body, "request")


@pytest.mark.parametrize("fault", ["unsigned", "placeholder only", "content changed", "signature changed"])
def test_an_unsigned_or_altered_response_is_rejected(pki: DictPki, fault: str) -> None:
    document = dx.sync_verification_response("12345678", "CPF", "00" * 32, "1", "OK", "c0ffee", NOW)
    signer = dx.XmlSigner.from_files(pki.dict_signing_key, pki.dict_signing_cert)
    if fault == "unsigned":
        document.remove(document[0])
        body = dx.to_bytes(document)
    elif fault == "placeholder only":
        body = dx.to_bytes(document)
    elif fault == "content changed":
        body = signer.sign(document).replace(b"<Result>OK</Result>", b"<Result>NOK</Result>")
    else:
        signed = etree.fromstring(signer.sign(document))
        value = signed.find(f".//{{{dx.DS_NS}}}SignatureValue")
        assert value is not None and value.text
        value.text = ("A" if value.text[0] != "A" else "B") + value.text[1:]
        body = dx.to_bytes(signed)
    with pytest.raises(DictSignatureInvalid):
        dx.XmlVerifier(pki.dict_ca.pem_path).verify(body, "VerifySync")


def test_a_signature_moved_under_a_child_does_not_cover_the_document(pki: DictPki) -> None:
    # Wrapping: sign only the inner element, then present it inside a forged outer document.
    signer = dx.XmlSigner.from_files(pki.dict_signing_key, pki.dict_signing_cert)
    inner = etree.fromstring(signer.sign(dx.sync_verification_response("12345678", "CPF", "00" * 32, "1", "NOK",
                                                                       "c0ffee", NOW)))
    outer = etree.Element("Envelope")
    outer.append(inner)
    with pytest.raises(DictSignatureInvalid):
        dx.XmlVerifier(pki.dict_ca.pem_path).verify(dx.to_bytes(outer), "VerifySync")


def test_an_expired_or_foreign_signing_certificate_is_rejected(pki: DictPki, tmp_path: Path) -> None:
    document = dx.sync_verification_response("12345678", "CPF", "00" * 32, "1", "OK", "c0ffee", NOW)
    past = datetime.now(UTC) - timedelta(days=10)
    cert, key = pki.dict_ca.issue(tmp_path, "expired-signing", usage="signing", rsa_key=True,
                                  not_before=past, not_after=past + timedelta(days=1))
    expired = dx.XmlSigner.from_files(key, cert).sign(document)
    with pytest.raises(DictSignatureInvalid, match="not trusted"):
        dx.XmlVerifier(pki.dict_ca.pem_path).verify(expired, "VerifySync")
    rogue = Authority.create(tmp_path, "rogue-ca")
    cert, key = rogue.issue(tmp_path, "rogue-signing", usage="signing", rsa_key=True)
    document = dx.sync_verification_response("12345678", "CPF", "00" * 32, "1", "OK", "c0ffee", NOW)
    with pytest.raises(DictSignatureInvalid, match="not trusted"):
        dx.XmlVerifier(pki.dict_ca.pem_path).verify(dx.XmlSigner.from_files(key, cert).sign(document), "VerifySync")


def test_entities_are_not_expanded() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
            b"<ListPoliciesResponse>&b;</ListPoliciesResponse>")
    root = dx.parse_body(bomb, "x")
    assert "aaaaaaaaaa" not in (root.text or "")
    with pytest.raises(DictResponseInvalid, match="not well-formed"):
        dx.parse_body(b"<unclosed>", "x")


def test_problem_parsing_reads_bcb_problem_documents() -> None:
    body = dx.problem_document(429, "RateLimited", "Rate limited")
    assert dx.parse_problem(body, 429) == dx.Problem(429, "RateLimited", "Rate limited", None)
    assert dx.parse_problem(b"<html>busy</html>", 502) == dx.Problem(502, "", "HTTP 502")
    assert dx.parse_problem(b"", 503).title == "HTTP 503"


class _Response:
    """Just what the problem mapping reads of an aiohttp response."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status, self.headers = status, headers or {}


@pytest.mark.parametrize(("status", "type_name", "headers", "error_type", "code", "retriable"), [
    (429, "RateLimited", {"PI-RateLimit-ParticipantPolicy": "CIDS_EVENTS_LIST", "PI-RateLimit-ParticipantReset": "3"},
     RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    (503, "ServiceUnavailable", {"Retry-After": "5"}, BridgeUnavailable, grpc.StatusCode.UNAVAILABLE, True),
    (500, "InternalServerError", {}, BridgeUnavailable, grpc.StatusCode.UNAVAILABLE, True),
    (404, "NotFound", {}, BridgeNotFound, grpc.StatusCode.NOT_FOUND, False),
    (400, "BadRequest", {}, BridgeError, grpc.StatusCode.INVALID_ARGUMENT, False),
    (400, "RequestSignatureInvalid", {}, BridgeError, grpc.StatusCode.INVALID_ARGUMENT, False),
    (403, "Forbidden", {}, BridgeError, grpc.StatusCode.PERMISSION_DENIED, False),
])
def test_problems_map_to_errors_and_grpc_codes(status: int, type_name: str, headers: dict[str, str],
                                               error_type: type[BridgeError], code: grpc.StatusCode,
                                               retriable: bool) -> None:
    error = _map_problem(_Response(status, headers), dx.problem_document(status, type_name, "t"),  # type: ignore[arg-type]
                         "ListCidEvents")
    assert type(error) is error_type and error.retriable is retriable and error.http_status == status
    assert type_name in str(error)
    assert grpc_status_of(error) is code
    if status == 429:
        assert error.policy == "CIDS_EVENTS_LIST" and error.retry_after_s == 3.0
        assert "CIDS_EVENTS_LIST" in str(error)
    if status == 503:
        assert error.retry_after_s == 5.0


def test_a_429_without_headers_names_the_operations_policy() -> None:
    error = _map_problem(_Response(429), b"", "VerifySync")  # type: ignore[arg-type]
    assert isinstance(error, RateLimited) and error.policy == "SYNC_VERIFICATIONS_WRITE"


def test_untrusted_answers_and_tls_failures_are_not_retriable() -> None:
    for error in (DictSignatureInvalid("x"), DictResponseInvalid("x")):
        assert not error.retriable and grpc_status_of(error) is grpc.StatusCode.DATA_LOSS
    assert not DictTlsError("x").retriable and grpc_status_of(DictTlsError("x")) is grpc.StatusCode.INTERNAL


def test_bucket_shapes_come_from_the_published_policies() -> None:
    limits = limits_from_policies([
        dx.Policy("SYNC_VERIFICATIONS_WRITE", 25, 5, 60, 25), dx.Policy("CIDS_FILES_WRITE", 100, 20, 86_400, 3),
        dx.Policy("ENTRIES_READ", 120_000, 24_000, 60, 1), dx.Policy("CIDS_EVENTS_LIST", 0, 0, 0, 0)])
    assert set(limits) == {"VerifySync", "CreateCidFile"}
    assert limits["VerifySync"].capacity == 25 and limits["VerifySync"].refill_per_s == pytest.approx(5 / 60)
    assert limits["CreateCidFile"].refill_per_s == pytest.approx(20 / 86_400)


def test_times_are_written_in_utc_with_milliseconds() -> None:
    assert dx.format_time(datetime(2020, 1, 10, 7, 0, tzinfo=UTC) - timedelta(microseconds=1500)) == \
        "2020-01-10T06:59:59.998Z"
    assert dx.parse_time("2020-01-10T10:00:00Z") == datetime(2020, 1, 10, 10, tzinfo=UTC)
    with pytest.raises(ValueError):
        dx.format_time(datetime(2020, 1, 1))  # noqa: DTZ001 (naive on purpose)
