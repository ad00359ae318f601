"""Bearer-token authorisation of the web view: which scopes a request's token grants.

Tokens come from the settings (read once, when the worker is configured):

* ``VSYNC_API_TOKENS``: comma-separated items, each ``token`` (scopes ``operate`` and ``entries``)
  or ``token=scope+scope`` (e.g. ``…=operate+entries+pii``);
* ``VSYNC_API_TOKENS_FILE``: one token per line, optionally followed by whitespace and
  comma-separated scopes (default ``operate`` and ``entries``); ``#`` comment lines and blank lines
  are ignored;
* ``VSYNC_CLUSTER_TOKEN``: the secret the workers of one app id share for routed queries; it grants
  ``cluster`` only. A worker that forwards a request sends it with the original caller's scopes in
  the ``X-Vsync-Scopes`` header, which is believed only on a request carrying the cluster token
  (:meth:`Authorizer.effective_scopes`).

The supplied token is compared with every configured token in constant time and without an early
exit, so the time taken does not tell which token nearly matched. No message, log line or ``repr``
here contains a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from vsync_stream.errors import ConfigurationError

if TYPE_CHECKING:
    from vsync_stream.settings import Settings

__all__ = [
    "DEFAULT_SCOPES", "MIN_TOKEN_CHARS", "SCOPES_HEADER", "Authorizer", "Grant", "Scope", "bearer_token",
    "configured_grants", "operate_tokens", "parse_api_tokens", "parse_scopes_header", "parse_tokens_file",
]

MIN_TOKEN_CHARS = 16
SCOPES_HEADER = "X-Vsync-Scopes"
_TOKEN_HELP = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class Scope(StrEnum):
    """What a bearer token lets its holder do on the web view."""

    OPERATE = "operate"  # POST /verify, /reconcile, /ledger-check
    ENTRIES = "entries"  # read one entry (GET /entries/{key}), personal data masked
    PII = "pii"  # see personal data unmasked: CPF/CNPJ/PHONE/EMAIL keys, tax ids, names
    CLUSTER = "cluster"  # worker-to-worker internal endpoints (only VSYNC_CLUSTER_TOKEN has it)


DEFAULT_SCOPES: frozenset[Scope] = frozenset({Scope.OPERATE, Scope.ENTRIES})
_KNOWN = ", ".join(s.value for s in Scope if s is not Scope.CLUSTER)


@dataclass(frozen=True, slots=True)
class Grant:
    """One configured token and the scopes it grants.

    Attributes:
        source: where it was configured, e.g. ``VSYNC_API_TOKENS item 2`` (never the token).
        token: the token itself; left out of ``repr``.
        scopes: the scopes a request carrying it gets.
    """

    source: str
    token: str = field(repr=False)
    scopes: frozenset[Scope]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _check_token(token: str, source: str) -> None:
    if not token:
        raise ConfigurationError(f"{source} has an empty token; give the token itself (and its scopes after it)")
    if not all("\x21" <= ch <= "\x7e" for ch in token):
        raise ConfigurationError(f"{source}: a bearer token must be printable ASCII without spaces; {_TOKEN_HELP}")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigurationError(f"{source}: a bearer token needs at least {MIN_TOKEN_CHARS} characters; "
                                 f"{_TOKEN_HELP}")


def _scopes(names: list[str], source: str) -> frozenset[Scope]:
    found: set[Scope] = set()
    for position, raw in enumerate(names, start=1):
        name = raw.strip().lower()
        if not name:
            continue
        try:
            scope = Scope(name)
        except ValueError:
            # The name is not echoed: if the separator was misplaced it may be part of the token.
            raise ConfigurationError(f"{source}: its {_ordinal(position)} scope is not a known scope; "
                                     f"known scopes are {_KNOWN}") from None
        if scope is Scope.CLUSTER:
            raise ConfigurationError(f"{source}: the cluster scope is granted only to VSYNC_CLUSTER_TOKEN "
                                     "(the workers' shared secret), not to an API token")
        found.add(scope)
    if not found:
        raise ConfigurationError(f"{source} lists no scope after its token; known scopes are {_KNOWN}")
    return frozenset(found)


def parse_api_tokens(items: Iterable[str], source: str = "VSYNC_API_TOKENS") -> list[Grant]:
    """Parse the items of ``VSYNC_API_TOKENS``.

    Args:
        items: each ``token`` or ``token=scope+scope`` (the last ``=`` separates; a token ending in
            ``=`` padding with nothing after it is a bare token).
        source: the name used in error messages.

    Returns:
        One grant per item, in order; a bare token gets :data:`DEFAULT_SCOPES`.

    Raises:
        ConfigurationError: an empty or short token, or an unknown scope; the message names the
            item by position and never contains the token.
    """
    grants = []
    for number, item in enumerate(items, start=1):
        where = f"{source} item {number}"
        text = item.strip()
        token, sep, scope_text = text.rpartition("=")
        if not sep or not scope_text:  # no '=', or only base64 padding at the end
            token, scope_text = text, ""
        _check_token(token, where)
        scopes = _scopes(scope_text.split("+"), where) if scope_text else DEFAULT_SCOPES
        grants.append(Grant(where, token, scopes))
    return grants


def parse_tokens_file(text: str, source: str = "VSYNC_API_TOKENS_FILE") -> list[Grant]:
    """Parse a tokens file: ``token [scope,scope]`` per line, ``#`` comments and blank lines ignored.

    Args:
        text: the file's content.
        source: the name used in error messages (the file's path is a good one).

    Returns:
        One grant per token line; a line without scopes gets :data:`DEFAULT_SCOPES`.

    Raises:
        ConfigurationError: a short token or an unknown scope; the message gives the line number and
            never contains the token.
    """
    grants = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source} line {number}"
        token, *more = stripped.split(None, 1)
        rest = more[0].split("#", 1)[0].strip() if more else ""  # a trailing '# comment' is ignored
        _check_token(token, where)
        scopes = _scopes(rest.replace("+", ",").split(","), where) if rest else DEFAULT_SCOPES
        grants.append(Grant(where, token, scopes))
    return grants


def configured_grants(settings: Settings) -> list[Grant]:
    """Every API token of ``settings`` with its scopes: ``api_tokens`` then ``api_tokens_file``.

    The cluster token is not among them (see :meth:`Authorizer.from_settings`).

    Raises:
        ConfigurationError: a token or scope is malformed, or the tokens file cannot be read.
    """
    grants = parse_api_tokens(t.get_secret_value() for t in settings.api_tokens)
    path = settings.api_tokens_file
    if path is not None:
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigurationError(f"cannot read VSYNC_API_TOKENS_FILE {path}: {reason}") from None
        grants += parse_tokens_file(text, f"VSYNC_API_TOKENS_FILE {path}")
    return grants


def operate_tokens(settings: Settings) -> list[str]:
    """The bearer tokens of ``settings`` that may change state (scope ``operate``), in configured order.

    What the CLI sends to a running worker (``vsync-stream verify``/``reconcile``).

    Raises:
        ConfigurationError: a token or scope is malformed, or the tokens file cannot be read.
    """
    return [g.token for g in configured_grants(settings) if Scope.OPERATE in g.scopes]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)  # aiohttp's CIMultiDictProxy is case-insensitive already
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme in any case), or None."""
    header = _header(headers, "Authorization") or ""
    scheme, _, given = header.strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return None
    return given


def parse_scopes_header(value: str) -> frozenset[Scope]:
    """The scopes named in an ``X-Vsync-Scopes`` header (comma-separated; unknown names ignored)."""
    found = set()
    for name in value.split(","):
        try:
            found.add(Scope(name.strip().lower()))
        except ValueError:
            continue  # a newer worker's scope this one does not know grants nothing here
    return frozenset(found)


class Authorizer:
    """Tells which scopes a request's bearer token grants; build one per worker from its settings.

    Args:
        grants: the API tokens with their scopes (:func:`configured_grants`).
        cluster_token: the workers' shared secret (``VSYNC_CLUSTER_TOKEN``), granting ``cluster``;
            None when the worker routes no queries.

    Raises:
        ConfigurationError: the cluster token is malformed, or equal to an API token (its holder
            could then claim any scope through ``X-Vsync-Scopes``).
    """

    def __init__(self, grants: Iterable[Grant], cluster_token: str | None = None) -> None:
        self._grants = list(grants)
        self._cluster_token = cluster_token
        if cluster_token is not None:
            _check_token(cluster_token, "VSYNC_CLUSTER_TOKEN")
            if any(hmac.compare_digest(g.token.encode(), cluster_token.encode()) for g in self._grants):
                raise ConfigurationError("VSYNC_CLUSTER_TOKEN must differ from every API token "
                                         "(VSYNC_API_TOKENS, VSYNC_API_TOKENS_FILE)")
            self._grants.append(Grant("VSYNC_CLUSTER_TOKEN", cluster_token, frozenset({Scope.CLUSTER})))
        self._encoded = [(g.token.encode("utf-8"), g.scopes) for g in self._grants]

    @classmethod
    def from_settings(cls, settings: Settings) -> Authorizer:
        """The authorizer of ``settings``: API tokens, tokens file and cluster token.

        Raises:
            ConfigurationError: a token or scope is malformed, or the tokens file cannot be read.
        """
        cluster = settings.cluster_token.get_secret_value() if settings.cluster_token is not None else None
        return cls(configured_grants(settings), cluster)

    @property
    def grants(self) -> tuple[Grant, ...]:
        """Every configured token with its scopes, cluster token last (when set)."""
        return tuple(self._grants)

    def __repr__(self) -> str:
        return f"<Authorizer: {len(self._grants)} tokens, cluster token {'set' if self._cluster_token else 'unset'}>"

    def scopes(self, headers: Mapping[str, str]) -> frozenset[Scope]:
        """The scopes the request's own bearer token grants.

        Args:
            headers: the request headers (any case; aiohttp's ``request.headers`` or a dict).

        Returns:
            The union of the scopes of every configured token equal to the supplied one; the empty
            set without a bearer token or when none matches.
        """
        given = bearer_token(headers)
        if given is None:
            return frozenset()
        supplied = given.encode("utf-8")
        granted: set[Scope] = set()
        for token, scopes in self._encoded:  # no early exit (see the module docstring)
            if hmac.compare_digest(supplied, token):
                granted |= scopes
        return frozenset(granted)

    def caller(self, headers: Mapping[str, str]) -> str:
        """Who sent the request, for audit records: the matching token's ``source`` (never the token).

        Returns:
            e.g. ``VSYNC_API_TOKENS item 2``; ``anonymous`` without a bearer token; ``unknown token``
            when none matches.
        """
        given = bearer_token(headers)
        if given is None:
            return "anonymous"
        supplied = given.encode("utf-8")
        found = "unknown token"
        for grant, (token, _scopes) in zip(self._grants, self._encoded, strict=True):  # no early exit
            if hmac.compare_digest(supplied, token) and found == "unknown token":
                found = grant.source
        return found

    def effective_scopes(self, headers: Mapping[str, str]) -> frozenset[Scope]:
        """The scopes to serve the request with, taking a forwarding worker's word for its caller.

        Returns:
            ``cluster`` plus the scopes of the ``X-Vsync-Scopes`` header when the token grants
            ``cluster`` and the header is present; otherwise the token's own scopes.
        """
        own = self.scopes(headers)
        forwarded = _header(headers, SCOPES_HEADER)
        if Scope.CLUSTER in own and forwarded is not None:
            return frozenset({Scope.CLUSTER}) | parse_scopes_header(forwarded)
        return own

    def allows(self, headers: Mapping[str, str], scope: Scope) -> bool:
        """Tell whether the request may use ``scope`` (by :meth:`effective_scopes`)."""
        return scope in self.effective_scopes(headers)

    def cluster_headers(self, caller_scopes: Iterable[Scope]) -> dict[str, str]:
        """Headers for forwarding a request to another worker on behalf of a caller.

        Args:
            caller_scopes: the original caller's effective scopes (``cluster`` is not passed on).

        Returns:
            ``Authorization`` with the cluster token and ``X-Vsync-Scopes`` with the caller's scopes.

        Raises:
            ConfigurationError: no cluster token is configured.
        """
        if self._cluster_token is None:
            raise ConfigurationError("routing a query to another worker needs VSYNC_CLUSTER_TOKEN, the same on "
                                     "every worker of this app id")
        names = sorted(s.value for s in set(caller_scopes) if s is not Scope.CLUSTER)
        return {"Authorization": f"Bearer {self._cluster_token}", SCOPES_HEADER: ",".join(names)}
