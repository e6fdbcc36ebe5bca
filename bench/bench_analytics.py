"""Analytics at scale: the 30-day summary from rollups vs a plain-SQL scan of the raw events.

    python bench/bench_analytics.py [--quick] [--sizes 1000000,10000000] [--runs 15] [--ref-runs 3]
                                    [--cache /tmp/mcpmeter-bench-analytics] [--refill] [--json OUT]

1. Fill: a real SQLite store (``open_store``, WAL, synchronous=NORMAL) per size with realistic
   events over 90 days: 5 servers × 8 tools, 6 clients, 2,000 users (a few heavy, most
   light), sessions of a handshake, a tools/list and a dozen calls, lognormal latencies per
   tool, 1-8 % failures. Rows are built in Python in storage order (``events.ROW_FIELDS``,
   users already hashed) and written with ``store.ingest`` in batches of ~50,000, so the
   figure is ingest WITH rollups (raw rows + hourly/daily cells + users + errors + sessions,
   one transaction per batch). Stores are cached under ``--cache`` (with the moment they were
   generated for) so reruns reuse them; ``--refill`` rebuilds.
2. Read, same run, same file, warm page cache:
   - mcpmeter: ``analytics.queries.summary`` over ``window("30d")`` (users, new/returning,
     calls, errors, latency percentiles, top tools with users and p50/p95/p99, the previous
     30 days and the change): median of ``--runs`` after two warm-up runs; the first run on
     the freshly opened store is reported too.
   - reference: one plain-SQL query on the raw ``events`` table for the same aligned window:
     per tool, count, distinct users, success rate and the nearest-rank p95 through a window
     function (``row_number() OVER (PARTITION BY server, tool ORDER BY duration_ms)``):
     median of ``--ref-runs``.
   The per-tool calls and users of both are compared, and the p95s must agree within the
   histogram's ±2.2 %.

Targets: the 30-day summary ≤ 50 ms median at 10M events, and flat from 1M to 10M.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, log, machine_line, median, table, verdict, write_json

sys.path.insert(0, str(ROOT / "src"))
from mcpmeter.analytics import queries
from mcpmeter.analytics.periods import window
from mcpmeter.analytics.queries import Query
from mcpmeter.histogram import RELATIVE_ERROR
from mcpmeter.storage import open_store

GENERATOR = 1  # bump when the generated data changes: cached stores of another version are rebuilt
DAYS = 90
DAY = 86_400_000
HOUR = 3_600_000
BATCH = 50_000
TARGET_MS = 50.0

SERVERS = {
    "weblab": ["search", "details", "allocations", "experiments", "metrics", "export", "compare", "audit"],
    "archon": ["rag_query", "create_task", "list_projects", "get_document", "update_task", "search_docs", "summarize", "link"],
    "github": ["list_issues", "create_issue", "get_pr", "review_pr", "search_code", "read_file", "list_commits", "merge_pr"],
    "postgres": ["query", "explain", "list_tables", "describe", "sample_rows", "vacuum_stats", "locks", "slow_queries"],
    "time": ["get_current_time", "convert_time", "list_zones", "parse_date", "add_duration", "business_days", "holidays", "sunrise"],
}
CLIENTS = [("claude-code", "2.1.0", 0.35), ("cursor", "1.7.2", 0.22), ("vscode-copilot", "1.104.0", 0.18),
           ("claude-desktop", "0.14.1", 0.12), ("windsurf", "1.12.0", 0.08), ("mcp-inspector", "0.17.0", 0.05)]
ERRORS = [("TimeoutError", "upstream did not answer within 30s"), ("ValidationError", "bad argument"),
          ("PermissionError", "token lacks scope"), ("HTTPError", "502 Bad Gateway from backend")]
PROTOCOLS = ["2025-06-18", "2025-11-25", "2026-07-28"]
USERS = 2_000


# ---- the data ------------------------------------------------------------------------------


def generate(total: int, anchor_ms: int, seed: int = 11, users: int = USERS):
    """Yield lists of rows (``events.ROW_FIELDS`` order), oldest first, ``total`` rows in all,
    from ``users`` distinct users."""
    rng = random.Random(seed)
    tools = [(server, tool, 10 ** rng.uniform(0.3, 3.0), rng.uniform(0.01, 0.08), rng.paretovariate(1.2))
             for server, names in SERVERS.items() for tool in names]
    hashes = [f"{rng.getrandbits(128):032x}" for _ in range(users)]
    user_weights = [rng.paretovariate(1.1) for _ in hashes]  # a few heavy users, many light ones
    client_weights = [w for _, _, w in CLIENTS]
    multipliers = [math.exp(rng.gauss(0, 0.6)) for _ in range(1 << 16)]
    start_day = anchor_ms - anchor_ms % DAY - (DAYS - 1) * DAY
    day_weights = [(0.5 + day / DAYS) * (1.0 if (start_day // DAY + day) % 7 < 5 else 0.4) for day in range(DAYS)]
    scale = total / sum(day_weights)
    counts = [int(w * scale) for w in day_weights]
    counts[-1] += total - sum(counts)
    by_server: dict[str, list] = {}
    for t in tools:
        by_server.setdefault(t[0], []).append(t)
    servers = list(by_server)
    server_weights = [sum(t[4] for t in by_server[s]) for s in servers]
    seq = 0
    pending: list[tuple] = []
    for day, count in enumerate(counts):
        day_ms = start_day + day * DAY
        span = max(HOUR, anchor_ms - day_ms - HOUR) if day == DAYS - 1 else DAY  # sessions end before "now"
        rows: list[tuple] = []
        while len(rows) < count:
            server = rng.choices(servers, server_weights)[0]
            server_tools = by_server[server]
            client, version, _ = rng.choices(CLIENTS, client_weights)[0]
            user = rng.choices(hashes, user_weights)[0]
            session = f"{rng.getrandbits(64):016x}"
            protocol = rng.choice(PROTOCOLS)
            transport = "stdio" if rng.random() < 0.7 else "streamable-http"
            ts = day_ms + rng.randrange(span)
            common = (session, client, version, protocol, transport, user)

            def row(ts, kind, tool, duration, ok, error=(None, None), args=None, result=None, server=server, common=common):
                nonlocal seq
                seq += 1
                return (f"{seq:016x}", kind, ts, server, "1.0.0", tool, None, duration, ok, *error, *common, args, result, None)

            rows.append(row(ts, "initialize", None, round(rng.uniform(2, 15), 3), 1))
            ts += rng.randrange(20, 400)
            rows.append(row(ts, "list_tools", None, round(rng.uniform(1, 8), 3), 1))
            picks = rng.choices(server_tools, [t[4] for t in server_tools], k=rng.randrange(4, 20))
            for _, tool, base, error_rate, _ in picks:
                ts += rng.randrange(200, 60_000)
                failed = rng.random() < error_rate
                duration = round(base * multipliers[rng.getrandbits(16)] * (2.5 if failed else 1.0), 3)
                rows.append(row(ts, "tool_call", tool, duration, 0 if failed else 1, rng.choice(ERRORS) if failed else (None, None),
                                rng.randrange(20, 2000), rng.randrange(50, 50_000)))
        rows = rows[:count]
        rows.sort(key=lambda r: r[2])
        limit = anchor_ms - 1
        rows = [r if r[2] <= limit else (*r[:2], limit, *r[3:]) for r in rows]  # sessions running past "now"
        pending.extend(rows)
        while len(pending) >= BATCH:
            yield pending[:BATCH]
            pending = pending[BATCH:]
    if pending:
        yield pending


def fill(path: Path, total: int, users: int = USERS, url: str | None = None) -> dict:
    """Fill the SQLite file ``path`` (or, with ``url``, that PostgreSQL database, empty)."""
    now = int(time.time() * 1000)
    anchor = now - now % HOUR - HOUR + 1_800_000  # half past the previous hour: the same alignment every time
    path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    store = open_store(url or str(path), durable=False)
    project = store.ensure_project("default")
    gen_s = ingest_s = 0.0
    written = 0
    t0 = time.perf_counter()
    batches = generate(total, anchor, users=users)
    while True:
        g0 = time.perf_counter()
        batch = next(batches, None)
        g1 = time.perf_counter()
        gen_s += g1 - g0
        if batch is None:
            break
        result = store.ingest([(project.id, batch)])[0]
        ingest_s += time.perf_counter() - g1
        assert result.accepted == len(batch), result
        written += len(batch)
        if written % 1_000_000 < BATCH:
            log(f"  {written:,} events, {written / ingest_s:,.0f} events/s into the store")
    store.close()
    meta = {"events": written, "users": users, "anchor_ms": anchor, "generator": GENERATOR, "fill_s": time.perf_counter() - t0,
            "generate_s": gen_s, "ingest_s": ingest_s, "ingest_events_per_s": written / ingest_s,
            "bytes": None if url else path.stat().st_size, "url": url}
    Path(str(path) + ".json").write_text(json.dumps(meta))
    return meta


def cached(cache: Path, total: int, refill: bool, users: int = USERS, url: str | None = None) -> tuple[Path, dict]:
    """The store of ``total`` events from ``users`` users, filled if missing: a SQLite file
    under ``cache``, or (``url``) that PostgreSQL database with its description under ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    name = f"events-{total}" + ("" if users == USERS else f"-u{users}")
    path = cache / (f"{name}.pg" if url else f"{name}.db")  # for PostgreSQL only the description is a file
    meta_path = Path(str(path) + ".json")
    if not refill and (url or path.exists()) and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("generator") == GENERATOR and meta.get("events") == total and meta.get("url") == url:
            log(f"{total:,} events: reusing {url or path} (filled in {meta['fill_s']:.0f} s)")
            return path, {**meta, "reused": True}
    log(f"{total:,} events: filling {url or path} …")
    meta_path.unlink(missing_ok=True)
    return path, {**fill(path, total, users, url), "reused": False}


# ---- the reads -------------------------------------------------------------------------------

REFERENCE = """
WITH w AS (
    SELECT server, tool, user_hash, ok, duration_ms FROM events
    WHERE project_id = :p AND ts >= :start AND ts < :end AND kind = 'tool_call'
), ranked AS (
    SELECT server, tool, duration_ms,
           row_number() OVER (PARTITION BY server, tool ORDER BY duration_ms) AS rn,
           count(*) OVER (PARTITION BY server, tool) AS n
    FROM w WHERE duration_ms IS NOT NULL
)
SELECT a.server, a.tool, a.calls, a.users, a.success_rate, p.p95
FROM (SELECT server, tool, count(*) AS calls, count(DISTINCT user_hash) AS users,
             1.0 * sum(ok = 1) / count(*) AS success_rate
      FROM w GROUP BY server, tool) AS a
JOIN (SELECT server, tool, duration_ms AS p95 FROM ranked WHERE rn = (95 * n + 99) / 100) AS p USING (server, tool)
ORDER BY a.calls DESC, a.server, a.tool
"""


def timed(fn, runs: int, warmup: int) -> tuple[list[float], list[float], object]:
    """(warm-up times, timed runs, last result), in ms."""
    times, result = [], None
    for _ in range(warmup + runs):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times[:warmup], times[warmup:], result


def measure(path: Path, meta: dict, runs: int, ref_runs: int) -> dict:
    store = open_store(str(path), durable=False)
    project = store.project_by_name("default")
    q = Query(project.id, window("30d", now_ms=meta["anchor_ms"]))
    first_ms, summary_ms, answer = timed(lambda: queries.summary(store, q), runs, 2)  # first: a freshly opened store
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    params = {"p": project.id, "start": q.window.start_ms, "end": q.window.end_ms}
    _, ref_ms, ref_rows = timed(lambda: conn.execute(REFERENCE, params).fetchall(), ref_runs, 1)
    conn.close()
    in_window = store.count_events(q.filter)
    store.close()
    reference = {(s, t): (calls, users, p95) for s, t, calls, users, _, p95 in ref_rows}
    agree = all(
        reference[(r["server"], r["tool"])][:2] == (r["calls"], r["users"])
        and abs(r["p95_ms"] - reference[(r["server"], r["tool"])][2]) <= (RELATIVE_ERROR + 1e-5) * reference[(r["server"], r["tool"])][2]
        for r in answer["tools"]
    ) and answer["calls"] == sum(v[0] for v in reference.values())
    return {"events": meta["events"], "calls_in_window": in_window, "summary_first_ms": first_ms[0], "summary_ms": median(summary_ms),
            "summary_ms_all": summary_ms, "reference_ms": median(ref_ms), "reference_ms_all": ref_ms,
            "ratio": median(ref_ms) / median(summary_ms), "figures_agree": agree, "fill": meta}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M events only")
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated event counts")
    parser.add_argument("--runs", type=int, default=15, help="timed summary runs per size")
    parser.add_argument("--ref-runs", type=int, default=3, help="timed reference-SQL runs per size")
    parser.add_argument("--cache", default="/tmp/mcpmeter-bench-analytics", help="where the filled stores are kept")
    parser.add_argument("--refill", action="store_true", help="rebuild the cached stores")
    parser.add_argument("--users", type=int, default=USERS, help=f"distinct users in the stores (default {USERS:,}; "
                        "bench_dashboard.py fills 10M events with 5,000)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    sizes = [1_000_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    load_start = os.getloadavg()[0]

    results = []
    for size in sizes:
        path, meta = cached(Path(args.cache), size, args.refill, users=args.users)
        log(f"{size:,} events: measuring …")
        results.append(measure(path, meta, args.runs, args.ref_runs))

    print(f"\nAnalytics at scale ({machine_line()}; load average {load_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end)\n")
    print(table(
        ["events", "fill s", "ingest events/s (with rollups)", "store MiB", "30d calls", "summary first ms",
         "summary median ms", "raw-SQL per-tool median ms", "raw SQL / summary", "figures agree"],
        [[f"{r['events']:,}", f"{r['fill']['fill_s']:.0f}" + (" (cached)" if r["fill"]["reused"] else ""),
          f"{r['fill']['ingest_events_per_s']:,.0f}", f"{r['fill']['bytes'] / 2**20:,.0f}", f"{r['calls_in_window']:,}",
          f"{r['summary_first_ms']:.1f}", f"{r['summary_ms']:.1f}", f"{r['reference_ms']:,.0f}", f"{r['ratio']:,.0f}x",
          str(r["figures_agree"])]
         for r in results]))
    last = results[-1]
    flat = results[-1]["summary_ms"] / results[0]["summary_ms"] if len(results) > 1 else None
    print()
    print(f"summary at {last['events']:,} events: {last['summary_ms']:.1f} ms median "
          f"(target <= {TARGET_MS:.0f} ms: {verdict(last['summary_ms'] <= TARGET_MS)})")
    if flat is not None:
        print(f"summary {results[-1]['events']:,} / {results[0]['events']:,} events: {flat:.2f}x "
              f"(target: flat, <= 1.5x: {verdict(flat <= 1.5)})")
    write_json(args.json, {"results": results, "target_ms": TARGET_MS, "flat_ratio": flat,
                           "load_average": [load_start, os.getloadavg()[0]]})
    return 0 if all(r["figures_agree"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
