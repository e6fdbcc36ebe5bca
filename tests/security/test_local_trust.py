"""Loopback trust cannot be borrowed by a web page (issue 12, item 9), against real collectors
on both backends: a foreign ``Host`` (DNS rebinding) gets nothing, a cross-site ``text/plain``
POST changes nothing, a cross-site ``Origin`` is refused; and the machine itself (SDK,
dashboard, CLI) still works without a key. Headless Chromium plays the attacker's pages:
a rebound name, a cross-site form and a cross-site ``fetch``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from foundation_helpers import event
from mcpmeter import credentials

HOSTILE_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}", "localhost.evil.example",
                 "192.168.1.20:{port}", "[::2]:{port}", "127.0.0.1:{port}x", ""]
LOCAL_HOSTS = ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LOCALHOST", "127.8.9.10:{port}", "[::1]:{port}"]
SUMMARY = "/v1/usage/summary?period=7d"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def keys_named(c, admin_key: str) -> dict[str, tuple]:
    """The project's keys: name -> (prefix, scopes, state, expiry); what any change would alter."""
    r = httpx.get(c.url + "/v1/admin/keys", headers={"Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 200, r.text
    return {k["name"]: (k["prefix"], tuple(k["scopes"]), k["state"], k["expires"]) for k in r.json()["keys"]}


def record_one(c, server: str) -> None:
    """A real SDK process on this machine, with the key `mcpmeter serve` saved for it."""
    code = (f"from mcpmeter import Meter\nm = Meter(server={server!r}, url={c.url!r})\n"
            "m.record('t', duration_ms=1.0)\nassert m.flush(10), 'not delivered'\n"
            "assert m.stats.sent == 1 and m.stats.spooled == 0, m.stats\nm.shutdown(5)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    assert done.returncode == 0, done.stderr


def calls_of(c, admin_key: str, server: str) -> int:
    r = httpx.get(c.url + SUMMARY + f"&server={server}", headers={"Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 200, r.text
    return r.json()["calls"]


def test_a_foreign_host_gets_no_keys_and_no_data(collector):
    port = port_of(collector.url)
    admin_key = credentials.key_for(collector.url, "admin")
    httpx.post(collector.url + "/v1/events", json=[event(server="secret-server")]).raise_for_status()
    before = keys_named(collector, admin_key)
    for host in HOSTILE_HOSTS:
        host = host.format(port=port)
        headers = {"Host": host}
        made = httpx.post(collector.url + "/v1/admin/keys", json={"name": "stolen", "scopes": ["admin"]}, headers=headers)
        assert made.status_code in (401, 403), (host, made.status_code, made.text)
        assert "loopback name" in made.json()["error"]
        read = httpx.get(collector.url + SUMMARY, headers=headers)
        assert read.status_code in (401, 403) and "secret-server" not in read.text, (host, read.text)
        page = httpx.get(collector.url + "/", headers=headers)
        assert page.status_code in (302, 303, 307) and "/signin" in page.headers["location"], (host, page.status_code)
        ingest = httpx.post(collector.url + "/v1/events", json=[event(server="planted")], headers=headers)
        assert ingest.status_code in (401, 403), (host, ingest.text)
    assert keys_named(collector, admin_key) == before  # no key was made
    assert calls_of(collector, admin_key, "planted") == 0
    # A key still works whatever the Host (a collector behind a proxy is reached by its public name).
    r = httpx.get(collector.url + SUMMARY, headers={"Host": "meter.example", "Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 200 and r.json()["calls"] == 1
    for host in LOCAL_HOSTS:  # the machine itself, however it names itself
        r = httpx.get(collector.url + SUMMARY, headers={"Host": host.format(port=port)})
        assert r.status_code == 200 and r.json()["calls"] == 1, (host, r.text)


def test_a_cross_site_text_plain_post_changes_nothing(collector):
    admin_key = credentials.key_for(collector.url, "admin")
    before = keys_named(collector, admin_key)
    rotate = collector.url + "/v1/admin/keys/local-ingest/rotate"
    attempts = [  # what a page of another site can make a browser send without asking (no CORS preflight)
        {"content": b'{"overlap": "0s"}', "headers": {"Content-Type": "text/plain"}},
        {"content": b'{"overlap": "0s"}', "headers": {"Content-Type": "text/plain", "Origin": "http://evil.example"}},
        {"content": b"overlap=0s", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        {"content": b'{"overlap": "0s"}', "headers": {}},  # a Blob body: no Content-Type at all
        {"headers": {"Origin": "http://evil.example"}},  # no body (rotation with the default overlap)
        {"headers": {"Origin": "null"}},  # a sandboxed frame
        {"headers": {"Origin": f"http://localhost:{free_port()}"}},  # another site on this machine
        {"headers": {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}},
        {"json": {"overlap": "0s"}, "headers": {"Origin": "http://evil.example"}},
    ]
    for attempt in attempts:
        r = httpx.post(rotate, **attempt)
        assert r.status_code in (403, 415), (attempt, r.status_code, r.text)
        assert r.json()["hint"]
    r = httpx.post(collector.url + "/v1/admin/keys", content=b'{"name": "x", "scopes": ["admin"]}',
                   headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert r.status_code == 415 and "JSON" in r.json()["error"]
    r = httpx.request("DELETE", collector.url + "/v1/admin/keys/local-read", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert keys_named(collector, admin_key) == before  # nothing rotated, made or revoked
    record_one(collector, "after-the-attempts")  # the local SDK still delivers with its saved key
    assert calls_of(collector, admin_key, "after-the-attempts") == 1


def test_the_machine_itself_and_its_own_pages_still_change_things(collector):
    port = port_of(collector.url)
    own = {"Origin": f"http://127.0.0.1:{port}"}
    made = httpx.post(collector.url + "/v1/admin/keys", json={"name": "ci", "scopes": ["ingest"]}, headers=own)
    assert made.status_code == 201, made.text  # the dashboard's own page (same origin)
    r = httpx.post(collector.url + "/v1/admin/keys/ci/rotate", headers={"Content-Type": "application/json; charset=utf-8"},
                   json={"overlap": "1h"})
    assert r.status_code == 201, r.text  # a script on the machine: no Origin
    r = httpx.post(collector.url + "/v1/admin/keys/ci/rotate")  # no body at all
    assert r.status_code == 201, r.text
    behind_proxy = {"Origin": "https://meter.example", "X-Forwarded-Host": "meter.example",
                    "Authorization": f"Bearer {credentials.key_for(collector.url, 'admin')}"}
    r = httpx.post(collector.url + "/v1/admin/keys", json={"name": "proxied", "scopes": ["read"]}, headers=behind_proxy)
    assert r.status_code == 201, r.text
    r = httpx.get(collector.url + SUMMARY, headers={"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"})
    assert r.status_code == 200


def test_ingest_paths_keep_their_documented_content_types(collector):
    import gzip
    import json as jsonlib

    body = gzip.compress(jsonlib.dumps([event(server="gz")]).encode())
    r = httpx.post(collector.url + "/v1/events", content=body,
                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    r = httpx.post(collector.url + "/v1/traces", content=ExportTraceServiceRequest().SerializeToString(),
                   headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 200, r.text
    r = httpx.post(collector.url + "/v1/traces", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(collector.url + "/v1/events", content=b"[]", headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 415  # protobuf is for OTLP only


# ---- a real browser ------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
ATTACKER = "attacker.example"  # Chromium resolves it to 127.0.0.1: a page of another site, and a rebound name

FORM_PAGE = """<!doctype html><title>cute cats</title>
<form method="POST" enctype="text/plain" action="{target}/v1/admin/keys/local-ingest/rotate">
<input name='{{"overlap": "0s", "x": "' value='"}}'></form>
<script>
fetch("{target}/v1/admin/keys/local-ingest/rotate", {{method: "POST", mode: "no-cors", body: '{{"overlap": "0s"}}'}})
  .catch(() => null)
  .then(() => fetch("{target}/v1/admin/keys", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                                                body: '{{"name": "stolen", "scopes": ["admin"]}}'}}))
  .catch(() => null)
  .then(() => {{ document.title = "sent"; document.forms[0].submit(); }});
</script>"""


class _Pages(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed: apt-get install -y chromium fonts-liberation (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            f"--host-resolver-rules=MAP {ATTACKER} 127.0.0.1"])
        yield browser
        browser.close()


@pytest.mark.slow
@pytest.mark.parametrize("collector", ["sqlite"], indirect=True)
def test_a_browser_on_another_site_cannot_use_the_machines_trust(collector, chromium):
    admin_key = credentials.key_for(collector.url, "admin")
    before = keys_named(collector, admin_key)
    httpx.post(collector.url + "/v1/events", json=[event(server="secret-server")]).raise_for_status()
    _Pages.page = FORM_PAGE.format(target=collector.url).encode()
    pages = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    context = chromium.new_context()
    try:
        page = context.new_page()
        # 1. A cross-site form (text/plain) and two no-cors fetches, from a page of another site.
        seen: list[tuple[str, int]] = []
        page.on("response", lambda r: seen.append((r.request.method + " " + r.url, r.status)))
        with page.expect_navigation(url=f"{collector.url}/**", timeout=15_000):
            page.goto(f"http://{ATTACKER}:{pages.server_address[1]}/")
        posts = [status for what, status in seen if what.startswith("POST " + collector.url)]
        assert posts and all(status in (403, 415) for status in posts), seen
        # 2. DNS rebinding: the attacker's name now points at the collector; its page's requests are same-origin.
        rebound = f"http://{ATTACKER}:{port_of(collector.url)}"
        page.goto(rebound + "/health")
        answers = page.evaluate("""async () => {
            const made = await fetch("/v1/admin/keys", {method: "POST", headers: {"Content-Type": "application/json"},
                                                        body: JSON.stringify({name: "stolen", scopes: ["admin"]})});
            const read = await fetch("/v1/usage/summary?period=7d");
            return [made.status, read.status, await read.text()];
        }""")
        assert answers[0] in (401, 403) and answers[1] in (401, 403) and "secret-server" not in answers[2], answers
        page.goto(rebound + "/")
        assert "/signin" in page.url  # the dashboard asks for a key instead of showing the data
    finally:
        context.close()
        pages.shutdown()
        pages.server_close()
    assert keys_named(collector, admin_key) == before
    # 3. The same browser on the collector's own address: the local dashboard works without a key.
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(collector.url + "/")
        assert "/signin" not in page.url
        made = page.evaluate("""async () => (await fetch("/v1/admin/keys", {method: "POST",
            headers: {"Content-Type": "application/json", "X-MCPMeter-CSRF": "1"},
            body: JSON.stringify({name: "from-the-dashboard", scopes: ["read"]})})).status""")
        assert made == 201
    finally:
        context.close()
