"""``mcpmeter proxy -- CMD ARGS…``: a stdio MCP server as our child, its traffic passed through.

Three threads, one job each:

- client → child: ``os.read`` our stdin, put the chunk (with the time it was read) in the
  tracker's inbox, ``os.write`` it to the child's stdin;
- child → client: the same from the child's stdout to our stdout;
- tracker: splits the chunks into lines and feeds them to the ``Tracker``.

The forwarding threads never parse and never wait for the tracker: the inbox is an
unbounded queue whose ``put`` does not block, and the bytes go out unchanged while the
tracker reads its own reference to them in its own thread. The child's stderr is our
stderr (inherited, not copied). Our own output goes to stderr only: at start the
protocol stream is moved to a private descriptor and descriptor 1 is pointed at stderr,
so even a stray ``print`` cannot corrupt the protocol.

Ending: when the client closes our stdin we close the child's stdin and give it
``grace`` seconds to exit before SIGTERM (then SIGKILL), as the MCP spec asks of
clients. SIGINT, SIGTERM and SIGHUP are forwarded to the child (the third signal kills
it). When the child has exited, unanswered calls are recorded as failed
(``server_exited``, or ``client_disconnected`` when the client left first), the
session ends, the meter is flushed, and we exit with the child's exit code (128+N when
signal N ended it).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

from ..exceptions import MCPMeterError
from .tracker import Connection, Tracker, new_session_id

log = logging.getLogger("mcpmeter.proxy")

CHUNK = 1 << 16
_CLIENT, _SERVER = 0, 1
_FORWARDED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class StdioProxy:
    def __init__(self, command: Sequence[str], tracker: Tracker, *, grace: float = 2.0,
                 shutdown_timeout: float = 5.0, isolate_stdout: bool = True) -> None:
        self.command = list(command)
        self.tracker = tracker
        self.grace = grace
        self.shutdown_timeout = shutdown_timeout
        self.isolate_stdout = isolate_stdout
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._client_gone = threading.Event()
        self._signals = 0
        self._proc: subprocess.Popen | None = None
        self._tracking = not tracker.meter.disabled  # MCPMETER_DISABLED: a plain pass-through

    # ---- main thread ----------------------------------------------------------------------

    def run(self) -> int:
        """Run the child to its end; returns the exit code to exit with."""
        client_in, client_out = os.dup(0), os.dup(1)
        if self.isolate_stdout:
            try:
                os.dup2(2, 1)  # fd 1 now writes to stderr; the protocol has its own descriptor
            except OSError:
                pass
        clock = time.perf_counter
        try:
            proc = self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        except OSError as exc:
            raise MCPMeterError(
                f"cannot start the server {self.command[0]!r}: {exc.strerror or exc}",
                hint="check the command after `--` (it runs without a shell; give the full path if it is not on PATH)",
            ) from None
        conn = Connection(new_session_id(), started=clock())
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _FORWARDED}
        assert proc.stdin is not None and proc.stdout is not None  # both are pipes
        try:
            child_in, child_out = proc.stdin.fileno(), proc.stdout.fileno()
            to_child = threading.Thread(target=self._pump, args=(client_in, child_in, _CLIENT, self._client_eof),
                                        name="mcpmeter-proxy-in", daemon=True)
            to_client = threading.Thread(target=self._pump, args=(child_out, client_out, _SERVER, None),
                                         name="mcpmeter-proxy-out", daemon=True)
            tracking = threading.Thread(target=self._track, args=(conn,), name="mcpmeter-proxy-track", daemon=True)
            tracking.start()
            to_client.start()
            to_child.start()
            code = proc.wait()
            to_client.join(1.0)  # the child's last bytes (a grandchild may hold its stdout: bounded)
            if self._client_gone.is_set():
                reason, ending = "client_disconnected", "client_closed"
            else:
                reason, ending = "server_exited", "signal" if self._signals else "server_exited"
            self._inbox.put((None, (reason, {"reason": ending, "exit_code": code}), clock()))
            tracking.join(self.shutdown_timeout)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.tracker.meter.shutdown(self.shutdown_timeout)
        return code if code >= 0 else 128 - code

    def _on_signal(self, signum: int, frame) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._signals += 1
        log.info("mcpmeter proxy: forwarding signal %d to the server (pid %d)", signum, proc.pid)
        try:
            if self._signals >= 3:
                proc.kill()
            else:
                proc.send_signal(signum)
        except OSError:
            pass

    # ---- forwarding threads -------------------------------------------------------------

    def _pump(self, src: int, dst: int, direction: int, on_eof) -> None:
        read, put, clock = os.read, self._inbox.put, time.perf_counter
        tracking = self._tracking
        writable = True
        while True:
            try:
                chunk = read(src, CHUNK)
            except OSError:
                chunk = b""
            if not chunk:
                break
            # Queued *before* it is written: whatever the other side answers to these bytes
            # is read after this put, so the tracker sees every exchange in causal order.
            # The put never blocks; parsing happens in the tracker thread.
            if tracking:
                put((direction, chunk, clock()))
            if writable:
                try:
                    _write_all(dst, chunk)
                except OSError as exc:
                    # The other side is gone. Keep draining, so the child never blocks on a
                    # full pipe and what it answers is still recorded.
                    writable = False
                    log.debug("mcpmeter proxy: %s closed (%s)", "server stdin" if direction == _CLIENT else "client", exc)
        put((direction, b"", clock()))
        if on_eof is not None:
            on_eof()

    def _client_eof(self) -> None:
        """The client closed our stdin: close the child's, then escalate if it lingers."""
        self._client_gone.set()
        proc = self._proc
        assert proc is not None and proc.stdin is not None  # the pumps run only once the child started
        try:
            proc.stdin.close()
        except OSError:
            pass
        threading.Thread(target=self._escalate, name="mcpmeter-proxy-stop", daemon=True).start()

    def _escalate(self) -> None:
        proc = self._proc
        assert proc is not None  # started from _client_eof
        for action in (proc.terminate, proc.kill):
            try:
                proc.wait(self.grace)
                return
            except subprocess.TimeoutExpired:
                pass
            log.warning("mcpmeter proxy: the server did not exit %.1fs after its input closed; %s",
                        self.grace, "terminating it" if action == proc.terminate else "killing it")
            try:
                action()
            except OSError:
                return

    # ---- tracker thread -----------------------------------------------------------------

    def _track(self, conn: Connection) -> None:
        tracker = self.tracker
        feed = (tracker.from_client, tracker.from_server)
        partial = (bytearray(), bytearray())
        get = self._inbox.get
        while True:
            direction, chunk, t = get()
            try:
                if direction is None:  # the child has exited
                    reason, attributes = chunk
                    tracker.close(conn, reason, t, attributes)
                    tracker.finish()
                    return
                buf = partial[direction]
                handle = feed[direction]
                if not chunk:  # EOF: a last message without its newline still counts
                    if buf.strip():
                        handle(conn, bytes(buf), t)
                    buf.clear()
                    continue
                start = 0
                nl = chunk.find(b"\n")
                if buf:
                    if nl < 0:
                        buf += chunk
                        continue
                    buf += chunk[:nl]
                    line = bytes(buf)
                    buf.clear()
                    handle(conn, line, t)
                    start = nl + 1
                    nl = chunk.find(b"\n", start)
                while nl >= 0:
                    if nl > start:
                        handle(conn, chunk[start:nl], t)
                    start = nl + 1
                    nl = chunk.find(b"\n", start)
                if start < len(chunk):
                    buf += chunk[start:]
            except Exception as exc:  # tracking must never stop: log and carry on
                from ..sdk.internal import internal_error

                internal_error("the proxy could not track a message", exc)
