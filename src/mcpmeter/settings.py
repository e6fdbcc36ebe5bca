"""Every setting mcpmeter reads, in one table.

Precedence everywhere: an explicit argument (Python or CLI flag), then the environment
variable, then the default. ``docs/settings.md`` is checked against this table by a test,
so a setting cannot be added without being documented.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigError


@dataclass(frozen=True)
class Setting:
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    used_by: str  # "sdk", "collector", "cli", "all"
    aliases: tuple[str, ...] = ()  # other systems' names, read only when ``env`` is unset (docs/seeds.md)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"expected a positive whole number, got {raw!r}")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(f"expected a whole number, 0 or more, got {raw!r}")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError(f"expected a positive number, got {raw!r}")
    return value


def _labels(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("mcpmeter", "gateway"):
        raise ValueError(f"expected mcpmeter or gateway, got {raw!r}")
    return value


def _signals(raw: str) -> frozenset[str]:
    value = raw.strip().lower()
    if value in {"", "0", "false", "no", "off", "none"}:
        return frozenset()
    if value in {"1", "true", "yes", "on", "all"}:
        return frozenset({"metrics", "traces"})
    signals = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = signals - {"metrics", "traces"}
    if unknown:
        raise ValueError(f"unknown signal(s) {', '.join(sorted(unknown))}; use metrics, traces or metrics,traces")
    return signals


SETTINGS: dict[str, Setting] = {
    s.env: s
    for s in [
        Setting("MCPMETER_URL", None, str, "Collector base URL. Unset: record into the local store.", "all"),
        Setting("MCPMETER_API_KEY", None, str, "API key sent to the collector (Bearer). Unset: the key saved by a local `mcpmeter serve` for that URL.", "all"),
        Setting("MCPMETER_DB", None, str,
                "Store: a SQLite file path (or `sqlite:///path`), or a `postgresql://user:password@host:5432/db` URL shared by "
                "several collectors (see docs/scaling.md). Unset: `mcpmeter.db` in MCPMETER_HOME.",
                "all", aliases=("SQLITE_DB_PATH",)),
        Setting("MCPMETER_HOME", None, str,
                "Directory for the default store, saved credentials and the SDK spool. Unset: the user data directory "
                "(`~/.local/share/mcpmeter` on Linux).", "all"),
        Setting("MCPMETER_SERVER_NAME", None, str, "Server name recorded when `Meter(server=...)` / `--server-name` is not given.", "sdk"),
        Setting("MCPMETER_USER", None, str, "User identifier recorded for stdio use. Unset: the OS user. Always stored as a keyed hash.", "sdk"),
        Setting("MCPMETER_DISABLED", False, _bool, "`true` turns the recorder into a no-op (nothing is queued or sent).", "sdk"),
        Setting("MCPMETER_BATCH_SIZE", 500, _positive_int, "Events per batch sent by the SDK.", "sdk"),
        Setting("MCPMETER_FLUSH_INTERVAL", 1.0, _positive_float,
                "Seconds between SDK flushes when batches are not full. Events recorded within about this long "
                "(plus 0.2 s and the request time) before a `kill -9` are lost; see docs/security.md.", "sdk"),
        Setting("MCPMETER_MAX_QUEUE", 100_000, _positive_int, "Events the SDK keeps in memory before it drops (and counts) new ones.", "sdk"),
        Setting("MCPMETER_READ_KEY", None, str,
                "Read key the usage report tool (`meter.add_usage_report_tool`) sends to MCPMETER_URL. Unset: the read key "
                "saved by a local `mcpmeter serve` for that URL.", "sdk"),
        Setting("MCPMETER_EXIT_TIMEOUT", 2.0, _positive_float,
                "Seconds the host's exit may wait for the recorder, for all meters together (one deadline); "
                "what cannot be sent by then is spooled.", "sdk"),
        Setting("MCPMETER_SPOOL_MAX_MB", 256, _positive_int, "Size cap of the SDK's local spool used while the collector is unreachable.", "sdk"),
        Setting("MCPMETER_HOST", "127.0.0.1", str, "Address `mcpmeter serve` binds to.", "collector",
                aliases=("METRICS_SERVICE_HOST",)),
        Setting("MCPMETER_PORT", 8890, _positive_int, "Port `mcpmeter serve` listens on.", "collector",
                aliases=("METRICS_SERVICE_PORT",)),
        Setting("MCPMETER_LOCAL_TRUST", True, _bool,
                "Serve keyless requests from loopback addresses as the default project, when addressed to a loopback name "
                "and not from another site's page. Requests from other addresses always need a key.", "collector"),
        Setting("MCPMETER_MAX_BODY_BYTES", 10 * 1024 * 1024, _positive_int,
                "Largest request body (after gzip decompression) the collector accepts.", "collector"),
        Setting("MCPMETER_MAX_BATCH_EVENTS", 10_000, _positive_int, "Most events in one ingest request.", "collector"),
        Setting("MCPMETER_MAX_EVENT_AGE_DAYS", 180, _positive_int,
                "Events, measurements and server events older than this are rejected (or than MCPMETER_RETENTION_DAYS, if shorter).", "collector"),
        Setting("MCPMETER_MAX_CLOCK_SKEW_SECONDS", 86_400, _positive_int, "Events this far in the future are rejected.", "collector"),
        Setting("MCPMETER_RETENTION_DAYS", 180, _positive_int,
                "Days raw events and measurements are kept; older ones are pruned (and not accepted: a retry never counts twice).", "collector"),
        Setting("MCPMETER_ROLLUP_RETENTION_DAYS", 730, _positive_int, "Days hourly/daily rollups, sessions and server events are kept.", "collector"),
        Setting("MCPMETER_PRUNE_INTERVAL_SECONDS", 3600, _positive_int, "How often a running collector prunes expired data.", "collector"),
        Setting("MCPMETER_METRICS", True, _bool,
                "Count what this collector stores for `GET /metrics` (Prometheus) and OTLP export; `false` turns both off.",
                "collector", aliases=("OTEL_PROMETHEUS_ENABLED",)),
        Setting("MCPMETER_METRICS_MAX_SERIES", 2000, _positive_int,
                "Distinct (server, tool) label pairs per project in the metrics; further ones are counted under tool `__other__` (and in "
                "`mcpmeter_metrics_overflow_events_total`).", "collector"),
        Setting("MCPMETER_METRICS_LABELS", "mcpmeter", _labels,
                "Label set of the MCP series on `/metrics` and in OTLP export: `mcpmeter` (server, tool, ...) or `gateway`, "
                "the MCP gateway metrics-service's names (`service`, `metric_type`, `server_name`, `tool_name`, `method`, "
                "`client_name`, `success`; every MCP method counted in `mcp_tool_executions_total`), so its Grafana dashboards "
                "work unchanged (docs/prometheus.md).", "collector"),
        Setting("MCPMETER_METRICS_PORT", None, _positive_int,
                "Also serve `/metrics` (and `/health`, nothing else) on this port, e.g. 9465 as the gateway's metrics service does.",
                "collector", aliases=("OTEL_PROMETHEUS_PORT",)),
        Setting("MCPMETER_METRICS_KEY", None, str,
                "A key registered at collector start as a read-scope key of the default project named `metrics`, for Prometheus to scrape"
                " `/metrics` with (`authorization: credentials`).", "collector"),
        Setting("MCPMETER_METRICS_KEY_FILE", None, str,
                "A file holding MCPMETER_METRICS_KEY (e.g. a Docker secret); used when MCPMETER_METRICS_KEY is not set.", "collector"),
        Setting("MCPMETER_OTLP_EXPORT", None, _signals,
                "Forward what the collector stores as OTLP/HTTP: `metrics`, `traces` (events that came as spans) or `metrics,traces` "
                "(`true` = both). Where to: the standard `OTEL_EXPORTER_OTLP_*` variables.", "collector"),
        Setting("MCPMETER_SIGNING_SECRET", None, str,
                "Signing secret of a key created with `--require-signature`: the SDK, the proxy and `mcpmeter push` sign every request "
                "with it (HMAC-SHA256; see docs/security.md).", "all"),
        Setting("MCPMETER_HASH_USERS", False, _bool,
                "`true`: the SDK replaces each user identifier with an HMAC under a secret kept in MCPMETER_HOME (`user-key`) before it "
                "leaves the machine; sent as `h:<hex>`.", "sdk"),
        Setting("MCPMETER_SIGNATURE_TOLERANCE_SECONDS", 300, _positive_int,
                "How far a signed request's X-MCPMeter-Timestamp may be from the collector's clock; older (or newer) is refused as a "
                "possible replay.", "collector"),
        Setting("MCPMETER_RATE_LIMIT_PER_KEY", 1000, _non_negative_int,
                "Requests per minute per API key, per collector process (token bucket); more get 429 with Retry-After. 0 turns it off.",
                "collector", aliases=("METRICS_RATE_LIMIT",)),
        Setting("MCPMETER_RATE_LIMIT_PER_IP", 1000, _non_negative_int,
                "Requests per minute per source address (loopback excepted), per collector process; more get 429 with Retry-After. 0 "
                "turns it off.", "collector"),
        Setting("MCPMETER_RATE_LIMIT_PER_PROJECT", 0, _non_negative_int,
                "Requests per minute made with one project's keys, in fixed UTC minutes, counted by every collector of a "
                "PostgreSQL store together (in the store); more get 429 with Retry-After. 0 (the default) turns it off.",
                "collector"),
        Setting("MCPMETER_MAX_CONNECTIONS", 1000, _positive_int,
                "Open connections (and requests in flight) one collector process serves; beyond, uvicorn answers 503. "
                "At the cap, a new connection first closes the one that has waited longest without sending a request.", "collector"),
        Setting("MCPMETER_MAX_CONNECTIONS_PER_IP", 100, _non_negative_int,
                "Open connections from one peer address, per collector process; one more is answered 503 and closed. "
                "Behind a reverse proxy all connections come from the proxy: raise it, or 0 turns it off.", "collector"),
        Setting("MCPMETER_READ_TIMEOUT_SECONDS", 10.0, _positive_float,
                "A connection must send a request's headers within this long of opening (or of its previous answer), "
                "and its body without pausing this long; otherwise the collector closes it.", "collector"),
        Setting("MCPMETER_MAX_SERVERS_PER_PROJECT", 1000, _positive_int,
                "Distinct server names a project may have; events naming one more are rejected with a reason.", "collector"),
        Setting("MCPMETER_MAX_TOOLS_PER_PROJECT", 10_000, _positive_int,
                "Distinct (server, tool) pairs a project may have; events naming one more are rejected with a reason.", "collector"),
        Setting("MCPMETER_BUSY_TIMEOUT_SECONDS", 30.0, _positive_float,
                "How long a SQLite write waits for another process's lock before the collector answers 503 (and the sender retries).", "all"),
        Setting("MCPMETER_OIDC_ISSUER", None, str,
                "OpenID Connect issuer URL for people's sign-in to the dashboard (its `/.well-known/openid-configuration` is read). "
                "Unset: sign-in with keys only.", "collector"),
        Setting("MCPMETER_OIDC_CLIENT_ID", None, str, "The collector's client id at the OpenID provider.", "collector"),
        Setting("MCPMETER_OIDC_CLIENT_SECRET", None, str,
                "The collector's client secret at the OpenID provider (unset for a public client: PKCE only).", "collector"),
        Setting("MCPMETER_OIDC_REDIRECT_URL", None, str,
                "Where the provider sends people back: `https://<collector>/v1/oidc/callback`, as registered at the provider.", "collector"),
        Setting("MCPMETER_OIDC_SCOPES", "openid email profile", str, "Scopes asked of the provider.", "collector"),
        Setting("MCPMETER_OIDC_GROUPS_CLAIM", "groups", str, "ID-token claim holding the person's groups (for `group:NAME` grants).", "collector"),
        Setting("MCPMETER_OIDC_ACCESS", None, str,
                "People's access besides `mcpmeter access grant`: JSON `{\"alice@example.com\": {\"weblab\": \"admin\"}, "
                "\"group:analysts\": {\"weblab\": \"viewer\"}, \"sub:123\": {...}}`; viewer reads, admin administers.", "collector"),
        Setting("MCPMETER_API_KEY_<NAME>", None, str,
                "Ingest keys registered for the default project at collector start; NAME (lower-cased) becomes the key's name.",
                "collector", aliases=("METRICS_API_KEY_<SERVICE>",)),
    ]
}


def get(env: str, explicit: Any = None) -> Any:
    """Resolve one setting: explicit value, then environment, then default."""
    if explicit is not None:
        return explicit
    setting = SETTINGS[env]
    name, raw = env, os.environ.get(env)
    for alias in setting.aliases:  # mcpmeter's own name wins; then the first alias that is set
        if raw is not None and raw != "":
            break
        name, raw = alias, os.environ.get(alias)
    if raw is None or raw == "":
        return setting.default
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not valid: {exc}", hint=setting.help) from None


def env_api_keys(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``MCPMETER_API_KEY_<NAME>`` variables as {name: key}, and the MCP gateway metrics-service's
    preshared keys ``METRICS_API_KEY_<SERVICE>`` named as it names them (``METRICS_API_KEY_AUTH_SERVER``
    -> ``auth-server``); for one name, mcpmeter's variable wins."""
    environ = os.environ if environ is None else environ
    keys: dict[str, str] = {}
    for prefix, name_of in (("METRICS_API_KEY_", lambda n: n.lower().replace("_", "-")), ("MCPMETER_API_KEY_", str.lower)):
        keys.update({
            name_of(name[len(prefix):]): value
            for name, value in environ.items()
            if name.startswith(prefix) and len(name) > len(prefix) and value
        })
    return keys


def markdown() -> str:
    """docs/settings.md, generated from SETTINGS (``python -m mcpmeter.settings > docs/settings.md``)."""
    lines = [
        "# Settings", "",
        "Every setting, in one table. Precedence: an explicit argument (Python keyword or CLI flag), then the",
        "environment variable, then the default. Generated from `src/mcpmeter/settings.py` with",
        "`python -m mcpmeter.settings > docs/settings.md`; a test fails when this file is out of date.", "",
        "| Variable | Default | Used by | Meaning |", "|---|---|---|---|",
    ]
    for s in SETTINGS.values():
        default = "–" if s.default is None else f"`{s.default}`"
        aliases = f" Also read from {', '.join(f'`{a}`' for a in s.aliases)} (the MCP gateway's name) when unset." if s.aliases else ""
        lines.append(f"| `{s.env}` | {default} | {s.used_by} | {s.help}{aliases} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
