"""What ``mcpmeter proxy`` adds to a stdio tool call, direct and proxied in one run.

    python bench/bench_proxy.py [--calls 500] [--warmup 20] [--mode auto|legacy] [--json OUT]

Two sessions with the real MCP client (``mcp.Client`` over ``stdio_client``) to the real
``mcp-server-time``: one spawns the server directly, the other spawns
``mcpmeter proxy -- <the same server>``, recording into a local SQLite store in a
temporary MCPMETER_HOME. Both stay open; then ``calls`` sequential ``get_current_time``
calls are made on each, interleaved (direct, proxied, proxied, direct, ...) so that both
see the same machine load. Each call is timed from ``call_tool`` to its result.

Printed: p50 and p99 per path, the ratios proxied/direct, and the median of the paired
ratios (each proxied call over the direct call made next to it). Target: p50 <= 1.2x.
At the end the proxied session is closed and the store is checked to hold every call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine_line, table, verdict, write_json

TARGET = 1.2
SERVER = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "Etc/UTC"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def measure(calls: int, warmup: int, mode: str, home: Path) -> dict[str, list[float]]:
    from contextlib import AsyncExitStack

    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    env = {"MCPMETER_HOME": str(home), "MCPMETER_USER": "bench"}
    params = {
        "direct": StdioServerParameters(command=SERVER[0], args=SERVER[1:], env=env),
        "proxied": StdioServerParameters(command=sys.executable, args=["-m", "mcpmeter", "proxy", "--", *SERVER], env=env),
    }
    times: dict[str, list[float]] = {name: [] for name in params}
    async with AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(Client(p, mode=mode)) for name, p in params.items()}
        for client in clients.values():
            for _ in range(warmup):
                await client.call_tool("get_current_time", {"timezone": "Etc/UTC"})
        order = list(clients)
        clock = time.perf_counter
        for i in range(calls):
            for name in (order if i % 2 == 0 else order[::-1]):
                client = clients[name]
                start = clock()
                result = await client.call_tool("get_current_time", {"timezone": "Etc/UTC"})
                times[name].append((clock() - start) * 1000)
                if result.is_error:
                    raise RuntimeError(f"{name}: the call failed: {result.content}")
    return times


def recorded_calls(home: Path) -> int:
    from mcpmeter.storage import open_store
    from mcpmeter.storage.base import EventFilter

    store = open_store(str(home / "mcpmeter.db"))
    try:
        project = store.ensure_project("default")
        return store.count_events(EventFilter(project.id, 0, 1 << 62, tool="get_current_time"))
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--mode", default="auto", choices=["auto", "legacy"], help="client handshake (auto: 2026-07-28)")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()

    import anyio

    with tempfile.TemporaryDirectory(prefix="mcpmeter-bench-proxy-") as tmp:
        home = Path(tmp)
        log(f"bench_proxy: {args.calls} calls per path after {args.warmup} warm-up calls ({machine_line()})")
        times = anyio.run(measure, args.calls, args.warmup, args.mode, home)
        stored = recorded_calls(home)
    figures = {
        name: {"p50_ms": statistics.median(v), "p99_ms": percentile(v, 99), "mean_ms": statistics.fmean(v)}
        for name, v in times.items()
    }
    ratio_p50 = figures["proxied"]["p50_ms"] / figures["direct"]["p50_ms"]
    ratio_p99 = figures["proxied"]["p99_ms"] / figures["direct"]["p99_ms"]
    # each proxied call against the direct call made right next to it: robust to load swings
    paired = statistics.median(p / d for p, d in zip(times["proxied"], times["direct"]))
    rows = [[name, f"{f['p50_ms']:.3f}", f"{f['p99_ms']:.3f}", f"{f['mean_ms']:.3f}"] for name, f in figures.items()]
    print(f"\nmcp-server-time over stdio, {args.calls} sequential get_current_time calls per path, "
          f"client mode {args.mode!r} ({machine_line()})\n")
    print(table(["path", "p50 ms", "p99 ms", "mean ms"], rows))
    print()
    print(table(["ratio proxied/direct", "value", "target"], [
        ["p50", f"{ratio_p50:.3f}", f"<= {TARGET} {verdict(ratio_p50 <= TARGET)}"],
        ["p99", f"{ratio_p99:.3f}", ""],
        ["median of paired ratios", f"{paired:.3f}", ""],
        ["p50 added by the proxy (ms)", f"{figures['proxied']['p50_ms'] - figures['direct']['p50_ms']:.3f}", ""],
    ]))
    expected = args.calls + args.warmup
    print(f"\ncalls recorded by the proxy: {stored} of {expected} ({verdict(stored == expected)})")
    write_json(args.json, {"calls": args.calls, "mode": args.mode, "figures": figures, "ratio_p50": ratio_p50,
                           "ratio_p99": ratio_p99, "paired_ratio": paired, "recorded": stored, "expected": expected})
    return 0 if stored == expected else 1


if __name__ == "__main__":
    sys.exit(main())
