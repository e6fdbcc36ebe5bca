"""``Meter``: the one object a server owner creates.

The recording path only appends a small tuple to a bounded deque (no I/O, no JSON, no
locks); a background worker turns tuples into events and ships them. Modes are decided
once, here, not per call: a disabled meter returns the undecorated function.

A careless host never gets an exception from here: a malformed ``MCPMETER_*`` variable is
logged and its default used, an unusable value given to ``record()`` is logged and the event
dropped, and a tool's own exception always propagates unchanged. At exit, every meter's
worker is stopped by ONE deadline (``MCPMETER_EXIT_TIMEOUT``); what cannot be sent by then is
spooled. A ``multiprocessing`` child (which leaves through ``os._exit``, skipping ``atexit``)
runs the same exit from multiprocessing's own finalizers.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import math
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .. import settings
from ..events import MAX_ERROR_MESSAGE, Event, clip_text, new_event
from ..exceptions import ConfigError
from ..identity import local_user
from ..paths import spool_path
from ..protocol import TOOL_CALL
from .internal import internal_error, log
from .stats import Stats

if TYPE_CHECKING:
    from .sinks import Sink
    from .worker import Worker

F = TypeVar("F", bound=Callable[..., Any])
# A queued tool call: (tool, category, start, duration, error type, error message); the worker makes it an event.
_Call = tuple[str, str | None, float, float, str | None, str | None]
_clock = time.perf_counter


def _setting(env: str, explicit: Any = None) -> Any:
    """``settings.get``, except that a malformed variable is logged and its default used."""
    try:
        return settings.get(env, explicit)
    except ConfigError as exc:
        log.warning("mcpmeter: %s; using the default (%r)", exc, settings.SETTINGS[env].default)
        return settings.SETTINGS[env].default


def exit_timeout() -> float:
    """Seconds the exit may take for all meters together (``MCPMETER_EXIT_TIMEOUT``)."""
    return float(_setting("MCPMETER_EXIT_TIMEOUT"))


def _user_hasher() -> Callable[[str | None], str | None]:
    from ..identity import ClientUserHasher, client_user_key

    try:
        key = client_user_key()
    except (OSError, ValueError) as exc:  # unwritable or damaged home: hash with a key of this process only
        log.warning("mcpmeter: cannot read or keep the user-hashing key in MCPMETER_HOME (%s); users are hashed "
                    "with a key of this process only, so the same user counts anew after a restart", exc)
        key = os.urandom(32)
    return ClientUserHasher(key)


def _ts_ms(ts: Any) -> int:
    """``record()``'s ``ts`` (epoch seconds, or an aware datetime) as epoch ms; ValueError if unusable."""
    if ts is None:
        return int(time.time() * 1000)
    if isinstance(ts, datetime):
        ts = ts.timestamp()
    if type(ts) is bool or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise ValueError(f"ts must be epoch seconds (a finite number), got {ts!r:.80}")
    return int(ts * 1000)


def _default_server_name() -> str:
    name = _setting("MCPMETER_SERVER_NAME")
    if name:
        return str(name)
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return Path(path).stem if path else "mcp-server"


class Meter:
    """Records tool calls of one MCP server.

    >>> meter = Meter(server="weblab")
    >>> @meter.tool(category="rag")
    ... def search(query: str) -> str: ...

    Events go to the collector at ``url`` (``MCPMETER_URL``), else into the local store; a
    ``sink`` (any ``mcpmeter.sdk.sinks.Sink``, e.g. ``MemorySink()``) replaces both.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        server_version: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        db: str | None = None,
        user: str | None = None,
        disabled: bool | None = None,
        batch_size: int | None = None,
        flush_interval: float | None = None,
        max_queue: int | None = None,
        spool: str | os.PathLike[str] | None = None,
        transport: str = "stdio",
        capture_arguments: bool = False,
        capture_results: bool = False,
        redact_keys: Iterable[str] | None = None,
        capture_max_chars: int = 512,
        signing_secret: str | None = None,
        hash_users: bool | None = None,
        sink: Sink | None = None,
    ) -> None:
        # Whether the name was chosen (argument or MCPMETER_SERVER_NAME); if not,
        # ``instrument()`` may take the MCP server's own name instead of the script's.
        self._server_named = bool(server or _setting("MCPMETER_SERVER_NAME"))
        self.server = server or _default_server_name()
        self.server_version = server_version
        self.user = user if user is not None else local_user()
        self.transport_name = transport
        self.disabled = bool(_setting("MCPMETER_DISABLED", disabled))
        self.url = _setting("MCPMETER_URL", url)
        self.batch_size = _setting("MCPMETER_BATCH_SIZE", batch_size)
        self.flush_interval = _setting("MCPMETER_FLUSH_INTERVAL", flush_interval)
        self.max_queue = _setting("MCPMETER_MAX_QUEUE", max_queue)
        self.stats = Stats()
        # Contents of arguments/results are never recorded unless asked for (``instrument()`` only).
        self.capture_arguments = capture_arguments
        self.capture_results = capture_results
        self.redact_keys = tuple(k.lower() for k in redact_keys) if redact_keys is not None else None
        self.capture_max_chars = capture_max_chars
        self._api_key = _setting("MCPMETER_API_KEY", api_key)
        self._signing_secret = _setting("MCPMETER_SIGNING_SECRET", signing_secret)
        # Users hashed here, with this machine's key, before anything leaves the process (worker thread).
        self._hash_user: Callable[[str | None], str | None] | None = None
        if not self.disabled and _setting("MCPMETER_HASH_USERS", hash_users):
            self._hash_user = _user_hasher()
        self._sink = _checked_sink(sink)
        self._db = db
        self._spool_path = Path(spool) if spool else spool_path()
        self._spool_max = _setting("MCPMETER_SPOOL_MAX_MB") * 1024 * 1024
        self._queue: deque[_Call | Event] = deque()
        self._worker: Worker | None = None
        if not self.disabled:
            self._start()
            _live_meters.add(self)
            _watch_multiprocessing()

    # ---- lifecycle --------------------------------------------------------------------

    def _start(self) -> None:
        from .worker import Worker

        self._worker = Worker(self, self._sink_factory())
        self._worker.start()

    def _sink_factory(self) -> Callable[[], Sink]:
        """Makes the sink given to the constructor, else one for the URL or the local store.

        It holds the values it needs, not the meter: the worker must not keep its meter alive.
        """
        sink, url, db, stats = self._sink, self.url, self._db, self.stats
        key, secret, spool, spool_max = self._api_key, self._signing_secret, self._spool_path, self._spool_max
        # Imported here, in the host's thread: a module the worker thread was importing when the
        # host forked would stay half-imported in the child for good.
        from .sinks import HttpSink, LocalSink

        if sink is None and not url:
            from .. import storage  # noqa: F401  (LocalSink's store, for the same reason)

        def make() -> Sink:
            if sink is not None:
                return sink
            if url:
                return HttpSink(url, key, spool, spool_max, stats, secret)
            return LocalSink(db, stats)

        return make

    def _after_fork(self) -> None:
        # The parent's worker thread does not exist in the child; start afresh, keep nothing.
        self._queue.clear()
        self.stats = Stats()
        if not self.disabled:
            self._start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Deliver (or spool) everything recorded so far. True when all of it was delivered,
        spooled or counted as dropped within ``timeout``; False when some is still in memory."""
        if self._worker is None:
            return True
        return self._worker.flush(timeout)

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Flush, then stop the worker. Recording after shutdown is a no-op."""
        if self._worker is None:
            return True
        done = self._worker.stop(timeout)
        self._worker = None
        self.disabled = True
        _live_meters.discard(self)
        return done

    # ---- recording --------------------------------------------------------------------

    def tool(self, fn: F | str | None = None, category_: str | None = None, *, name: str | None = None,
             category: str | None = None) -> Any:
        """Decorate a sync or async tool function: ``@meter.tool``, ``@meter.tool(name=..., category=...)``,
        or the analytics migration seed's positional form ``@meter.tool("name", "category")``."""
        if isinstance(fn, str):  # @meter.tool("name") / @meter.tool("name", "category")
            if name is not None or (category_ is not None and category is not None):
                raise ConfigError("meter.tool() got the tool name (or category) both by position and by keyword",
                                  hint='use @meter.tool("name", "category") or @meter.tool(name=..., category=...)')
            name, fn = fn, None
        if category_ is not None:
            if not isinstance(category_, str) or category is not None:
                raise ConfigError("meter.tool()'s second positional argument is the category (a string), given once",
                                  hint='use @meter.tool("name", "category")')
            category = category_
        if fn is not None:
            return self._wrap(fn, name or fn.__name__, category)
        return lambda f: self._wrap(f, name or f.__name__, category)

    def _wrap(self, fn: F, tool_name: str, category: str | None) -> F:
        if self.disabled:
            return fn
        queue = self._queue
        append = queue.append
        cap = self.max_queue
        stats = self.stats
        meter = self
        clock = _clock  # closure locals: cheaper than globals on every call

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                start = clock()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    meter._failed(tool_name, category, start, exc)
                    raise
                if len(queue) < cap:
                    append((tool_name, category, start, clock() - start, None, None))
                else:
                    stats.drop("queue_full")
                return result

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                meter._failed(tool_name, category, start, exc)
                raise
            if len(queue) < cap:
                append((tool_name, category, start, clock() - start, None, None))
            else:
                stats.drop("queue_full")
            return result

        return cast(F, wrapper)

    def instrument(self, server: Any, **options: Any) -> Any:
        """Record every request an MCP server handles, with one line; returns ``server``.

        Works for mcp 2.x ``Server`` / ``MCPServer`` and FastMCP servers. Options:
        ``user`` (a callable ``(request_context) -> str | None``) and ``user_header``
        choose who the user is on HTTP transports. See docs/instrument.md.
        """
        from .integrations import instrument

        return instrument(self, server, **options)

    def add_usage_report_tool(self, server: Any, name: str = "usage_report", *, url: str | None = None,
                              api_key: str | None = None) -> Any:
        """Add one tool, ``name``, to an mcp 2.x ``MCPServer`` or FastMCP ``server``, answering the four
        stakeholder questions about this meter's server from the team collector (``url`` /
        ``MCPMETER_URL``, read key ``api_key`` / ``MCPMETER_READ_KEY``); opt-in, as it changes
        ``tools/list``. Returns ``server``. See docs/instrument.md.

        >>> meter.add_usage_report_tool(server, name="weblab_usage_report")  # doctest: +SKIP
        """
        from .report_tool import add

        return add(self, server, name, url, api_key)

    def _enqueue(self, event: Event) -> None:
        """Queue a ready event (the integrations' path); drops and counts when full."""
        if len(self._queue) < self.max_queue:
            self._queue.append(event)
        else:
            self.stats.drop("queue_full")

    def _failed(self, tool_name: str, category: str | None, start: float, exc: BaseException) -> None:
        # Called between the tool's exception and its re-raise: nothing here may raise.
        duration = _clock() - start
        if len(self._queue) < self.max_queue:
            try:
                message = clip_text(str(exc), MAX_ERROR_MESSAGE)  # clipped before it is queued
            except Exception:  # an exception whose __str__ fails: recorded without its message
                message = None
            self._queue.append((tool_name, category, start, duration, type(exc).__name__, message))
        else:
            self.stats.drop("queue_full")

    def record(
        self,
        tool: str | None = None,
        *,
        kind: str = TOOL_CALL,
        duration_ms: float | None = None,
        ok: bool | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        category: str | None = None,
        ts: float | None = None,
        user: str | None = None,
        **fields: Any,
    ) -> None:
        """Record one event by hand (any kind). ``ts`` is epoch seconds or an aware datetime (default now).

        Extra keyword arguments are event fields (``session_id``, ``client_name``,
        ``attributes``…); ``server`` and ``server_version`` override the meter's own for
        this event (the proxy learns them from the handshake). Values are clipped to the
        wire format's limits. Invalid input is reported on stderr, never raised.
        """
        if self.disabled:
            return
        try:
            ts_ms = _ts_ms(ts)
            event = new_event(
                kind, ts_ms, fields.pop("server", None) or self.server,
                server_version=fields.pop("server_version", None) or self.server_version, tool=tool, category=category,
                duration_ms=duration_ms, ok=ok, error_type=error_type, error_message=error_message,
                user=user if user is not None else self.user,
                transport=fields.pop("transport", self.transport_name), **fields,
            )
        except Exception as exc:  # never into the host
            self.stats.drop("invalid")
            internal_error("record() got an unknown field or an unusable value", exc)
            return
        if len(self._queue) < self.max_queue:
            self._queue.append(event)
        else:
            self.stats.drop("queue_full")


def _checked_sink(sink: Any) -> Sink | None:
    if sink is None:
        return None
    from .sinks import Sink

    if not isinstance(sink, Sink):
        raise ConfigError(f"Meter(sink=...) got a {type(sink).__name__}, which is not a sink",
                          hint="pass an object with deliver(events, deadline), idle(deadline) and close() "
                               "methods, e.g. mcpmeter.sdk.sinks.MemorySink()")
    return sink


_live_meters: weakref.WeakSet[Meter] = weakref.WeakSet()


def _shutdown_all() -> None:
    """At exit: stop every worker (dropped meters' ones too) by ONE deadline shared by all."""
    try:
        from .worker import stop_all

        deadline = time.monotonic() + exit_timeout()
        for meter in list(_live_meters):
            meter.disabled = True
        stop_all(deadline)
    except Exception as exc:  # never fail interpreter exit
        internal_error("shutdown at exit failed", exc)


def _after_fork_in_child() -> None:
    from . import worker

    worker.RUNNING.clear()  # the parent's threads do not exist here
    for meter in list(_live_meters):
        meter._after_fork()


# A multiprocessing child leaves through os._exit (no atexit); its own finalizers do run,
# but its registry is cleared after the fork, so ours is registered anew in each child.
_mp_token = type("_MultiprocessingToken", (), {})()
_mp_watched = False


def _watch_multiprocessing() -> None:
    global _mp_watched
    mp_util = sys.modules.get("multiprocessing.util")
    if _mp_watched or mp_util is None:
        return
    _mp_watched = True
    mp_util.register_after_fork(_mp_token, _finalize_in_child)


def _finalize_in_child(_token: object) -> None:
    import multiprocessing.util as mp_util

    mp_util.Finalize(None, _shutdown_all, exitpriority=100)


def _before_fork() -> None:
    if _live_meters:
        _watch_multiprocessing()


atexit.register(_shutdown_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
