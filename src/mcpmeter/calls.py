"""One logical ``tools/call`` across input rounds and tasks: what every capture path keeps open.

A capture path (the proxy's tracker, ``meter.instrument()``) sees requests and results one
at a time. A ``tools/call`` answered with ``resultType: "input_required"`` (2026-07-28) or
with a task (the tasks extension) is not over: the client retries under a new request id,
or polls the task. ``OpenCalls`` holds such calls until their final result, so that each is
recorded once - from its first request to its final result - with its rounds, its input
time and its polls as attributes (``protocol.ROUNDS_ATTRIBUTE``…).

Pure bookkeeping, bounded, no I/O and no clock of its own: times are seconds of the
caller's monotonic clock. Not thread-safe (each capture path feeds it from one thread or
one event loop).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from .protocol import INPUT_MS_ATTRIBUTE, ROUNDS_ATTRIBUTE, TASK_POLLS_ATTRIBUTE

MAX_OPEN = 10_000  # calls waiting for input or running as tasks (the oldest is given up beyond)
MAX_INPUT_WAIT_S = 3_600.0  # a client that has not retried within an hour is not coming back
MAX_TASK_S = 86_400.0  # the longest duration an event can carry


class Logical:
    """One logical tools/call. ``data`` is the capture path's own record of its first request."""

    __slots__ = ("data", "input_s", "polls", "rounds", "start", "task_id", "waiting_since")

    def __init__(self, data: Any, start: float) -> None:
        self.data = data
        self.start = start
        self.rounds = 1
        self.input_s = 0.0
        self.waiting_since: float | None = None
        self.polls = 0
        self.task_id: str | None = None

    def attributes(self) -> dict[str, Any]:
        """The attributes the call's event carries about its rounds and its task."""
        out: dict[str, Any] = {}
        if self.rounds > 1:
            out[ROUNDS_ATTRIBUTE] = self.rounds
            out[INPUT_MS_ATTRIBUTE] = round(self.input_s * 1000, 3)
        if self.task_id is not None:
            out[TASK_POLLS_ATTRIBUTE] = self.polls
        return out


class OpenCalls:
    """The calls of one server that are not over: waiting for the client's input (by the
    ``requestState`` they answered with, else by a key the caller chooses), or running as a
    task (by task id)."""

    __slots__ = ("_input", "_tasks", "max_input_wait", "max_open", "max_task")

    def __init__(self, max_open: int = MAX_OPEN, max_input_wait: float = MAX_INPUT_WAIT_S,
                 max_task: float = MAX_TASK_S) -> None:
        self._input: dict[tuple, Logical] = {}
        self._tasks: dict[str, Logical] = {}
        self.max_open = max_open
        self.max_input_wait = max_input_wait
        self.max_task = max_task

    def __bool__(self) -> bool:
        return bool(self._input or self._tasks)

    @property
    def has_tasks(self) -> bool:
        return bool(self._tasks)

    # ---- multi round-trip ----------------------------------------------------------------

    @staticmethod
    def _key(state: Any, fallback: Hashable | None) -> tuple | None:
        if isinstance(state, str) and state:
            return ("state", state)
        if fallback is not None:
            return ("other", fallback)
        return None

    def wait_input(self, logical: Logical, state: Any, fallback: Hashable | None, t: float) -> list[Logical]:
        """The call was answered ``input_required``: it waits for the client's retry.

        Returns the calls given up to stay within the bound (the caller records them).
        """
        key = self._key(state, fallback)
        logical.waiting_since = t
        if key is None:
            return [logical]  # nothing a retry could be matched by: it ends here
        replaced = self._input.pop(key, None)
        self._input[key] = logical
        given_up = [replaced] if replaced is not None and replaced is not logical else []
        return given_up + self._trim()

    def resume(self, state: Any, fallback: Hashable | None, t: float) -> Logical | None:
        """A ``tools/call`` carrying ``requestState``/``inputResponses``: the call it continues."""
        logical = None
        key = self._key(state, None)
        if key is not None:
            logical = self._input.pop(key, None)
        if logical is None and fallback is not None:
            logical = self._input.pop(("other", fallback), None)
        if logical is not None:
            logical.rounds += 1
            if logical.waiting_since is not None:
                logical.input_s += max(t - logical.waiting_since, 0.0)
            logical.waiting_since = None
        return logical

    # ---- tasks ---------------------------------------------------------------------------

    def start_task(self, logical: Logical, task_id: str) -> list[Logical]:
        logical.task_id = task_id
        self._tasks[task_id] = logical
        return self._trim()

    def task(self, task_id: Any) -> Logical | None:
        return self._tasks.get(task_id) if isinstance(task_id, str) else None

    def end_task(self, task_id: Any) -> Logical | None:
        return self._tasks.pop(task_id, None) if isinstance(task_id, str) else None

    # ---- ending what never ends ----------------------------------------------------------

    def expired(self, t: float) -> list[Logical]:
        """Calls whose client stopped answering (no retry within ``max_input_wait``) or whose
        task outlived ``max_task``: taken out, for the caller to record as cancelled."""
        out = []
        for key, logical in list(self._input.items()):
            if logical.waiting_since is not None and t - logical.waiting_since > self.max_input_wait:
                out.append(self._input.pop(key))
        for task_id, logical in list(self._tasks.items()):
            if t - logical.start > self.max_task:
                out.append(self._tasks.pop(task_id))
        return out

    def drain(self, belongs: Callable[[Logical], bool] | None = None) -> list[Logical]:
        """Take out every open call (of which ``belongs`` says yes): the conversation ended."""
        out = []
        for key, logical in list(self._input.items()):
            if belongs is None or belongs(logical):
                out.append(self._input.pop(key))
        for task_id, logical in list(self._tasks.items()):
            if belongs is None or belongs(logical):
                out.append(self._tasks.pop(task_id))
        return out

    def _trim(self) -> list[Logical]:
        out = []
        while len(self._input) + len(self._tasks) > self.max_open:
            if self._input:
                out.append(self._input.pop(next(iter(self._input))))
            else:
                out.append(self._tasks.pop(next(iter(self._tasks))))
        return out
