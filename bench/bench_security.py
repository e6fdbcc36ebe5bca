"""What signed submissions and rate limits cost ingest: a ratio measured in one run.

Two real collectors (`mcpmeter serve` processes on embedded stores) take the same load of
gzip batches from the same concurrent clients, in alternating rounds:

- plain:   rate limits off, an ordinary key;
- secured: rate limits on (per key and per address, with a limit no client reaches, so
           every request runs the token bucket), and a key that requires signatures (the
           clients sign every request; the collector verifies each and remembers it once).

Throughput ratio secured / plain, target >= 0.90 (the cost at most 10%). Also the costs
of the pieces alone, per request: verifying a signature of a typical body, taking a token,
and reading the store's keys version (what makes revocation immediate).

    python bench/bench_security.py [--batches 600] [--events 200] [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, free_port, log, machine_line, median, table, verdict, write_json  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
from mcpmeter import keys as keylib  # noqa: E402
from mcpmeter.server.collector.security import SignatureChecker, TokenBuckets, new_signing_secret  # noqa: E402
from mcpmeter.signing import signature_headers  # noqa: E402
from mcpmeter.storage import open_store  # noqa: E402


def start(tmp: Path, name: str, env_extra: dict[str, str], signed: bool) -> tuple[subprocess.Popen, int, str, str | None]:
    db = tmp / f"{name}.db"
    store = open_store(str(db))
    project = store.ensure_project("default")
    key = keylib.new_key()
    info = store.add_key(project.id, "bench", keylib.hash_key(key), keylib.display_prefix(key), ["ingest"])
    secret = None
    if signed:
        secret = new_signing_secret()
        store.set_signing_secret(info.id, secret)
    store.close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
    env.update(MCPMETER_HOME=str(tmp / f"home-{name}"), MCPMETER_METRICS="false", **env_extra)
    with open(tmp / f"{name}.log", "wb") as log_file:  # the collector keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "mcpmeter", "serve", "--port", str(port), "--db", str(db), "--log-level", "warning"],
                                env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return proc, port, key, secret
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"collector {name} did not start: {(tmp / f'{name}.log').read_text()}")


def bodies(batches: int, events: int) -> list[bytes]:
    now = int(time.time() * 1000)
    out = []
    for b in range(batches):
        batch = [{"id": uuid.uuid4().hex, "kind": "tool_call", "ts": now - (b * events + i) % 3_600_000, "server": "bench",
                  "tool": f"tool{i % 12}", "duration_ms": 1.5 + i % 40, "ok": i % 17 != 0, "user": f"u{i % 50}",
                  "client_name": "cursor"} for i in range(events)]
        out.append(gzip.compress(json.dumps(batch).encode(), 5))
    return out


def load(port: int, key: str, secret: str | None, payloads: list[bytes], clients: int) -> tuple[float, int]:
    """Seconds to deliver every payload; accepted events (must be all of them)."""
    seq = itertools.count()
    accepted = [0]
    failures: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        base = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
        mine = 0
        while (n := next(seq)) < len(payloads):
            body = payloads[n]
            headers = {**base, **signature_headers(secret, body)} if secret else base
            conn.request("POST", "/v1/events", body, headers)
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                failures.append(f"{response.status} {data[:200]!r}")
                continue
            mine += json.loads(data)["accepted"]
        conn.close()
        with lock:
            accepted[0] += mine

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"requests failed: {failures[:3]}")
    return time.perf_counter() - t0, accepted[0]


def micro(events: int) -> dict[str, float]:
    body = bodies(1, events)[0]
    secret = new_signing_secret()
    checker = SignatureChecker(300)
    headers_list = [{k.lower(): v for k, v in signature_headers(secret, body + str(i).encode()).items()} for i in range(20000)]
    bodies_list = [body + str(i).encode() for i in range(20000)]
    it = iter(range(20000))

    def verify() -> None:
        i = next(it)
        checker.verify(secret, headers_list[i], bodies_list[i])

    verify_us = timeit.timeit(verify, number=20000) / 20000 * 1e6
    buckets = TokenBuckets(10**9)
    take_us = min(timeit.repeat(lambda: buckets.take("k"), number=100000, repeat=3)) / 100000 * 1e6
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(Path(tmp) / "v.db"))
        version_us = min(timeit.repeat(store.keys_version, number=20000, repeat=3)) / 20000 * 1e6
        store.close()
    return {"verify_signature_us": verify_us, "take_token_us": take_us, "keys_version_read_us": version_us,
            "body_bytes": len(body)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--events", type=int, default=200, help="events per batch")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small run (smoke check)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds = 150, 1
    log(f"bench_security on {machine_line()}")
    with tempfile.TemporaryDirectory(prefix="mcpmeter-bench-security-") as tmp_name:
        tmp = Path(tmp_name)
        plain = start(tmp, "plain", {"MCPMETER_RATE_LIMIT_PER_KEY": "0", "MCPMETER_RATE_LIMIT_PER_IP": "0"}, signed=False)
        secured = start(tmp, "secured", {"MCPMETER_RATE_LIMIT_PER_KEY": "1000000000", "MCPMETER_RATE_LIMIT_PER_IP": "1000000000"},
                        signed=True)
        rates: dict[str, list[float]] = {"plain": [], "secured": []}
        try:
            for r in range(args.rounds):
                for name, (_, port, key, secret) in (("plain", plain), ("secured", secured)) if r % 2 == 0 else \
                        (("secured", secured), ("plain", plain)):
                    payloads = bodies(args.batches, args.events)  # new ids every round: nothing is a duplicate
                    seconds, accepted = load(port, key, secret, payloads, args.clients)
                    assert accepted == args.batches * args.events, (name, accepted)
                    rates[name].append(accepted / seconds)
                    log(f"  round {r + 1} {name}: {accepted / seconds:,.0f} events/s")
        finally:
            for proc, *_ in (plain, secured):
                proc.terminate()
                proc.wait(10)
    pieces = micro(args.events)
    plain_rate, secured_rate = median(rates["plain"]), median(rates["secured"])
    ratio = secured_rate / plain_rate
    print(table(["ingest (median of rounds)", "events/s"], [
        ["plain (no limits, unsigned key)", f"{plain_rate:,.0f}"],
        ["secured (limits + signed key)", f"{secured_rate:,.0f}"],
        ["secured / plain", f"{ratio:.3f}  (target >= 0.90: {verdict(ratio >= 0.90)})"],
    ]))
    print()
    print(table(["one request's piece", "µs"], [
        [f"verify a signature ({pieces['body_bytes']} B gzip body)", f"{pieces['verify_signature_us']:.1f}"],
        ["take a rate-limit token", f"{pieces['take_token_us']:.2f}"],
        ["read keys_version (SQLite)", f"{pieces['keys_version_read_us']:.2f}"],
    ]))
    write_json(args.json, {"plain_events_per_s": plain_rate, "secured_events_per_s": secured_rate, "ratio": ratio,
                           "rounds": rates, **pieces, "batches": args.batches, "events_per_batch": args.events,
                           "clients": args.clients})
    return 0


if __name__ == "__main__":
    sys.exit(main())
