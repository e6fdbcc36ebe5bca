"""/metrics scrape time, and what counting metrics costs ingest, in one run.

    python bench/bench_metrics.py [--servers 5] [--tools 200] [--scrapes 30] [--events 60000] [--repeat 3] [--json OUT]

1. Scrape: a real ``python -m mcpmeter serve`` subprocess (temp MCPMETER_HOME and --db,
   127.0.0.1 only) receives tool calls of ``--servers`` x ``--tools`` tools (every tool called
   with several durations, one tool in five also failing with one of two error types, plus
   handshakes, tools/list, auth and sdk.dropped events per server), then ``GET /metrics`` is
   timed ``--scrapes`` times on one keep-alive connection, plain and with
   ``Accept-Encoding: gzip`` (as Prometheus asks), wall clock and the collector's CPU time per
   scrape (psutil; steadier on a shared machine). Target: <= 50 ms. For reference, the same
   registry is rendered in-process by our exposition and by prometheus_client's generic
   ``generate_latest`` (thread CPU time; the ratio is why /metrics does not use the latter).
2. Ingest cost: the same collector with ``MCPMETER_METRICS=true`` and ``=false`` (the writer
   hook is not installed at all), alternating, ``--repeat`` times each; 4 client threads POST
   500-event batches (pre-encoded; unique ids by one ``bytes.replace`` per request) until
   ``--events`` were accepted. Reported: median events/s and collector CPU per event of each,
   and their ratios; plus, in-process, the writer thread's time per event for storing a batch
   and for the metrics hook counting it.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port, log, machine_line, median, table, verdict, write_json

TARGET_SCRAPE_MS = 50.0
MARK = b"QQQQQQQQ"


class Collector:
    def __init__(self, tmp: Path, metrics: bool) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
        env.update(MCPMETER_HOME=str(tmp / "home"), MCPMETER_METRICS="true" if metrics else "false")
        with open(tmp / f"collector-{self.port}.log", "wb") as log:  # the collector keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mcpmeter", "serve", "--port", str(self.port), "--db", str(tmp / f"store-{self.port}.db"),
                 "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("collector did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def post(port: int, body: bytes) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/events", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    assert response.status == 200, data
    return json.loads(data)


# ---- 1. scrape time --------------------------------------------------------------------------

def catalog_events(servers: int, tools: int, now_ms: int) -> list[dict]:
    rng = random.Random(7)
    events = []
    ids = itertools.count()
    for s in range(servers):
        server = f"server-{s}"
        for t in range(tools):
            tool = f"tool_{t:03d}"
            for _ in range(3):
                events.append({"id": f"c{next(ids)}", "kind": "tool_call", "ts": now_ms - rng.randrange(600_000),
                               "server": server, "tool": tool, "ok": True, "duration_ms": rng.lognormvariate(3, 1.5)})
            if t % 5 == 0:
                events.append({"id": f"c{next(ids)}", "kind": "tool_call", "ts": now_ms - rng.randrange(600_000),
                               "server": server, "tool": tool, "ok": False, "error_type": rng.choice(["TimeoutError", "ValueError"]),
                               "duration_ms": rng.lognormvariate(5, 1)})
        for i in range(20):
            sid, t0 = f"{server}-s{i}", now_ms - rng.randrange(600_000)
            events += [{"id": f"c{next(ids)}", "kind": "initialize", "ts": t0, "server": server, "session_id": sid, "duration_ms": 2.0},
                       {"id": f"c{next(ids)}", "kind": "list_tools", "ts": t0 + 40, "server": server, "session_id": sid, "duration_ms": 5.0},
                       {"id": f"c{next(ids)}", "kind": "tool_call", "ts": t0 + 900, "server": server, "session_id": sid,
                        "tool": "tool_000", "ok": True, "duration_ms": 20.0}]
        for method in ("oauth", "api_key"):
            events.append({"id": f"c{next(ids)}", "kind": "auth", "ts": now_ms, "server": server, "ok": True,
                           "duration_ms": 30.0, "attributes": {"method": method}})
        events.append({"id": f"c{next(ids)}", "kind": "sdk.dropped", "ts": now_ms, "server": server, "attributes": {"queue_full": 3}})
    return events


def bench_scrape(args, tmp: Path) -> dict:
    from prometheus_client import generate_latest
    from starlette.testclient import TestClient

    from mcpmeter.server.collector import create_app
    from mcpmeter.server.exporters.prometheus import exposition
    from mcpmeter.storage import open_store

    events = catalog_events(args.servers, args.tools, int(time.time() * 1000))
    bodies = [json.dumps(events[i:i + 5000]).encode() for i in range(0, len(events), 5000)]
    c = Collector(tmp, metrics=True)
    try:
        for body in bodies:
            post(c.port, body)
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
        results = {}
        proc = psutil.Process(c.process.pid)
        for label, headers in (("plain", {}), ("gzip", {"Accept-Encoding": "gzip"})):
            times, size = [], 0
            before = proc.cpu_times()
            for _ in range(args.scrapes):
                start = time.perf_counter()
                conn.request("GET", "/metrics", headers=headers)
                response = conn.getresponse()
                body = response.read()
                times.append((time.perf_counter() - start) * 1000)
                assert response.status == 200
                size = len(body)
            after = proc.cpu_times()
            cpu_ms = (after.user + after.system - before.user - before.system) / args.scrapes * 1000
            results[label] = {"median_ms": median(times), "min_ms": min(times), "bytes": size, "collector_cpu_ms": cpu_ms}
            if label == "plain":
                text = body.decode()
                results["lines"] = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
                results["tool_series"] = text.count("mcp_tool_executions_total{")
    finally:
        c.stop()

    # In-process, the same data: our exposition against prometheus_client's generic one.
    store = open_store(str(tmp / "inprocess.db"))
    with TestClient(create_app(store), base_url="http://127.0.0.1", client=("127.0.0.1", 5000)) as client:  # a loopback request: trusted without a key
        for body in bodies:
            client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
        exporter = client.app.state.collector.metrics.prometheus
        project = store.project_by_name("default")
        registry = exporter.registry_for(project.id, project.name)
        ours, theirs = [], []
        for _ in range(max(3, args.scrapes // 5)):  # CPU time of this thread: steadier than the clock on a busy machine
            start = time.thread_time()
            exposition(registry, exporter.labelstr)
            ours.append((time.thread_time() - start) * 1000)
            start = time.thread_time()
            generate_latest(registry)
            theirs.append((time.thread_time() - start) * 1000)
    store.close()
    results["render_ours_ms"] = median(ours)
    results["render_prometheus_client_ms"] = median(theirs)
    return results


# ---- 2. ingest cost -------------------------------------------------------------------------

def ingest_template(batch: int, now_ms: int) -> bytes:
    rng = random.Random(3)
    events = []
    for i in range(batch):
        kind = "tool_call" if rng.random() < 0.97 else rng.choice(["list_tools", "initialize"])
        e = {"id": f"{MARK.decode()}-{i:05d}", "kind": kind, "ts": now_ms - rng.randrange(3_600_000),
             "server": rng.choice(["weblab", "docs-search", "github-tools"]), "duration_ms": round(rng.lognormvariate(3, 1.2), 3),
             "ok": rng.random() > 0.05, "session_id": f"s{rng.randrange(600):04d}", "user": f"user-{rng.randrange(300)}",
             "client_name": rng.choice(["claude-desktop", "cursor"])}
        if kind == "tool_call":
            e["tool"] = f"tool_{rng.randrange(13)}"
        if not e["ok"]:
            e["error_type"] = rng.choice(["TimeoutError", "ValueError"])
        events.append(e)
    return json.dumps(events).encode()


def run_ingest(port: int, template: bytes, batch: int, total: int, clients: int = 4) -> tuple[float, int]:
    counter = itertools.count()
    accepted = [0] * clients
    stop_at = time.monotonic() + 120

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while sum(accepted) < total and time.monotonic() < stop_at:
            body = template.replace(MARK, f"{next(counter):08x}".encode())
            conn.request("POST", "/v1/events", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status == 200:
                accepted[n] += json.loads(data)["accepted"]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(accepted) / (time.perf_counter() - start), sum(accepted)


def bench_ingest(args, tmp: Path) -> dict:
    """Wall-clock events/s moves with whatever else the machine runs; the collector's own CPU
    time per event (user + system, all threads, from psutil) does much less, so the cost of
    metrics is the ratio of CPU time per event with and without them."""
    template = ingest_template(500, int(time.time() * 1000))
    rates: dict[str, list[float]] = {"on": [], "off": []}
    cpu_us: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.repeat):
        for label in ("on", "off"):
            c = Collector(tmp, metrics=label == "on")
            try:
                run_ingest(c.port, template, 500, 5000)  # warm-up
                proc = psutil.Process(c.process.pid)
                before = proc.cpu_times()
                rate, accepted = run_ingest(c.port, template, 500, args.events)
                after = proc.cpu_times()
            finally:
                c.stop()
            rates[label].append(rate)
            cpu_us[label].append((after.user + after.system - before.user - before.system) / accepted * 1e6)
            log(f"  ingest metrics={label}: {rate:,.0f} events/s, {cpu_us[label][-1]:.1f} us collector CPU per event")
    return {"events_per_s_on": median(rates["on"]), "events_per_s_off": median(rates["off"]),
            "cpu_us_on": median(cpu_us["on"]), "cpu_us_off": median(cpu_us["off"]),
            "cpu_ratio": median(cpu_us["on"]) / median(cpu_us["off"]), "runs": {"events_per_s": rates, "cpu_us": cpu_us}}


def bench_hook(tmp: Path, events: int = 40_000) -> dict:
    """In-process, in the writer thread's terms: storing batches vs counting them for metrics."""
    from mcpmeter.events import decode_batch
    from mcpmeter.ingest import rows_for
    from mcpmeter.server.commits import Commit
    from mcpmeter.server.exporters.aggregate import MetricsState
    from mcpmeter.storage import open_store

    store = open_store(str(tmp / "hook.db"))
    project = store.ensure_project("default")
    template = ingest_template(500, int(time.time() * 1000))
    batches = [rows_for(project, decode_batch(template.replace(MARK, f"{n:08x}".encode()))[0]) for n in range(events // 500)]
    store_s, hook_s = [], []
    state = MetricsState()
    for rows in batches:
        stored: dict = {}
        start = time.perf_counter()
        store.ingest([(project.id, rows)], stored)
        store_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        state.committed(Commit(stored, len(rows), 0.0))
        hook_s.append(time.perf_counter() - start)
    store.close()
    return {"store_us": median(store_s) / 500 * 1e6, "hook_us": median(hook_s) / 500 * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=5)
    parser.add_argument("--tools", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcpmeter-bench-metrics-") as tmp:
        log("scrape ...")
        scrape = bench_scrape(args, Path(tmp))
        log("ingest with and without metrics ...")
        ingest = bench_ingest(args, Path(tmp))
        hook = bench_hook(Path(tmp))
    print(f"# /metrics ({args.servers} servers x {args.tools} tools; {machine_line()})")
    print(table(["measure", "value"], [
        ["tool series (mcp_tool_executions_total)", scrape["tool_series"]],
        ["samples in the exposition", f"{scrape['lines']:,}"],
        ["scrape median, plain (wall)", f"{scrape['plain']['median_ms']:.1f} ms ({scrape['plain']['bytes'] / 1e6:.2f} MB)"],
        ["scrape median, gzip (wall)", f"{scrape['gzip']['median_ms']:.1f} ms ({scrape['gzip']['bytes'] / 1e6:.2f} MB)"],
        ["collector CPU per scrape, plain / gzip", f"{scrape['plain']['collector_cpu_ms']:.1f} / {scrape['gzip']['collector_cpu_ms']:.1f} ms"],
        ["render in-process (CPU), ours", f"{scrape['render_ours_ms']:.1f} ms"],
        ["render in-process (CPU), prometheus_client", f"{scrape['render_prometheus_client_ms']:.1f} ms "
                                                        f"({scrape['render_prometheus_client_ms'] / scrape['render_ours_ms']:.1f}x ours)"],
        [f"target: scrape <= {TARGET_SCRAPE_MS:.0f} ms (wall, gzip)", verdict(scrape['gzip']['median_ms'] <= TARGET_SCRAPE_MS)],
        [f"target: scrape <= {TARGET_SCRAPE_MS:.0f} ms (collector CPU, gzip)", verdict(scrape['gzip']['collector_cpu_ms'] <= TARGET_SCRAPE_MS)],
    ]))
    print()
    print("# ingest with metrics on / off (4 clients, 500-event batches)")
    print(table(["metrics", "events/s (median)", "collector CPU per event"], [
        ["on", f"{ingest['events_per_s_on']:,.0f}", f"{ingest['cpu_us_on']:.1f} us"],
        ["off", f"{ingest['events_per_s_off']:,.0f}", f"{ingest['cpu_us_off']:.1f} us"],
        ["ratio on/off", f"{ingest['events_per_s_on'] / ingest['events_per_s_off']:.3f}", f"{ingest['cpu_ratio']:.3f}"],
    ]))
    print()
    print("# writer thread, in-process, per event (500-event batches, SQLite synchronous=FULL)")
    print(table(["step", "time per event"], [
        ["store.ingest (insert + rollups + commit)", f"{hook['store_us']:.2f} us"],
        ["metrics hook (counting what was stored)", f"{hook['hook_us']:.2f} us ({hook['hook_us'] / hook['store_us']:.1%} of storing)"],
    ]))
    write_json(args.json, {"scrape": scrape, "ingest": ingest, "hook": hook, "target_scrape_ms": TARGET_SCRAPE_MS})


if __name__ == "__main__":
    main()
