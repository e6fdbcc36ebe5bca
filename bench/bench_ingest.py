"""Collector end-to-end ingest against raw sqlite3, in one run.

    python bench/bench_ingest.py [--events 400000] [--batch 500] [--clients 8] [--max-seconds 20] [--repeat 3]
                                 [--baseline OTHER_TREE/src] [--json OUT]

1. Reference: raw ``sqlite3`` ``executemany`` of the same rows into a table with the same 22
   columns as our ``events`` table and an index on (project_id, ts); WAL, synchronous=FULL,
   one transaction per 10,000 rows. Rows are built before the clock starts. A second
   reference adds the unique (project_id, event_id) index our table has, with INSERT OR IGNORE.
2. mcpmeter: a real ``python -m mcpmeter serve`` subprocess (MCPMETER_HOME and --db in a
   temp dir, 127.0.0.1 only), driven by ``--clients`` threads on keep-alive HTTP/1.1
   connections, each POSTing ``--batch``-event JSON batches with an ingest API key until
   ``--events`` were sent or ``--max-seconds`` passed. Every 2xx is a durable commit
   (synchronous=FULL); the events counted are those the collector answered ``accepted`` for,
   and the stored row count is checked against them at the end.

Bodies are pre-encoded: a few templates of realistic events (several servers, tools, users,
clients, sessions, errors, attributes), whose fixed-width id prefix is replaced by the request's
sequence number, so every event id is unique for one ``bytes.replace`` per request. The
load generator's CPU time is reported so it is clear it is not the bottleneck; the
collector's RSS is sampled with psutil every 50 ms and its peak reported.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port, log, machine_line, median, table, verdict, wait_ready, write_json

TARGET_EVENTS_PER_S = 100_000
MARK = b"QQQQQQQQ"  # replaced by the request's sequence number (8 hex digits)
TEMPLATES = 16

SERVERS = {
    ("weblab", "1.4.2"): [("search", "rag"), ("fetch_page", "web"), ("summarize", "llm"), ("extract_links", "web")],
    ("docs-search", "0.9.0"): [("search_docs", "rag"), ("get_page", "docs"), ("list_versions", None)],
    ("github-tools", "2.1.0"): [("list_issues", "github"), ("create_issue", "github"), ("read_file", "fs"),
                                ("search_code", "github"), ("get_pr", "github"), ("comment", "github")],
}
CLIENTS = [("claude-desktop", "0.12.1"), ("cursor", "1.3.0"), ("vscode-copilot", "1.101"), ("mcp-inspector", "0.16.0")]
ERRORS = [("TimeoutError", "upstream did not answer within 30s"), ("ValueError", "query must not be empty"),
          ("PermissionError", "token lacks repo scope")]
USERS = 300
SESSIONS = 600


def make_sessions(rng: random.Random) -> list[dict]:
    """Sessions as a server sees them: one user, client, server and transport each."""
    sessions = []
    for _ in range(SESSIONS):
        (server, version) = rng.choice(list(SERVERS))
        client, client_version = rng.choice(CLIENTS)
        sessions.append({"session_id": f"{rng.getrandbits(64):016x}", "server": server, "server_version": version,
                         "client_name": client, "client_version": client_version, "protocol_version": "2025-06-18",
                         "transport": rng.choice(("stdio", "streamable-http")), "user": f"user-{rng.randrange(USERS)}@example.com"})
    return sessions


def make_event(rng: random.Random, sessions: list[dict], i: int, now_ms: int) -> dict:
    session = rng.choice(sessions)
    roll = rng.random()
    kind = "tool_call" if roll < 0.97 else "list_tools" if roll < 0.99 else "initialize"
    event = {
        "id": f"{MARK.decode()}{i:04x}{rng.getrandbits(80):020x}",
        "kind": kind,
        "ts": now_ms - rng.randrange(3_600_000),
        "server": session["server"],
        "server_version": session["server_version"],
    }
    if kind == "tool_call":
        tool, category = rng.choice(SERVERS[(session["server"], session["server_version"])])
        ok = rng.random() > 0.04
        event.update({"tool": tool, "duration_ms": round(rng.lognormvariate(3.5, 1.0), 3), "ok": ok,
                      "args_bytes": rng.randrange(20, 2000), "result_bytes": rng.randrange(50, 50_000)})
        if category:
            event["category"] = category
        if not ok:
            event["error_type"], event["error_message"] = rng.choice(ERRORS)
    else:
        event["duration_ms"] = round(rng.lognormvariate(1.0, 0.5), 3)
    event.update({k: v for k, v in session.items() if k not in ("server", "server_version")})
    if rng.random() < 0.1:
        event["attributes"] = {"region": rng.choice(("eu", "us")), "cache_hit": rng.random() < 0.5}
    return event


def templates(batch: int, now_ms: int) -> list[bytes]:
    rng = random.Random(42)
    sessions = make_sessions(rng)
    return [json.dumps([make_event(rng, sessions, i, now_ms) for i in range(batch)], separators=(",", ":")).encode()
            for _ in range(TEMPLATES)]


def body_for(bodies: list[bytes], seq: int) -> bytes:
    return bodies[seq % len(bodies)].replace(MARK, b"%08x" % seq)


# ---- reference: raw sqlite3 ----------------------------------------------------------------

_REF_SCHEMA = """
CREATE TABLE events (
    project_id INTEGER NOT NULL, event_id TEXT NOT NULL, kind TEXT NOT NULL, ts INTEGER NOT NULL,
    server TEXT NOT NULL, server_version TEXT, tool TEXT, category TEXT, duration_ms REAL, ok INTEGER,
    error_type TEXT, error_message TEXT, session_id TEXT, client_name TEXT, client_version TEXT,
    protocol_version TEXT, transport TEXT, user_hash TEXT, args_bytes INTEGER, result_bytes INTEGER,
    attributes TEXT, received_at INTEGER NOT NULL
);
CREATE INDEX events_by_time ON events (project_id, ts);
"""


def reference_rows(bodies: list[bytes], batches: int) -> list[list[tuple]]:
    """The same events as the HTTP run, as 22-column rows (user hashed as the collector would).

    Rows of one template share every value but the id, so 400k rows take ~150 MB, not ~500.
    """
    import hashlib

    templates_rows = []
    for body in bodies:
        rows = []
        for e in json.loads(body):
            attrs = e.get("attributes")
            rows.append((1, e["id"], e["kind"], e["ts"], e["server"], e.get("server_version"), e.get("tool"),
                         e.get("category"), e.get("duration_ms"), None if e.get("ok") is None else int(e["ok"]),
                         e.get("error_type"), e.get("error_message"), e.get("session_id"), e.get("client_name"),
                         e.get("client_version"), e.get("protocol_version"), e.get("transport"),
                         hashlib.sha256(e["user"].encode()).hexdigest()[:32], e.get("args_bytes"),
                         e.get("result_bytes"), json.dumps(attrs) if attrs else None, 0))
        templates_rows.append(rows)
    mark = MARK.decode()
    return [[(1, r[1].replace(mark, f"{seq:08x}"), *r[2:]) for r in templates_rows[seq % len(bodies)]]
            for seq in range(batches)]


def run_reference(path: Path, batches: list[list[tuple]], unique_id: bool, per_commit_rows: int = 10_000) -> dict:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for stmt in _REF_SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    verb = "INSERT"
    if unique_id:
        conn.execute("CREATE UNIQUE INDEX events_by_id ON events (project_id, event_id)")
        verb = "INSERT OR IGNORE"
    sql = f"{verb} INTO events VALUES ({', '.join('?' * 22)})"
    total = sum(len(b) for b in batches)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    pending = 0
    conn.execute("BEGIN IMMEDIATE")
    for rows in batches:
        conn.executemany(sql, rows)
        pending += len(rows)
        if pending >= per_commit_rows:
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            pending = 0
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    assert stored == total, (stored, total)
    return {"events": total, "seconds": elapsed, "events_per_s": total / elapsed, "cpu_us_per_event": cpu / total * 1e6}


# ---- mcpmeter: the collector subprocess ----------------------------------------------------


WORKERS = 1  # --workers: collector processes (`mcpmeter serve --workers N`)


def start_collector(tmp: Path, port: int, src: str | None = None) -> tuple[subprocess.Popen, Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
    env["MCPMETER_HOME"] = str(tmp)
    env["MCPMETER_RATE_LIMIT_PER_KEY"] = "0"  # raw throughput: the limit (1000 requests/min) is measured in bench_security
    if src:  # another source tree (e.g. a `git worktree` of an older commit), for A/B runs
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    logfile = tmp / "serve.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcpmeter", "serve", "--host", "127.0.0.1", "--port", str(port), "--db", str(tmp / "x.db"),
             *(["--workers", str(WORKERS)] if WORKERS > 1 else [])],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    wait_ready(proc, port, logfile)
    return proc, logfile


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.every = every
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append(self.proc.memory_info().rss)
            except psutil.Error:
                return
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_load(port: int, key: str, bodies: list[bytes], batches: int, clients: int, max_seconds: float) -> dict:
    seq = itertools.count()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    lock = threading.Lock()
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0, "requests": 0, "failed": 0}
    latencies: list[float] = []
    client_ns = [0]  # time spent building bodies on the client side
    errors: list[str] = []
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = {k: 0 for k in totals}
        lat: list[float] = []
        build = 0
        try:
            while time.monotonic() < deadline:
                n = next(seq)
                if n >= batches:
                    break
                t0 = time.perf_counter_ns()
                body = body_for(bodies, n)
                t1 = time.perf_counter_ns()
                build += t1 - t0
                conn.request("POST", "/v1/events", body, headers)
                resp = conn.getresponse()
                data = resp.read()
                lat.append((time.perf_counter_ns() - t1) / 1e6)
                mine["requests"] += 1
                if resp.status // 100 != 2:
                    mine["failed"] += 1
                    if len(errors) < 5:
                        errors.append(f"{resp.status}: {data[:300]!r}")
                    continue
                answer = json.loads(data)
                mine["accepted"] += answer["accepted"]
                mine["duplicates"] += answer["duplicates"]
                mine["rejected"] += len(answer["rejected"])
        except Exception as exc:  # reported, not raised: the other clients keep going
            errors.append(f"client error: {exc!r}")
        finally:
            conn.close()
            with lock:
                for k, v in mine.items():
                    totals[k] += v
                latencies.extend(lat)
                client_ns[0] += build

    threads = [threading.Thread(target=worker, name=f"client-{i}") for i in range(clients)]
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    latencies.sort()
    return {
        **totals, "seconds": elapsed, "events_per_s": totals["accepted"] / elapsed,
        "client_cpu_s": cpu, "client_cpu_share_of_machine": cpu / (elapsed * (os.cpu_count() or 1)),
        "client_build_us_per_request": client_ns[0] / 1e3 / max(totals["requests"], 1),
        "latency_ms_p50": latencies[len(latencies) // 2] if latencies else None,
        "latency_ms_p99": latencies[int(len(latencies) * 0.99)] if latencies else None,
        "errors": errors,
    }


def run_collector(tmp: Path, bodies: list[bytes], batches: int, clients: int, max_seconds: float,
                  src: str | None = None) -> dict:
    port = free_port()
    proc, logfile = start_collector(tmp, port, src)
    sampler = RssSampler(proc.pid)
    try:
        ps = psutil.Process(proc.pid)
        idle_rss = ps.memory_info().rss
        from mcpmeter import credentials

        key = credentials.key_for(f"http://127.0.0.1:{port}", "ingest", tmp / "credentials.json")
        assert key, "the collector did not save an ingest key"
        # warm-up outside the clock (first-request imports, caches), with ids the run never uses
        run_load(port, key, [bodies[0].replace(MARK, b"ffffffff")], 1, 1, 10)
        cpu_before = ps.cpu_times()
        sampler.start()
        result = run_load(port, key, bodies, batches, clients, max_seconds)
        sampler.stop()
        cpu_after = ps.cpu_times()
        server_cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    finally:
        if sampler.is_alive():
            sampler.stop()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    conn = sqlite3.connect(tmp / "x.db")
    stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    result.update({
        "stored_rows": stored, "warmup_rows": 1 * len(json.loads(bodies[0])),
        "idle_rss_mb": idle_rss / 2**20, "peak_rss_mb": max(sampler.samples) / 2**20 if sampler.samples else None,
        "server_cpu_s": server_cpu, "server_cpu_us_per_event": server_cpu / max(result["accepted"], 1) * 1e6,
        "rss_samples": len(sampler.samples),
    })
    if result["errors"]:
        log("[ingest] errors:", *result["errors"][:5], sep="\n  ")
        log(logfile.read_text()[-3000:])
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=400_000, help="events to send per run (rounded down to whole batches)")
    parser.add_argument("--batch", type=int, default=500, help="events per request")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive HTTP connections")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop sending after this long (per run)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side; medians are reported")
    parser.add_argument("--baseline", metavar="SRC", help="also run, interleaved, the collector from this source tree "
                        "(e.g. `git archive HEAD src | tar -x -C /tmp/before`, then /tmp/before/src), for before/after figures")
    parser.add_argument("--workers", type=int, default=1, help="collector worker processes (serve --workers)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    global WORKERS
    WORKERS = args.workers

    batches = args.events // args.batch
    load = os.getloadavg()
    now_ms = int(time.time() * 1000)
    bodies = templates(args.batch, now_ms)
    t0 = time.perf_counter_ns()
    for n in range(1000):
        body_for(bodies, n)
    build_us = (time.perf_counter_ns() - t0) / 1000 / 1e3
    log(f"[ingest] {batches} batches x {args.batch} events, {args.clients} clients, body {len(bodies[0]) / 1024:.0f} KiB, "
        f"{build_us:.0f} us to build one body")
    ref_rows = reference_rows(bodies, batches)

    sides = ("sqlite", "sqlite_unique", "mcpmeter") + (("baseline",) if args.baseline else ())
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory(prefix="mcpmeter-bench-ingest-") as root:
        for r in range(args.repeat):
            for name in sides:
                tmp = Path(root) / f"{name}-{r}"
                tmp.mkdir()
                log(f"[ingest] run {r + 1}/{args.repeat}: {name} ...")
                if name in ("mcpmeter", "baseline"):
                    src = args.baseline if name == "baseline" else None
                    res = run_collector(tmp, bodies, batches, args.clients, args.max_seconds, src)
                    log(f"    {res['accepted']} events in {res['seconds']:.2f}s = {res['events_per_s']:,.0f}/s, "
                        f"peak RSS {res['peak_rss_mb']:.0f} MiB, client CPU {res['client_cpu_s']:.1f}s, "
                        f"server CPU {res['server_cpu_s']:.1f}s")
                else:
                    res = run_reference(tmp / "ref.db", ref_rows, unique_id=name == "sqlite_unique")
                    log(f"    {res['events']} rows in {res['seconds']:.2f}s = {res['events_per_s']:,.0f}/s, "
                        f"{res['cpu_us_per_event']:.1f} CPU-us per row")
                runs[name].append(res)
    del ref_rows

    med = {name: median([r["events_per_s"] for r in rs]) for name, rs in runs.items()}
    cpu = {name: median([r["server_cpu_us_per_event" if "server_cpu_us_per_event" in r else "cpu_us_per_event"] for r in rs])
           for name, rs in runs.items()}
    m = runs["mcpmeter"]
    peak_rss = max(r["peak_rss_mb"] for r in m)
    ratio = med["mcpmeter"] / med["sqlite"]
    ratio_u = med["mcpmeter"] / med["sqlite_unique"]
    complete = all(r["stored_rows"] == r["accepted"] + r["warmup_rows"] and r["failed"] == 0
                   and r["duplicates"] == 0 and r["rejected"] == 0 for r in m)

    print(f"\nEnd-to-end ingest, {args.batch}-event batches, {args.clients} clients  ({machine_line()})")
    print(f"{args.repeat} runs of up to {batches * args.batch:,} events or {args.max_seconds:.0f} s each, medians; "
          f"durable: synchronous=FULL, WAL; load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}\n")
    rows = [
        ["raw sqlite3 executemany (ts index)", f"{med['sqlite']:,.0f}", "1.00", f"{cpu['sqlite']:.1f}"],
        ["raw sqlite3 + unique id index, OR IGNORE", f"{med['sqlite_unique']:,.0f}", f"{med['sqlite_unique'] / med['sqlite']:.2f}",
         f"{cpu['sqlite_unique']:.1f}"],
        ["mcpmeter serve over HTTP (2xx = committed)", f"{med['mcpmeter']:,.0f}", f"{ratio:.2f}", f"{cpu['mcpmeter']:.1f}"],
    ]
    if args.baseline:
        rows.append([f"baseline collector ({args.baseline})", f"{med['baseline']:,.0f}", f"{med['baseline'] / med['sqlite']:.2f}",
                     f"{cpu['baseline']:.1f}"])
    print(table(["path", "events/s", "/ raw sqlite3", "CPU-us/event"], rows))
    print()
    print(f"mcpmeter / raw sqlite3 = {ratio:.2f}; / raw sqlite3 with our unique index = {ratio_u:.2f}")
    print(f"target >= {TARGET_EVENTS_PER_S:,} events/s end-to-end: {verdict(med['mcpmeter'] >= TARGET_EVENTS_PER_S)}")
    print(f"collector RSS: idle {median([r['idle_rss_mb'] for r in m]):.0f} MiB, peak under load {peak_rss:.0f} MiB "
          f"(psutil, every 50 ms, {sum(r['rss_samples'] for r in m)} samples)")
    print(f"request latency: p50 {median([r['latency_ms_p50'] for r in m]):.1f} ms, p99 {median([r['latency_ms_p99'] for r in m]):.1f} ms")
    print(f"load generator: {median([r['client_cpu_s'] / r['seconds'] for r in m]):.2f} CPU-s per second "
          f"({median([r['client_cpu_share_of_machine'] for r in m]) * 100:.0f}% of the machine), "
          f"{median([r['client_build_us_per_request'] for r in m]):.0f} us to build a body; "
          f"collector: {median([r['server_cpu_us_per_event'] for r in m]):.1f} CPU-us per event")
    print(f"every accepted event stored, no failures or duplicates: {complete}")
    if args.baseline:
        print(f"mcpmeter / baseline: events/s {med['mcpmeter'] / med['baseline']:.2f}, "
              f"CPU per event {cpu['mcpmeter'] / cpu['baseline']:.2f}")
    out = {"benchmark": "ingest", "batch": args.batch, "clients": args.clients, "events": batches * args.batch,
           "medians_events_per_s": med, "medians_cpu_us_per_event": cpu, "ratio_vs_sqlite": ratio, "ratio_vs_sqlite_unique": ratio_u,
           "peak_rss_mb": peak_rss, "idle_rss_mb": median([r["idle_rss_mb"] for r in m]), "runs": runs, "complete": complete,
           "load_average": [load[0], os.getloadavg()[0]],
           "targets_met": med["mcpmeter"] >= TARGET_EVENTS_PER_S and complete}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
