"""The DICT entry ("vínculo"): a Pix key bound to an account and its owner."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vsync_stream.domain.cid import compute_cid


class AccountType(StrEnum):
    """Account types accepted by the DICT."""

    CACC = "CACC"
    TRAN = "TRAN"
    SLRY = "SLRY"
    SVGS = "SVGS"


class OwnerType(StrEnum):
    """Owner kinds: a natural person (CPF) or a legal person (CNPJ)."""

    NATURAL_PERSON = "NATURAL_PERSON"
    LEGAL_PERSON = "LEGAL_PERSON"


@dataclass(frozen=True, slots=True)
class Entry:
    """One active entry as the DICT holds it; every string is kept exactly as received.

    ``participant`` is the ISPB (8 digits, leading zeros kept); ``branch`` and
    ``owner_trade_name`` may be None (hashed as the empty string).
    """

    key: str
    key_type: str
    request_id: str
    participant: str
    branch: str | None
    account_number: str
    account_type: str
    owner_type: str
    owner_tax_id: str
    owner_name: str
    owner_trade_name: str | None = None
    opening_date: str | None = None

    @property
    def cid(self) -> str:
        """The entry's CID, 64 lower-case hex chars (BCB DICT API, "Cálculo de CID")."""
        return compute_cid(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Entry:
        """Build an entry from the DICT-shaped ``entry`` object of the event contract (DESIGN 4.1).

        The object is assumed to be validated already (see ``vsync_stream.domain.events``).

        Raises:
            KeyError: a required field is missing.
        """
        account = doc["account"]
        owner = doc["owner"]
        return cls(
            key=doc["key"],
            key_type=doc["keyType"],
            request_id=doc["requestId"].lower(),
            participant=account["participant"],
            branch=account.get("branch"),
            account_number=account["accountNumber"],
            account_type=account["accountType"],
            owner_type=owner.get("type", OwnerType.NATURAL_PERSON),
            owner_tax_id=owner["taxIdNumber"],
            owner_name=owner["name"],
            owner_trade_name=owner.get("tradeName"),
            opening_date=account.get("openingDate"),
        )

    def to_json(self) -> dict[str, Any]:
        """The entry in the DICT's camelCase shape (the inverse of :meth:`from_json`)."""
        return {
            "key": self.key,
            "keyType": self.key_type,
            "requestId": self.request_id,
            "account": {
                "participant": self.participant,
                "branch": self.branch,
                "accountNumber": self.account_number,
                "accountType": self.account_type,
                "openingDate": self.opening_date,
            },
            "owner": {
                "type": self.owner_type,
                "taxIdNumber": self.owner_tax_id,
                "name": self.owner_name,
                "tradeName": self.owner_trade_name,
            },
        }
