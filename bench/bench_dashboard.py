"""Dashboard first load: time until every chart is drawn, and bytes transferred, on a big store.

    python bench/bench_dashboard.py [--events 10000000] [--runs 5] [--periods 7d,30d,90d] [--json OUT]

1. The store: the one bench/bench_analytics.py fills and caches (10M events over 90 days,
   2,000 users, 5 servers × 8 tools, 6 clients) under /tmp/mcpmeter-bench-analytics. With
   no 10M store there, the 1M one is used (filled by bench_analytics's code if missing) and
   the output says so. The collector opens that file as it is (it adds the default project's
   local keys on first use, nothing else).
2. A real `mcpmeter serve` on 127.0.0.1 and Debian's headless Chromium (Playwright). Each run
   is a fresh browser context (empty cache), so it is a first load: the HTML, the CSS, the
   vendored uPlot, the ES modules and one JSON request per panel group.
   - charts drawn: the `mcpmeter:charts-drawn` performance mark the page sets when every
     panel of the overview has drawn (ms since navigation start);
   - bytes: the sum of `transferSize` of the document and every resource (compressed bytes
     on the wire, headers included);
   - the slowest JSON request, to show where the time goes.
   Then the same context reloads the page (assets from the browser cache).

Targets (the default overview, period=7d): charts drawn < 1 s and < 500 KB transferred.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import free_port, log, machine_line, median, table, verdict, write_json  # noqa: E402

CACHE = Path("/tmp/mcpmeter-bench-analytics")  # bench_analytics.py's --cache default
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
    slowest_json: slowest ? [new URL(slowest.name).pathname, slowest.duration] : null,
  };
}"""


def pick_store(events: int | None) -> tuple[Path, dict, str]:
    sizes = [events] if events else [10_000_000, 1_000_000]
    for size in sizes:
        path = CACHE / f"events-{size}.db"
        meta = Path(str(path) + ".json")
        if path.exists() and meta.exists():
            return path, json.loads(meta.read_text()), f"reused {path}"
    size = events or 1_000_000
    log(f"no cached store of {size:,} events in {CACHE}: filling one with bench_analytics.py's generator …")
    import bench_analytics

    path, meta = bench_analytics.cached(CACHE, size, refill=False)
    return path, meta, f"filled {path} ({meta['fill_s']:.0f} s)"


def serve(db: Path, home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}, "MCPMETER_HOME": str(home),
           "MCPMETER_PRUNE_INTERVAL_SECONDS": "86400"}
    with open(home / "serve.log", "wb") as log:  # the collector keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "mcpmeter", "serve", "--db", str(db), "--port", str(port), "--log-level", "warning"],
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


def load(browser, url: str) -> tuple[dict, dict]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(url)
        page.wait_for_function("() => performance.getEntriesByName('mcpmeter:charts-drawn').length > 0", timeout=120_000)
        first = page.evaluate(MEASURE)
        page.reload()
        page.wait_for_function("() => performance.getEntriesByName('mcpmeter:charts-drawn').length > 0", timeout=120_000)
        again = page.evaluate(MEASURE)
    finally:
        context.close()
    if errors:
        raise SystemExit(f"the page logged errors: {errors}")
    return first, again


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=None, help="store size (default: 10M if cached, else 1M)")
    parser.add_argument("--runs", type=int, default=5, help="first loads per period (median reported)")
    parser.add_argument("--periods", default="7d,30d,90d", help="overview periods to load; the target is for the first")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit("Chromium is missing: apt-get install -y chromium fonts-liberation")
    from playwright.sync_api import sync_playwright

    db, meta, origin = pick_store(args.events)
    log(f"store: {meta['events']:,} events ({origin})")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mcpmeter-bench-dashboard-") as tmp:
        proc, url = serve(db, Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                load(browser, url + "/?period=7d")  # warm the store's pages in the OS cache once
                for period in args.periods.split(","):
                    firsts, agains = [], []
                    for _ in range(args.runs):
                        first, again = load(browser, f"{url}/?period={period}")
                        firsts.append(first)
                        agains.append(again)
                    results[period] = {
                        "drawn_ms": median([f["drawn_ms"] for f in firsts]),
                        "drawn_ms_all": [round(f["drawn_ms"]) for f in firsts],
                        "bytes": median([f["bytes"] for f in firsts]),
                        "json_bytes": median([f["json_bytes"] for f in firsts]),
                        "requests": firsts[0]["requests"],
                        "slowest_json": max((f["slowest_json"] for f in firsts), key=lambda s: s[1]),
                        "reload_drawn_ms": median([a["drawn_ms"] for a in agains]),
                        "reload_bytes": median([a["bytes"] for a in agains]),
                    }
                    log(f"  {period}: {results[period]['drawn_ms']:.0f} ms, {results[period]['bytes'] / 1024:.0f} KB")
                browser.close()
        finally:
            proc.terminate()
            proc.wait(20)

    first_period = args.periods.split(",")[0]
    head = results[first_period]
    print(f"\nDashboard first load · {meta['events']:,} events ({origin}) · {machine_line()}\n")
    rows = [[period, f"{r['drawn_ms']:.0f}", f"{r['bytes'] / 1024:.0f}", f"{r['json_bytes'] / 1024:.0f}", r["requests"],
             f"{r['slowest_json'][0]} {r['slowest_json'][1]:.0f} ms", f"{r['reload_drawn_ms']:.0f}", f"{r['reload_bytes'] / 1024:.0f}"]
            for period, r in results.items()]
    print(table(["period", "charts drawn ms", "KB", "JSON KB", "requests", "slowest JSON", "reload ms", "reload KB"], rows))
    ok_time, ok_bytes = head["drawn_ms"] < TARGET_MS, head["bytes"] < TARGET_BYTES
    print(f"\nperiod={first_period}: charts drawn {head['drawn_ms']:.0f} ms (target < {TARGET_MS:.0f}: {verdict(ok_time)}), "
          f"{head['bytes'] / 1024:.0f} KB (target < {TARGET_BYTES // 1024}: {verdict(ok_bytes)})")
    write_json(args.json, {"events": meta["events"], "store": origin, "results": results,
                           "targets": {"drawn_ms": TARGET_MS, "bytes": TARGET_BYTES}, "met": ok_time and ok_bytes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
