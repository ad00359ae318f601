"""The cluster token goes only to the configured cluster URLs, over verified TLS (issue #14, item 8).

A worker's URL in the group assignment is whatever the member that joined the consumer group
advertised; the token must not follow it blindly. A real local HTTPS server (throwaway CA) plays
the peer.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from tests.tls_certs import TestPki
from vsync_stream.bridges.tls import cluster_client_ssl_context, web_server_ssl_context
from vsync_stream.cluster import Cluster, origin_of
from vsync_stream.errors import ConfigurationError, StateNotReady
from vsync_stream.settings import Settings

pytestmark = pytest.mark.usefixtures("no_vsync_env")

TOKEN = "cluster-token-0123456789"


def cluster(self_url: str, urls: list[str] | None = None, context: ssl.SSLContext | None = None) -> Cluster:
    app = SimpleNamespace(conf=SimpleNamespace(canonical_url=self_url))
    return Cluster(app, None, 4, TOKEN, 5.0, urls, context)  # type: ignore[arg-type]


def test_origins_are_normalised() -> None:
    assert origin_of("HTTPS://W1.example:443/") == "https://w1.example:443"
    assert origin_of("http://10.0.0.1:16066") == "http://10.0.0.1:16066"
    with pytest.raises(ValueError):
        origin_of("w1:16066")


def test_only_configured_urls_get_the_token() -> None:
    c = cluster("https://w1:16066", ["https://w1:16066", "https://w2:16066/"])
    assert c.may_receive_token("https://w2:16066")
    assert not c.may_receive_token("https://evil:16066")
    assert not c.may_receive_token("http://w2:16066")  # the same host over plain HTTP is another origin
    assert not c.may_receive_token("https://w2:16067")
    with pytest.raises(StateNotReady, match="VSYNC_CLUSTER_URLS"):
        c._headers("https://evil:16066")
    assert c._headers("https://w2:16066")["Authorization"] == f"Bearer {TOKEN}"


def test_without_the_setting_only_this_workers_scheme_and_host() -> None:
    c = cluster("http://10.0.0.1:16066")
    assert c.may_receive_token("http://10.0.0.1:16067")
    assert not c.may_receive_token("http://10.0.0.2:16066")
    assert not c.may_receive_token("https://10.0.0.1:16066")


def test_settings_check_the_cluster_urls() -> None:
    assert Settings(cluster_urls="https://W1:16066/, https://w2:16066").cluster_urls == [
        "https://w1:16066", "https://w2:16066"]
    with pytest.raises(ValueError):
        Settings(cluster_urls="w1:16066")


def test_web_tls_needs_both_files(pki: TestPki) -> None:
    assert web_server_ssl_context(Settings()) is None
    with pytest.raises(ConfigurationError, match="both"):
        web_server_ssl_context(Settings(web_tls_cert=pki.server_cert))
    assert web_server_ssl_context(Settings(web_tls_cert=pki.server_cert, web_tls_key=pki.server_key)) is not None


@pytest_asyncio.fixture
async def peer(pki: TestPki) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTPS server on 127.0.0.1 recording the headers of every request it gets."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=web_server_ssl_context(
        Settings(web_tls_cert=pki.server_cert, web_tls_key=pki.server_key)))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_forwarding_over_tls_with_the_peer_ca(pki: TestPki, peer: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = peer
    context = cluster_client_ssl_context(Settings(cluster_tls_ca=pki.ca))
    reply = await cluster("https://127.0.0.1:1", [url], context).forward(url, "GET", "/entries/x", b"", "entries", 0)
    assert reply.status == 200 and seen[-1]["Authorization"] == f"Bearer {TOKEN}"


async def test_a_peer_with_a_certificate_of_another_ca_gets_nothing(
        pki: TestPki, peer: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = peer
    context = cluster_client_ssl_context(Settings(cluster_tls_ca=pki.other_ca))
    with pytest.raises(StateNotReady):
        await cluster("https://127.0.0.1:1", [url], context).forward(url, "GET", "/x", b"", "", 0)
    assert seen == []


async def test_a_url_outside_the_cluster_urls_is_never_contacted(
        pki: TestPki, peer: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = peer
    context = cluster_client_ssl_context(Settings(cluster_tls_ca=pki.ca))
    with pytest.raises(StateNotReady, match="VSYNC_CLUSTER_URLS"):
        await cluster("https://127.0.0.1:1", ["https://127.0.0.1:2"], context).forward(url, "GET", "/x", b"", "", 0)
    assert seen == []
