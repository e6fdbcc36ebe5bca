"""Helpers for the proxy tests: real `mcpmeter proxy` processes, real servers, the real store.

PYTEST_DONT_REWRITE: test modules import it before one of them loads it as a plugin
(``pytest_plugins``), which pytest would otherwise warn about - and warnings are errors.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from mcpmeter.events import ROW_FIELDS
from mcpmeter.storage import open_store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FAKE_SERVER = [sys.executable, str(HERE / "fake_server.py")]
HTTP_SERVER = [sys.executable, str(HERE / "http_server.py")]
MCPMETER = [sys.executable, "-m", "mcpmeter"]
TIME_SERVER = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "Etc/UTC"]
EVERYTHING_JS = ROOT / ".cache" / "node" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


def proxy_env(home: Path, **extra: str) -> dict[str, str]:
    """What a proxy process needs: PATH and friends, its own MCPMETER_HOME, a known user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
    env.update({"MCPMETER_HOME": str(home), "MCPMETER_USER": "alice", "MCPMETER_FLUSH_INTERVAL": "0.2"})
    env.update(extra)
    return env


# ---- reading what was recorded --------------------------------------------------------------


def recorded(where: Path | str, kind: str | None = None) -> list[dict[str, Any]]:
    """The events (of ``kind``; without one, all but the catalog) in a store - ``where`` is an
    MCPMETER_HOME, a .db file or a postgresql:// URL - by time."""
    if isinstance(where, str):
        store = open_store(where)
    else:
        db = where if where.suffix == ".db" else where / "mcpmeter.db"
        if not db.exists():
            return []
        store = open_store(str(db))
    try:
        project = store.ensure_project("default")
        rows = store.export_events(project.id, 0, 100_000)
    finally:
        store.close()
    events = [dict(zip(ROW_FIELDS, row[1:])) for row in rows]
    for event in events:
        if event["attributes"]:
            event["attributes"] = json.loads(event["attributes"])
            # Both handshakes are stored as kind "initialize"; the 2026-07-28 one carries its
            # method as an attribute. The tests name it apart as "server_discover".
            if event["kind"] == "initialize" and event["attributes"].get("mcp.method.name") == "server/discover":
                event["kind"] = "server_discover"
    events.sort(key=lambda e: e["ts"])
    # The catalog (tool_listed) is the server's, outside any conversation: asked for by name.
    return [e for e in events if e["kind"] == kind or (kind is None and e["kind"] != "tool_listed")]


def report(home: Path, *args: str) -> dict[str, Any]:
    """`mcpmeter report --format json` on the store of ``home``."""
    env = proxy_env(home)
    out = subprocess.run([*MCPMETER, "report", "--format", "json", *args], env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def by_tool(summary: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """{tool: (calls, errors)} from a report."""
    return {t["tool"]: (t["calls"], t["errors"]) for t in summary["tools"]}


def user_hash(home: Path, user: str) -> str:
    from mcpmeter.identity import UserHasher

    store = open_store(str(home / "mcpmeter.db"))
    try:
        return UserHasher(store.ensure_project("default").user_salt)(user)
    finally:
        store.close()


# ---- a proxy driven line by line ----------------------------------------------------------


class RawProxy:
    """`mcpmeter proxy -- CMD` (or any command) as a subprocess, spoken to in raw lines."""

    def __init__(self, command: list[str], env: dict[str, str], proxy_args: tuple[str, ...] = (),
                 direct: bool = False) -> None:
        argv = command if direct else [*MCPMETER, "proxy", *proxy_args, "--", *command]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, bufsize=0)
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        partial = b""
        while chunk := self.proc.stdout.read(1 << 20):
            self.stdout += chunk
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            for line in lines:
                self._lines.put(line)
        if partial:
            self._lines.put(partial)
        self._lines.put(None)

    def _read_stderr(self) -> None:
        while chunk := self.proc.stderr.read(1 << 16):
            self.stderr += chunk

    def send(self, message: dict | list | bytes) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def call(self, method: str, params: dict | None = None, msg_id: Any = None, timeout: float = 30) -> dict:
        """Send a request and wait for the response with its id (other lines are skipped)."""
        if msg_id is None:
            self._next_id += 1
            msg_id = self._next_id
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(deadline - time.monotonic(), 0.01))
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if isinstance(answer, dict) and answer.get("id") == msg_id and type(answer.get("id")) is type(msg_id) \
                    and "method" not in answer:
                return answer

    def exchange(self, script: list[bytes], timeout: float = 30) -> None:
        """Send each raw line, then wait for the responses to every request id in it."""
        for raw in script:
            message = json.loads(raw)
            waiting = {json.dumps(m["id"]) for m in (message if isinstance(message, list) else [message]) if "id" in m}
            self.send(raw)
            while waiting:
                try:
                    answer = json.loads(self.line(timeout))
                except ValueError:
                    continue
                for m in answer if isinstance(answer, list) else [answer]:
                    if isinstance(m, dict) and "method" not in m:
                        waiting.discard(json.dumps(m.get("id")))

    def line(self, timeout: float = 30) -> bytes:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s; stderr: {self.stderr.decode(errors='replace')}") from None
        if line is None:
            raise AssertionError(f"stdout closed; stderr: {self.stderr.decode(errors='replace')}")
        return line

    def initialize(self) -> dict:
        return self.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                        "clientInfo": {"name": "raw-test", "version": "1.0"}})

    def close_stdin(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the proxy did not exit within {timeout}s; stderr: {self.stderr.decode(errors='replace')}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for_stderr(proxy: RawProxy, text: bytes, timeout: float = 20) -> None:
    """Until the server has said ``text`` on stderr (it comes through the proxy's stderr)."""
    deadline = time.monotonic() + timeout
    while text not in proxy.stderr:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not seen on stderr: {proxy.stderr.decode(errors='replace')}")
        time.sleep(0.01)


# ---- fixtures (test modules load them with pytest_plugins) ------------------------------------------------


@pytest.fixture
def everything_server() -> list[str]:
    """The Node reference server; installed by `make test` (npm, under .cache/node)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the proxy tests need Node.js (apt-get install nodejs npm), then `make test`")
    if not EVERYTHING_JS.exists():
        pytest.fail(f"{EVERYTHING_JS} is missing: run `make node-deps` (or `make test`, which installs it)")
    return [node, str(EVERYTHING_JS), "stdio"]


@pytest.fixture
def raw_proxies():
    """Start RawProxy processes; any still running at the end is killed."""
    started: list[RawProxy] = []

    def start(*args, **kwargs) -> RawProxy:
        p = RawProxy(*args, **kwargs)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
        for stream in (p.proc.stdin, p.proc.stdout, p.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


# ---- HTTP: a real MCP server under uvicorn, and the proxy in front of it ---------------------


class Process(NamedTuple):
    url: str
    proc: subprocess.Popen
    log: Path


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: exited with {proc.returncode}: {log.read_text()}")
        try:
            httpx.get(url + "/echo-headers", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{url} did not come up: {log.read_text()}")


def start_http_server(tmp_path: Path, *args: str) -> Process:
    from conftest import free_port

    port = free_port()
    log = tmp_path / f"http-server-{port}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*HTTP_SERVER, str(port), *args], stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, url, log)
    return Process(url, proc, log)


def start_http_proxy(upstream: str, home: Path, *args: str) -> Process:
    from conftest import free_port

    port = free_port()
    log = home.parent / f"http-proxy-{port}.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*MCPMETER, "proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}", *args],
                                stdout=fh, stderr=subprocess.STDOUT, env=proxy_env(home))
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, url, log)
    return Process(url, proc, log)


def stop(process: Process, timeout: float = 15) -> int:
    """SIGTERM, as a service manager would; returns the exit code."""
    if process.proc.poll() is None:
        process.proc.terminate()
        try:
            process.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            process.proc.kill()
            process.proc.wait()
            raise AssertionError(f"{process.url} did not stop within {timeout}s: {process.log.read_text()}") from None
    return process.proc.returncode
