"""Run every benchmark and print a summary of the figures and targets.

    python bench/run.py              # every benchmark, full runs (long: some fill big stores on first use)
    python bench/run.py sdk ingest   # only these (about 3 minutes for these two)
    python bench/run.py --quick      # smaller runs, for a smoke check

Every ``bench/bench_*.py`` is run (``python bench/run.py sdk ingest`` runs only those), each
in its own process so one cannot warm or pollute another, with ``--json`` to collect its
figures; each is also runnable alone (``python bench/bench_sdk.py``…). Figures are medians,
and every comparison is a ratio against a reference measured in the same run, because
absolute numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine_line, table, verdict  # noqa: E402

FIRST = ("sdk", "ingest")  # run (and summarised in detail) first; the rest in name order
QUICK_ARGS = {  # --quick: smaller runs; benchmarks not listed get a --quick flag if they have one
    "sdk": ["--rounds", "7", "--number", "10000"],
    "ingest": ["--events", "100000", "--repeat", "1"],
}


def discover() -> dict[str, Path]:
    found = {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}
    return {name: found[name] for name in (*[n for n in FIRST if n in found], *[n for n in found if n not in FIRST])}


def quick_args(name: str, script: Path) -> list[str]:
    if name in QUICK_ARGS:
        return QUICK_ARGS[name]
    return ["--quick"] if '"--quick"' in script.read_text() else []


def figures(results: dict[str, dict]) -> list[list[str]]:
    """The headline figures of each benchmark that ran."""
    rows = []
    if "sdk" in results:
        r = results["sdk"]["results"]
        for mode in ("sync", "async"):
            ns = r[mode]["ns_per_call"]
            rows.append([f"sdk {mode}: ns/call bare / deque / mcpmeter / prometheus / otel",
                         " / ".join(f"{ns[v]:.0f}" for v in ("bare", "deque", "mcpmeter", "prometheus", "otel")), ""])
        dropped = sum(results["sdk"]["stats"]["dropped"].values())
        rows.append(["sdk: events dropped by the meter", str(dropped), f"0 {verdict(dropped == 0)}"])
    if "ingest" in results:
        r = results["ingest"]
        med, c = r["medians_events_per_s"], r["medians_cpu_us_per_event"]
        rows.append(["ingest: events/s mcpmeter / raw sqlite3", f"{med['mcpmeter']:,.0f} / {med['sqlite']:,.0f}", ""])
        rows.append(["ingest: CPU-us per event mcpmeter / raw sqlite3", f"{c['mcpmeter']:.1f} / {c['sqlite']:.1f}", ""])
        rows.append(["ingest: every accepted event stored", str(r["complete"]), verdict(r["complete"])])
    if "postgres" in results:
        for run in results["postgres"].get("collectors", []):
            c = run["cpu_us_per_event"]
            rows.append([f"postgres: {run['collectors']} collector(s) events/s; CPU-us/event collectors / PostgreSQL / load gen",
                         f"{run['events_per_s']:,.0f}; {c['collectors']:.1f} / {c['postgresql']:.1f} / {c['load_generator']:.1f}", ""])
    for name, r in results.items():
        if name in ("sdk", "ingest", "postgres"):
            continue
        met = r.get("targets_met", r.get("target_met", r.get("met")))
        rows.append([f"{name}: see its output above", "ran", "" if met is None else verdict(bool(met))])
    return rows


def goals(results: dict[str, dict], loads: dict[str, tuple[float, float]]) -> list[list[str]]:
    """Each goal of issue 15 as (goal, figure, reference, ratio, target, verdict, load average)."""
    rows: list[list[str]] = []

    def add(goal: str, bench: str, figure: str, reference: str, ratio: float | None, target: str, ok: bool | None) -> None:
        load = loads.get(bench)
        rows.append([goal, figure, reference, "" if ratio is None else f"{ratio:.2f}", target,
                     "not run" if ok is None else verdict(ok), "" if load is None else f"{load[0]:.1f}-{load[1]:.1f}"])

    def missing(goal: str, bench: str, target: str, why: str = "") -> None:
        add(goal, bench, why or f"run bench/run.py {bench}", "", None, target, None)

    r = results.get("ingest")
    if r:
        med = r["medians_events_per_s"]
        add("1. SQLite ingest over HTTP (rollups current, 2xx = committed)", "ingest", f"{med['mcpmeter']:,.0f} events/s",
            f"raw sqlite3 executemany {med['sqlite']:,.0f} rows/s", r["ratio_vs_sqlite"], ">= 0.8", r["ratio_vs_sqlite"] >= 0.8)
        add("4. peak collector memory under load (SQLite)", "ingest", f"{r['peak_rss_mb']:.0f} MiB",
            f"idle {r['idle_rss_mb']:.0f} MiB", r["peak_rss_mb"] / r["idle_rss_mb"], "bounded (reported)", True)
    else:
        missing("1. SQLite ingest over HTTP", "ingest", ">= 0.8")
    r = results.get("postgres")
    if r and r.get("collectors"):
        copy = r["reference_copy"]["events_per_s"]
        for run in r["collectors"]:
            two = run["collectors"] == 2
            add(f"2. PostgreSQL ingest, {run['collectors']} collector(s)", "postgres", f"{run['events_per_s']:,.0f} events/s",
                f"raw COPY {copy:,.0f} rows/s", run["ratio_to_copy"], ">= 0.5" if two else "(curve)",
                run["ratio_to_copy"] >= 0.5 if two else True)
    else:
        missing("2. PostgreSQL ingest, 2 collectors", "postgres", ">= 0.5")
    r = results.get("dashboard")
    measured = r["backends"] if r and "backends" in r else {}
    for backend in ("sqlite", "postgres"):
        b = measured.get(backend)
        if not b:
            missing(f"3. dashboard 7d / 30d / 90d / tool page ({backend})", "dashboard", "< 1 s, < 500 KB",
                    f"run bench/run.py dashboard (bench_dashboard.py --backend {backend})")
            continue
        for view, v in b["results"].items():
            ok = v["drawn_ms"] < r["targets"]["drawn_ms"] and v["bytes"] < r["targets"]["bytes"]
            path, ms = v["slowest_server"]
            add(f"3. dashboard {view} ({backend}, {b['events']:,} events, {b['users']:,} users)", "dashboard",
                f"{v['drawn_ms']:.0f} ms, {v['bytes'] / 1024:.0f} KB", f"slowest request alone: {path.split('?')[0]} {ms:.0f} ms",
                v["drawn_ms"] / r["targets"]["drawn_ms"], "< 1 s, < 500 KB", ok)
    r = results.get("sdk")
    if r:
        for mode in ("sync", "async"):
            m = r["results"][mode]
            ns = m["ns_per_call"]
            add(f"4. @meter.tool vs bare deque recorder ({mode})", "sdk", f"{ns['mcpmeter']:.0f} ns/call",
                f"deque {ns['deque']:.0f} ns/call", m["mcpmeter_vs_deque"], "<= 1.2", m["mcpmeter_vs_deque"] <= 1.2)
            add(f"4. prometheus_client vs @meter.tool ({mode})", "sdk", f"{ns['prometheus']:.0f} ns/call",
                f"mcpmeter {ns['mcpmeter']:.0f} ns/call", m["prometheus_vs_mcpmeter"], ">= 5", m["prometheus_vs_mcpmeter"] >= 5)
    else:
        missing("4. @meter.tool vs deque / prometheus_client", "sdk", "<= 1.2 / >= 5")
    r = results.get("proxy")
    if r:
        f = r["figures"]
        add("4. proxied / direct stdio p50", "proxy", f"{f['proxied']['p50_ms']:.3f} ms", f"direct {f['direct']['p50_ms']:.3f} ms",
            r["ratio_p50"], "<= 1.1", r["ratio_p50"] <= 1.1)
    else:
        missing("4. proxied / direct stdio p50", "proxy", "<= 1.1")
    r = results.get("analytics")
    if r:
        last = r["results"][-1]
        add(f"4. 30-day summary, SQLite ({last['events']:,} events)", "analytics", f"{last['summary_ms']:.1f} ms",
            f"raw-SQL scan {last['reference_ms']:,.0f} ms", last["summary_ms"] / r["target_ms"], "<= 50 ms", last["summary_ms"] <= r["target_ms"])
    else:
        missing("4. 30-day summary, SQLite", "analytics", "<= 50 ms")
    r = results.get("postgres")
    if r and "summary_30d" in r:
        s = r["summary_30d"]
        add(f"4. 30-day summary, PostgreSQL ({s['events']:,} events)", "postgres", f"{s['median_ms']:.1f} ms", "", s["median_ms"] / 50,
            "<= 50 ms", s["median_ms"] <= 50)
    else:
        missing("4. 30-day summary, PostgreSQL", "postgres", "<= 50 ms")
    r = results.get("metrics")
    if r:
        scrape = r["scrape"]
        gz = scrape["gzip"]
        add(f"4. /metrics scrape ({scrape['tool_series']:,} tool series, gzip)", "metrics",
            f"{gz['median_ms']:.1f} ms wall, {gz['collector_cpu_ms']:.1f} ms collector CPU",
            f"prometheus_client render {scrape['render_prometheus_client_ms']:.1f} ms", gz["median_ms"] / r["target_scrape_ms"],
            "<= 50 ms", gz["median_ms"] <= r["target_scrape_ms"])
    else:
        missing("4. /metrics scrape at 1,000 series", "metrics", "<= 50 ms")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke check, not figures to quote)")
    benchmarks = discover()
    parser.add_argument("only", nargs="*", metavar="NAME", help=f"run only these: {', '.join(benchmarks)} (default: all)")
    args = parser.parse_args()
    unknown = [n for n in args.only if n not in benchmarks]
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}; there are: {', '.join(benchmarks)}")

    results: dict[str, dict] = {}
    loads: dict[str, tuple[float, float]] = {}  # load average at each benchmark's start and end
    failed = []
    with tempfile.TemporaryDirectory(prefix="mcpmeter-bench-") as tmp:
        for name, script in benchmarks.items():
            if args.only and name not in args.only:
                continue
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(script), *(quick_args(name, script) if args.quick else []), "--json", str(out)]
            print(f"\n=== {name}: {' '.join(cmd[1:-2])}", flush=True)
            load_start = os.getloadavg()[0]
            proc = subprocess.run(cmd)
            loads[name] = (load_start, os.getloadavg()[0])
            if proc.returncode != 0 or not out.exists():
                failed.append(name)
                continue
            results[name] = json.loads(out.read_text())

    print(f"\n=== summary ({machine_line()}; a noisy shared machine: compare ratios, not absolutes)\n")
    print(table(["figure", "value", "target"], figures(results)))
    print("\n=== goals of issue 15 (met / MISSED / not run; ratios are to a reference measured in the same run)\n")
    print(table(["goal", "figure", "reference (same run)", "ratio", "target", "verdict", "load avg"], goals(results, loads)))
    if failed:
        print(f"\nfailed to run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
