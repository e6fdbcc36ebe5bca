"""What ``meter.instrument(server)`` adds to a tool call, side by side in one run.

    python bench/bench_instrument.py [--rounds 30] [--number 500] [--json OUT]

A real in-process client (``mcp.Client(server)``, the SDK's default 2026-07-28 path with
no JSON-RPC framing) calls a no-op tool over and over. Variants, each its own server with
the same tool, for <server> = mcp 2.x ``MCPServer`` and FastMCP:
  <server>                    not instrumented (the reference)
  <server>+meter(queue only)  instrumented, the meter's worker stopped: only the work done
                              inside the request
  <server>+meter(local)       instrumented, recording into a local SQLite store
  <server>+meter(http)        instrumented, shipping to a real ``mcpmeter serve`` on loopback

Each round times ``number`` calls of every variant, in a rotating order; an instrumented
variant's window ends with ``meter.flush()``, so everything its calls recorded has been
delivered inside the window. Two clocks:
  cpu   CPU time of this process (all its threads: the calls, the meter's worker building
        batches and writing SQLite or POSTing) per call. Other processes - the collector,
        whatever else runs on the machine - don't count, so this is the figure that holds
        on a busy machine. It is what a server process pays per recorded call.
  wall  elapsed time per call (includes waiting for the collector at the flush; noisy when
        the machine is shared).
Figures are medians over rounds and the median over rounds of the paired ratio
instrumented/reference. Then, isolated from everything else: the meter's middleware called
directly on a captured request context (best of 7 runs, against a pass-through middleware),
and the CPU the meter's worker thread spends per event on its own thread clock.

Target: instrumented / reference <= 1.05 for MCPServer.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine_line, median, table, verdict, write_json

TARGET = 1.05
SERVERS = ("mcpserver", "fastmcp")
SINKS = ("queue only", "local", "http")


def _mcpserver():
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bench")

    @server.tool()
    def noop() -> str:
        return "ok"

    return server


def _fastmcp():
    from fastmcp import FastMCP

    server = FastMCP("bench-fastmcp")

    @server.tool
    def noop() -> str:
        return "ok"

    return server


MAKERS = {"mcpserver": _mcpserver, "fastmcp": _fastmcp}


def _lowlevel(server):
    return getattr(server, "_mcp_server", server)  # FastMCP's mcp Server, for mcp.Client


def _start_collector(workdir: Path) -> tuple[subprocess.Popen, str]:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpmeter", "serve", "--port", str(port), "--db", str(workdir / "collector.db"),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the collector did not start")


def _meter(server: str, sink: str, workdir: Path, url: str):
    from mcpmeter import Meter

    if sink == "queue only":
        meter = Meter(server=f"bench-{server}", db=str(workdir / "unused.db"), user="bench")
        meter._worker.stop(5)  # nothing leaves the queue; it is emptied between rounds
        meter._worker = None
        return meter
    if sink == "local":
        return Meter(server=f"bench-{server}", db=str(workdir / "local.db"), user="bench")
    return Meter(server=f"bench-{server}", url=url, user="bench", spool=workdir / f"spool-{server}.db")


async def _end_to_end(args, workdir: Path, url: str) -> dict:
    from mcp import Client

    variants, meters = {}, {}
    for server in SERVERS:
        variants[server] = MAKERS[server]()
        for sink in SINKS:
            name = f"{server}+meter({sink})"
            meters[name] = _meter(server, sink, workdir, url)
            variants[name] = meters[name].instrument(MAKERS[server]())

    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    recorded = dropped = 0
    async with AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(Client(_lowlevel(s), cache=None)) for name, s in variants.items()}
        for client in clients.values():  # warm-up: imports, caches, first allocations, open sinks
            for _ in range(300):
                await client.call_tool("noop", {})
        for meter in meters.values():
            meter.flush(60)
            meter._queue.clear()
        order = list(clients)
        for r in range(args.rounds):
            shift = r % len(order)
            for name in order[shift:] + order[:shift]:
                call = clients[name].call_tool
                meter = meters.get(name)
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(args.number):
                    await call("noop", {})
                if meter is not None and meter._worker is not None:
                    meter.flush(60)  # the recording is done when it is delivered
                wall[name].append((time.perf_counter() - start_wall) / args.number)
                cpu[name].append((time.process_time() - start_cpu) / args.number)
                if meter is not None and meter._worker is None:
                    recorded += len(meter._queue)
                    meter._queue.clear()
            if (r + 1) % 10 == 0:
                log(f"round {r + 1}/{args.rounds}")
    for meter in meters.values():
        meter.flush(60)
        recorded += meter.stats.recorded
        dropped += sum(meter.stats.dropped.values())
        meter.shutdown()
    return {"wall": wall, "cpu": cpu, "recorded": recorded, "dropped": dropped}


async def _caller_path(workdir: Path, number: int) -> dict:
    """The middleware alone, on a real captured context: the cost inside the request."""
    from mcp import Client

    from mcpmeter.sdk.integrations._common import Recorder
    from mcpmeter.sdk.integrations.mcp import MeterMiddleware

    server = _mcpserver()
    captured = {}

    async def grab(ctx, call_next):
        result = await call_next(ctx)
        if ctx.method == "tools/call":
            captured["ctx"], captured["result"] = ctx, result
        return result

    server.middleware.append(grab)
    async with Client(server, cache=None) as client:
        await client.call_tool("noop", {})
    ctx, result = captured["ctx"], captured["result"]
    meter = _meter("caller", "queue only", workdir, "")
    meter.max_queue = 10 * number
    middleware = MeterMiddleware(Recorder(meter))

    async def call_next(ctx):
        return result

    async def passthrough(ctx, call_next):
        return await call_next(ctx)

    best = {"pass-through middleware": float("inf"), "meter middleware": float("inf")}
    for _ in range(7):
        for name, mw in (("pass-through middleware", passthrough), ("meter middleware", middleware)):
            start = time.process_time()
            for _ in range(number):
                await mw(ctx, call_next)
            best[name] = min(best[name], (time.process_time() - start) / number)
            meter._queue.clear()
    return best


def _worker_cpu(workdir: Path, url: str, number: int) -> dict:
    """CPU the meter's worker thread spends per event (batching, then writing SQLite or
    POSTing), on the thread's own clock: nothing else on the machine counts."""
    from mcpmeter.events import Event

    out = {}
    for sink in ("local", "http"):
        meter = _meter("cpu", sink, workdir, url)
        meter.max_queue = 2 * number
        meter.flush(30)  # the sink is open before the clock starts
        clock = time.pthread_getcpuclockid(meter._worker._thread.ident)
        ts = int(time.time() * 1000)
        before = time.clock_gettime(clock)
        for i in range(number):
            meter._enqueue(Event(id=f"{ts:012x}{i:020x}", kind="tool_call", ts=ts, server="bench-cpu", tool="noop",
                                 duration_ms=0.2, ok=True, client_name="mcp", client_version="0.1.0",
                                 protocol_version="2026-07-28", transport="stdio", user="bench",
                                 args_bytes=2, result_bytes=197))
        meter.flush(120)
        out[sink] = (time.clock_gettime(clock) - before) / number
        meter.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--number", type=int, default=500)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mcpmeter-bench-instrument-"))
    for name in [n for n in os.environ if n.startswith("MCPMETER_")]:
        del os.environ[name]
    os.environ["MCPMETER_HOME"] = str(workdir / "home")
    logging.getLogger("mcp").setLevel(logging.WARNING)

    import anyio

    proc, url = _start_collector(workdir)
    try:
        out = anyio.run(_end_to_end, args, workdir, url)
        worker = _worker_cpu(workdir, url, 20_000)
    finally:
        proc.terminate()
        proc.wait(10)
    caller = anyio.run(_caller_path, workdir, 20_000)

    rows, ratios = [], {}
    for server in SERVERS:
        base_cpu, base_wall = median(out["cpu"][server]), median(out["wall"][server])
        rows.append([server, f"{base_cpu * 1e6:.1f}", "", "", f"{base_wall * 1e6:.1f}", ""])
        for sink in SINKS:
            name = f"{server}+meter({sink})"
            cpu_ratio = median([t / b for t, b in zip(out["cpu"][name], out["cpu"][server])])
            wall_ratio = median([t / b for t, b in zip(out["wall"][name], out["wall"][server])])
            ratios[name] = {"cpu": cpu_ratio, "wall": wall_ratio}
            value = median(out["cpu"][name])
            rows.append([name, f"{value * 1e6:.1f}", f"{(value - base_cpu) * 1e6:+.1f}", f"{cpu_ratio:.3f}",
                         f"{median(out['wall'][name]) * 1e6:.1f}", f"{wall_ratio:.3f}"])
    print(f"meter.instrument() overhead: in-process mcp.Client -> no-op tool ({machine_line()})")
    print(f"{args.rounds} rounds x {args.number} calls per variant; medians over rounds, ratios paired per round\n")
    print(table(["variant", "cpu us/call", "added cpu us", "cpu ratio", "wall us/call", "wall ratio"], rows))
    print(f"\nevents recorded: {out['recorded']}, dropped: {out['dropped']}")
    added = caller["meter middleware"] - caller["pass-through middleware"]
    print("\ncaller's path only (middleware on a captured context, worker stopped, best of 7):")
    print(table(["middleware", "cpu us/call"], [[k, f"{v * 1e6:.2f}"] for k, v in caller.items()]))
    print(f"added inside the request: {added * 1e6:.2f} us = "
          f"{added / median(out['cpu']['mcpserver']) * 100:.1f}% of a bare MCPServer call\n")
    bare = median(out["cpu"]["mcpserver"])
    print("isolated: caller's path + the worker thread's CPU per event (its own clock):")
    cpu_rows = []
    for sink, per_event in worker.items():
        total = added + per_event
        cpu_rows.append([sink, f"{added * 1e6:.2f}", f"{per_event * 1e6:.2f}", f"{total * 1e6:.2f}",
                         f"{total / bare * 100:.1f}%", verdict(total / bare <= TARGET - 1)])
    print(table(["sink", "caller us", "worker us", "total us", "of a bare call", f"<= {TARGET - 1:.0%}"], cpu_rows))
    print()
    for sink in SINKS:
        r = ratios[f"mcpserver+meter({sink})"]
        print(f"target MCPServer+meter({sink}) cpu ratio <= {TARGET}: {verdict(r['cpu'] <= TARGET)} "
              f"({r['cpu']:.3f}; wall {r['wall']:.3f})")
    write_json(args.json, {"rounds": args.rounds, "number": args.number,
                           "cpu_s_per_call": {k: median(v) for k, v in out["cpu"].items()},
                           "wall_s_per_call": {k: median(v) for k, v in out["wall"].items()},
                           "paired_ratios": ratios, "caller_path_cpu_s": caller,
                           "worker_cpu_s_per_event": worker, "target": TARGET,
                           "recorded": out["recorded"], "dropped": out["dropped"]})


if __name__ == "__main__":
    main()
