"""Over streamable HTTP the user is whoever the request says: the token's subject, else a header."""

from __future__ import annotations

import anyio
import httpx2
import pytest
from instrument_helpers import kinds, new_meter, recorded
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from mcpmeter.identity import UserHasher
from mcpmeter.storage import open_store

BASE = "http://127.0.0.1:8000"


class Tokens:
    """A token verifier that knows two tokens and who they belong to."""

    async def verify_token(self, token: str) -> AccessToken | None:
        owners = {"tok-ann": "ann", "tok-bo": "bo"}
        if token not in owners:
            return None
        return AccessToken(token=token, client_id="desktop-app", scopes=[], subject=owners[token])


def make_server(auth: bool) -> MCPServer:
    if auth:
        settings = AuthSettings(issuer_url="https://auth.example.com", resource_server_url=f"{BASE}/mcp",
                                validate_token_resource=False)
        server = MCPServer("web", auth=settings, token_verifier=Tokens())
    else:
        server = MCPServer("web")

    @server.tool()
    def hello() -> str:
        return "hi"

    return server


async def call_as(server: MCPServer, headers: dict[str, str], mode: str) -> None:
    app = server.streamable_http_app()
    async with server.session_manager.run():
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url=BASE, headers=headers) as http:
            async with Client(streamable_http_client(f"{BASE}/mcp", http_client=http), mode=mode, cache=None) as c:
                assert (await c.call_tool("hello", {})).is_error is False


def user_hashes(meter) -> dict[str, str]:
    store = open_store(meter._db)
    try:
        hasher = UserHasher(store.project_by_name("default").user_salt)
    finally:
        store.close()
    return {hasher(name): name for name in ("ann", "bo", "carol", "root")}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_the_header_names_the_user_when_no_token_does(tmp_path, mode):
    meter = new_meter(tmp_path)
    server = meter.instrument(make_server(auth=False), user_header="X-User")
    anyio.run(call_as, server, {"X-User": "carol"}, mode)
    events = recorded(meter)
    names = user_hashes(meter)
    assert {names.get(e["user_hash"]) for e in events} == {"carol"}
    assert {e["transport"] for e in events} == {"streamable-http"}
    assert kinds(events)["tool_call"] == 1
    if mode == "legacy":  # a stateful streamable HTTP session has the transport's session id
        assert len({e["session_id"] for e in events}) == 1 and events[0]["session_id"]


def test_without_a_token_or_header_the_user_is_unknown_not_the_server_process(tmp_path):
    meter = new_meter(tmp_path, user="root")
    anyio.run(call_as, meter.instrument(make_server(auth=False)), {}, "auto")
    assert {e["user_hash"] for e in recorded(meter)} == {None}


def test_an_authenticated_tokens_subject_is_the_user(tmp_path):
    meter = new_meter(tmp_path)
    server = meter.instrument(make_server(auth=True), user_header="X-User")
    anyio.run(call_as, server, {"Authorization": "Bearer tok-ann", "X-User": "carol"}, "auto")
    anyio.run(call_as, server, {"Authorization": "Bearer tok-bo"}, "legacy")
    events = recorded(meter)  # delivered first: the store (and its project) exist from then on
    names = user_hashes(meter)
    calls = [names.get(e["user_hash"]) for e in events if e["kind"] == "tool_call"]
    assert calls == ["ann", "bo"]  # the token wins over the header


def test_a_user_callable_decides(tmp_path):
    meter = new_meter(tmp_path)
    server = meter.instrument(make_server(auth=False), user=lambda ctx: ctx.request.headers.get("x-team") + "/bo")
    anyio.run(call_as, server, {"X-Team": "ops"}, "auto")
    events = recorded(meter)
    store = open_store(meter._db)
    try:
        expected = UserHasher(store.project_by_name("default").user_salt)("ops/bo")
    finally:
        store.close()
    assert {e["user_hash"] for e in events} == {expected}
