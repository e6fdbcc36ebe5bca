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
    failed = []
    with tempfile.TemporaryDirectory(prefix="mcpmeter-bench-") as tmp:
        for name, script in benchmarks.items():
            if args.only and name not in args.only:
                continue
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(script), *(quick_args(name, script) if args.quick else []), "--json", str(out)]
            print(f"\n=== {name}: {' '.join(cmd[1:-2])}", flush=True)
            proc = subprocess.run(cmd)
            if proc.returncode != 0 or not out.exists():
                failed.append(name)
                continue
            results[name] = json.loads(out.read_text())

    print(f"\n=== summary ({machine_line()}; a noisy shared machine: compare ratios, not absolutes)\n")
    rows = []
    if "sdk" in results:
        r = results["sdk"]["results"]
        for mode in ("sync", "async"):
            ns = r[mode]["ns_per_call"]
            rows.append([f"sdk {mode}: ns/call bare / deque / mcpmeter / prometheus / otel",
                         " / ".join(f"{ns[v]:.0f}" for v in ("bare", "deque", "mcpmeter", "prometheus", "otel")), ""])
            rows.append([f"sdk {mode}: mcpmeter / deque", f"{r[mode]['mcpmeter_vs_deque']:.2f}",
                         f"<= 2.0 {verdict(r[mode]['mcpmeter_vs_deque'] <= 2.0)}"])
            rows.append([f"sdk {mode}: prometheus / mcpmeter", f"{r[mode]['prometheus_vs_mcpmeter']:.2f}",
                         f">= 5 {verdict(r[mode]['prometheus_vs_mcpmeter'] >= 5)}"])
        dropped = sum(results["sdk"]["stats"]["dropped"].values())
        rows.append(["sdk: events dropped by the meter", str(dropped), f"0 {verdict(dropped == 0)}"])
    if "ingest" in results:
        r = results["ingest"]
        med = r["medians_events_per_s"]
        rows.append(["ingest: events/s mcpmeter / raw sqlite3", f"{med['mcpmeter']:,.0f} / {med['sqlite']:,.0f}", ""])
        rows.append(["ingest: mcpmeter / raw sqlite3", f"{r['ratio_vs_sqlite']:.2f}", ""])
        c = r["medians_cpu_us_per_event"]
        rows.append(["ingest: CPU-us per event mcpmeter / raw sqlite3", f"{c['mcpmeter']:.1f} / {c['sqlite']:.1f}", ""])
        rows.append(["ingest: end-to-end events/s", f"{med['mcpmeter']:,.0f}",
                     f">= 100,000 {verdict(med['mcpmeter'] >= 100_000)}"])
        rows.append(["ingest: collector peak RSS (MiB)", f"{r['peak_rss_mb']:.0f}", ""])
        rows.append(["ingest: every accepted event stored", str(r["complete"]), verdict(r["complete"])])
    for name, r in results.items():
        if name in FIRST:
            continue
        met = r.get("targets_met", r.get("target_met"))
        rows.append([f"{name}: see its output above", "ran", "" if met is None else verdict(bool(met))])
    print(table(["figure", "value", "target"], rows))
    if failed:
        print(f"\nfailed to run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
