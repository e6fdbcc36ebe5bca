"""Shared by the exporter tests: a known event set with its expected numbers, reading /metrics,
and real promtool / Prometheus processes (missing binaries FAIL the tests: `make test` installs them)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, free_port

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mcp-analytics.json"
_ids = itertools.count()


def require(binary: str) -> str:
    path = shutil.which(binary)
    assert path, f"{binary} is not installed: run `make test` (it installs Debian's `prometheus` package), or apt-get install prometheus"
    return path


def wait_for(check, what: str, timeout: float = 30.0, interval: float = 0.05):
    """Poll ``check()`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


# ---- events with known answers -----------------------------------------------------------------

TOOLS = {"weblab": ["search", "fetch_page", "summarize"], "docs": ["search_docs", "get_page"]}
DURATIONS_MS = (3.0, 7.5, 40.0, 250.0, 1200.0)


@dataclass
class Expected:
    calls: Counter = field(default_factory=Counter)  # (server, tool, "true"/"false") -> n
    durations: dict = field(default_factory=dict)  # (server, tool) -> [ms, ...]
    discovery: Counter = field(default_factory=Counter)  # (server, success)
    auth: Counter = field(default_factory=Counter)  # (server, method, success)
    steps: Counter = field(default_factory=Counter)  # (server, step) -> sessions
    step_ms: dict = field(default_factory=dict)  # (server, step) -> [ms, ...]
    drops: Counter = field(default_factory=Counter)  # (server, reason)
    operations: Counter = field(default_factory=Counter)  # (server, method, tool, error_type)
    events: int = 0
    rejected: int = 0

    def merge(self, other: Expected) -> None:
        for name in ("calls", "discovery", "auth", "steps", "drops", "operations"):
            getattr(self, name).update(getattr(other, name))
        for name in ("durations", "step_ms"):
            for key, values in getattr(other, name).items():
                getattr(self, name).setdefault(key, []).extend(values)
        self.events += other.events
        self.rejected += other.rejected


def uid(prefix: str = "e") -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns()}"


def dataset(now_ms: int | None = None, sessions: int = 2) -> tuple[list[dict], Expected]:
    """Tool calls (ok and failed) of every tool, handshakes, auth events, SDK drops, one invalid event."""
    now_ms = now_ms or int(time.time() * 1000)
    events: list[dict] = []
    exp = Expected()
    base = now_ms - 60_000
    for server, tools in TOOLS.items():
        for t, tool in enumerate(tools):
            for i, d in enumerate(DURATIONS_MS[: 3 + t]):
                ok = i != 1 or t == 0  # every tool but the first has one failure
                e = {"id": uid(), "kind": "tool_call", "ts": base + i, "server": server, "tool": tool,
                     "duration_ms": d, "ok": ok}
                if not ok:
                    e["error_type"] = "TimeoutError"
                events.append(e)
                exp.calls[(server, tool, "true" if ok else "false")] += 1
                exp.durations.setdefault((server, tool), []).append(d)
                exp.operations[(server, "tools/call", tool, "" if ok else "TimeoutError")] += 1
        for s in range(sessions):
            sid = uid("sess")
            t0 = base + 1000 * s
            events += [
                {"id": uid(), "kind": "initialize", "ts": t0, "server": server, "session_id": sid, "duration_ms": 2.0},
                {"id": uid(), "kind": "list_tools", "ts": t0 + 150, "server": server, "session_id": sid, "duration_ms": 4.0},
                {"id": uid(), "kind": "tool_call", "ts": t0 + 900, "server": server, "session_id": sid,
                 "tool": tools[0], "duration_ms": 30.0, "ok": True},
            ]
            exp.calls[(server, tools[0], "true")] += 1
            exp.durations[(server, tools[0])].append(30.0)
            exp.discovery[(server, "true")] += 1
            exp.operations[(server, "initialize", "", "")] += 1
            exp.operations[(server, "tools/list", "", "")] += 1
            exp.operations[(server, "tools/call", tools[0], "")] += 1
            for step, ms in (("initialize_to_tools_list", 150), ("tools_list_to_tools_call", 750), ("initialize_to_tools_call", 900)):
                exp.steps[(server, step)] += 1
                exp.step_ms.setdefault((server, step), []).append(ms)
        events.append({"id": uid(), "kind": "list_tools", "ts": base, "server": server, "duration_ms": 90.0, "ok": False,
                       "error_type": "internal_error"})
        exp.discovery[(server, "false")] += 1
        exp.operations[(server, "tools/list", "", "internal_error")] += 1
        for method, ok, d in (("oauth", True, 35.0), ("oauth", True, 60.0), ("api_key", False, 5.0)):
            events.append({"id": uid(), "kind": "auth", "ts": base, "server": server, "ok": ok, "duration_ms": d,
                           "attributes": {"method": method}})
            exp.auth[(server, method, "true" if ok else "false")] += 1
        events.append({"id": uid(), "kind": "sdk.dropped", "ts": base, "server": server,
                       "attributes": {"queue_full": 4, "sink_unavailable": 1}})
        exp.drops[(server, "queue_full")] += 4
        exp.drops[(server, "sink_unavailable")] += 1
    exp.events = len(events)
    events.append({"id": uid(), "kind": "tool_call", "ts": base, "server": "weblab"})  # no tool: rejected
    exp.rejected = 1
    return events, exp


# ---- talking to a collector ----------------------------------------------------------------------

def post(url: str, events: list[dict], key: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    r = httpx.post(url + "/v1/events", content=json.dumps(events).encode(), headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def scrape(url: str, key: str | None = None) -> str:
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(parsed: dict, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in parsed.items() if n == name and want <= ls)


def by(parsed: dict, name: str, *keys: str, **labels: str) -> Counter:
    want = set(labels.items())
    out: Counter = Counter()
    for (n, ls), v in parsed.items():
        if n == name and want <= ls:
            d = dict(ls)
            out[tuple(d.get(k, "") for k in keys)] += v
    return out


def promtool_check(text: str) -> None:
    done = subprocess.run([require("promtool"), "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


# ---- a real Prometheus -----------------------------------------------------------------------------

class Prometheus:
    """``prometheus`` on 127.0.0.1 with its own storage, scraping ``targets`` every second with
    the shipped deploy/prometheus/prometheus.yml (targets, key file and interval substituted)."""

    def __init__(self, tmp: Path, targets: list[str], key: str) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        key_file = tmp / "metrics-key"
        key_file.write_text(key + "\n")
        config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
        assert '["collector:9465"]' in config and "/run/secrets/metrics_key" in config
        config = (config.replace('["collector:9465"]', json.dumps(targets))
                  .replace("/run/secrets/metrics_key", str(key_file))
                  .replace("scrape_interval: 15s", "scrape_interval: 1s")
                  .replace("evaluation_interval: 15s", "evaluation_interval: 1s"))
        self.config = tmp / "prometheus.yml"
        self.config.write_text(config)
        shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp / "alerts.yml")  # the rule file it loads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        self.process: subprocess.Popen | None = None

    def check_config(self) -> None:
        done = subprocess.run([require("promtool"), "check", "config", str(self.config)], capture_output=True, timeout=60)
        assert done.returncode == 0, (done.stdout + done.stderr).decode()

    def __enter__(self) -> Prometheus:
        with open(self.log, "wb") as fh:
            self.process = subprocess.Popen(
                [require("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=fh, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            try:
                return httpx.get(self.url + "/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "prometheus to be ready")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> bool:
        r = httpx.get(self.url + "/api/v1/targets", timeout=10).json()
        active = r["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def scrapes_after(self, since: float) -> bool:
        """Every target was scraped successfully after ``since`` (Unix time)."""
        r = httpx.get(self.url + "/api/v1/targets", timeout=10).json()
        active = r["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" and _rfc3339(t["lastScrape"]) > since for t in active)


def _rfc3339(text: str) -> float:
    from datetime import datetime

    head, _, frac = text.partition(".")
    zone = "+00:00"
    if frac:
        digits = "".join(itertools.takewhile(str.isdigit, frac))
        zone = frac[len(digits):] or zone
        frac = "." + digits[:6]
    elif text.endswith("Z"):
        head = text[:-1]
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(head + frac + zone).timestamp()


def dashboard_exprs() -> list[tuple[str, str, dict]]:
    """(panel title, expr, target) of every query target in the shipped dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict]) -> Iterator[dict]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    return [(p["title"], t["expr"], t) for p in panels(dashboard["panels"]) for t in p.get("targets", [])]


GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$project": ".*", "$server": ".*"}


def substitute(expr: str) -> str:
    for name in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARS[name])
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
    return expr
