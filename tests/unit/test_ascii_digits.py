"""Keys, ISPBs and tax ids take ASCII digits 0-9 only (issue #14, item 6).

Python's ``\\d`` and ``str.isdigit`` accept every Unicode decimal digit, and ``int()`` reads them as
0-9: a CPF written with an Arabic-Indic digit passes its check digits and would be folded with a
CID the DICT never holds. Every place digits are checked must refuse them with a reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from click.testing import CliRunner

from tests.factories import event_doc
from vsync_stream.cli import cid_command
from vsync_stream.domain.events import change_of, decode_change, decode_event, encode_change
from vsync_stream.domain.keys import KeyType, cpf_is_valid, is_ascii_digits, is_ispb, key_problem
from vsync_stream.errors import InvalidEvent
from vsync_stream.settings import Settings
from vsync_stream.simulator.population import PopulationGenerator

ARABIC_5 = "\u0665"  # ARABIC-INDIC DIGIT FIVE: int() reads it as 5
FULLWIDTH_1 = "\uff11"  # FULLWIDTH DIGIT ONE
DEVANAGARI_2 = "\u0968"
# 52998224725 is a valid CPF; with its first digit in Arabic-Indic the modulo-11 sums are unchanged.
CPF_ARABIC = ARABIC_5 + "2998224725"
CNPJ_FULLWIDTH = FULLWIDTH_1 + "1222333000181"
PHONE_DEVANAGARI = "+55119876543" + DEVANAGARI_2 + "1"


def test_the_unicode_digits_would_pass_the_check_digits() -> None:
    # Why the rule matters: the check-digit arithmetic alone cannot see the difference.
    assert int(ARABIC_5) == 5 and CPF_ARABIC.isdigit()
    assert not cpf_is_valid(CPF_ARABIC)


@pytest.mark.parametrize(("key_type", "key"), [
    (KeyType.CPF, CPF_ARABIC), (KeyType.CNPJ, CNPJ_FULLWIDTH), (KeyType.PHONE, PHONE_DEVANAGARI),
    (KeyType.CPF, "5299822472" + FULLWIDTH_1),
])
def test_key_problem_names_the_non_ascii_digit(key_type: KeyType, key: str) -> None:
    assert key_problem(key_type, key) == (
        "key_not_ascii", f"{key_type.value} key must use ASCII digits 0-9 only (found a non-ASCII character)")


@pytest.mark.parametrize(("code", "changes"), [
    ("key_not_ascii", {"entry__keyType": "CPF", "entry__key": CPF_ARABIC}),
    ("key_not_ascii", {"entry__keyType": "CNPJ", "entry__key": CNPJ_FULLWIDTH,
                       "entry__owner__type": "LEGAL_PERSON", "entry__owner__taxIdNumber": "11222333000181"}),
    ("key_not_ascii", {"entry__key": PHONE_DEVANAGARI}),
    ("participant_not_8_digits", {"entry__account__participant": "1234567" + ARABIC_5}),
    ("tax_id_invalid", {"entry__owner__taxIdNumber": "1112223330" + FULLWIDTH_1}),
    ("account_number_invalid", {"entry__account__accountNumber": "000765432" + ARABIC_5}),
    ("branch_invalid", {"entry__account__branch": "000" + FULLWIDTH_1}),
])
def test_the_adapter_decoder_dead_letters_unicode_digits_with_their_reason(code: str, changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event(orjson.dumps(event_doc(**changes)))
    assert info.value.code == code and info.value.reason


def test_a_delete_with_a_unicode_digit_key_is_refused_too() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event(orjson.dumps(event_doc(action="key.deleted", entry__keyType="CPF", entry__key=CPF_ARABIC)))
    assert info.value.code == "key_not_ascii"


def test_the_fold_decoder_refuses_a_compact_record_with_a_unicode_digit_participant() -> None:
    change = change_of(decode_event(orjson.dumps(event_doc())))
    assert decode_change(encode_change(change)) == change
    forged = encode_change(change._replace(participant="1234567" + ARABIC_5))
    with pytest.raises(InvalidEvent) as info:
        decode_change(forged)
    assert info.value.code == "malformed_record"


def test_helpers() -> None:
    assert is_ispb("00000208") and not is_ispb("0000020" + ARABIC_5) and not is_ispb("00000208\n")
    assert not is_ispb(208) and not is_ispb("0000208")
    assert is_ascii_digits("0123", 4) and not is_ascii_digits("012" + FULLWIDTH_1) and not is_ascii_digits("")


def test_settings_refuse_a_unicode_digit_participant() -> None:
    with pytest.raises(ValueError, match="8-digit ISPB"):
        Settings(participants="1234567" + ARABIC_5)


def test_the_simulator_population_refuses_a_unicode_digit_participant() -> None:
    with pytest.raises(ValueError):
        PopulationGenerator(["1234567" + FULLWIDTH_1])


class _AbortingContext:
    """The one method of a gRPC servicer context the participant check uses."""

    code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise grpc.RpcError(details)


async def test_the_simulator_server_refuses_a_unicode_digit_participant() -> None:
    from vsync_stream.simulator.server import _participant

    context = _AbortingContext()
    assert await _participant("12345678", context) == "12345678"  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError):
        await _participant("1234567" + ARABIC_5, context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_cid_command_warns_about_a_unicode_digit_key(tmp_path: Path) -> None:
    path = tmp_path / "entry.json"
    path.write_bytes(orjson.dumps(event_doc(entry__keyType="CPF", entry__key=CPF_ARABIC)["entry"]))
    result = CliRunner().invoke(cid_command, [str(path)])
    assert result.exit_code == 0
    assert "key_not_ascii" in result.stderr


def test_web_integers_take_ascii_digits_only() -> None:
    from vsync_stream.web import _int

    assert _int("3", -1) == 3 and _int("-2") == -2
    for text in ("\u0663", "\uff13", " 3", "+3", "3_0", "", "-"):
        assert _int(text, -1) == -1, text
