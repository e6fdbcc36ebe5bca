"""A host program for the careless-host tests: the real SDK in its own process.

    python careless_host_process.py MODE ...

Meters are configured by the environment (MCPMETER_URL, MCPMETER_API_KEY, MCPMETER_HOME...).
Modes:
  record SERVER TOOL N       record N calls, flush (replaying this identity's spool), print stats, exit
  exit METERS N              METERS meters record N calls each; print "exiting" and leave (atexit only)
  dropped METERS N           the same, but each meter is dropped (del) before the exit
  children KIND N            KIND (process, pool) multiprocessing children (fork) record N calls each
  kill N                     record N calls, print "recorded", then wait to be killed
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import sys
import time

from mcpmeter import Meter


def ping_tool(meter: Meter):
    @meter.tool
    def ping(i: int) -> int:
        return i

    return ping


def record(server: str, tool: str, n: int) -> None:
    meter = Meter(server=server, flush_interval=0.1)
    fn = meter.tool(lambda i: i, name=tool)
    for i in range(n):
        fn(i)
    meter.flush(5)
    print(json.dumps(meter.stats.as_dict()), flush=True)


def leave(meters: int, n: int, drop: bool) -> None:
    made = [Meter(server=f"host{m}", flush_interval=60) for m in range(meters)]
    for meter in made:
        ping = ping_tool(meter)
        for i in range(n):
            ping(i)
    if drop:
        del made, meter, ping
        gc.collect()
    time.sleep(0.3)  # the workers are idle (their flush interval is far off): all is sent at exit
    print("exiting", flush=True)


_meter: Meter | None = None


def child_work(i: int) -> int:
    assert _meter is not None
    _meter.record("child_call", attributes={"i": i})
    return i


def child_process(n: int) -> None:
    for i in range(n):
        child_work(i)


def children(kind: str, n: int) -> None:
    global _meter
    _meter = Meter(server="parent", flush_interval=60)  # created before the fork, as hosts do
    ctx = multiprocessing.get_context("fork")
    if kind == "process":
        procs = [ctx.Process(target=child_process, args=(n,)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    else:
        with ctx.Pool(2) as pool:
            pool.map(child_work, range(n))
            pool.close()
            pool.join()
    print("children done", flush=True)


def kill(n: int) -> None:
    meter = Meter(server="victim")
    ping = ping_tool(meter)
    for i in range(n):
        ping(i)
    print("recorded", time.time(), flush=True)
    time.sleep(600)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "record":
        record(args[0], args[1], int(args[2]))
    elif mode in ("exit", "dropped"):
        leave(int(args[0]), int(args[1]), drop=mode == "dropped")
    elif mode == "children":
        children(args[0], int(args[1]))
    elif mode == "kill":
        kill(int(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
