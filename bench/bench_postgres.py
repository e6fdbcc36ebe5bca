"""PostgreSQL: raw COPY vs collectors end to end, and the 30-day summary at 10M events.

    python bench/bench_postgres.py [--pg postgresql://postgres@127.0.0.1:5432/test] [--events 300000]
                                   [--max-seconds 20] [--clients 8] [--quick] [--json OUT]

1. References, on a table with the 22 columns of ``events`` and an index on
   (project_id, ts), durable commits (synchronous_commit=on), rows built before the clock:
   raw ``COPY`` with 1,000 rows per transaction, and ``executemany`` of INSERTs, pipelined
   (psycopg 3 sends the whole batch before reading any answer), 1,000 rows per transaction.
2. End to end: 1, 2 and 4 (``--collectors``) real ``mcpmeter serve`` processes on one fresh PostgreSQL
   database, ``--clients`` keep-alive HTTP clients spread over them, POSTing 500-event JSON
   batches (bench_ingest's realistic events, unique ids). Events/s counts the events the
   collectors answered ``accepted`` for (every 2xx is a committed transaction: raw event,
   id, and every rollup); the stored count is checked. The ratio is to raw COPY in this run.
   Where the CPU went during each run is reported per event: the collectors, PostgreSQL's
   processes (the backends of the run's database and the shared background processes, not
   another database's), and the load generator (this process), with the machine's load average, so
   the curve over 1, 2 and 4 collectors can be read against the 2 CPUs they share.
3. Reads: the 30-day summary (``queries.summary``, as ``GET /v1/usage/summary?period=30d``)
   on a database holding 10M events of the last 30 days (1M with ``--quick``), 30 users'
   worth of servers/tools/clients. The filled database is kept (``mcpmeter_bench_10m``) and
   reused by later runs; filling it runs two writer processes over separate days through
   ``PostgresStore.ingest`` and is bounded by ``--fill-minutes``.

Everything shares the machine with PostgreSQL itself: on 2 cores, the collectors, the load
generator and the database compete for the same CPUs (see docs/scaling.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import free_port, log, machine_line, table, wait_ready, write_json
from bench_ingest import MARK, body_for, reference_rows, templates

DAY = 86_400_000
BATCH = 500
COLUMNS = ("project_id, event_id, kind, ts, server, server_version, tool, category, duration_ms, ok, error_type, "
           "error_message, session_id, client_name, client_version, protocol_version, transport, user_hash, "
           "args_bytes, result_bytes, attributes, received_at")
_REF_SCHEMA = """
CREATE TABLE ref_events (
    project_id bigint NOT NULL, event_id text NOT NULL, kind text NOT NULL, ts bigint NOT NULL, server text NOT NULL,
    server_version text, tool text, category text, duration_ms double precision, ok smallint, error_type text,
    error_message text, session_id text, client_name text, client_version text, protocol_version text, transport text,
    user_hash text, args_bytes bigint, result_bytes bigint, attributes text, received_at bigint NOT NULL
);
CREATE INDEX ref_events_by_time ON ref_events (project_id, ts);
"""


def db_url(admin: str, name: str) -> str:
    return urlunsplit(urlsplit(admin)._replace(path="/" + name))


def create_db(admin: str, name: str) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    return db_url(admin, name)


def drop_db(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- 1. references --------------------------------------------------------------------------


def reference(url: str, rows: list[tuple], method: str, per_tx: int = 1000) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS ref_events")
        conn.execute(_REF_SCHEMA)
        t0 = time.perf_counter()
        for start in range(0, len(rows), per_tx):
            chunk = rows[start:start + per_tx]
            with conn.transaction():
                if method == "copy":
                    with conn.cursor().copy(f"COPY ref_events ({COLUMNS}) FROM STDIN") as copy:
                        for row in chunk:
                            copy.write_row(row)
                else:
                    conn.cursor().executemany(f"INSERT INTO ref_events ({COLUMNS}) VALUES ({', '.join(['%s'] * 22)})", chunk)
        elapsed = time.perf_counter() - t0
        stored = conn.execute("SELECT count(*) FROM ref_events").fetchone()[0]
        conn.execute("DROP TABLE ref_events")
    assert stored == len(rows)
    return {"rows": len(rows), "seconds": elapsed, "events_per_s": len(rows) / elapsed}


# ---- 2. collectors end to end -----------------------------------------------------------------


def run_collectors(admin: str, n: int, bodies: list[bytes], batches: int, clients: int, max_seconds: float, tmp: Path) -> dict:
    import http.client
    import itertools
    import json

    from mcpmeter import keys as keylib
    from mcpmeter.storage import open_store

    name = f"mcpmeter_bench_e2e_{os.getpid()}"
    url = create_db(admin, name)
    store = open_store(url)
    project = store.ensure_project("default")
    key = keylib.new_key()
    store.add_key(project.id, "bench", keylib.hash_key(key), keylib.display_prefix(key), ["ingest"])
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
    env["MCPMETER_HOME"] = str(tmp)
    env["MCPMETER_RATE_LIMIT_PER_KEY"] = "0"  # raw throughput: the limit is measured in bench_security
    procs = []
    try:
        for i in range(n):
            port = free_port()
            logfile = tmp / f"serve-{n}-{i}.log"
            with open(logfile, "wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "mcpmeter", "serve", "--host", "127.0.0.1", "--port", str(port),
                                         "--db", url, "--log-level", "warning"], env=env, stdout=out, stderr=subprocess.STDOUT)
            procs.append((proc, port, logfile))
        for proc, port, logfile in procs:
            wait_ready(proc, port, logfile, timeout=60)
        seq = itertools.count()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        totals = {"accepted": 0, "duplicates": 0, "failed": 0}
        lock = threading.Lock()
        errors: list[str] = []
        deadline = time.monotonic() + max_seconds

        def worker(k: int) -> None:
            port = procs[k % n][1]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            mine = {"accepted": 0, "duplicates": 0, "failed": 0}
            try:
                while time.monotonic() < deadline:
                    i = next(seq)
                    if i >= batches:
                        break
                    conn.request("POST", "/v1/events", body_for(bodies, i), headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if resp.status != 200:
                        mine["failed"] += 1
                        if len(errors) < 3:
                            errors.append(f"{resp.status} {data[:200]!r}")
                        continue
                    answer = json.loads(data)
                    mine["accepted"] += answer["accepted"]
                    mine["duplicates"] += answer["duplicates"]
            finally:
                conn.close()
                with lock:
                    for k2, v in mine.items():
                        totals[k2] += v

        # warm-up outside the clock, with ids the run never uses
        for i, (_, port, _) in enumerate(procs):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("POST", "/v1/events", bodies[0].replace(MARK, b"fffffff%x" % i), headers)
            c.getresponse().read()
            c.close()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
        cpu0 = _cpu([proc.pid for proc, _, _ in procs], name)
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        cpu1 = _cpu([proc.pid for proc, _, _ in procs], name)
    finally:
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, _ in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    drop_db(admin, name)
    if errors:
        log(f"[postgres] errors with {n} collectors:", *errors)
    events = max(totals["accepted"], 1)
    cpu = {part: (cpu1[part] - cpu0[part]) / events * 1e6 for part in cpu0}  # CPU-µs per event
    return {"collectors": n, **totals, "seconds": elapsed, "events_per_s": totals["accepted"] / elapsed,
            "stored_rows": stored, "stored_ok": stored == totals["accepted"] + n * BATCH,
            "cpu_us_per_event": cpu, "cpu_share_of_machine": sum(cpu1[p] - cpu0[p] for p in cpu0) / (elapsed * (os.cpu_count() or 1)),
            "load_average": os.getloadavg()[0]}


_PG_BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum")


def _cpu(collector_pids: list[int], database: str) -> dict[str, float]:
    """CPU seconds used so far by the collectors, by PostgreSQL, and by this process.

    PostgreSQL's are those of the backends of ``database`` and of the shared background
    processes (WAL writer, checkpointer, ...): another database's work on the same server
    (another benchmark) is not counted.
    """
    import psutil

    def used(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def ours(p: psutil.Process) -> bool:
        try:
            title = " ".join(p.cmdline())
        except psutil.Error:
            return False
        return f" {database} " in title or any(f": {b}" in title for b in _PG_BACKGROUND)

    postgres = sum(used(p) for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres") and ours(p))
    return {"collectors": sum(used(psutil.Process(pid)) for pid in collector_pids), "postgresql": postgres,
            "load_generator": time.process_time()}


# ---- 3. the 30-day summary at 10M events --------------------------------------------------------

SERVERS = {"weblab": ["search", "details", "allocations", "experiments"], "archon": ["rag_query", "create_task", "get_document", "search"],
           "time": ["get_current_time", "convert_time"], "github": ["list_issues", "create_pr", "get_file"]}
CLIENTS = [("claude-code", "2.1.0"), ("cursor", "1.7.2"), ("vscode-copilot", "1.101"), ("claude-desktop", "0.12.1")]


def _fill_days(url: str, days: list[int], per_day: int, seed: int) -> None:
    """Events of ``days`` (day starts, ms) in time order, through the store's real ingest."""
    from mcpmeter.events import ROW_FIELDS
    from mcpmeter.storage import open_store

    assert len(ROW_FIELDS) == 20
    store = open_store(url, durable=False)
    project = store.ensure_project("default")
    rng = random.Random(seed)
    users = [f"{rng.getrandbits(128):032x}" for _ in range(3000)]
    tools = [(s, t) for s, ts in SERVERS.items() for t in ts]
    for day in days:
        step = DAY / per_day
        rows = []
        session = None
        for i in range(per_day):
            ts = int(day + i * step)
            if session is None or rng.random() < 0.05:
                client = rng.choice(CLIENTS)
                session = (f"{rng.getrandbits(64):016x}", rng.choice(users), client)
            sid, user, (client, cver) = session
            server, tool = rng.choice(tools)
            ok = rng.random() > 0.03
            rows.append((f"{ts:012x}{rng.getrandbits(64):016x}", "tool_call", ts, server, "1.0", tool, None,
                         round(rng.lognormvariate(3.5, 1.0), 3), int(ok), None if ok else "TimeoutError",
                         None if ok else "timed out", sid, client, cver, "2025-06-18", "stdio", user, 100, 2000, None))
            if len(rows) == 20_000:
                store.ingest([(project.id, rows)])
                rows = []
        if rows:
            store.ingest([(project.id, rows)])
    store.close()


def filled_database(admin: str, events: int, fill_minutes: float) -> str:
    """The cached database with ``events`` events over the 30 days before today; filled if missing."""
    name = f"mcpmeter_bench_{events // 1_000_000}m"
    url = db_url(admin, name)
    try:
        with psycopg.connect(url) as conn:
            if conn.execute("SELECT to_regclass('bench_filled')").fetchone()[0] is not None:
                filled_at = conn.execute("SELECT filled_at FROM bench_filled").fetchone()[0]
                if time.time() * 1000 - filled_at < 20 * DAY:  # still mostly inside a 30-day window
                    return url
    except psycopg.OperationalError:
        pass
    log(f"[postgres] filling {name} with {events:,} events (cached for later runs) ...")
    create_db(admin, name)
    from mcpmeter.storage import open_store

    open_store(url).close()
    now = int(time.time() * 1000)
    today = now - now % DAY
    days = [today - k * DAY for k in range(30, 0, -1)]
    per_day = events // len(days)
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_fill_days, args=(url, days[k::2], per_day, k)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(fill_minutes * 60)
        if w.is_alive():
            w.kill()
            raise SystemExit(f"filling took more than --fill-minutes {fill_minutes}; the partial database {name} is not cached")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CREATE TABLE bench_filled AS SELECT %s::bigint AS filled_at", (now,))
    log(f"[postgres] filled in {time.perf_counter() - t0:.0f} s")
    return url


def summary_latency(url: str, repeat: int = 30) -> dict:
    from mcpmeter.analytics import queries
    from mcpmeter.analytics.periods import window
    from mcpmeter.analytics.queries import Query
    from mcpmeter.storage import open_store

    store = open_store(url)
    try:
        project = store.project_by_name("default")
        q = Query(project.id, window("30d"))
        answer = queries.summary(store, q)  # warm-up (connections, caches)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            queries.summary(store, q)
            times.append((time.perf_counter() - t0) * 1000)
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM event_ids").fetchone()[0]
    finally:
        store.close()
    times.sort()
    return {"events_stored": stored, "calls_in_window": answer["calls"], "users_in_window": answer["users"],
            "median_ms": statistics.median(times), "p95_ms": times[int(len(times) * 0.95) - 1]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg", default=os.environ.get("MCPMETER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
                        help="a PostgreSQL URL whose user may CREATE DATABASE (the bench's databases are made beside it)")
    parser.add_argument("--events", type=int, default=300_000, help="events per end-to-end run (whole 500-event batches)")
    parser.add_argument("--reference-rows", type=int, default=200_000, help="rows per raw reference run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients, spread over the collectors")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop sending after this long (per run)")
    parser.add_argument("--collectors", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4],
                        help="collector counts to run, comma-separated (default 1,2,4)")
    parser.add_argument("--quick", action="store_true", help="1M events for the read test instead of 10M")
    parser.add_argument("--fill-minutes", type=float, default=30.0, help="give up filling the read-test database after this long")
    parser.add_argument("--skip-reads", action="store_true", help="only the ingest part")
    parser.add_argument("--only-reads", action="store_true", help="only the read part (fills the cached database if needed)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    log(f"[postgres] {machine_line()}")
    result: dict = {}
    if not args.only_reads:
        result.update(ingest_part(args))
    if not args.skip_reads:
        events = 1_000_000 if args.quick else 10_000_000
        url = filled_database(args.pg, events, args.fill_minutes)
        reads = summary_latency(url)
        result["summary_30d"] = {"events": events, **reads}
        print(table(["30-day summary", "events stored", "calls in window", "median ms", "p95 ms", "target"],
                    [[f"{events:,} events", f"{reads['events_stored']:,}", f"{reads['calls_in_window']:,}",
                      f"{reads['median_ms']:.1f}", f"{reads['p95_ms']:.1f}", "<= 100 ms"]]))
    write_json(args.json, result)
    return result


def ingest_part(args: argparse.Namespace) -> dict:
    import tempfile

    batches = args.events // BATCH
    bodies = templates(BATCH, int(time.time() * 1000))
    rows = [r for batch in reference_rows(bodies, args.reference_rows // BATCH) for r in batch]
    ref_url = create_db(args.pg, f"mcpmeter_bench_ref_{os.getpid()}")
    try:
        copy = reference(ref_url, rows, "copy")
        log(f"[postgres] raw COPY: {copy['events_per_s']:,.0f} rows/s")
        pipelined = reference(ref_url, rows, "executemany")
        log(f"[postgres] pipelined executemany: {pipelined['events_per_s']:,.0f} rows/s")
    finally:
        drop_db(args.pg, f"mcpmeter_bench_ref_{os.getpid()}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="mcpmeter-bench-pg-") as tmp:
        for n in args.collectors:
            r = run_collectors(args.pg, n, bodies, batches, args.clients, args.max_seconds, Path(tmp))
            r["ratio_to_copy"] = r["events_per_s"] / copy["events_per_s"]
            log(f"[postgres] {n} collector(s): {r['events_per_s']:,.0f} events/s ({r['ratio_to_copy']:.2f} x raw COPY)")
            runs.append(r)
    result = {"reference_copy": copy, "reference_executemany_pipelined": pipelined, "collectors": runs}
    rows_out = [["raw COPY, 1,000 rows/tx", f"{copy['events_per_s']:,.0f}", "1.00"],
                ["pipelined executemany, 1,000 rows/tx", f"{pipelined['events_per_s']:,.0f}",
                 f"{pipelined['events_per_s'] / copy['events_per_s']:.2f}"]]
    for r in runs:
        c = r["cpu_us_per_event"]
        rows_out.append([f"{r['collectors']} collector(s) end to end", f"{r['events_per_s']:,.0f}", f"{r['ratio_to_copy']:.2f}",
                         f"{c['collectors']:.1f} / {c['postgresql']:.1f} / {c['load_generator']:.1f}",
                         f"{r['cpu_share_of_machine']:.0%}", f"{r['load_average']:.1f}"])
    for row in rows_out[:2]:
        row += ["", "", ""]
    print(table(["PostgreSQL ingest", "events/s", "x raw COPY", "CPU-us/event collectors / PostgreSQL / load gen",
                 "of 2 CPUs", "load avg"], rows_out))
    return result


if __name__ == "__main__":
    main()
