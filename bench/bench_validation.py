"""What the storable-value rules (no NUL, key texts in bytes) cost ``decode_batch``: a ratio.

The same 500-event batch is decoded with the rules and without them (``events.scan`` made to
report a body with neither NUL nor non-ASCII text, which skips every per-value check), in
alternating rounds; the figure is the ratio of the medians. Three bodies: ASCII without
escapes (what the SDK sends most), non-ASCII text written as itself, and the same text
written as ``\\u`` escapes.

    python bench/bench_validation.py [--rounds 31] [--number 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import timeit

from mcpmeter import events


def batch(now: int, texty: bool, ascii_only: bool = False) -> bytes:
    out = []
    for i in range(500):
        e = {"id": f"{now:012x}{i:020x}", "kind": "tool_call", "ts": now - i, "server": "weblab", "tool": f"search_{i % 20}",
             "duration_ms": 12.5, "ok": i % 10 != 0, "session_id": f"sess-{i % 7}", "client_name": "claude-code",
             "client_version": "1.2.3", "protocol_version": "2025-11-25", "transport": "stdio", "user": f"user{i % 50}",
             "args_bytes": 120, "result_bytes": 900, "attributes": {"region": "eu", "n": i}}
        if i % 10 == 0:
            e["error_type"], e["error_message"] = "TimeoutError", "the upstream did not answer in 30 s"
        if texty:
            e["tool"], e["client_name"] = f"recherche_données_{i % 20}", "クライアント"
            if i % 10 == 0:
                e["error_message"] = "délai dépassé 😕"
        out.append(e)
    return json.dumps(out, ensure_ascii=ascii_only).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--number", type=int, default=20)
    args = parser.parse_args()
    now = int(time.time() * 1000)
    real_scan = events.scan

    def per_batch(body: bytes, rules: bool) -> float:
        events.scan = real_scan if rules else (lambda b: (False, False))
        try:
            return timeit.timeit(lambda: events.decode_batch(body, now_ms=now), number=args.number) / args.number
        finally:
            events.scan = real_scan

    print("| body | without the rules | with | ratio |\n|---|---:|---:|---:|")
    for label, body in (("ASCII, no escapes", batch(now, False)), ("non-ASCII text", batch(now, True)),
                        ("non-ASCII as \\u escapes", batch(now, True, ascii_only=True))):
        without, with_ = [], []
        for _ in range(args.rounds):
            without.append(per_batch(body, False))
            with_.append(per_batch(body, True))
        a, b = statistics.median(without), statistics.median(with_)
        print(f"| {label} ({len(body) // 1000} kB) | {a * 1e3:.2f} ms | {b * 1e3:.2f} ms | {b / a:.3f} |")


if __name__ == "__main__":
    main()
