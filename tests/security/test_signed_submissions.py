"""Keys that require signed submissions: wrong, missing, stale and replayed signatures are
refused with 401 and a clear reason; the SDK and `mcpmeter push` sign and are accepted."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest
from security_helpers import gz, signed
from starlette.testclient import TestClient

from conftest import MCPMETER, make_keys, start_collector, stop_collector
from foundation_helpers import event, stored_count
from mcpmeter import Meter
from mcpmeter import keys as keylib
from mcpmeter.server.collector import create_app
from mcpmeter.server.collector.security import new_signing_secret
from mcpmeter.storage import open_store


def signing_key(store, project: str = "default") -> tuple[str, str]:
    p = store.ensure_project(project)
    key, secret = keylib.new_key(), new_signing_secret()
    info = store.add_key(p.id, "signed", keylib.hash_key(key), keylib.display_prefix(key), ["ingest"])
    store.set_signing_secret(info.id, secret)
    return key, secret


@pytest.fixture
def signed_app(store):
    key, secret = signing_key(store)
    with TestClient(create_app(store)) as c:
        yield c, key, secret


def post(c, key, body: bytes, headers: dict | None = None, gzip: bool = False, path: str = "/v1/events"):
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})}
    if gzip:
        h["Content-Encoding"] = "gzip"
    return c.post(path, content=body, headers=h)


def refused(r, fragment: str) -> None:
    assert r.status_code == 401, r.text
    assert fragment in r.json()["error"], r.json()
    assert r.json()["hint"]


def test_a_correctly_signed_batch_is_accepted_plain_or_gzip(signed_app, store):
    c, key, secret = signed_app
    body = json.dumps([event()]).encode()
    assert post(c, key, body, signed(secret, body)).json()["accepted"] == 1
    packed = gz([event()])
    assert post(c, key, packed, signed(secret, packed), gzip=True).json()["accepted"] == 1  # signed as sent: gzip bytes
    assert stored_count(store) == 2


def test_missing_wrong_and_misplaced_signatures_are_401(signed_app, store):
    c, key, secret = signed_app
    body = json.dumps([event()]).encode()
    refused(post(c, key, body), "requires signed submissions")
    refused(post(c, key, body, {"X-MCPMeter-Timestamp": str(int(time.time()))}), "X-MCPMeter-Signature missing")
    refused(post(c, key, body, signed(new_signing_secret(), body)), "does not match")
    other = json.dumps([event()]).encode()
    refused(post(c, key, body, signed(secret, other)), "does not match")  # a signature of another body
    headers = signed(secret, body)
    headers["X-MCPMeter-Timestamp"] = str(int(headers["X-MCPMeter-Timestamp"]) + 1)  # the time is signed too
    refused(post(c, key, body, headers), "does not match")
    refused(post(c, key, body, {**signed(secret, body), "X-MCPMeter-Timestamp": "soon"}), "unix seconds")
    packed = gz([event()])
    plain_signature = signed(secret, json.dumps(json.loads(gzip_decompress(packed))).encode())
    refused(post(c, key, packed, plain_signature, gzip=True), "does not match")  # must be over the gzip bytes
    assert stored_count(store) == 0


def gzip_decompress(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)


def test_stale_future_and_replayed_signatures_are_401(signed_app, store):
    c, key, secret = signed_app
    body = json.dumps([event()]).encode()
    refused(post(c, key, body, signed(secret, body, time.time() - 301)), "s old")
    refused(post(c, key, body, signed(secret, body, time.time() + 301)), "in the future")
    headers = signed(secret, body, time.time() - 200)  # a sender's clock 200 s behind is within the window
    assert post(c, key, body, headers).status_code == 200
    refused(post(c, key, body, headers), "already received")  # the very same request again
    assert stored_count(store) == 1


def test_signatures_cover_every_ingest_path(signed_app, store):
    c, key, secret = signed_app
    body = json.dumps({"server": "weblab", "metrics": [{"name": "queue", "value": 3, "type": "gauge"}]}).encode()
    refused(post(c, key, body, path="/v1/measurements"), "requires signed")
    assert post(c, key, body, signed(secret, body), path="/v1/measurements").status_code == 200
    otlp = json.dumps({"resourceSpans": []}).encode()
    r = post(c, key, otlp, path="/v1/traces")
    assert r.status_code == 401 and "requires signed" in r.json()["error"]
    assert post(c, key, otlp, signed(secret, otlp), path="/v1/traces").status_code == 200


def test_keys_without_a_secret_need_no_signature(store):
    keys = make_keys(store)
    with TestClient(create_app(store)) as c:
        assert post(c, keys.ingest, json.dumps([event()]).encode()).json()["accepted"] == 1


def test_the_sdk_and_push_sign_when_given_the_secret(tmp_path, monkeypatch):
    db = tmp_path / "collector.db"
    store = open_store(str(db))
    key, secret = signing_key(store)
    store.close()
    c = start_collector(db)
    try:
        unsigned = Meter(server="unsigned", url=c.url, api_key=key, spool=tmp_path / "spool1.db")
        unsigned.record("search")
        assert unsigned.flush(10)
        assert unsigned.stats.sent == 0 and unsigned.stats.spooled == 1  # refused (401) and kept, not lost
        unsigned.shutdown(1)
        meter = Meter(server="signed", url=c.url, api_key=key, signing_secret=secret, batch_size=7,
                      spool=tmp_path / "spool2.db")
        for _ in range(50):
            meter.record("search", duration_ms=1.0)
        assert meter.flush(10)
        assert meter.stats.sent == 50
        meter.shutdown(5)
        # `mcpmeter push` signs with MCPMETER_SIGNING_SECRET
        local = tmp_path / "local.db"
        s = open_store(str(local))
        from mcpmeter.events import decode_batch
        from mcpmeter.ingest import rows_for

        events, _ = decode_batch(json.dumps([event(server="pushed") for _ in range(5)]).encode())
        s.ingest([(s.ensure_project("default").id, rows_for(s.ensure_project("default"), events))])
        s.close()
        env = {"MCPMETER_API_KEY": key, "MCPMETER_HOME": str(tmp_path / "home")}
        r = subprocess.run([*MCPMETER, "push", "--url", c.url, "--db", str(local)], capture_output=True, text=True,
                           env={**_env(), **env}, timeout=60)
        assert r.returncode == 1 and "401" in r.stderr
        r = subprocess.run([*MCPMETER, "push", "--url", c.url, "--db", str(local)], capture_output=True, text=True,
                           env={**_env(), **env, "MCPMETER_SIGNING_SECRET": secret}, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "5 new" in r.stderr
        s = open_store(str(db))
        assert stored_count(s) == 55
        s.close()
        assert httpx.get(c.url + "/ready").status_code == 200
    finally:
        stop_collector(c)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
