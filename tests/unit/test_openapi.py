"""The worker's OpenAPI document (vsync_stream/openapi.yaml) is valid OpenAPI 3.1, ships with the
package, documents every route of the web view, and its schemas accept what the code answers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from vsync_stream.auth import Scope
from vsync_stream.bridges.audit_store import VerificationRecord
from vsync_stream.domain.vsync import VSyncLedger
from vsync_stream.reconciliation import Reconciliation

WEB = Path(__file__).resolve().parents[2] / "vsync_stream" / "web.py"
DOC_URI = "urn:vsync-stream:openapi"
CID = "28c06eb41c4dc9c3ae114831efcac7446c8747777fca8b145ecd31ff8480ae88"
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    text = resources.files("vsync_stream").joinpath("openapi.yaml").read_text("utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()
            if method in METHODS]


def schema_validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator of ``#/components/schemas/<name>`` (OpenAPI 3.1 schemas are 2020-12)."""
    resource: Resource[Any] = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)
    return Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=registry)


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_route_of_the_web_view_is_documented(doc: dict[str, Any]) -> None:
    def shape(path: str) -> str:
        return re.sub(r"\{[^}]+\}", "{}", path)

    routes = {shape(p) for p in re.findall(r"""app\.page\(\s*["']([^"']+)["']""", WEB.read_text("utf-8"))}
    documented = {shape(p) for p in doc["paths"]}
    assert routes, "no app.page(...) routes found in web.py"
    assert routes <= documented, f"routes of web.py missing from openapi.yaml: {sorted(routes - documented)}"


def test_scopes_auth_errors_and_retry_after(doc: dict[str, Any]) -> None:
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    known = {s.value for s in Scope}
    for path, method, op in operations(doc):
        where = f"{method.upper()} {path}"
        assert "security" in op, f"{where}: say which scope it needs, or security: [] for an open read"
        scopes = [s for requirement in op["security"] for s in requirement.get("bearerAuth", [])]
        assert set(scopes) <= known, where
        for scope in scopes:
            assert f"**`{scope}`**" in op.get("description", ""), f"{where}: the description must name scope {scope}"
        if scopes:
            assert {"401", "403"} <= set(op["responses"]), f"{where}: a token-protected operation answers 401 and 403"
        if method == "post" and path != "/internal/find-cids/{partition}":
            assert "413" in op["responses"], f"{where}: bodies over VSYNC_MAX_REQUEST_BYTES get 413"
        if path.startswith(("/internal/", "/entries/")):
            assert scopes, f"{where} must not be open"
    for name, response in doc["components"]["responses"].items():
        if name == "NotReady":
            assert "Retry-After" in response["headers"]
    assert doc["paths"]["/vsync"]["get"]["responses"]["503"] == {"$ref": "#/components/responses/NotReady"}
    assert doc["paths"]["/entries/{key}"]["get"]["responses"]["503"] == {"$ref": "#/components/responses/NotReady"}


def test_verification_records_match_the_schema(doc: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    record = VerificationRecord(round_id="r1", verification_id=None, participant="12345678", key_type="EVP",
                                vsync=CID, entries=3, result="NOK", error=None, trigger="web",
                                offsets={0: 17, 1: None}, started_at=now, finished_at=now)
    schema_validator(doc, "Verifications").validate({"verifications": [record.to_json()]})
    with pytest.raises(Exception, match="'MAYBE' is not one of"):
        schema_validator(doc, "Verification").validate({**record.to_json(), "result": "MAYBE"})


def test_reconciliation_runs_match_the_schema(doc: dict[str, Any]) -> None:
    run = Reconciliation(id="run-1", participant="12345678", key_type="CPF", trigger="web",
                         started_at=datetime.now(UTC), history=["starting"])
    schema_validator(doc, "Reconciliation").validate(run.to_json())
    run.finished_at, run.result, run.path = datetime.now(UTC), "OK", "full"
    schema_validator(doc, "Reconciliation").validate(run.to_json())


def test_the_partition_report_matches_the_schema(doc: dict[str, Any]) -> None:
    from vsync_stream.tables.entries import PartitionReport, PartitionState

    ledger = VSyncLedger()
    ledger.add("12345678", "EVP", CID)
    report = PartitionReport(generation=3, recovering=False,
                             partitions={0: PartitionState(ledger, 41), 1: PartitionState(VSyncLedger(), None)})
    schema_validator(doc, "PartitionReport").validate(report.to_json())


def test_an_entry_and_the_vsync_overview_match_the_schemas(doc: dict[str, Any]) -> None:
    entry = {"key": "***.456.789-**", "keyType": "CPF", "participant": "12345678", "cid": None, "active": False,
             "version": 17, "occurredAt": "2026-11-29T03:00:00.123000+00:00", "partition": 3,
             "servedBy": "http://127.0.0.1:16066"}
    schema_validator(doc, "Entry").validate(entry)
    schema_validator(doc, "Entry").validate({**entry, "cid": CID, "active": True, "version": None})
    row = {"participant": "12345678", "keyType": "EVP", "entries": 1, "vsync": CID,
           "lastVerification": {"result": "OK", "vsync": CID, "at": "2026-11-29T03:00:00+00:00"}}
    overview = {"vsync": [row, {**row, "lastVerification": None}], "offsets": {"0": 5, "1": None},
                "workers": ["http://127.0.0.1:16066"]}
    schema_validator(doc, "VsyncOverview").validate(overview)
    schema_validator(doc, "VsyncPair").validate({**row, "offsets": {"0": 5}})
    with pytest.raises(Exception, match="does not match"):
        schema_validator(doc, "VsyncRow").validate({**row, "vsync": CID.upper()})
