"""Bearer tokens with scopes (vsync_stream.auth) and the masking of personal data (domain.masking)."""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsync_stream import auth
from vsync_stream.auth import (
    DEFAULT_SCOPES,
    MIN_TOKEN_CHARS,
    SCOPES_HEADER,
    Authorizer,
    Scope,
    bearer_token,
    configured_grants,
    operate_tokens,
    parse_api_tokens,
    parse_scopes_header,
    parse_tokens_file,
)
from vsync_stream.domain.masking import mask_cnpj, mask_cpf, mask_email, mask_key, mask_name, mask_phone, mask_tax_id
from vsync_stream.errors import ConfigurationError
from vsync_stream.settings import Settings

T1 = "tok1-aaaaaaaaaaaaaaaa"
T2 = "tok2-bbbbbbbbbbbbbbbb"
T3 = "tok3-cccccccccccccccc"
CLUSTER = "cluster-dddddddddddddddd"

# Token alphabet for property tests: RFC 6750 b64token characters without the '=' separator.
TOKEN_CHARS = string.ascii_letters + string.digits + "-._~/"
tokens = st.text(TOKEN_CHARS, min_size=8, max_size=48)


@pytest.fixture(autouse=True)
def _no_vsync_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings built here must not pick up the developer's or the stack's VSYNC_* variables."""
    import os

    for name in [n for n in os.environ if n.startswith("VSYNC_")]:
        monkeypatch.delenv(name)
    yield


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- parsing -------------------------------------------------------------------------------------

def test_scope_names_are_the_documented_ones() -> None:
    assert [s.value for s in Scope] == ["operate", "entries", "pii", "cluster"]
    assert DEFAULT_SCOPES == {Scope.OPERATE, Scope.ENTRIES}


def test_env_items_are_bare_tokens_or_tokens_with_plus_separated_scopes() -> None:
    grants = parse_api_tokens([T1, f"{T2}=operate+entries+pii", f"{T3}=ENTRIES", "padded-token-aaaaaaa=="])
    assert [(g.token, g.scopes) for g in grants] == [
        (T1, DEFAULT_SCOPES),
        (T2, {Scope.OPERATE, Scope.ENTRIES, Scope.PII}),
        (T3, {Scope.ENTRIES}),
        ("padded-token-aaaaaaa==", DEFAULT_SCOPES),  # base64 padding is part of the token
    ]
    assert parse_api_tokens(["padded-token-aaaaaa==pii"])[0].token == "padded-token-aaaaaa="
    assert grants[1].source == "VSYNC_API_TOKENS item 2"


def test_tokens_file_lines_with_comments_blanks_and_comma_separated_scopes() -> None:
    text = (f"# operators\n\n{T1}\n  {T2}\toperate, pii  # night shift\n{T3} entries,\n"
            f"{CLUSTER}   # a comment, default scopes\n")
    grants = parse_tokens_file(text, "tokens.txt")
    assert [(g.token, g.scopes) for g in grants] == [
        (T1, DEFAULT_SCOPES), (T2, {Scope.OPERATE, Scope.PII}), (T3, {Scope.ENTRIES}), (CLUSTER, DEFAULT_SCOPES)]
    assert [g.source for g in grants] == ["tokens.txt line 3", "tokens.txt line 4", "tokens.txt line 5",
                                         "tokens.txt line 6"]


@pytest.mark.parametrize(("items", "expected"), [
    ([f"{T1}=opreate"], "VSYNC_API_TOKENS item 1: its 1st scope is not a known scope"),
    ([T1, f"{T2}=operate+root"], "VSYNC_API_TOKENS item 2: its 2nd scope is not a known scope"),
    ([f"{T1}=cluster"], "the cluster scope is granted only to VSYNC_CLUSTER_TOKEN"),
    (["=operate"], "VSYNC_API_TOKENS item 1 has an empty token"),
    (["short"], f"needs at least {MIN_TOKEN_CHARS} characters"),
    ([f"{T1}=+"], "lists no scope"),
    (["tøken-with-non-ascii-chars"], "printable ASCII without spaces"),
])
def test_bad_env_items_are_configuration_errors_that_say_what_is_wrong(items: list[str], expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected) as caught:
        parse_api_tokens(items)
    for item in items:
        token = item.partition("=")[0]
        if len(token) >= 8:
            assert token not in str(caught.value)


def test_bad_file_lines_name_the_line() -> None:
    with pytest.raises(ConfigurationError, match=r"tokens\.txt line 3: its 2nd scope") as caught:
        parse_tokens_file(f"# c\n{T1}\n{T2} operate,superuser\n", "tokens.txt")
    assert T2 not in str(caught.value)
    with pytest.raises(ConfigurationError, match="line 1: a bearer token needs at least 16"):
        parse_tokens_file("abc operate\n", "tokens.txt")


# Tokens marked so that no error message can contain one by chance (hypothesis once drew
# "VSYNC_CLUSTER_TO", which the cluster-scope message names).
marked_tokens = tokens.map(lambda t: f"tok~{t}")


@given(token=marked_tokens, scope=st.text(string.ascii_lowercase, min_size=1, max_size=12))
def test_no_configuration_error_contains_the_token(token: str, scope: str) -> None:
    candidates = [[f"{token}={scope}"], [f"{token}=operate+{scope}"], [token], [f"{token}=cluster"]]
    for items in candidates:
        try:
            parse_api_tokens(items)
        except ConfigurationError as exc:
            assert token not in str(exc)
        try:
            parse_tokens_file(items[0].replace("=", " ").replace("+", ","), "f")
        except ConfigurationError as exc:
            assert token not in str(exc)
    for cluster in (token, f"{token} "):
        try:
            Authorizer(parse_api_tokens([T1]), cluster)
        except ConfigurationError as exc:
            assert token not in str(exc)


def test_settings_sources_env_and_file_and_the_old_tokens_list(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{T3} entries,pii\n")
    settings = Settings(api_tokens=f"{T1},{T2}=entries", api_tokens_file=path)
    assert [(g.token, g.scopes) for g in configured_grants(settings)] == [
        (T1, DEFAULT_SCOPES), (T2, {Scope.ENTRIES}), (T3, {Scope.ENTRIES, Scope.PII})]
    # operate_tokens() (what the CLI sends to a worker) keeps the tokens that may operate.
    assert operate_tokens(settings) == [T1]
    with pytest.raises(ConfigurationError, match="cannot read VSYNC_API_TOKENS_FILE"):
        configured_grants(Settings(api_tokens_file=tmp_path / "missing"))


def test_settings_defaults_for_the_new_security_fields() -> None:
    settings = Settings()
    assert settings.cluster_token is None
    assert settings.max_request_bytes == 65536
    assert Authorizer.from_settings(settings).grants == ()


# -- authorising requests ------------------------------------------------------------------------

def authorizer() -> Authorizer:
    return Authorizer(parse_api_tokens([T1, f"{T2}=entries", f"{T2}=pii", f"{T3}=entries+pii"]), CLUSTER)


def test_scopes_of_a_request() -> None:
    a = authorizer()
    assert a.scopes(bearer(T1)) == DEFAULT_SCOPES
    assert a.scopes(bearer(T2)) == {Scope.ENTRIES, Scope.PII}  # a token listed twice: the union
    assert a.scopes({"authorization": f"bearer  {T3} "}) == {Scope.ENTRIES, Scope.PII}  # any case, spaces
    assert a.scopes(bearer(CLUSTER)) == {Scope.CLUSTER}
    assert a.scopes(bearer("wrong-token-xxxxxxxxx")) == frozenset()
    assert a.scopes(bearer(T1[:-1])) == frozenset()  # a prefix is no match
    assert a.scopes({}) == frozenset()
    assert a.scopes({"Authorization": f"Basic {T1}"}) == frozenset()
    assert a.scopes({"Authorization": "Bearer"}) == frozenset()
    assert a.allows(bearer(T1), Scope.OPERATE) and not a.allows(bearer(T1), Scope.PII)


def test_every_configured_token_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    a = authorizer()
    calls: list[tuple[bytes, bytes]] = []

    def counting(x: bytes, y: bytes) -> bool:
        calls.append((x, y))
        return x == y

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for token in (T1, CLUSTER, "no-such-token-xxxxxxx"):
        calls.clear()
        a.scopes(bearer(token))
        assert len(calls) == len(a.grants) == 5  # the first token matched T1, yet all five were compared
        assert all(isinstance(x, bytes) and isinstance(y, bytes) for x, y in calls)


def test_forwarded_scopes_are_believed_only_with_the_cluster_token() -> None:
    a = authorizer()
    forwarded = {**bearer(CLUSTER), SCOPES_HEADER: "entries,pii"}
    assert a.effective_scopes(forwarded) == {Scope.CLUSTER, Scope.ENTRIES, Scope.PII}
    assert a.effective_scopes({**bearer(CLUSTER), SCOPES_HEADER: ""}) == {Scope.CLUSTER}
    assert a.effective_scopes(bearer(CLUSTER)) == {Scope.CLUSTER}
    # An API token cannot raise itself: the header is ignored.
    assert a.effective_scopes({**bearer(T1), SCOPES_HEADER: "pii,cluster"}) == DEFAULT_SCOPES
    assert a.effective_scopes({SCOPES_HEADER: "operate"}) == frozenset()
    # Lower-case header names (a plain dict) work too; unknown names grant nothing.
    assert a.effective_scopes({"authorization": f"Bearer {CLUSTER}", "x-vsync-scopes": "operate, future"}) == {
        Scope.CLUSTER, Scope.OPERATE}


def test_cluster_headers_carry_the_callers_scopes_to_the_peer() -> None:
    a = authorizer()
    headers = a.cluster_headers({Scope.ENTRIES, Scope.CLUSTER})
    assert headers[SCOPES_HEADER] == "entries"
    assert a.effective_scopes(headers) == {Scope.CLUSTER, Scope.ENTRIES}
    with pytest.raises(ConfigurationError, match="VSYNC_CLUSTER_TOKEN"):
        Authorizer(parse_api_tokens([T1])).cluster_headers({Scope.ENTRIES})


def test_the_cluster_token_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="must differ from every API token") as caught:
        Authorizer(parse_api_tokens([T1]), T1)
    assert T1 not in str(caught.value)
    with pytest.raises(ConfigurationError, match="VSYNC_CLUSTER_TOKEN: a bearer token needs at least 16"):
        Authorizer([], "short")
    settings = Settings(cluster_token=CLUSTER, api_tokens=T1)
    assert Authorizer.from_settings(settings).scopes(bearer(CLUSTER)) == {Scope.CLUSTER}


def test_no_repr_shows_a_token() -> None:
    a = authorizer()
    assert T1 not in repr(a) and CLUSTER not in repr(a)
    assert all(g.token not in repr(g) for g in a.grants)


def test_bearer_token_and_scopes_header_parsing() -> None:
    assert bearer_token({"Authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"Authorization": "Token abc"}) is None
    assert parse_scopes_header(" Operate ,pii,,nonsense") == {Scope.OPERATE, Scope.PII}


# -- masking -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("key_type", "key", "masked"), [
    ("CPF", "12345678909", "***.456.789-**"),
    ("CPF", "123.456.789-09", "***.456.789-**"),
    ("CPF", "1234567890", "***"),  # not 11 digits: fully masked
    ("CPF", "12345678909x", "***"),
    ("CNPJ", "11222333000181", "11.222.333/****-**"),
    ("CNPJ", "11.222.333/0001-81", "11.222.333/****-**"),
    ("CNPJ", "1122233300018", "***"),
    ("PHONE", "+5511987654321", "+55*******4321"),
    ("PHONE", "+14155550123", "+1******0123"),
    ("PHONE", "+351912345678", "+351*****5678"),
    ("PHONE", "+5512", "+55**"),
    ("PHONE", "5511987654321", "***"),
    ("EMAIL", "fulano@example.com.br", "f***@example.com.br"),
    ("EMAIL", "a@b.co", "a***@b.co"),
    ("EMAIL", "no-at-sign", "***"),
    ("EVP", "123e4567-e89b-42d3-a456-426614174000", "123e4567-e89b-42d3-a456-426614174000"),
    ("BOGUS", "12345678909", "***"),
])
def test_mask_key(key_type: str, key: str, masked: str) -> None:
    assert mask_key(key_type, key) == masked


def test_mask_name_and_tax_id() -> None:
    assert mask_name("João Silva") == "J***"
    assert mask_name("  Ana ") == "A***"
    assert mask_name(None) == "" and mask_name("  ") == ""
    assert mask_tax_id("11122233300") == "***.222.333-**"
    assert mask_tax_id("11222333000181") == "11.222.333/****-**"
    assert mask_tax_id("123") == "***"


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


@given(st.text("0123456789", min_size=11, max_size=11))
def test_a_masked_cpf_shows_only_digits_4_to_9(cpf: str) -> None:
    for shown in (mask_cpf(cpf), mask_key("CPF", cpf), mask_tax_id(cpf)):
        assert _digits(shown) == cpf[3:9]
        assert cpf not in shown


@given(st.text("0123456789", min_size=14, max_size=14))
def test_a_masked_cnpj_shows_only_the_root(cnpj: str) -> None:
    shown = mask_cnpj(cnpj)
    assert _digits(shown) == cnpj[:8]
    assert cnpj not in shown and mask_tax_id(cnpj) == shown


@given(st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True))
def test_a_masked_phone_keeps_country_code_and_last_four(phone: str) -> None:
    shown = mask_phone(phone)
    assert shown.startswith("+") and shown.endswith(phone[-4:]) and len(shown) == len(phone)
    assert 1 + 4 <= len(_digits(shown)) <= 3 + 4
    assert phone not in shown


@given(st.emails())
def test_a_masked_email_keeps_first_char_and_domain(email: str) -> None:
    local, _, domain = email.rpartition("@")
    assert mask_email(email) == f"{local[0]}***@{domain}"


@given(st.text(min_size=1).filter(lambda s: s.strip() != ""))
def test_a_masked_name_is_an_initial(name: str) -> None:
    shown = mask_name(name)
    assert shown == name.strip()[0] + "***"
