"""``python -m mcpmeter.demo_servers NAME stdio`` or ``... NAME http PORT``: one demo server as
its own process (what ``mcpmeter proxy`` is put in front of)."""

from __future__ import annotations

import sys

from .servers import BUILDERS


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in BUILDERS or argv[1] not in ("stdio", "http") or (argv[1] == "http") != (len(argv) == 3):
        sys.exit(f"usage: python -m mcpmeter.demo_servers {{{','.join(BUILDERS)}}} stdio | http PORT")
    server = BUILDERS[argv[0]]()
    if argv[1] == "stdio":
        server.run("stdio")
        return
    import uvicorn

    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(argv[2]), log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
