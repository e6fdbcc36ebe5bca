"""Recorder overhead per call on a no-op tool, side by side in one run.

    python bench/bench_sdk.py [--rounds 25] [--number 20000] [--json OUT]

Variants (each wraps the same no-op function; sync and async):
  bare        the function called directly
  deque       the floor for any recorder: t=perf_counter(); r=f(); q.append((name, perf_counter()-t))
  mcpmeter    ``@meter.tool`` (Meter(server="bench", url=None, db=<tmp file>), worker running)
  prometheus  prometheus_client Counter + Histogram, ``.labels()`` on every call
  otel        OpenTelemetry SDK span: TracerProvider with no span processor and no exporter
              (spans are sampled, recorded and ended, then discarded)

Timing is timeit-style: ``rounds`` rounds of ``number`` calls for every variant, the variants
interleaved in a rotating order inside each round, the median per-call cost reported; nothing
is subtracted (loop overhead is in every figure). Between rounds the mcpmeter queue is
drained with ``meter.flush()`` (into the local SQLite store) so that nothing is dropped and the
worker's next wake-up is a full tick away: the timed loop measures the caller's hot path.
How long that background drain takes is reported separately (it is not on the caller's path).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
import timeit
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine_line, median, table, verdict, write_json

TARGET_VS_DEQUE = 1.2  # mcpmeter / deque, at most (issue 15, goal 4)
TARGET_PROM_VS_US = 5.0  # prometheus / mcpmeter, at least
VARIANTS = ("bare", "deque", "mcpmeter", "prometheus", "otel")


def noop():
    return None


async def anoop():
    return None


# ---- the reference recorders -------------------------------------------------------------


def deque_recorder(q: deque, name: str):
    append = q.append
    clock = time.perf_counter

    def decorate(fn):
        if asyncio.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*args, **kwargs):
                t = clock()
                r = await fn(*args, **kwargs)
                append((name, clock() - t))
                return r
            return awrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = clock()
            r = fn(*args, **kwargs)
            append((name, clock() - t))
            return r
        return wrapper

    return decorate


def prometheus_recorder(name: str):
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    calls = Counter("mcp_tool_executions_total", "Tool executions", ["tool_name", "status"], registry=registry)
    seconds = Histogram("mcp_tool_execution_duration_seconds", "Tool execution time", ["tool_name"], registry=registry)
    clock = time.perf_counter

    def decorate(fn):
        if asyncio.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*args, **kwargs):
                t = clock()
                try:
                    r = await fn(*args, **kwargs)
                except BaseException:
                    seconds.labels(name).observe(clock() - t)
                    calls.labels(name, "error").inc()
                    raise
                seconds.labels(name).observe(clock() - t)
                calls.labels(name, "success").inc()
                return r
            return awrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = clock()
            try:
                r = fn(*args, **kwargs)
            except BaseException:
                seconds.labels(name).observe(clock() - t)
                calls.labels(name, "error").inc()
                raise
            seconds.labels(name).observe(clock() - t)
            calls.labels(name, "success").inc()
            return r
        return wrapper

    return decorate


def otel_recorder(name: str):
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()  # no span processor, no exporter
    tracer = provider.get_tracer("bench")
    span_name = f"tools/call {name}"
    attrs = {"mcp.method.name": "tools/call", "gen_ai.tool.name": name}

    def decorate(fn):
        if asyncio.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*args, **kwargs):
                with tracer.start_as_current_span(span_name, attributes=attrs):
                    return await fn(*args, **kwargs)
            return awrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with tracer.start_as_current_span(span_name, attributes=attrs):
                return fn(*args, **kwargs)
        return wrapper

    return decorate


# ---- timing --------------------------------------------------------------------------------


def time_sync(fn, number: int) -> float:
    """ns per call over ``number`` calls (timeit: gc disabled while timing)."""
    return timeit.Timer("f()", globals={"f": fn}).timeit(number) / number * 1e9


async def _aloop(fn, number: int) -> int:
    it = range(number)
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in it:
        await fn()
    return clock() - t0


def time_async(loop: asyncio.AbstractEventLoop, fn, number: int) -> float:
    import gc

    gc_was = gc.isenabled()
    gc.disable()
    try:
        return loop.run_until_complete(_aloop(fn, number)) / number
    finally:
        if gc_was:
            gc.enable()


def measure(mode: str, fns: dict, meter, q: deque, rounds: int, number: int) -> tuple[dict, list[float]]:
    loop = asyncio.new_event_loop() if mode == "async" else None
    timer = (lambda f: time_async(loop, f, number)) if loop else (lambda f: time_sync(f, number))
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    drain_ns: list[float] = []
    try:
        for f in fns.values():  # warm up every path once
            timer(f)
        meter.flush(60)
        q.clear()
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
            for v in order:
                samples[v].append(timer(fns[v]))
                if v == "mcpmeter":
                    t0 = time.perf_counter_ns()
                    meter.flush(60)
                    drain_ns.append((time.perf_counter_ns() - t0) / number)
                elif v == "deque":
                    q.clear()
    finally:
        if loop:
            loop.close()
    return {v: median(s) for v, s in samples.items()}, drain_ns


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--number", type=int, default=20_000, help="calls per round")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    load = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix="mcpmeter-bench-sdk-")
    os.environ["MCPMETER_HOME"] = tmp.name
    for name in [n for n in os.environ if n.startswith("MCPMETER_") and n != "MCPMETER_HOME"]:
        del os.environ[name]
    from mcpmeter import Meter

    per_round = args.number * 2  # sync + async share the meter; the queue is drained between rounds
    meter = Meter(server="bench", url=None, db=str(Path(tmp.name) / "bench.db"), max_queue=max(1_000_000, per_round))
    q: deque = deque()
    results = {}
    try:
        for mode, fn in (("sync", noop), ("async", anoop)):
            fns = {
                "bare": fn,
                "deque": deque_recorder(q, "search")(fn),
                "mcpmeter": meter.tool(name="search", category="rag")(fn),
                "prometheus": prometheus_recorder("search")(fn),
                "otel": otel_recorder("search")(fn),
            }
            log(f"[sdk] {mode}: {args.rounds} rounds x {args.number} calls per variant ...")
            medians, drain = measure(mode, fns, meter, q, args.rounds, args.number)
            results[mode] = {
                "ns_per_call": medians,
                "worker_drain_ns_per_event": median(drain),
                "mcpmeter_vs_deque": medians["mcpmeter"] / medians["deque"],
                "prometheus_vs_mcpmeter": medians["prometheus"] / medians["mcpmeter"],
                "otel_vs_mcpmeter": medians["otel"] / medians["mcpmeter"],
            }
        meter.flush(60)
        stats = meter.stats.as_dict()
    finally:
        meter.shutdown(30)
        tmp.cleanup()

    print(f"\nRecorder overhead per call on a no-op tool  ({machine_line()})")
    print(f"{args.rounds} rounds x {args.number} calls, median ns/call, nothing subtracted; "
          f"load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}\n")
    rows = []
    for v in VARIANTS:
        rows.append([v] + [f"{results[m]['ns_per_call'][v]:.0f}" for m in ("sync", "async")]
                    + [f"{results[m]['ns_per_call'][v] / results[m]['ns_per_call']['mcpmeter']:.2f}" for m in ("sync", "async")])
    print(table(["variant", "sync ns", "async ns", "sync / mcpmeter", "async / mcpmeter"], rows))
    print()
    ok = True
    for m in ("sync", "async"):
        r = results[m]
        a = r["mcpmeter_vs_deque"] <= TARGET_VS_DEQUE
        b = r["prometheus_vs_mcpmeter"] >= TARGET_PROM_VS_US
        ok = ok and a and b
        print(f"{m:5}  mcpmeter/deque = {r['mcpmeter_vs_deque']:.2f} (target <= {TARGET_VS_DEQUE}: {verdict(a)})   "
              f"prometheus/mcpmeter = {r['prometheus_vs_mcpmeter']:.2f} (target >= {TARGET_PROM_VS_US}: {verdict(b)})   "
              f"otel/mcpmeter = {r['otel_vs_mcpmeter']:.2f}")
    print(f"\nbackground worker (not on the caller's path): median {results['sync']['worker_drain_ns_per_event']:.0f} ns/event "
          f"to turn queued records into events and commit them to the local SQLite store")
    print(f"meter.stats: recorded={stats['recorded']} dropped={dict(stats['dropped']) or 0} sent={stats['sent']}")
    out = {"benchmark": "sdk", "rounds": args.rounds, "number": args.number, "results": results,
           "stats": stats, "targets_met": ok and not stats["dropped"]}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
