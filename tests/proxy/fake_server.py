"""A tiny stdio MCP server for the proxy's fault tests: raw newline-delimited JSON-RPC.

Deterministic output (compact JSON, UTF-8), so what a client receives can be compared
byte for byte. Tools:

- ``echo`` {…}: returns the arguments as JSON text
- ``big`` {"size": N}: returns a text block of N bytes
- ``garbage`` {}: prints non-JSON lines (and a blank one) on stdout, then answers
- ``slow`` {"seconds": S}: answers after S seconds (in a thread; others go on)
- ``crash`` {"code": C}: exits at once with code C, answering nothing
- ``fail`` {}: a result with ``isError: true``
- anything else: JSON-RPC error -32602

Options: ``--exit-code N`` (exit code when stdin closes), ``--linger`` (on stdin EOF, wait
for slow calls instead of exiting), ``--pid-file PATH``. SIGTERM exits with code 42.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

lock = threading.Lock()
slow_calls: list[threading.Thread] = []
out = sys.stdout.buffer


def write(data: bytes) -> None:
    with lock:
        out.write(data)
        out.flush()


def send(message: dict) -> None:
    write(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")


def result(msg_id, value: dict) -> None:
    send({"jsonrpc": "2.0", "id": msg_id, "result": value})


def text(msg_id, value: str, is_error: bool = False) -> None:
    result(msg_id, {"content": [{"type": "text", "text": value}], "isError": is_error})


TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("echo", "big", "garbage", "slow", "crash", "fail")]


def handle(msg: dict) -> None:
    method, msg_id = msg.get("method"), msg.get("id")
    params = msg.get("params") or {}
    if method is None or "id" not in msg:
        return  # responses and notifications
    if method == "initialize":
        result(msg_id, {"protocolVersion": params.get("protocolVersion", "2025-11-25"), "capabilities": {"tools": {}},
                        "serverInfo": {"name": "fake", "version": "1.0"}})
    elif method == "tools/list":
        result(msg_id, {"tools": TOOLS})
    elif method == "tools/call":
        name, args = params.get("name"), params.get("arguments") or {}
        if name == "echo":
            text(msg_id, json.dumps(args, separators=(",", ":"), ensure_ascii=False))
        elif name == "big":
            text(msg_id, "x" * int(args.get("size", 1_000_000)))
        elif name == "garbage":
            write(b"this is not JSON {{{\n\n  \nplain text from a misbehaving server\n")
            text(msg_id, "after the garbage")
        elif name == "slow":
            def later() -> None:
                time.sleep(float(args.get("seconds", 30)))
                text(msg_id, "slept")
            thread = threading.Thread(target=later, daemon=True)
            slow_calls.append(thread)
            thread.start()
            sys.stderr.write("fake-server: slow call started\n")
            sys.stderr.flush()
        elif name == "crash":
            os._exit(int(args.get("code", 3)))
        elif name == "fail":
            text(msg_id, "it failed on purpose", is_error=True)
        else:
            send({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32602, "message": f"Unknown tool: {name}"}})
    else:
        send({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32601, "message": "Method not found"}})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--linger", action="store_true")
    parser.add_argument("--pid-file")
    opts = parser.parse_args()

    def on_term(signum, frame):
        sys.stderr.write("fake-server: got SIGTERM\n")
        sys.stderr.flush()
        os._exit(42)

    signal.signal(signal.SIGTERM, on_term)
    if opts.pid_file:
        with open(opts.pid_file + ".tmp", "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(opts.pid_file + ".tmp", opts.pid_file)
    sys.stderr.write("fake-server: ready\n")
    sys.stderr.flush()
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        for msg in message if isinstance(message, list) else [message]:
            if isinstance(msg, dict):
                handle(msg)
    if opts.linger:
        for thread in slow_calls:
            thread.join()
    sys.stderr.write("fake-server: bye\n")
    sys.stderr.flush()
    os._exit(opts.exit_code)


if __name__ == "__main__":
    main()
