"""Dashboard first load: time until every chart is drawn, and bytes transferred, on a big store.

    python bench/bench_dashboard.py [--backend sqlite,postgres] [--events 10000000] [--users 5000] [--runs 5]
                                    [--views overview-7d,overview-30d,overview-90d,tool-90d] [--json OUT]

1. The store, per backend: the one bench/bench_analytics.py's generator fills and caches
   (``--events`` over 90 days, ``--users`` users, 5 servers × 8 tools, 6 clients): a SQLite
   file under /tmp/mcpmeter-bench-analytics, or a PostgreSQL database of its own on
   postgresql://postgres@127.0.0.1:5432/ (``mcpmeter_bench_dash`` for 10M events and 5,000
   users; its description cached beside the SQLite files). A store filled by an older mcpmeter is upgraded first (timed:
   the newer schema's rollups are backfilled from what it holds).
2. A real `mcpmeter serve` on 127.0.0.1 and Debian's headless Chromium (Playwright). Each run
   is a fresh browser context (empty cache), so it is a first load: the HTML, the CSS, the
   vendored uPlot, the ES modules and one JSON request per panel group.
   - charts drawn: the `mcpmeter:charts-drawn` performance mark the page sets when every
     panel has drawn (ms since navigation start);
   - bytes: the sum of `transferSize` of the document and every resource (compressed bytes
     on the wire, headers included);
   - the slowest JSON request in the page (its duration, and its wait for the first byte:
     the server's time while the page's other requests run beside it);
   - per-request server times: after the loads, each JSON request of the view again, one at a
     time (median of 3): the slowest is where the view's time goes.
   Then the same context reloads the page (assets from the browser cache).
   Views: the overview at 7, 30 and 90 days, and one tool's page filtered to its server (90 days).

Targets (issue 15, goal 3): every view's charts drawn < 1 s and < 500 KB transferred.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, free_port, log, machine_line, median, table, verdict, write_json  # noqa: E402

CACHE = Path("/tmp/mcpmeter-bench-analytics")  # bench_analytics.py's --cache default
PG_SERVER = "postgresql://postgres@127.0.0.1:5432/"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
VIEWS = {"overview-7d": "/?period=7d", "overview-30d": "/?period=30d", "overview-90d": "/?period=90d",
         "tool-90d": "/tools/search?server=weblab&period=90d"}
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
TARGET_MS = 1000.0
TARGET_BYTES = 500 * 1024

MEASURE = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const resources = performance.getEntriesByType('resource');
  const drawn = performance.getEntriesByName('mcpmeter:charts-drawn')[0];
  const json = resources.filter(r => r.name.includes('/v1/usage/'));
  const slowest = json.reduce((a, r) => (!a || r.duration > a.duration ? r : a), null);
  return {
    drawn_ms: drawn ? drawn.startTime : null,
    bytes: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
    requests: 1 + resources.length,
    json_bytes: json.reduce((n, r) => n + r.transferSize, 0),
    slowest_json: slowest ? [new URL(slowest.name).pathname, slowest.duration, slowest.responseStart - slowest.requestStart] : null,
    json_urls: json.map(r => r.name),
  };
}"""


def pick_store(backend: str, events: int, users: int) -> tuple[str, dict, str]:
    """The store to serve (a path or a URL), its description, and where it came from."""
    import bench_analytics

    url = None
    if backend == "postgres":  # a database of its own per size (the 10M one: mcpmeter_bench_dash)
        name = "mcpmeter_bench_dash" + ("" if (events, users) == (10_000_000, 5_000) else f"_{events}_u{users}")
        url = PG_SERVER + name
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                admin.execute(f'CREATE DATABASE "{name}"')
    path, meta = bench_analytics.cached(CACHE, events, refill=False, users=users, url=url)
    origin = ("reused" if meta["reused"] else f"filled in {meta['fill_s']:.0f} s") + f" {url or path}"
    return url or str(path), meta, origin


def upgrade(db: str) -> tuple[list[int], float]:
    """Bring the store to this mcpmeter's schema (what ``serve`` would do on start), timed."""
    sys.path.insert(0, str(ROOT / "src"))
    from mcpmeter.storage import open_store

    t0 = time.perf_counter()
    store = open_store(db, upgrade=False)
    applied = store.upgrade()
    store.close()
    if db.startswith("postgresql://"):
        analyze(db, applied)
    return applied, time.perf_counter() - t0


def analyze(url: str, applied: list[int]) -> None:
    """Give PostgreSQL's planner its statistics, as autovacuum would on a server that runs it
    (this machine's does not: with none, the 90-day errors answer sorted 60k rows on disk)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        never = conn.execute("SELECT count(*) FROM pg_stat_user_tables WHERE last_analyze IS NULL AND last_autoanalyze IS NULL "
                             "AND n_live_tup > 0").fetchone()[0]
        if applied or never:
            log(f"ANALYZE (schema changes {applied or 'none'}, {never} tables without statistics) …")
            conn.execute("ANALYZE")


def serve(db: str, home: Path, workers: int = 1) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}, "MCPMETER_HOME": str(home),
           "MCPMETER_PRUNE_INTERVAL_SECONDS": "86400"}
    with open(home / "serve.log", "wb") as log:  # the collector keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "mcpmeter", "serve", "--db", db, "--port", str(port), "--log-level", "warning",
                                 "--workers", str(workers)],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the collector exited: {(home / 'serve.log').read_text()}")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the collector did not become ready")


def load(browser, url: str, server_runs: int = 0) -> tuple[dict, dict, dict[str, float]]:
    """A first load and a reload of ``url``; with ``server_runs``, then each JSON request of the
    page again, one at a time: {path?query: median ms}."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    server: dict[str, float] = {}
    try:
        page.goto(url)
        page.wait_for_function("() => performance.getEntriesByName('mcpmeter:charts-drawn').length > 0", timeout=120_000)
        first = page.evaluate(MEASURE)
        page.reload()
        page.wait_for_function("() => performance.getEntriesByName('mcpmeter:charts-drawn').length > 0", timeout=120_000)
        again = page.evaluate(MEASURE)
        for json_url in sorted(set(first["json_urls"])) if server_runs else ():
            times = []
            for _ in range(server_runs):
                t0 = time.perf_counter()
                response = context.request.get(json_url)
                times.append((time.perf_counter() - t0) * 1000)
                assert response.ok, (json_url, response.status)
            server[json_url.split("/v1/usage/", 1)[1]] = statistics.median(times)
    finally:
        context.close()
    if errors:
        raise SystemExit(f"the page logged errors: {errors}")
    return first, again, server


def measure(backend: str, args: argparse.Namespace, browser_args: list[str]) -> dict:
    from playwright.sync_api import sync_playwright

    db, meta, origin = pick_store(backend, args.events, args.users)
    applied, upgrade_s = upgrade(db)
    log(f"{backend}: {meta['events']:,} events, {meta.get('users', '?')} users ({origin}); "
        f"upgraded {applied or 'nothing'} in {upgrade_s:.1f} s")
    results: dict[str, dict] = {}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mcpmeter-bench-dashboard-") as tmp:
        proc, url = serve(db, Path(tmp), args.workers)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=browser_args)
                load(browser, url + "/?period=7d")  # warm the store's pages in the OS cache once
                for view in args.views.split(","):
                    firsts, agains = [], []
                    server: dict[str, float] = {}
                    for run in range(args.runs):
                        first, again, timed = load(browser, url + VIEWS[view], server_runs=3 if run == 0 else 0)
                        firsts.append(first)
                        agains.append(again)
                        server.update(timed)
                    slowest_server = max(server.items(), key=lambda kv: kv[1])
                    results[view] = {
                        "drawn_ms": median([f["drawn_ms"] for f in firsts]),
                        "drawn_ms_all": [round(f["drawn_ms"]) for f in firsts],
                        "bytes": median([f["bytes"] for f in firsts]),
                        "json_bytes": median([f["json_bytes"] for f in firsts]),
                        "requests": firsts[0]["requests"],
                        "slowest_json": max((f["slowest_json"] for f in firsts), key=lambda s: s[1]),
                        "server_ms": server,
                        "slowest_server": list(slowest_server),
                        "reload_drawn_ms": median([a["drawn_ms"] for a in agains]),
                        "reload_bytes": median([a["bytes"] for a in agains]),
                    }
                    r = results[view]
                    log(f"  {backend} {view}: {r['drawn_ms']:.0f} ms, {r['bytes'] / 1024:.0f} KB; slowest request alone "
                        f"{slowest_server[0].split('?')[0]} {slowest_server[1]:.0f} ms")
                browser.close()
        finally:
            proc.terminate()
            proc.wait(20)
    met = all(r["drawn_ms"] < TARGET_MS and r["bytes"] < TARGET_BYTES for r in results.values())
    return {"events": meta["events"], "users": meta.get("users"), "store": origin, "upgraded": applied, "upgrade_s": upgrade_s,
            "results": results, "met": met, "load_average": [load_start, os.getloadavg()[0]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="sqlite,postgres", help="sqlite, postgres or both (comma-separated)")
    parser.add_argument("--events", type=int, default=10_000_000, help="store size")
    parser.add_argument("--users", type=int, default=5_000, help="distinct users in the store")
    parser.add_argument("--runs", type=int, default=5, help="first loads per view (median reported)")
    parser.add_argument("--views", default=",".join(VIEWS), help=f"views to load, of {', '.join(VIEWS)}")
    parser.add_argument("--workers", type=int, default=1, help="collector worker processes (serve --workers; default 1, as `mcpmeter serve`)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit("Chromium is missing: apt-get install -y chromium fonts-liberation")
    unknown = [v for v in args.views.split(",") if v not in VIEWS]
    if unknown:
        raise SystemExit(f"no view {', '.join(unknown)}; there are {', '.join(VIEWS)}")

    backends = {backend: measure(backend, args, ARGS) for backend in args.backend.split(",")}
    met = True
    for backend, b in backends.items():
        print(f"\nDashboard first load · {backend} · {args.workers} collector worker(s) · {b['events']:,} events, {b['users']} users ({b['store']}) · "
              f"load average {b['load_average'][0]:.1f}-{b['load_average'][1]:.1f} · {machine_line()}\n")
        rows = [[view, f"{r['drawn_ms']:.0f}", f"{r['bytes'] / 1024:.0f}", f"{r['json_bytes'] / 1024:.0f}", r["requests"],
                 f"{r['slowest_json'][0].removeprefix('/v1/usage/')} {r['slowest_json'][1]:.0f} ms (wait {r['slowest_json'][2]:.0f})",
                 f"{r['slowest_server'][0].split('?')[0]} {r['slowest_server'][1]:.0f} ms", f"{r['reload_drawn_ms']:.0f}",
                 f"{r['reload_bytes'] / 1024:.0f}", verdict(r["drawn_ms"] < TARGET_MS and r["bytes"] < TARGET_BYTES)]
                for view, r in b["results"].items()]
        print(table(["view", "charts drawn ms", "KB", "JSON KB", "requests", "slowest JSON in page", "slowest alone",
                     "reload ms", "reload KB", f"< {TARGET_MS:.0f} ms, < {TARGET_BYTES // 1024} KB"], rows))
        met = met and b["met"]
    write_json(args.json, {"backends": backends, "workers": args.workers, "targets": {"drawn_ms": TARGET_MS, "bytes": TARGET_BYTES}, "met": met})
    return 0


if __name__ == "__main__":
    sys.exit(main())
