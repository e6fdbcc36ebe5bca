"""The demo's four MCP servers, each measured by a different capture path.

- ``weblab`` (``meter.instrument``, in process): lookups, a search that times out on the old
  version (1.3.2) and not after the deploy (1.4.0), a rollout that asks the user to confirm
  (``Elicit``: an ``InputRequiredResult`` and a retry on 2026-07-28, ``elicitation/create``
  on 2025-11-25), an index rebuild that runs as a task (the ``io.modelcontextprotocol/tasks``
  extension below) for clients that opted in, a slow report clients give up on, and tools
  nobody calls.
- ``archon`` (``mcpmeter proxy --upstream``, streamable HTTP): RAG and project tools, a
  document delete that asks for confirmation, an internal error when the vector store is
  down (the server failing), a tool nobody calls.
- ``time`` (``mcpmeter proxy -- CMD``, stdio): current time and conversion; an unknown time
  zone is a tool error.
- ``kb`` (``@meter.tool(category=...)``): the only path that knows tool categories.

Every failure follows from the arguments, so the demo's script decides what fails. The tools
return plain content (``structured_output=False``): no output schema for each new client to
compile, which is most of what a short conversation costs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, RequestParams, TextContent
from pydantic import BaseModel, ConfigDict, Field

TASKS = "io.modelcontextprotocol/tasks"
QUIET: Literal["WARNING"] = "WARNING"  # MCPServer configures logging when none is: not the demo's INFO lines on stderr
WEBLAB_VERSIONS = ("1.3.2", "1.4.0")  # before and after the deploy that fixed weblab_search


class TaskParams(RequestParams):
    model_config = ConfigDict(populate_by_name=True)
    task_id: str = Field(alias="taskId")


class Tasks(Extension):
    """A minimal tasks extension: the tools named are answered with a task, then ``tasks/get``
    reports it working for ``steps`` polls and ends it as the call's ``outcome`` argument says,
    ``completed`` (with the text ``done``) or ``failed``. ``structured``: the tools have an
    output schema, so the final result carries ``structuredContent`` too."""

    identifier = TASKS

    def __init__(self, tools: tuple[str, ...], done: str = "index rebuilt", failed: str = "the rebuild failed",
                 structured: bool = False) -> None:
        self.task_tools = tools
        self.done, self.failed, self.structured = done, failed, structured
        self.tasks: dict[str, dict[str, Any]] = {}

    async def intercept_tool_call(self, params, ctx, call_next):
        if params.name not in self.task_tools:
            return await call_next(ctx)
        arguments = params.arguments or {}
        task_id = uuid.uuid4().hex
        self.tasks[task_id] = {"left": int(arguments.get("steps", 2)), "outcome": arguments.get("outcome", "completed"),
                               "created": datetime.now(UTC).isoformat()}
        return {"resultType": "task", "task": self._task(task_id, "working")}

    def _task(self, task_id: str, status: str, **more: Any) -> dict[str, Any]:
        return {"taskId": task_id, "status": status, "createdAt": self.tasks[task_id]["created"],
                "lastUpdatedAt": datetime.now(UTC).isoformat(), "ttl": None, "pollInterval": 10, **more}

    async def get(self, ctx, params: TaskParams):
        state = self.tasks.get(params.task_id)
        if state is None:
            raise MCPError(INVALID_PARAMS, f"no task {params.task_id}")
        state["left"] -= 1
        if state["left"] > 0:
            return {"task": self._task(params.task_id, "working")}
        if state["outcome"] == "failed":
            return {"task": self._task(params.task_id, "failed", statusMessage=self.failed)}
        result = CallToolResult(content=[TextContent(type="text", text=self.done)],
                                structured_content={"result": self.done} if self.structured else None)
        return {"task": self._task(params.task_id, "completed"),
                "result": result.model_dump(mode="json", by_alias=True, exclude_none=True)}

    def methods(self):
        return [MethodBinding("tasks/get", TaskParams, self.get)]


class Confirm(BaseModel):
    confirm: bool


async def ask_rollout(experiment_id: str, percent: int) -> Elicit[Confirm]:
    return Elicit(f"Roll experiment {experiment_id} out to {percent}% of users?", Confirm)


async def ask_delete(doc_id: str) -> Elicit[Confirm]:
    return Elicit(f"Delete document {doc_id}?", Confirm)


def weblab(version: str = WEBLAB_VERSIONS[-1]) -> MCPServer:
    mcp = MCPServer("weblab", version=version, extensions=[Tasks(("rebuild_index",))], log_level=QUIET)

    @mcp.tool(structured_output=False)
    def weblab_details(experiment_id: str) -> dict[str, Any]:
        """Details of an experiment: owner, status, treatments."""
        if not experiment_id.isdigit():
            raise ToolError("experiment id must be numeric")
        return {"id": experiment_id, "status": "running", "treatments": ["C", "T1"]}

    @mcp.tool(structured_output=False)
    def weblab_allocations(experiment_id: str, region: str = "us-west-2") -> dict[str, Any]:
        """How traffic is split between treatments in a region."""
        return {"id": experiment_id, "region": region, "C": 50, "T1": 50}

    @mcp.tool(structured_output=False)
    def weblab_user_experiments(alias: str) -> list[str]:
        """The experiments a user owns."""
        if alias.startswith("former-"):
            raise PermissionError("user lacks access to this weblab")
        return [str(10_000 + sum(map(ord, alias)) * 37 % 90_000)]

    @mcp.tool(structured_output=False)
    async def weblab_search(query: str) -> list[str]:
        """Searches experiments by text."""
        if query.startswith("broad:") and version == WEBLAB_VERSIONS[0]:
            raise TimeoutError("upstream did not answer within 30s")
        return [f"{query} #{n}" for n in range(3)]

    @mcp.tool(structured_output=False)
    def approve_rollout(experiment_id: str, percent: int,
                        answer: Annotated[Confirm, Resolve(ask_rollout)]) -> str:
        """Rolls an experiment out further, after the user confirms."""
        if not answer.confirm:
            raise ToolError("rollout cancelled: the user said no")
        return f"{experiment_id} now at {percent}%"

    @mcp.tool(structured_output=False)
    def rebuild_index(steps: int = 2, outcome: str = "completed") -> str:
        """Rebuilds the search index (a task, for clients that support tasks)."""
        return "index rebuilt inline"

    @mcp.tool(structured_output=False)
    async def slow_report(seconds: float) -> str:
        """A report that takes a while."""
        await anyio.sleep(seconds)
        return "report ready"

    @mcp.tool(structured_output=False)
    def weblab_export(experiment_id: str, format: str = "csv") -> str:
        """Exports an experiment's results (nobody uses it)."""
        return f"{experiment_id}.{format}"

    @mcp.tool(structured_output=False)
    def weblab_clone(experiment_id: str, name: str) -> str:
        """Clones an experiment under a new name (nobody uses it either); its long description is what every
        client pays for in context on every conversation, whether or not the tool is ever called: it lists
        every option the clone takes, the treatments it copies, the audiences it keeps and the ones it resets."""
        return name

    return mcp


def archon() -> MCPServer:
    mcp = MCPServer("archon", version="0.2.0", log_level=QUIET)
    documents = {f"doc-{n}": f"Document {n}" for n in range(1, 40)}

    @mcp.tool(structured_output=False)
    def rag_query(query: str, top_k: int = 8) -> list[str]:
        """Answers a question from the knowledge base."""
        if not query.strip():
            raise MCPError(INTERNAL_ERROR, "vector store unavailable")  # the server failing, not the tool
        return [f"passage {n} about {query}" for n in range(min(top_k, 3))]

    @mcp.tool(structured_output=False)
    def create_task(project: str, title: str) -> str:
        """Creates a task in a project."""
        if not title:
            raise ToolError("a task needs a title")
        return f"{project}/{uuid.uuid4().hex[:6]}"

    @mcp.tool(structured_output=False)
    def list_projects() -> list[str]:
        """The projects you can see."""
        return ["atlas", "borealis", "cygnus"]

    @mcp.tool(structured_output=False)
    def get_document(doc_id: str) -> str:
        """One document by id."""
        if doc_id not in documents:
            raise ToolError(f"no document {doc_id}")
        return documents[doc_id]

    @mcp.tool(structured_output=False)
    def delete_document(doc_id: str, answer: Annotated[Confirm, Resolve(ask_delete)]) -> str:
        """Deletes a document after the user confirms."""
        if not answer.confirm:
            raise ToolError("kept: the user said no")
        return f"deleted {doc_id}"

    @mcp.tool(structured_output=False)
    def archive_project(project: str) -> str:
        """Archives a project (nobody uses it)."""
        return project

    return mcp


def time_server() -> MCPServer:
    mcp = MCPServer("time", version="2026.10.19", log_level=QUIET)

    def zone(name: str) -> ZoneInfo:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(f"Invalid timezone: {name}") from None

    @mcp.tool(structured_output=False)
    def get_current_time(timezone: str) -> str:
        """The current time in an IANA time zone."""
        return datetime.now(zone(timezone)).isoformat(timespec="seconds")

    @mcp.tool(structured_output=False)
    def convert_time(source_timezone: str, time: str, target_timezone: str) -> str:
        """Converts an HH:MM time between two time zones."""
        hours, minutes = (int(part) for part in time.split(":"))
        today = datetime.now(zone(source_timezone)).replace(hour=hours, minute=minutes, second=0, microsecond=0)
        return today.astimezone(zone(target_timezone)).isoformat(timespec="minutes")

    return mcp


def kb(tool: Callable[..., Any]) -> MCPServer:
    """The knowledge base; ``tool`` is ``meter.tool`` (each tool recorded with its category)."""
    mcp = MCPServer("kb", version="1.0.0", log_level=QUIET)
    articles = {f"kb-{n}": f"Article {n}" for n in range(1, 30)}

    @mcp.tool(structured_output=False)
    @tool(category="search")
    def search_articles(query: str) -> list[str]:
        """Finds articles."""
        return [key for key in articles if query in articles[key]][:5]

    @mcp.tool(structured_output=False)
    @tool(category="read")
    def get_article(article_id: str) -> str:
        """One article."""
        return articles[article_id]  # KeyError for an unknown id: the tool fails

    @mcp.tool(structured_output=False)
    @tool(category="read")
    def summarize(article_id: str, words: int = 50) -> str:
        """A summary of an article."""
        return " ".join(articles.get(article_id, "").split()[:words])

    @mcp.tool(structured_output=False)
    @tool(category="write")
    def send_feedback(article_id: str, helpful: bool) -> str:
        """Marks an article helpful or not."""
        if article_id not in articles:
            raise ValueError(f"no article {article_id}")
        return "thanks"

    return mcp


BUILDERS: dict[str, Callable[[], MCPServer]] = {"archon": archon, "time": time_server}
