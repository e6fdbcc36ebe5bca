"""The MCP gateway metrics-service's environment names, read as aliases of mcpmeter's settings."""

from __future__ import annotations

import pytest

from mcpmeter import settings
from mcpmeter.server.collector.bootstrap import register_env_keys
from mcpmeter.storage import open_store

ALIASES = {
    "SQLITE_DB_PATH": ("MCPMETER_DB", "/tmp/metrics.db", "/tmp/metrics.db"),
    "METRICS_SERVICE_HOST": ("MCPMETER_HOST", "0.0.0.0", "0.0.0.0"),
    "METRICS_SERVICE_PORT": ("MCPMETER_PORT", "8891", 8891),
    "OTEL_PROMETHEUS_ENABLED": ("MCPMETER_METRICS", "false", False),
    "OTEL_PROMETHEUS_PORT": ("MCPMETER_METRICS_PORT", "9465", 9465),
    "METRICS_RATE_LIMIT": ("MCPMETER_RATE_LIMIT_PER_KEY", "5000", 5000),
}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_the_gateways_names_are_read_when_mcpmeters_are_unset(alias, monkeypatch):
    env, raw, value = ALIASES[alias]
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv(alias, raw)
    assert settings.get(env) == value
    assert alias in settings.SETTINGS[env].aliases


def test_mcpmeters_own_names_win(monkeypatch):
    monkeypatch.setenv("METRICS_SERVICE_PORT", "8891")
    monkeypatch.setenv("MCPMETER_PORT", "9000")
    assert settings.get("MCPMETER_PORT") == 9000
    monkeypatch.setenv("METRICS_RATE_LIMIT", "lots")
    with pytest.raises(Exception, match="METRICS_RATE_LIMIT='lots' is not valid"):
        settings.get("MCPMETER_RATE_LIMIT_PER_KEY")


def test_the_aliases_are_documented():
    text = settings.markdown()
    for alias in ALIASES:
        assert f"`{alias}`" in text
    assert "`METRICS_API_KEY_<SERVICE>`" in text


def test_preshared_keys_are_named_as_the_gateway_names_its_services(tmp_path):
    environ = {"METRICS_API_KEY_REGISTRY": "k-registry", "METRICS_API_KEY_CURRENTTIME_SERVER": "k-time",
               "METRICS_API_KEY_AUTH": "k-gateway-auth", "MCPMETER_API_KEY_AUTH": "k-mcpmeter-auth",
               "METRICS_API_KEY": "client-side-only", "METRICS_API_KEY_EMPTY": ""}
    assert settings.env_api_keys(environ) == {"registry": "k-registry", "currenttime-server": "k-time",
                                              "auth": "k-mcpmeter-auth"}
    store = open_store(str(tmp_path / "s.db"))
    try:
        assert sorted(register_env_keys(store, environ)) == ["auth", "currenttime-server", "registry"]
        names = {k.name: sorted(k.scopes) for k in store.list_keys(store.ensure_project("default").id)}
        assert names == {"auth": ["ingest"], "currenttime-server": ["ingest"], "registry": ["ingest"]}
    finally:
        store.close()
